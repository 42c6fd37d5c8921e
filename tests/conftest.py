"""Suite-wide settings: offline hub, a per-run model cache, and the shared default-model fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Every Python the suite starts (subprocess tests, `python -c`) keeps the working directory off sys.path: the
# checkout's top-level `kernels/` would otherwise shadow the PyPI package `kernels` that transformers imports.
os.environ["PYTHONSAFEPATH"] = "1"
# With several pytest-xdist workers each takes one core: more intra-op threads would only oversubscribe them.
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    import torch

    torch.set_num_threads(1)
# Tests never reach the network: hub look-ups fail at once instead of retrying.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One cache for the whole run (and across runs on one machine): the GGUF is converted once.
os.environ.setdefault(
    "XPULLM_CACHE", os.path.join(os.path.dirname(os.path.dirname(__file__)), ".cache", "xpullm")
)
# The tuner's on-disk winners stay off: a stand-in timing in one test must not pick another test's tiles (the
# cache's own tests turn it on over a temporary folder).
os.environ["XPULLM_TRITON_TUNE_CACHE"] = "0"


def write_pdf(path: Path, pages: list[str], title: str | None = None) -> Path:
    """A small valid PDF whose pages show `pages` (one text line per page), written by hand."""
    objects: list[bytes] = []
    n_pages = len(pages)
    kids = " ".join(f"{4 + 2 * i} 0 R" for i in range(n_pages))
    objects.append(b"<< /Type /Catalog /Pages 2 0 R >>")
    objects.append(f"<< /Type /Pages /Kids [{kids}] /Count {n_pages} >>".encode())
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    for i, text in enumerate(pages):
        content_id = 5 + 2 * i
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 3 0 R >> >> "
            f"/Contents {content_id} 0 R >>".encode()
        )
        safe = text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
        stream = f"BT /F1 12 Tf 72 720 Td ({safe}) Tj ET".encode()
        objects.append(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
    info_ref = b""
    if title:
        objects.append(f"<< /Title ({title}) >>".encode())
        info_ref = f" /Info {len(objects)} 0 R".encode()
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for off in offsets:
        out += b"%010d 00000 n \n" % off
    out += (
        b"trailer\n<< /Size %d /Root 1 0 R" % (len(objects) + 1)
        + info_ref
        + b" >>\nstartxref\n%d\n%%%%EOF\n" % xref
    )
    path.write_bytes(bytes(out))
    return path


@pytest.fixture
def pdf_writer():
    return write_pdf
