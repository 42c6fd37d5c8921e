"""Resumable ingestion: a job lists its sources up front, then each batch of documents commits atomically.

Order of writes per batch (why a SIGKILL anywhere leaves the base consistent):
1. parse + chunk + embed in memory (nothing written);
2. one SQLite transaction: documents, chunks with their vectors (FTS rows through triggers) and job-item outcomes;
3. the FAISS copy is updated in memory and saved atomically every few seconds and at the end of the job.
A kill before 2 loses the batch (re-running `add` or `resume` redoes it); a kill after 2 leaves the FAISS file
behind SQLite, and `KnowledgeBase.open` re-syncs it from the stored vectors.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xpullm.documents import Chunk, ChunkingConfig, DocumentError, chunk_document, list_files, parse_bytes
from xpullm.rag.errors import KnowledgeBaseError
from xpullm.rag.storage.base import ChunkRecord, DocumentRecord, JobItem

if TYPE_CHECKING:
    from xpullm.rag.kb import KnowledgeBase

__all__ = ["IngestReport", "run_job", "safe_name"]

# Jobs with at least this many documents show a progress bar by default (RAGFlow users' complaint: "stuck?").
_PROGRESS_MIN_DOCS = 10


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


def safe_name(name: str) -> str:
    """A file name that cannot leave its folder: no separators, no `..`, no control characters."""
    base = re.split(r"[\\/]", str(name))[-1]
    base = re.sub(r"[\x00-\x1f<>:\"|?*]", "_", base).strip(" .")
    return base[:120] or "document"


def doc_id_for(source: str) -> str:
    """Stable id of a source key."""
    return hashlib.sha256(source.encode("utf-8")).hexdigest()[:16]


def expand_sources(paths: Sequence[str | os.PathLike[str]], recursive: bool = True) -> list[tuple[str, str]]:
    """Files to ingest as (source key, kind): folders are walked for files with a registered parser."""
    out: list[tuple[str, str]] = []
    for p in paths:
        if not isinstance(p, (str, os.PathLike)):
            raise TypeError(f"paths must be file or folder paths, got {type(p).__name__}: {p!r:.80}")
        path = Path(p).expanduser().absolute()
        if path.is_dir():
            out += [(str(f), "file") for f in list_files(path, recursive=recursive)]
        else:
            # Missing or unsupported files still become job items, so the report names them as failed.
            out.append((str(path), "file"))
    return out


@dataclass
class _Prepared:
    item: JobItem
    doc: DocumentRecord
    chunks: list[Chunk]
    replaces: bool


def _prepare(kb: KnowledgeBase, item: JobItem, cfg: ChunkingConfig) -> _Prepared | JobItem:
    """Read, dedup, parse and chunk one item; returns a finished JobItem when there is nothing to embed."""
    try:
        path = kb.text_path(item.source) if item.kind == "text" else Path(item.source)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return replace(item, status="failed", reason=f"file not found: {item.source}")
        except (PermissionError, IsADirectoryError, OSError) as exc:
            return replace(item, status="failed", reason=f"cannot read {item.source}: {exc.strerror or exc}")
        content_hash = hashlib.sha256(data).hexdigest()
        existing = kb.store.find_document(item.source)
        if (
            existing is not None
            and existing.content_hash == content_hash
            and existing.template == item.template
        ):
            return replace(item, status="skipped", reason=f"unchanged (document {existing.doc_id})")
        twin = kb.store.find_by_hash(content_hash)
        if existing is None and twin is not None:
            return replace(
                item, status="skipped", reason=f"same content as document {twin.doc_id} ({twin.source})"
            )
        name = item.title if item.kind == "text" else path.name
        parsed = parse_bytes(data, name if Path(name).suffix else name + ".txt")
        chunks = chunk_document(parsed, item.template, cfg)
        if not chunks:
            return replace(item, status="failed", reason="no text found")
        title = item.title or parsed.title
        doc = DocumentRecord(
            doc_id=doc_id_for(item.source),
            source=item.source,
            title=title,
            content_hash=content_hash,
            template=item.template,
            metadata=dict(item.metadata),
            n_chunks=len(chunks),
            added_at=time.time(),
        )
        return _Prepared(item, doc, chunks, replaces=existing is not None)
    except (KnowledgeBaseError, DocumentError) as exc:
        return replace(item, status="failed", reason=str(exc))
    except Exception as exc:  # a parser library choking on a malformed file must not stop the other files
        return replace(item, status="failed", reason=f"{type(exc).__name__}: {exc}")


def run_job(kb: KnowledgeBase, job_id: int, show_progress: bool | None = None) -> IngestReport:
    """Process the pending items of `job_id`; safe to call again after a crash."""
    from tqdm.auto import tqdm

    start = time.perf_counter()
    report = IngestReport(job_id)
    items = kb.store.job_items(job_id)
    for it in items:  # outcomes recorded by an earlier, interrupted run of this job
        _report_item(report, it, doc_id_for(it.source))
    pending = [it for it in items if it.status == "pending"]
    cfg = kb.chunking_config()
    show = len(pending) >= _PROGRESS_MIN_DOCS if show_progress is None else show_progress
    bar = tqdm(total=len(pending), desc="ingesting", unit="doc", disable=not show)
    batch: list[_Prepared] = []
    last_save = time.monotonic()
    try:
        for item in pending:
            prepared = _prepare(kb, item, cfg)
            if isinstance(prepared, JobItem):
                kb.store.record_items([prepared])
                _report_item(report, prepared, doc_id_for(item.source))
                bar.update(1)
                continue
            batch.append(prepared)
            if sum(len(p.chunks) for p in batch) >= kb.config.ingest_batch_chunks:
                report.chunks += _commit(kb, batch, report)
                bar.update(len(batch))
                bar.set_postfix(chunks=report.chunks)
                batch = []
                if time.monotonic() - last_save > kb.config.index_save_interval_s:
                    kb.vectors.save()
                    last_save = time.monotonic()
        if batch:
            report.chunks += _commit(kb, batch, report)
            bar.update(len(batch))
        kb.vectors.save()
        kb.store.set_job_status(job_id, "done")
    finally:
        bar.close()
    report.seconds = time.perf_counter() - start
    return report


def _report_item(report: IngestReport, item: JobItem, doc_id: str) -> None:
    if item.status == "added":
        report.added.append(doc_id)
    elif item.status == "replaced":
        report.replaced.append(doc_id)
    elif item.status == "skipped":
        report.skipped.append((item.source, item.reason))
    elif item.status == "failed":
        report.failed.append((item.source, item.reason))


def _commit(kb: KnowledgeBase, batch: list[_Prepared], report: IngestReport) -> int:
    """Embed the batch's chunks, write everything in one transaction, then update the vector index."""
    texts = [_embed_text(p.doc.title, c) for p in batch for c in p.chunks]
    vectors = kb._embed_texts(texts)
    rows: list[tuple[DocumentRecord, list[ChunkRecord], Any]] = []
    updates: list[JobItem] = []
    offset = 0
    for p in batch:
        n = len(p.chunks)
        records = [
            ChunkRecord(0, p.doc.doc_id, i, c.text, c.section, c.metadata) for i, c in enumerate(p.chunks)
        ]
        rows.append((p.doc, records, vectors[offset : offset + n]))
        offset += n
        updates.append(replace(p.item, status="replaced" if p.replaces else "added"))
    with kb._lock:  # readers must not re-sync FAISS between the commit and the index update
        new_ids, removed = kb.store.write_documents(rows, updates)
        # SQLite has committed: the index follows. A crash from here on is repaired by KnowledgeBase.open.
        kb.vectors.remove(removed)
        offset = 0
        for doc, _records, _ in rows:
            ids = new_ids[doc.doc_id]
            kb.vectors.add(ids, vectors[offset : offset + len(ids)])
            offset += len(ids)
        kb._after_write()
    for u in updates:
        _report_item(report, u, doc_id_for(u.source))
    return offset


def _embed_text(title: str, chunk: Chunk) -> str:
    """What the embedder sees: the chunk led by its document title/section, so "it" and "this" keep their subject."""
    lead = chunk.section or title
    return f"{lead}\n{chunk.text}" if lead and not chunk.text.startswith(lead) else chunk.text
