"""Documents and text units: GraphRAG's inputs read through the shared documents layer, cut into text units.

Any format the knowledge base ingests (text, Markdown, HTML, PDF, DOCX, CSV, ...) indexes here too: files are
read by `xpullm.documents.read_document`, and units are cut by the shared `sentences` chunking template (whole
sentences, so an extraction prompt never sees half a word), each measured with the model's own tokenizer.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from xpullm.documents import (
    ChunkingConfig,
    Document,
    ParsedDocument,
    document_from_bytes,
    list_files,
    stable_id,
    supported_extensions,
)
from xpullm.documents import (
    chunk_document as chunk_with_template,
)
from xpullm.documents.parsers import Block
from xpullm.graphrag.errors import ConfigError
from xpullm.scaleout import Executor, LocalExecutor, in_order

if TYPE_CHECKING:
    from xpullm.protocols import TokenCounter

__all__ = ["Document", "TextUnit", "chunk_document", "chunk_task", "load_inputs", "parse_task", "stable_id"]

UNIT_TEMPLATE = "sentences"  # the shared chunking template that cuts text units


@dataclass(frozen=True)
class TextUnit:
    """One chunk of a document: the unit of extraction."""

    id: str
    text: str
    n_tokens: int
    document_id: str
    chunk_index: int


def parse_task(_model: None, item: tuple[bytes, str, str]) -> Document:
    """One file's bytes parsed into a `Document` (runs where the executor runs it: the driver read the bytes)."""
    data, path, title = item
    return document_from_bytes(data, path, title)


def load_inputs(
    inputs: str | Path | Iterable[str | Path], executor: Executor | None = None
) -> list[Document]:
    """Documents from file paths, folders (every file with a registered parser, sorted) or raw texts.

    A string is a path when it names an existing file or folder, otherwise raw text. Raw texts get titles
    `text_0`, `text_1`, ... in order. Files are read here and parsed by `executor` (default: here too).
    """
    items = [inputs] if isinstance(inputs, str | Path) else list(inputs)
    docs: list[Document | tuple[bytes, str, str]] = []  # files wait as (bytes, path, title) until parsed
    raw_index = 0
    for item in items:
        path = Path(item) if isinstance(item, Path) or _looks_like_path(item) else None
        if path is not None and path.is_dir():
            files = list_files(path)
            if not files:
                raise ConfigError(
                    f"folder {str(path)!r} holds no files to index; readable types: "
                    f"{', '.join(supported_extensions())}"
                )
            docs.extend((p.read_bytes(), str(p), str(p.relative_to(path))) for p in files)
        elif path is not None and path.is_file():
            docs.append((path.read_bytes(), str(path), path.name))
        elif isinstance(item, Path) or _path_like(str(item)):
            # A mistyped path must not be indexed as a one-line document holding the path itself.
            raise ConfigError(
                f"input path {str(item)!r} does not exist; check the path (raw text must not look like a file name)"
            )
        else:
            text = str(item)
            if not text.strip():
                raise ConfigError(f"input #{raw_index} is empty text; pass a non-empty string or a file path")
            title = f"text_{raw_index}"
            docs.append(Document(id=stable_id(title, text), title=title, text=text))
            raw_index += 1
    files = [d for d in docs if not isinstance(d, Document)]
    parsed = iter(in_order((executor or LocalExecutor()).map(parse_task, files)))
    return [d if isinstance(d, Document) else next(parsed) for d in docs]


def _path_like(item: str) -> bool:
    """Whether a string that names no existing file reads as a path rather than text: one line of at most three
    words that ends in a file extension the documents layer reads, or holds a path separator."""
    text = item.strip()
    if not text or "\n" in text or len(text.split()) > 3:
        return False
    suffix = Path(text).suffix.lower()
    return suffix in supported_extensions() or "/" in text or "\\" in text


def _looks_like_path(item: str) -> bool:
    if "\n" in item or len(item) >= 4096:
        return False
    try:
        return Path(item).exists()
    except OSError as exc:
        if (
            exc.errno == errno.ENAMETOOLONG
        ):  # a one-line text longer than a file name can be: text, not a path
            return False
        raise


def chunk_task(model: TokenCounter, item: tuple[Document, int, int]) -> list[TextUnit]:
    """`chunk_document` measured with `model`'s tokenizer (runs where the executor runs it)."""
    doc, size, overlap = item
    return chunk_document(doc, size, overlap, model.count_tokens)


def chunk_document(
    doc: Document, size: int, overlap: int, count_tokens: Callable[[str], int]
) -> list[TextUnit]:
    """Cut `doc` into units of at most ~`size` tokens, neighbours sharing ~`overlap` tokens of whole sentences."""
    parsed = ParsedDocument(doc.title, (Block("text", doc.text),))
    chunks = chunk_with_template(parsed, UNIT_TEMPLATE, ChunkingConfig(size, overlap, count_tokens))
    return [
        TextUnit(
            id=stable_id(doc.id, str(i), c.text),
            text=c.text,
            n_tokens=count_tokens(c.text),
            document_id=doc.id,
            chunk_index=i,
        )
        for i, c in enumerate(chunks)
    ]
