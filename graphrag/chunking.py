"""Documents and text units: loading inputs and cutting them into token-bounded, overlapping units.

Units are packed from whole sentences (words only when one sentence is longer than a unit), so an extraction prompt
never sees half a word, and each unit's size is measured with the model's own tokenizer.
"""

from __future__ import annotations

import errno
import hashlib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from xpullm.graphrag.errors import ConfigError

__all__ = ["Document", "TextUnit", "chunk_document", "load_inputs", "stable_id"]

_TEXT_SUFFIXES = (".txt", ".md", ".markdown", ".rst")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n\s*\n")


def stable_id(*parts: str) -> str:
    """A UUID-shaped id derived from content, so re-indexing the same text gives the same ids."""
    h = hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


@dataclass(frozen=True)
class Document:
    """One input document."""

    id: str
    title: str
    text: str
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TextUnit:
    """One chunk of a document: the unit of extraction."""

    id: str
    text: str
    n_tokens: int
    document_id: str
    chunk_index: int


def load_inputs(inputs: str | Path | Iterable[str | Path]) -> list[Document]:
    """Documents from file paths, folders (their .txt/.md files, sorted) or raw texts.

    A string is a path when it names an existing file or folder, otherwise raw text. Raw texts get titles
    `text_0`, `text_1`, ... in order.
    """
    items = [inputs] if isinstance(inputs, str | Path) else list(inputs)
    docs: list[Document] = []
    raw_index = 0
    for item in items:
        path = Path(item) if isinstance(item, Path) or _looks_like_path(item) else None
        if path is not None and path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in _TEXT_SUFFIXES)
            if not files:
                raise ConfigError(f"folder {str(path)!r} holds no {'/'.join(_TEXT_SUFFIXES)} files to index")
            docs.extend(_read_file(p, title=str(p.relative_to(path))) for p in files)
        elif path is not None and path.is_file():
            docs.append(_read_file(path, title=path.name))
        elif isinstance(item, Path):
            raise ConfigError(f"input path {str(item)!r} does not exist")
        else:
            text = str(item)
            if not text.strip():
                raise ConfigError(f"input #{raw_index} is empty text; pass a non-empty string or a file path")
            title = f"text_{raw_index}"
            docs.append(Document(id=stable_id(title, text), title=title, text=text))
            raw_index += 1
    return docs


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


def _read_file(path: Path, title: str) -> Document:
    text = path.read_text(encoding="utf-8", errors="replace")
    return Document(id=stable_id(title, text), title=title, text=text, metadata={"path": str(path)})


def chunk_document(
    doc: Document, size: int, overlap: int, count_tokens: Callable[[str], int]
) -> list[TextUnit]:
    """Cut `doc` into units of at most ~`size` tokens, neighbours sharing ~`overlap` tokens of whole sentences."""
    pieces: list[tuple[str, int]] = []
    for sentence in _SENTENCE_END.split(doc.text):
        sentence = sentence.strip()
        if not sentence:
            continue
        n = count_tokens(sentence)
        if n <= size:
            pieces.append((sentence, n))
        else:
            pieces.extend(_split_words(sentence, size, count_tokens))
    units: list[TextUnit] = []
    start = 0
    while start < len(pieces):
        end, total = start, 0
        while end < len(pieces) and (end == start or total + pieces[end][1] <= size):
            total += pieces[end][1]
            end += 1
        text = " ".join(p for p, _ in pieces[start:end])
        units.append(
            TextUnit(
                id=stable_id(doc.id, str(len(units)), text),
                text=text,
                n_tokens=count_tokens(text),
                document_id=doc.id,
                chunk_index=len(units),
            )
        )
        if end >= len(pieces):
            break
        # Step back over whole sentences worth at most `overlap` tokens, but always move forward.
        back, carried = end, 0
        while back - 1 > start and carried + pieces[back - 1][1] <= overlap:
            back -= 1
            carried += pieces[back][1]
        start = back
    return units


def _split_words(sentence: str, size: int, count_tokens: Callable[[str], int]) -> list[tuple[str, int]]:
    out: list[tuple[str, int]] = []
    current: list[str] = []
    for word in sentence.split():
        candidate = " ".join([*current, word])
        if current and count_tokens(candidate) > size:
            text = " ".join(current)
            out.append((text, count_tokens(text)))
            current = [word]
        else:
            current.append(word)
    if current:
        text = " ".join(current)
        out.append((text, count_tokens(text)))
    return out
