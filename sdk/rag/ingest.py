"""Resumable ingestion: a job lists its sources up front, then each batch of chunks commits atomically.

Order of writes per batch (why a SIGKILL anywhere leaves the base consistent):
1. parse + chunk + embed in memory (nothing written);
2. one SQLite transaction: documents, chunks with their vectors (FTS rows through triggers) and job-item outcomes;
3. the FAISS copy is updated in memory and saved atomically every few seconds and at the end of the job.
A kill before 2 loses the batch (re-running `add` or `resume` redoes it); a kill after 2 leaves the FAISS file
behind SQLite, and `KnowledgeBase.open` re-syncs it from the stored vectors.

Parsing, chunking and embedding run on an executor (this process, or a Ray cluster's workers: a few files are
parsed ahead while earlier batches commit); this process alone decides what is new and writes the store and index.

Small documents share a batch. A file with more chunks than one batch is committed batch by batch (its document
row records the full chunk count first), so its progress shows and a kill costs one batch: the next `add` or
`resume` sees a document with fewer chunks than it should have and continues after the last committed chunk.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xpullm.documents import Chunk, ChunkingConfig, DocumentError, chunk_document, parse_bytes
from xpullm.protocols import TokenCounter
from xpullm.rag.errors import KnowledgeBaseError
from xpullm.rag.planning import (
    AUTO_TEMPLATES,
    choose_template,
    doc_id_for,
    expand_sources,
    plan_items,
    safe_name,
)
from xpullm.rag.storage.base import ChunkRecord, DocumentRecord, DocumentStore, JobItem, VectorIndex
from xpullm.rag.sync import IndexSync
from xpullm.scaleout import Executor, LocalExecutor, in_order

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "AUTO_TEMPLATES",
    "IngestProgress",
    "IngestReport",
    "Ingestor",
    "ProgressFn",
    "choose_template",
    "doc_id_for",
    "expand_sources",
    "parse_task",
    "plan_items",
    "safe_name",
]

# Jobs with at least this many documents show a progress bar by default (RAGFlow users' complaint: "stuck?").
_PROGRESS_MIN_DOCS = 10
# A file of at least this many batches shows its own chunk bar by default: it is minutes of embedding on a CPU.
_PROGRESS_MIN_BATCHES = 4


@dataclass
class IngestReport:
    """What one `add` (or `resume`) did."""

    job_id: int
    added: list[str] = field(default_factory=list)  # doc ids newly added
    replaced: list[str] = field(default_factory=list)  # doc ids whose changed content replaced the old chunks
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (source, reason)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (source, reason)
    chunks: int = 0
    seconds: float = 0.0

    @property
    def chunks_per_s(self) -> float:
        """Ingestion throughput."""
        return self.chunks / self.seconds if self.seconds > 0 else 0.0

    def __str__(self) -> str:
        lines = [
            f"job {self.job_id}: {len(self.added)} added, {len(self.replaced)} replaced, {len(self.skipped)} skipped, "
            f"{len(self.failed)} failed; {self.chunks} chunks in {self.seconds:.1f}s"
        ]
        lines += [f"  skipped {s}: {r}" for s, r in self.skipped]
        lines += [f"  FAILED  {s}: {r}" for s, r in self.failed]
        return "\n".join(lines)


@dataclass(frozen=True)
class IngestProgress:
    """Where a job stands after a committed batch (everything counted here is in the store)."""

    source: str  # the file (or `text:` name) the batch ended in
    chunks_done: int  # of that file, committed
    chunks_total: int  # of that file
    docs_done: int  # items of the job finished (added, replaced, skipped or failed)
    docs_total: int


ProgressFn = Callable[[IngestProgress], None]


@dataclass
class _Prepared:
    item: JobItem
    doc: DocumentRecord
    chunks: list[Chunk]
    replaces: bool
    start: int = 0  # chunks[:start] are already in the store (a large file that an earlier run began)


@dataclass
class _Read:
    """A file read and checked against the store, waiting for its parse (which may run on another machine)."""

    item: JobItem
    data: bytes
    content_hash: str
    existing: DocumentRecord | None
    same: bool  # same content and template as the stored document
    stored: int  # its chunks already in the store (when same)
    name: str  # what the parser is told the file is called


def parse_task(tokens: TokenCounter, item: tuple[bytes, str, str, int, int]) -> tuple[list[Chunk], str] | str:
    """One file's bytes parsed and chunked (budget in `tokens`' tokenizer): (chunks, title), or why it failed.

    Runs where the executor runs it; a parser library choking on one malformed file must not stop the others.
    """
    data, name, template, size, overlap = item
    try:
        parsed = parse_bytes(data, name if Path(name).suffix else name + ".txt")
        return chunk_document(
            parsed, template, ChunkingConfig(size, overlap, tokens.count_tokens)
        ), parsed.title
    except (KnowledgeBaseError, DocumentError) as exc:
        return str(exc)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"


@dataclass
class Ingestor:
    """Runs a knowledge base's ingestion jobs; it sees only the collaborators it is given."""

    store: DocumentStore
    vectors: VectorIndex
    sync: IndexSync  # its lock orders our "commit, then update the index" against readers' refreshes
    embed: Callable[[list[str]], np.ndarray]  # chunk texts -> float32 vectors
    chunking: ChunkingConfig
    text_path: Callable[[str], Path]  # where the base keeps an in-memory document (`text:` source)
    batch_chunks: int  # chunks per committed batch
    save_interval_s: float  # how often the vector index file is rewritten during a long job
    on_progress: ProgressFn | None = None  # called after every committed batch
    tokens: TokenCounter | None = None  # the embedder's tokenizer: what workers chunk with (their own copy)
    executor: Executor = field(default_factory=LocalExecutor)  # where files are parsed and chunked

    def run(self, job_id: int, show_progress: bool | None = None) -> IngestReport:
        """Process the pending items of `job_id`; safe to call again after a crash."""
        from tqdm.auto import tqdm

        start = time.perf_counter()
        report = IngestReport(job_id)
        items = self.store.job_items(job_id)
        for it in items:  # outcomes recorded by an earlier, interrupted run of this job
            _report_item(report, it, doc_id_for(it.source))
        pending = [it for it in items if it.status == "pending"]
        self._show = show_progress
        self._docs = [len(items) - len(pending), len(items)]
        self._last_save = time.monotonic()
        show = len(pending) >= _PROGRESS_MIN_DOCS if show_progress is None else show_progress
        self._bar = tqdm(total=len(pending), desc="ingesting", unit="doc", disable=not show)
        batch: list[_Prepared] = []
        try:
            for item, prepared in self._prepare_all(pending):
                if isinstance(prepared, JobItem):
                    self.store.record_items([prepared])
                    _report_item(report, prepared, doc_id_for(item.source))
                    self._finished(1)
                    continue
                if prepared.start or len(prepared.chunks) > self.batch_chunks:
                    if batch:
                        report.chunks += self._commit(batch, report)
                        batch = []
                    report.chunks += self._commit_large(prepared, report)
                    continue
                batch.append(prepared)
                if sum(len(p.chunks) for p in batch) >= self.batch_chunks:
                    report.chunks += self._commit(batch, report)
                    batch = []
            if batch:
                report.chunks += self._commit(batch, report)
            self.vectors.save()
            self.store.set_job_status(job_id, "done")
        finally:
            self._bar.close()
        report.seconds = time.perf_counter() - start
        return report

    def _finished(self, docs: int, last: _Prepared | None = None) -> None:
        """Count finished items on the bar and tell `on_progress`."""
        self._docs[0] += docs
        self._bar.update(docs)
        if last is not None and self.on_progress is not None:
            n = len(last.chunks)
            self.on_progress(IngestProgress(last.item.source, n, n, *self._docs))

    def _maybe_save(self) -> None:
        if time.monotonic() - self._last_save > self.save_interval_s:
            self.vectors.save()
            self._last_save = time.monotonic()

    def _prepare_all(self, items: list[JobItem]) -> Iterator[tuple[JobItem, _Prepared | JobItem]]:
        """`(item, _prepared)` in order; files are parsed a window ahead on the executor while earlier ones commit.

        Whether a file is new is decided here, at its turn (an earlier file of the same job may hold its content).
        """
        window = max(4, 2 * self.executor.workers)
        for lo in range(0, len(items), window):
            reads = [self._read(it) for it in items[lo : lo + window]]
            todo = [r for r in reads if isinstance(r, _Read)]
            size, overlap = self.chunking.chunk_tokens, self.chunking.overlap_tokens
            work = [(r.data, r.name, r.item.template, size, overlap) for r in todo]
            tokens = self.tokens or _Counter(self.chunking.count_tokens)
            parsed = iter(in_order(self.executor.map(parse_task, work, model=tokens)))
            for it, read in zip(items[lo : lo + window], reads, strict=True):
                yield it, read if isinstance(read, JobItem) else self._decide(read, next(parsed))

    def _read(self, item: JobItem) -> _Read | JobItem:
        """Read one item and check it against the store; a finished JobItem when there is nothing to parse."""
        try:
            path = self.text_path(item.source) if item.kind == "text" else Path(item.source)
            data = path.read_bytes()
        except FileNotFoundError:
            return replace(item, status="failed", reason=f"file not found: {item.source}")
        except (PermissionError, IsADirectoryError, OSError) as exc:
            return replace(item, status="failed", reason=f"cannot read {item.source}: {exc.strerror or exc}")
        except KnowledgeBaseError as exc:
            return replace(item, status="failed", reason=str(exc))
        content_hash = hashlib.sha256(data).hexdigest()
        existing = self.store.find_document(item.source)
        same = (
            existing is not None
            and existing.content_hash == content_hash
            and existing.template == item.template
        )
        stored = self.store.count_doc_chunks(existing.doc_id) if same and existing else 0
        if same and existing and stored >= existing.n_chunks:
            return replace(item, status="skipped", reason=f"unchanged (document {existing.doc_id})")
        name = item.title if item.kind == "text" else path.name
        return _Read(item, data, content_hash, existing, same, stored, name)

    def _decide(self, read: _Read, parsed: tuple[list[Chunk], str] | str) -> _Prepared | JobItem:
        """What to do with a parsed file, given the store as it is now."""
        item, existing = read.item, read.existing
        twin = self.store.find_by_hash(read.content_hash)
        if existing is None and twin is not None:
            return replace(
                item, status="skipped", reason=f"same content as document {twin.doc_id} ({twin.source})"
            )
        if isinstance(parsed, str):
            return replace(item, status="failed", reason=parsed)
        chunks, parsed_title = parsed
        if not chunks:
            return replace(item, status="failed", reason="no text found")
        if read.same and existing and existing.n_chunks == len(chunks):  # a large file an earlier run began
            return _Prepared(item, existing, chunks, replaces=False, start=read.stored)
        doc = DocumentRecord(
            doc_id=doc_id_for(item.source),
            source=item.source,
            title=item.title or parsed_title,
            content_hash=read.content_hash,
            template=item.template,
            metadata=dict(item.metadata),
            n_chunks=len(chunks),
            added_at=time.time(),
        )
        return _Prepared(item, doc, chunks, replaces=existing is not None)

    def _commit(self, batch: list[_Prepared], report: IngestReport) -> int:
        """Embed the batch's chunks, write everything in one transaction, then update the vector index."""
        texts = [_embed_text(p.doc.title, c) for p in batch for c in p.chunks]
        vectors = self.embed(texts)
        rows: list[tuple[DocumentRecord, list[ChunkRecord], Any]] = []
        updates: list[JobItem] = []
        offset = 0
        for p in batch:
            n = len(p.chunks)
            rows.append((p.doc, _records(p, 0, n), vectors[offset : offset + n]))
            offset += n
            updates.append(replace(p.item, status="replaced" if p.replaces else "added"))
        with self.sync.lock:  # readers must not re-sync the index between the commit and the index update
            new_ids, removed = self.store.write_documents(rows, updates)
            # The store has committed: the index follows. A crash from here on is repaired by KnowledgeBase.open.
            self.vectors.remove(removed)
            offset = 0
            for doc, _chunks, _ in rows:
                ids = new_ids[doc.doc_id]
                self.vectors.add(ids, vectors[offset : offset + len(ids)])
                offset += len(ids)
            self.sync.committed()
        for u in updates:
            _report_item(report, u, doc_id_for(u.source))
        self._finished(len(batch), batch[-1])
        self._maybe_save()
        return offset

    def _commit_large(self, p: _Prepared, report: IngestReport) -> int:
        """Commit one file's chunks batch by batch: the first batch replaces the document row, the rest append."""
        from tqdm.auto import tqdm

        total, done = len(p.chunks), 0
        batches = -(-(total - p.start) // self.batch_chunks)
        show = batches >= _PROGRESS_MIN_BATCHES if self._show is None else self._show
        name = Path(p.doc.source.removeprefix("text:")).name
        bar = tqdm(total=total, initial=p.start, desc=name[:40], unit="chunk", leave=False, disable=not show)
        with bar:
            for lo in range(p.start, total, self.batch_chunks):
                hi = min(lo + self.batch_chunks, total)
                vectors = self.embed([_embed_text(p.doc.title, c) for c in p.chunks[lo:hi]])
                last = [replace(p.item, status="replaced" if p.replaces else "added")] if hi == total else []
                with self.sync.lock:
                    if lo == 0:
                        rows = [(p.doc, _records(p, 0, hi), vectors)]
                        new_ids, removed = self.store.write_documents(rows, last)
                        ids = new_ids[p.doc.doc_id]
                        self.vectors.remove(removed)
                    else:
                        ids = self.store.append_chunks(p.doc.doc_id, _records(p, lo, hi), vectors, last)
                    self.vectors.add(ids, vectors)
                    self.sync.committed()
                done += hi - lo
                bar.update(hi - lo)
                if self.on_progress is not None and hi < total:
                    self.on_progress(IngestProgress(p.item.source, hi, total, *self._docs))
                self._maybe_save()
        _report_item(report, last[0], p.doc.doc_id)
        self._finished(1, p)
        return done


@dataclass(frozen=True)
class _Counter:
    """A `TokenCounter` over a plain function (an ingestor given no tokenizer object; local runs only)."""

    count_tokens: Callable[[str], int]


def _records(p: _Prepared, lo: int, hi: int) -> list[ChunkRecord]:
    return [
        ChunkRecord(0, p.doc.doc_id, i, c.text, c.section, c.metadata)
        for i, c in enumerate(p.chunks[lo:hi], start=lo)
    ]


def _report_item(report: IngestReport, item: JobItem, doc_id: str) -> None:
    if item.status == "added":
        report.added.append(doc_id)
    elif item.status == "replaced":
        report.replaced.append(doc_id)
    elif item.status == "skipped":
        report.skipped.append((item.source, item.reason))
    elif item.status == "failed":
        report.failed.append((item.source, item.reason))


def _embed_text(title: str, chunk: Chunk) -> str:
    """What the embedder sees: the chunk led by its document title/section, so "it" and "this" keep their subject."""
    lead = chunk.section or title
    return f"{lead}\n{chunk.text}" if lead and not chunk.text.startswith(lead) else chunk.text
