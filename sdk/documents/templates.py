"""Chunking templates: a `ParsedDocument` -> chunks sized for the embedder.

Each template registers itself with `@register_template("name")`; the knowledge base chooses one per document at
`kb.add` time, GraphRAG cuts its text units with `sentences`:

- `naive`  : token budget with overlap; never crosses a heading, splits at sentence ends.
- `qa`     : one chunk per question/answer pair (Q:/A: lines, question headings, or question/answer CSV columns).
- `book`   : heading-aware; each chunk keeps its section path ("Part I > Chapter 2"); small sections under the
             same parent are merged up to the budget.
- `manual` : like `book` but never merges sections, so every chunk belongs to exactly one (sub)section.
- `table`  : one chunk per table row written as "header: value" pairs; prose around tables goes through `naive`.
- `one`    : the whole document as one chunk.
- `sentences`: whole sentences packed across the whole text, headings ignored (GraphRAG's text units).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from xpullm.documents.errors import UnknownTemplate
from xpullm.documents.parsers import Block, ParsedDocument

__all__ = ["Chunk", "ChunkingConfig", "chunk_document", "register_template", "template_names"]


@dataclass(frozen=True)
class ChunkingConfig:
    """Knobs shared by templates."""

    chunk_tokens: int = 200  # below all-MiniLM's 256-token window, so a chunk is embedded whole
    overlap_tokens: int = (
        32  # repeated context between neighbouring naive chunks, so a fact split at a border survives
    )
    count_tokens: Callable[[str], int] = field(default=lambda s: len(s.split()), compare=False)


@dataclass(frozen=True)
class Chunk:
    """A piece of a document ready to embed."""

    text: str
    section: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)


Template = Callable[[ParsedDocument, ChunkingConfig], list[Chunk]]
_TEMPLATES: dict[str, Template] = {}


def register_template(*names: str) -> Callable[[Template], Template]:
    """Register `fn(doc, config) -> list[Chunk]` under `names`."""

    def deco(fn: Template) -> Template:
        for n in names:
            _TEMPLATES[n] = fn
        return fn

    return deco


def template_names() -> list[str]:
    """Registered template names."""
    return sorted(_TEMPLATES)


def chunk_document(
    doc: ParsedDocument, template: str = "naive", config: ChunkingConfig | None = None
) -> list[Chunk]:
    """Split `doc` with the named template; empty chunks are dropped."""
    fn = _TEMPLATES.get(template)
    if fn is None:
        raise UnknownTemplate(
            f"unknown chunking template {template!r}; choose one of: {', '.join(template_names())}"
        )
    return [c for c in fn(doc, config or ChunkingConfig()) if c.text.strip()]


_SENTENCE_END = re.compile(r"(?<=[.!?。！？])\s+(?=[\"'(\[A-Z0-9À-ÿ])|\n+")


def split_sentences(text: str) -> list[str]:
    """Sentence-ish units: after . ! ? before a capital/digit/quote, or at line breaks."""
    return [s.strip() for s in _SENTENCE_END.split(text) if s and s.strip()]


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """`(start, end)` of each piece `split_sentences` would return, in order, blank pieces included; the last one
    is not closed by a boundary yet (it may still grow while text streams in)."""
    spans, start = [], 0
    for m in _SENTENCE_END.finditer(text):
        spans.append((start, m.start()))
        start = m.end()
    spans.append((start, len(text)))
    return spans


def _split_long(sentence: str, cfg: ChunkingConfig) -> list[str]:
    """A sentence over budget is cut into word windows."""
    if cfg.count_tokens(sentence) <= cfg.chunk_tokens:
        return [sentence]
    words, parts, cur = sentence.split(), [], []
    for w in words:
        cur.append(w)
        if cfg.count_tokens(" ".join(cur)) > cfg.chunk_tokens and len(cur) > 1:
            cur.pop()
            parts.append(" ".join(cur))
            cur = [w]
    if cur:
        parts.append(" ".join(cur))
    return parts


def _pack(sentences: list[str], cfg: ChunkingConfig, overlap: bool = True) -> list[str]:
    """Greedily fill chunks up to the budget; start each new chunk with the previous one's tail sentences."""
    units = [u for s in sentences for u in _split_long(s, cfg)]
    sizes = [cfg.count_tokens(u) for u in units]
    chunks: list[str] = []
    cur: list[int] = []
    for i, size in enumerate(sizes):
        if cur and sum(sizes[j] for j in cur) + size > cfg.chunk_tokens:
            chunks.append(" ".join(units[j] for j in cur))
            tail: list[int] = []
            if overlap and cfg.overlap_tokens > 0:
                for j in reversed(cur):
                    if sum(sizes[t] for t in tail) + sizes[j] > cfg.overlap_tokens:
                        break
                    tail.insert(0, j)
            # Never let the overlap alone fill the next chunk.
            while tail and sum(sizes[t] for t in tail) + size > cfg.chunk_tokens:
                tail.pop(0)
            cur = tail
        cur.append(i)
    if cur:
        chunks.append(" ".join(units[j] for j in cur))
    return chunks


def _table_lines(block: Block) -> list[str]:
    """Rows of a table as "header: value; ..." lines (the header row itself is not a line)."""
    if not block.rows:
        return []
    header, *rows = block.rows
    if not rows:
        return ["; ".join(header)]
    out = []
    for row in rows:
        pairs = [
            f"{h or f'column {i + 1}'}: {v}" for i, (h, v) in enumerate(zip(header, row, strict=False)) if v
        ]
        if pairs:
            out.append("; ".join(pairs))
    return out


def _sections(doc: ParsedDocument) -> list[tuple[list[str], list[Block]]]:
    """Group blocks under their heading path: [(["Chapter 1", "Setup"], [blocks...]), ...]."""
    path: list[tuple[int, str]] = []
    out: list[tuple[list[str], list[Block]]] = [([], [])]
    for b in doc.blocks:
        if b.kind == "heading":
            while path and path[-1][0] >= b.level:
                path.pop()
            path.append((b.level, b.text))
            out.append(([t for _, t in path], []))
        else:
            out[-1][1].append(b)
    # A heading with nothing under it before its first sub-heading lives on in its children's paths.
    return [(p, bs) for p, bs in out if bs]


def _block_sentences(blocks: list[Block]) -> list[str]:
    sentences: list[str] = []
    for b in blocks:
        if b.kind == "table":
            sentences += _table_lines(b)
        else:
            sentences += split_sentences(b.text)
    return sentences


def _first_page(blocks: list[Block]) -> dict[str, Any]:
    pages = [b.page for b in blocks if b.page is not None]
    return {"page": pages[0]} if pages else {}


@register_template("naive")
def naive(doc: ParsedDocument, cfg: ChunkingConfig) -> list[Chunk]:
    """Token budget + overlap inside each heading section; the section's heading leads its first chunk."""
    chunks: list[Chunk] = []
    for path, blocks in _sections(doc):
        heading = path[-1] if path else ""
        # Reserve the heading's tokens so "heading + first piece" still fits the budget.
        budget = (
            replace(cfg, chunk_tokens=max(8, cfg.chunk_tokens - cfg.count_tokens(heading)))
            if heading
            else cfg
        )
        for i, text in enumerate(_pack(_block_sentences(blocks), budget)):
            text = f"{heading}\n{text}" if heading and i == 0 else text
            chunks.append(Chunk(text, " > ".join(path), _first_page(blocks)))
    return chunks


def _heading_aware(doc: ParsedDocument, cfg: ChunkingConfig, merge: bool) -> list[Chunk]:
    chunks: list[Chunk] = []
    pending: list[tuple[list[str], str, list[Block]]] = []  # small sections waiting to be merged

    def emit_pending() -> None:
        if not pending:
            return
        paths = [p for p, _, _ in pending]
        common = paths[0]
        for p in paths[1:]:
            common = [a for a, b in zip(common, p, strict=False) if a == b][: len(common)]
        text = "\n".join(t for _, t, _ in pending)
        chunks.append(
            Chunk(text, " > ".join(paths[0] if len(paths) == 1 else common), _first_page(pending[0][2]))
        )
        pending.clear()

    for path, blocks in _sections(doc):
        body = " ".join(_block_sentences(blocks))
        label = " > ".join(path)
        size = cfg.count_tokens(label + " " + body)
        if size <= cfg.chunk_tokens:
            text = f"{label}\n{body}".strip()
            if merge:
                same_parent = pending and pending[0][0][:1] == path[:1]
                total = sum(cfg.count_tokens(t) for _, t, _ in pending) + size
                if pending and (not same_parent or total > cfg.chunk_tokens):
                    emit_pending()
                pending.append((path, text, blocks))
            else:
                chunks.append(Chunk(text, label, _first_page(blocks)))
            continue
        emit_pending()
        # A long section: budgeted pieces, each led by the section path so it reads on its own.
        budget = replace(cfg, chunk_tokens=max(8, cfg.chunk_tokens - cfg.count_tokens(label)))
        for piece in _pack(_block_sentences(blocks), budget):
            chunks.append(Chunk(f"{label}\n{piece}".strip(), label, _first_page(blocks)))
    emit_pending()
    return chunks


@register_template("book")
def book(doc: ParsedDocument, cfg: ChunkingConfig) -> list[Chunk]:
    """Heading-aware chunks with the section path; small sibling sections are merged up to the budget."""
    return _heading_aware(doc, cfg, merge=True)


@register_template("manual")
def manual(doc: ParsedDocument, cfg: ChunkingConfig) -> list[Chunk]:
    """Heading-aware chunks with the section path; one chunk never spans two sections."""
    return _heading_aware(doc, cfg, merge=False)


_QA_LINE = re.compile(r"^\s*(Q|Question|A|Answer)\s*[:.)]\s*(.*)$", re.IGNORECASE)


@register_template("qa")
def qa(doc: ParsedDocument, cfg: ChunkingConfig) -> list[Chunk]:
    """One chunk per question/answer pair; documents without pairs fall back to `naive`."""
    chunks: list[Chunk] = []
    # 1. tables with question/answer columns
    for b in doc.blocks:
        if b.kind == "table" and len(b.rows) > 1:
            header = [h.lower() for h in b.rows[0]]
            qi = next((i for i, h in enumerate(header) if h.startswith("q")), None)
            ai = next((i for i, h in enumerate(header) if h.startswith("a")), None)
            if qi is not None and ai is not None:
                for row in b.rows[1:]:
                    if len(row) > max(qi, ai):
                        chunks.append(Chunk(f"Q: {row[qi]}\nA: {row[ai]}", "", {"question": row[qi]}))
    # 2. "Q: ... A: ..." lines anywhere in the text
    question, answer = None, []  # type: ignore[var-annotated]
    for b in doc.blocks:
        if b.kind == "table":
            continue
        for line in b.text.splitlines() if b.kind == "text" else []:
            m = _QA_LINE.match(line)
            if m and m.group(1).lower().startswith("q"):
                if question and answer:
                    chunks.append(Chunk(f"Q: {question}\nA: {' '.join(answer)}", "", {"question": question}))
                question, answer = m.group(2).strip(), []
            elif m:
                answer.append(m.group(2).strip())
            elif question is not None and line.strip():
                answer.append(line.strip())
    if question and answer:
        chunks.append(Chunk(f"Q: {question}\nA: {' '.join(answer)}", "", {"question": question}))
    # 3. headings phrased as questions, answered by the text under them
    if not chunks:
        for path, blocks in _sections(doc):
            if path and path[-1].rstrip().endswith("?") and blocks:
                body = " ".join(_block_sentences(blocks))
                chunks.append(
                    Chunk(f"Q: {path[-1]}\nA: {body}", " > ".join(path[:-1]), {"question": path[-1]})
                )
    return chunks or naive(doc, cfg)


@register_template("table")
def table(doc: ParsedDocument, cfg: ChunkingConfig) -> list[Chunk]:
    """Every table row is a chunk of "header: value" pairs; other blocks are chunked like `naive`."""
    chunks: list[Chunk] = []
    prose: list[Block] = []
    for b in doc.blocks:
        if b.kind == "table":
            for i, line in enumerate(_table_lines(b)):
                chunks.append(Chunk(line, doc.title, {"row": i + 1}))
        else:
            prose.append(b)
    if prose:
        chunks += naive(ParsedDocument(doc.title, tuple(prose)), cfg)
    return chunks


@register_template("one")
def one(doc: ParsedDocument, cfg: ChunkingConfig) -> list[Chunk]:
    """The whole document as one chunk (the embedder sees its first window; keyword search sees all of it)."""
    return [Chunk(doc.text, doc.title)]


# Sentence ends for `sentences`: any ".!?" followed by space, or a blank line (GraphRAG's text units).
_UNIT_BREAK = re.compile(r"(?<=[.!?])\s+|\n\s*\n")


@register_template("sentences")
def sentences(doc: ParsedDocument, cfg: ChunkingConfig) -> list[Chunk]:
    """Whole sentences packed up to the budget across the whole text (headings ignored), neighbours sharing up to
    `overlap_tokens` of whole sentences; a sentence longer than the budget is cut between words. GraphRAG's text
    units: an extraction prompt never sees half a word."""
    size, overlap, count = cfg.chunk_tokens, cfg.overlap_tokens, cfg.count_tokens
    pieces: list[tuple[str, int]] = []
    for sentence in _UNIT_BREAK.split(doc.text):
        sentence = sentence.strip()
        if not sentence:
            continue
        n = count(sentence)
        pieces.extend([(sentence, n)] if n <= size else _split_words(sentence, size, count))
    chunks: list[Chunk] = []
    start = 0
    while start < len(pieces):
        end, total = start, 0
        while end < len(pieces) and (end == start or total + pieces[end][1] <= size):
            total += pieces[end][1]
            end += 1
        chunks.append(Chunk(" ".join(p for p, _ in pieces[start:end])))
        if end >= len(pieces):
            break
        # Step back over whole sentences worth at most `overlap` tokens, but always move forward.
        back, carried = end, 0
        while back - 1 > start and carried + pieces[back - 1][1] <= overlap:
            back -= 1
            carried += pieces[back][1]
        start = back
    return chunks


def _split_words(sentence: str, size: int, count: Callable[[str], int]) -> list[tuple[str, int]]:
    out: list[tuple[str, int]] = []
    current: list[str] = []
    for word in sentence.split():
        candidate = " ".join([*current, word])
        if current and count(candidate) > size:
            text = " ".join(current)
            out.append((text, count(text)))
            current = [word]
        else:
            current.append(word)
    if current:
        text = " ".join(current)
        out.append((text, count(text)))
    return out
