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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xpullm.documents import (
    Chunk,
    ChunkingConfig,
    DocumentError,
    UnknownTemplate,
    chunk_document,
    list_files,
    parse_bytes,
    template_names,
)
from xpullm.rag.errors import KnowledgeBaseError
from xpullm.rag.storage.base import ChunkRecord, DocumentRecord, DocumentStore, JobItem, VectorIndex
from xpullm.rag.sync import IndexSync

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "AUTO_TEMPLATES",
    "IngestReport",
    "Ingestor",
    "choose_template",
    "doc_id_for",
    "expand_sources",
    "plan_items",
    "safe_name",
]

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

    def run(self, job_id: int, show_progress: bool | None = None) -> IngestReport:
        """Process the pending items of `job_id`; safe to call again after a crash."""
        from tqdm.auto import tqdm

        start = time.perf_counter()
        report = IngestReport(job_id)
        items = self.store.job_items(job_id)
        for it in items:  # outcomes recorded by an earlier, interrupted run of this job
            _report_item(report, it, doc_id_for(it.source))
        pending = [it for it in items if it.status == "pending"]
        show = len(pending) >= _PROGRESS_MIN_DOCS if show_progress is None else show_progress
        bar = tqdm(total=len(pending), desc="ingesting", unit="doc", disable=not show)
        batch: list[_Prepared] = []
        last_save = time.monotonic()
        try:
            for item in pending:
                prepared = self._prepare(item)
                if isinstance(prepared, JobItem):
                    self.store.record_items([prepared])
                    _report_item(report, prepared, doc_id_for(item.source))
                    bar.update(1)
                    continue
                batch.append(prepared)
                if sum(len(p.chunks) for p in batch) >= self.batch_chunks:
                    report.chunks += self._commit(batch, report)
                    bar.update(len(batch))
                    bar.set_postfix(chunks=report.chunks)
                    batch = []
                    if time.monotonic() - last_save > self.save_interval_s:
                        self.vectors.save()
                        last_save = time.monotonic()
            if batch:
                report.chunks += self._commit(batch, report)
                bar.update(len(batch))
            self.vectors.save()
            self.store.set_job_status(job_id, "done")
        finally:
            bar.close()
        report.seconds = time.perf_counter() - start
        return report

    def _prepare(self, item: JobItem) -> _Prepared | JobItem:
        """Read, dedup, parse and chunk one item; returns a finished JobItem when there is nothing to embed."""
        try:
            path = self.text_path(item.source) if item.kind == "text" else Path(item.source)
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                return replace(item, status="failed", reason=f"file not found: {item.source}")
            except (PermissionError, IsADirectoryError, OSError) as exc:
                return replace(
                    item, status="failed", reason=f"cannot read {item.source}: {exc.strerror or exc}"
                )
            content_hash = hashlib.sha256(data).hexdigest()
            existing = self.store.find_document(item.source)
            if (
                existing is not None
                and existing.content_hash == content_hash
                and existing.template == item.template
            ):
                return replace(item, status="skipped", reason=f"unchanged (document {existing.doc_id})")
            twin = self.store.find_by_hash(content_hash)
            if existing is None and twin is not None:
                return replace(
                    item, status="skipped", reason=f"same content as document {twin.doc_id} ({twin.source})"
                )
            name = item.title if item.kind == "text" else path.name
            parsed = parse_bytes(data, name if Path(name).suffix else name + ".txt")
            chunks = chunk_document(parsed, item.template, self.chunking)
            if not chunks:
                return replace(item, status="failed", reason="no text found")
            doc = DocumentRecord(
                doc_id=doc_id_for(item.source),
                source=item.source,
                title=item.title or parsed.title,
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

    def _commit(self, batch: list[_Prepared], report: IngestReport) -> int:
        """Embed the batch's chunks, write everything in one transaction, then update the vector index."""
        texts = [_embed_text(p.doc.title, c) for p in batch for c in p.chunks]
        vectors = self.embed(texts)
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
        with self.sync.lock:  # readers must not re-sync the index between the commit and the index update
            new_ids, removed = self.store.write_documents(rows, updates)
            # The store has committed: the index follows. A crash from here on is repaired by KnowledgeBase.open.
            self.vectors.remove(removed)
            offset = 0
            for doc, _records, _ in rows:
                ids = new_ids[doc.doc_id]
                self.vectors.add(ids, vectors[offset : offset + len(ids)])
                offset += len(ids)
            self.sync.committed()
        for u in updates:
            _report_item(report, u, doc_id_for(u.source))
        return offset


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


# Extension -> template when `template="auto"`: spreadsheets read best row by row.
AUTO_TEMPLATES = {".csv": "table", ".tsv": "table"}


def choose_template(name: str, template: str | Mapping[str, str], default: str) -> str:
    """The template for document `name`: a name, `"auto"` (by extension, else `default`), or a mapping from
    extension (`".csv"`) or name to template."""
    ext = Path(name).suffix.lower()
    chosen = (
        (template.get(ext) or template.get(name) or "auto") if isinstance(template, Mapping) else template
    )
    if chosen == "auto":
        chosen = AUTO_TEMPLATES.get(ext, default)
    if chosen not in template_names():
        raise UnknownTemplate(
            f"unknown chunking template {chosen!r}; choose one of: auto, {', '.join(template_names())}"
        )
    return chosen


def plan_items(
    paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None,
    texts: Sequence[str] | None,
    names: Sequence[str] | None,
    template: str | Mapping[str, str],
    default_template: str,
    metadata: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None,
    recursive: bool,
    text_path: Callable[[str], Path],
) -> list[JobItem]:
    """The pending items of a new job: files first, then texts (each text written to `text_path(source)`)."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    items = [
        JobItem(0, 0, source, kind, "pending", template=choose_template(source, template, default_template))
        for source, kind in expand_sources(paths or [], recursive=recursive)
    ]
    if texts is not None:
        if isinstance(texts, str):
            raise TypeError("texts must be a list of strings; wrap a single text as [text]")
        if names is not None and len(names) != len(texts):
            raise ValueError(f"names has {len(names)} entries but texts has {len(texts)}")
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"texts[{i}] must be a str, got {type(text).__name__}")
            name = names[i] if names is not None else hashlib.sha256(text.encode()).hexdigest()[:16] + ".txt"
            source = f"text:{name}"
            path = text_path(source)
            path.parent.mkdir(exist_ok=True)
            path.write_text(text, encoding="utf-8")
            chosen = choose_template(name, template, default_template)
            items.append(JobItem(0, 0, source, "text", "pending", template=chosen, title=name))
    if metadata is None:
        return items
    if isinstance(metadata, Mapping):
        return [replace(it, metadata=dict(metadata)) for it in items]
    metadata = list(metadata)
    if len(metadata) != len(items):
        raise ValueError(
            f"metadata has {len(metadata)} entries for {len(items)} documents; pass one dict or one per document"
        )
    return [replace(it, metadata=dict(m)) for it, m in zip(items, metadata, strict=False)]
