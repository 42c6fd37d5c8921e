"""Document records and reading files into them: what both knowledge pipelines start from.

The knowledge base keeps a file's parsed blocks (its templates cut along headings and tables); GraphRAG reads a
file's whole text into a `Document`. Both find files and parse them through the same parser registry, so every
format one of them reads, the other reads too.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from xpullm.documents.parsers import decode_text, parse_bytes, supported_extensions

__all__ = [
    "PLAIN_TEXT_SUFFIXES",
    "Document",
    "document_from_bytes",
    "list_files",
    "read_document",
    "stable_id",
]

# Formats whose file text is the document text as written: whole-text readers take it unchanged (blank lines and
# markup included), while the KB's parser still splits it into blocks for its templates.
PLAIN_TEXT_SUFFIXES = (".txt", ".text", ".md", ".markdown", ".rst")


def stable_id(*parts: str) -> str:
    """A UUID-shaped id derived from content, so re-reading the same text gives the same ids."""
    h = hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


@dataclass(frozen=True)
class Document:
    """One input document as whole text: an id derived from its title and text, and where it came from."""

    id: str
    title: str
    text: str
    metadata: dict[str, str] = field(default_factory=dict)


def list_files(folder: str | os.PathLike[str], recursive: bool = True) -> list[Path]:
    """Files under `folder` that a registered parser reads, sorted by path."""
    exts = set(supported_extensions())
    root = Path(folder)
    walker = root.rglob("*") if recursive else root.glob("*")
    return [f for f in sorted(walker) if f.is_file() and f.suffix.lower() in exts]


def read_document(path: str | os.PathLike[str], title: str | None = None) -> Document:
    """A file as one `Document`: plain-text formats as written, others (PDF, DOCX, HTML, CSV) through their parser
    with blocks separated by blank lines. A file of a type no parser reads is taken as plain text (it was named
    explicitly); `ParseError` says when it is binary."""
    return document_from_bytes(Path(path).read_bytes(), path, title)


def document_from_bytes(data: bytes, path: str | os.PathLike[str], title: str | None = None) -> Document:
    """`read_document` of bytes already read from `path` (a worker that parses what another machine read)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in PLAIN_TEXT_SUFFIXES or suffix not in supported_extensions():
        text = decode_text(data, path.name)
    else:
        text = parse_bytes(data, path.name).text
    title = path.name if title is None else title
    return Document(id=stable_id(title, text), title=title, text=text, metadata={"path": str(path)})
