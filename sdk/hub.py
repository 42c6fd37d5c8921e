"""Hugging Face hub ids: the one test for "is this string a hub id" and the one way to fetch a snapshot.

Every model argument (LLM, embedder, converter) is a local path or a hub id; offline, a hub id fails with a
`ModelNotFound` that says so instead of a network stack trace.
"""

from __future__ import annotations

import re
from pathlib import Path

from xpullm.errors import ModelNotFound

__all__ = ["HUB_ID", "download", "is_hub_id"]

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # "org/name"; paths start with . / ~ and are never ids


def is_hub_id(text: str) -> bool:
    """Whether `text` reads as a hub id `org/name` (and not as a relative or absolute path)."""
    return bool(HUB_ID.match(text)) and not text.startswith((".", "/", "~"))


def download(repo_id: str, allow_patterns: list[str] | None = None, what: str = "model") -> Path:
    """The local folder of a hub snapshot (downloaded once by `huggingface_hub`), or a clear `ModelNotFound`."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:
        raise ModelNotFound(
            f"{repo_id!r} is not a local folder and huggingface_hub is not installed to fetch it; "
            "`pip install huggingface_hub` or pass a local folder"
        ) from exc
    try:
        return Path(snapshot_download(repo_id=repo_id, allow_patterns=allow_patterns))
    except Exception as exc:  # offline, unknown repo, gated repo: all end the same way for the caller
        raise ModelNotFound(
            f"could not fetch {what} {repo_id!r} from the Hugging Face hub ({type(exc).__name__}: {exc}). "
            "Offline? Check the id and the network, or pass a local folder instead."
        ) from exc
