"""`KnowledgeBase`: one folder = SQLite (documents, chunks+vectors, jobs, FTS5) + a FAISS index. No servers."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from xpullm.documents import ChunkingConfig, template_names
from xpullm.protocols import ChatEngine, EmbeddingModel, TokenCounter
from xpullm.rag.answer import (
    NO_ANSWER,
    Answer,
    AnswerStream,
    attribute_citations,
    cut_repetition,
    extract_citations,
    fit_sources,
    llm_messages,
    until_repetition,
)
from xpullm.rag.errors import (
    EmbedderMismatch,
    KnowledgeBaseError,
    KnowledgeBaseExists,
    KnowledgeBaseLocked,
    KnowledgeBaseNotFound,
    UnknownTemplate,
)
from xpullm.rag.ingest import IngestReport, doc_id_for, expand_sources, run_job, safe_name
from xpullm.rag.retrieval import Candidate, Hit, Reranker, RerankFn, apply_reranker, fuse
from xpullm.rag.storage.base import DocumentRecord, JobItem

__all__ = ["DocumentNotFound", "KBConfig", "KnowledgeBase"]

DB_FILE = "kb.sqlite"
INDEX_FILE = "vectors.faiss"
LOCK_FILE = "write.lock"
TEXTS_DIR = "texts"

# Extension -> template when `template="auto"`: spreadsheets read best row by row.
AUTO_TEMPLATES = {".csv": "table", ".tsv": "table"}


class DocumentNotFound(KnowledgeBaseError, KeyError):
    """A document id or source that the base does not hold."""


@dataclass(frozen=True)
class KBConfig:
    """Per-base settings, stored in the base and restored by `open`."""

    chunk_tokens: int = 200  # embedder tokens per chunk; under all-MiniLM's 256 so nothing is truncated
    overlap_tokens: int = 32  # tokens repeated between neighbouring `naive` chunks
    default_template: str = "naive"  # what `template="auto"` uses for types not in AUTO_TEMPLATES
    embed_batch_size: int = 32  # texts per forward pass of the embedder
    ingest_batch_chunks: int = (
        128  # chunks per committed batch: bigger = faster, smaller = less redone after a kill
    )
    index_save_interval_s: float = 5.0  # how often the FAISS file is rewritten during a long job


class KnowledgeBase:
    """A local, embedded knowledge base. Use `KnowledgeBase.create(path)` or `KnowledgeBase.open(path)`."""

    def __init__(self, path: Path, embedder: EmbeddingModel, config: KBConfig, read_only: bool) -> None:
        from xpullm.rag.storage.faiss_index import FaissVectorIndex
        from xpullm.rag.storage.sqlite_store import SQLiteStore

        self.path = path
        self.embedder = embedder
        self.config = config
        self.read_only = read_only
        dim = int(embedder.dim)
        self.store = SQLiteStore(path / DB_FILE, dim)
        self.vectors = FaissVectorIndex(path / INDEX_FILE, dim)
        self._lock = (
            threading.RLock()
        )  # orders "commit to SQLite, then update FAISS" against reader refreshes
        self._lock_file: Any = None
        self._generation = -1
        # Re-sync in memory only: writing the index file is the writer's job (it holds the lock); the next
        # write or close() of a writer persists the repaired index.
        self._refresh()

    # -- lifecycle ----------------------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        embedder: EmbeddingModel | str | os.PathLike[str] | None = None,
        config: KBConfig | None = None,
        exist_ok: bool = False,
    ) -> KnowledgeBase:
        """Make a new base in folder `path` (created if missing).

        Args:
            embedder: an `Embedder`, a model folder / hub id for one, or None for the packaged default.
            config: chunking and batching settings, stored with the base.
            exist_ok: open an existing base at `path` instead of failing (its embedder must match).
        """
        path = Path(path).expanduser().absolute()
        if (path / DB_FILE).exists():
            if exist_ok:
                return cls.open(path, embedder=embedder)
            raise KnowledgeBaseExists(
                f"{path} already holds a knowledge base; use KnowledgeBase.open({str(path)!r})"
            )
        config = config or KBConfig()
        if config.default_template not in template_names():
            raise UnknownTemplate(
                f"default_template {config.default_template!r} is not registered; choose one of {template_names()}"
            )
        emb = _make_embedder(embedder)
        path.mkdir(parents=True, exist_ok=True)
        kb = cls(path, emb, config, read_only=False)
        kb.store.set_meta("embedder", _embedder_name(emb))
        kb.store.set_meta("dim", str(emb.dim))
        kb.store.set_meta("config", json.dumps(asdict(config)))
        return kb

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        embedder: EmbeddingModel | str | os.PathLike[str] | None = None,
        read_only: bool = False,
    ) -> KnowledgeBase:
        """Open an existing base. `embedder=None` loads the model the base was built with.

        A different embedder (name or dimension) raises `EmbedderMismatch`: vectors of two models are not comparable.
        `read_only=True` never writes (safe next to a process that is ingesting).
        """
        path = Path(path).expanduser().absolute()
        db = path / DB_FILE
        if not db.exists():
            raise KnowledgeBaseNotFound(
                f"no knowledge base at {path}; create one with KnowledgeBase.create({str(path)!r})"
            )
        from xpullm.rag.storage.sqlite_store import SQLiteStore

        probe = SQLiteStore(db, 0)
        try:
            stored_name, stored_dim = probe.get_meta("embedder"), int(probe.get_meta("dim") or 0)
            config = KBConfig(**json.loads(probe.get_meta("config") or "{}"))
        finally:
            probe.close()
        if stored_name is None:
            raise KnowledgeBaseError(
                f"{db} has no embedder record; was its creation interrupted? Re-create it"
            )
        if embedder is None:
            emb = _make_embedder(None if stored_name == DEFAULT_EMBEDDER_NAME else stored_name)
        else:
            emb = _load_embedder(embedder)
            # Compare before checking the interface: a different model is the more useful error.
            name, dim = str(getattr(emb, "model_name", type(emb).__name__)), int(getattr(emb, "dim", 0))
            if name != stored_name or dim != stored_dim:
                raise EmbedderMismatch(
                    f"{path} was built with embedder {stored_name!r} ({stored_dim}-d) but {name!r} "
                    f"({dim}-d) was given; open it with embedder=None (or that model), or create a new base"
                )
            emb = _make_embedder(emb)
        return cls(path, emb, config, read_only=read_only)

    @staticmethod
    def stored_embedder(path: str | os.PathLike[str]) -> str:
        """Name of the embedding model the base at `path` was built with."""
        from xpullm.rag.storage.sqlite_store import SQLiteStore

        db = Path(path).expanduser().absolute() / DB_FILE
        if not db.exists():
            raise KnowledgeBaseNotFound(
                f"no knowledge base at {db.parent}; create one with `xpullm kb create {db.parent}`"
            )
        probe = SQLiteStore(db, 0)
        try:
            name = probe.get_meta("embedder")
        finally:
            probe.close()
        if name is None:
            raise KnowledgeBaseError(
                f"{db} has no embedder record; was its creation interrupted? Re-create it"
            )
        return name

    def close(self) -> None:
        """Save the vector index, release the writer lock and close the database."""
        with self._lock:
            if not self.read_only and self._lock_file is not None:
                self.vectors.save()
            self._release_writer()
            self.store.close()

    def __enter__(self) -> KnowledgeBase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"KnowledgeBase({str(self.path)!r}, documents={len(self.documents())}, chunks={len(self.vectors)})"

    # -- writer lock --------------------------------------------------------------------------------------
    def _acquire_writer(self) -> None:
        if self.read_only:
            raise KnowledgeBaseError(
                f"{self.path} was opened read_only=True; open it without read_only to change it"
            )
        if self._lock_file is not None:
            return
        handle = open(self.path / LOCK_FILE, "a+")  # noqa: SIM115 - held open for the life of the writer
        try:
            import fcntl

            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # no fcntl (Windows): single-writer is then the caller's responsibility
            pass
        except OSError as exc:
            handle.close()
            raise KnowledgeBaseLocked(
                f"another process is writing to {self.path}; wait for it, or open with read_only=True to search"
            ) from exc
        self._lock_file = handle
        # Holding the lock proves no other writer is alive, so any job still "running" was interrupted.
        for job in self.store.jobs():
            if job["status"] == "running":
                self.store.set_job_status(job["job_id"], "interrupted")

    def _release_writer(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()  # closing the descriptor drops the flock
            self._lock_file = None

    # -- consistency --------------------------------------------------------------------------------------
    def _refresh(self) -> None:
        """Bring the FAISS copy in line with SQLite (after a crash, or when another process wrote)."""
        with self._lock:
            gen = self.store.generation()
            if gen == self._generation:
                return
            want, have = self.store.chunk_ids(), self.vectors.ids()
            missing, extra = sorted(want - have), have - want
            self.vectors.remove(extra)
            for start in range(0, len(missing), 4096):
                part = missing[start : start + 4096]
                self.vectors.add(part, self.store.get_vectors(part))
            self._generation = gen

    def _after_write(self) -> None:
        self._generation = self.store.generation()

    def check(self) -> dict[str, int]:
        """Counts that must agree in a consistent base (used by tests and `xpullm kb ls --check`)."""
        with self._lock:
            chunks = self.store.chunk_ids()
            return {
                "chunks": len(chunks),
                "vectors": len(self.vectors),
                "fts_rows": len(self.store.fts_ids()),
                "chunks_without_vector": len(chunks - self.vectors.ids()),
                "vectors_without_chunk": len(self.vectors.ids() - chunks),
            }

    # -- ingestion ----------------------------------------------------------------------------------------
    def chunking_config(self) -> ChunkingConfig:
        """Chunk budget measured in the embedder's own tokens."""
        return ChunkingConfig(
            self.config.chunk_tokens, self.config.overlap_tokens, self.embedder.count_tokens
        )

    def text_path(self, source: str) -> Path:
        """Where the base keeps the text of an in-memory document (always inside the base's folder)."""
        folder = (self.path / TEXTS_DIR).resolve()
        name = source.removeprefix("text:")
        target = (folder / f"{doc_id_for(source)}-{safe_name(name)}").resolve()
        if folder not in target.parents:  # defense in depth; safe_name already strips separators
            raise KnowledgeBaseError(f"document name {name!r} would leave {folder}")
        return target

    def _template_for(self, name: str, template: str | Mapping[str, str]) -> str:
        ext = Path(name).suffix.lower()
        if isinstance(template, Mapping):
            chosen = template.get(ext) or template.get(name) or "auto"
        else:
            chosen = template
        if chosen == "auto":
            chosen = AUTO_TEMPLATES.get(ext, self.config.default_template)
        if chosen not in template_names():
            raise UnknownTemplate(
                f"unknown chunking template {chosen!r}; choose one of: auto, {', '.join(template_names())}"
            )
        return chosen

    def add(
        self,
        paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
        *,
        texts: Sequence[str] | None = None,
        names: Sequence[str] | None = None,
        template: str | Mapping[str, str] = "auto",
        metadata: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
        recursive: bool = True,
        show_progress: bool | None = None,
    ) -> IngestReport:
        """Ingest files/folders (`paths`) and/or in-memory `texts` as one resumable job.

        Re-adding unchanged content is a no-op; a changed file replaces its chunks. Bad files are reported as
        failed with a reason while the rest go in.

        Args:
            texts: document texts; `names` gives each a name (also its title and dedup key; default: its hash).
            template: a template name for every document, `"auto"` (by extension), or a mapping from extension
                (`".csv"`) or name to template.
            metadata: one dict for every document, or one per document (files first, then texts).
        """
        self._acquire_writer()
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        sources = expand_sources(paths or [], recursive=recursive)
        items: list[JobItem] = []
        for source, kind in sources:
            items.append(
                JobItem(0, 0, source, kind, "pending", template=self._template_for(source, template))
            )
        if texts is not None:
            if isinstance(texts, str):
                raise TypeError("texts must be a list of strings; wrap a single text as [text]")
            if names is not None and len(names) != len(texts):
                raise ValueError(f"names has {len(names)} entries but texts has {len(texts)}")
            for i, text in enumerate(texts):
                if not isinstance(text, str):
                    raise TypeError(f"texts[{i}] must be a str, got {type(text).__name__}")
                import hashlib

                name = (
                    names[i] if names is not None else hashlib.sha256(text.encode()).hexdigest()[:16] + ".txt"
                )
                source = f"text:{name}"
                path = self.text_path(source)
                path.parent.mkdir(exist_ok=True)
                path.write_text(text, encoding="utf-8")
                items.append(
                    JobItem(
                        0,
                        0,
                        source,
                        "text",
                        "pending",
                        template=self._template_for(name, template),
                        title=name,
                    )
                )
        items = _attach_metadata(items, metadata)
        job_id = self.store.create_job(items)
        return run_job(self, job_id, show_progress=show_progress)

    def resume(self, show_progress: bool | None = None) -> list[IngestReport]:
        """Finish every interrupted job (their unfinished items only)."""
        self._acquire_writer()
        return [
            run_job(self, job["job_id"], show_progress=show_progress)
            for job in self.store.jobs()
            if job["status"] in ("running", "interrupted")
        ]

    def jobs(self) -> list[dict[str, Any]]:
        """Ingestion jobs with their status and item counts."""
        return self.store.jobs()

    def documents(self) -> list[DocumentRecord]:
        """Every document in the base."""
        return self.store.list_documents()

    def get_document(self, doc_id_or_source: str) -> DocumentRecord:
        """A document by id or by source (file path or `text:name`)."""
        doc = self.store.get_document(doc_id_or_source) or self.store.find_document(doc_id_or_source)
        if doc is None and not doc_id_or_source.startswith("text:"):
            doc = self.store.find_document(str(Path(doc_id_or_source).expanduser().absolute()))
        if doc is None:
            raise DocumentNotFound(
                f"no document {doc_id_or_source!r} in {self.path}; `kb.documents()` lists them"
            )
        return doc

    def delete(self, doc_id: str) -> int:
        """Remove a document (by id or source) with its chunks and vectors; returns the number of chunks removed."""
        self._acquire_writer()
        doc = self.get_document(doc_id)
        with self._lock:
            removed = self.store.delete_document(doc.doc_id)
            self.vectors.remove(removed)
            self._after_write()
            self.vectors.save()
        if doc.source.startswith("text:"):
            self.text_path(doc.source).unlink(missing_ok=True)
        return len(removed)

    def _embed_texts(self, texts: list[str]) -> Any:
        return self.embedder.embed_matrix(texts, batch_size=self.config.embed_batch_size, show_progress=False)

    def _embed_query(self, text: str) -> Any:
        return self.embedder.embed_matrix([text], show_progress=False)[0]

    # -- retrieval ----------------------------------------------------------------------------------------
    def search(
        self,
        query: str,
        top_k: int = 5,
        vector_weight: float = 0.5,
        fusion: str = "weighted",
        filters: Mapping[str, Any] | None = None,
        rerank: Reranker | RerankFn | None = None,
        min_similarity: float | None = None,
        candidates: int | None = None,
    ) -> list[Hit]:
        """Hybrid search: BM25 (FTS5) and vector candidates fused, optionally reranked.

        Args:
            vector_weight: 1.0 = vector only (cosine order), 0.0 = keyword only (BM25 order), in between = hybrid.
            fusion: `"weighted"` (score blend) or `"rrf"` (reciprocal-rank fusion).
            filters: document fields or metadata values, e.g. `{"doc_id": "..."}`, `{"lang": ["en", "de"]}`.
            rerank: None, a `Reranker` (e.g. `LLMReranker(llm)`) or `fn(query, hits) -> hits`.
            min_similarity: drop hits whose cosine to the query is below this.
            candidates: how many each retriever proposes before fusion (default max(4 * top_k, 20)).
        """
        if not isinstance(query, str) or not query.strip():
            raise ValueError(f"query must be a non-empty string, got {query!r}")
        if not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"top_k must be a positive int, got {top_k!r}")
        if not 0.0 <= float(vector_weight) <= 1.0:
            raise ValueError(f"vector_weight must be in [0, 1], got {vector_weight!r}")
        self._refresh()
        n = candidates or max(4 * top_k, 20)
        allowed = self.store.chunk_ids_matching(dict(filters)) if filters else None
        qvec = self._embed_query(query)
        vec = self.vectors.search(qvec, n, allowed) if vector_weight > 0 else []
        kw = self.store.search_text(query, n, allowed) if vector_weight < 1 else []
        ids = list(dict.fromkeys([i for i, _ in vec] + [i for i, _ in kw]))
        chunks = self.store.get_chunks(ids)
        ids = [i for i in ids if i in chunks]  # a chunk deleted since the index was read is simply not a hit
        if not ids:
            return []
        import numpy as np

        cos = dict(
            zip(
                ids, (self.store.get_vectors(ids) @ np.asarray(qvec, dtype=np.float32)).tolist(), strict=False
            )
        )
        vrank = {cid: r for r, (cid, _) in enumerate(vec, start=1)}
        krank = {cid: r for r, (cid, _) in enumerate(kw, start=1)}
        kscore = dict(kw)
        if vector_weight in (0.0, 1.0):  # a single retriever: keep its own order and score
            single = kw if vector_weight == 0.0 else vec
            fused = [(i, s) for i, s in single if i in chunks]
        else:
            coverage = self.store.term_coverage(query, [i for i in ids if i in kscore])
            cands = [
                Candidate(i, cos[i], kscore.get(i, 0.0), coverage.get(i, 0.0), vrank.get(i), krank.get(i))
                for i in ids
            ]
            fused = fuse(cands, fusion, float(vector_weight))
        docs: dict[str, DocumentRecord | None] = {}
        hits: list[Hit] = []
        for cid, score in fused:
            if min_similarity is not None and cos[cid] < min_similarity:
                continue
            c = chunks[cid]
            if c.doc_id not in docs:
                docs[c.doc_id] = self.store.get_document(c.doc_id)
            d = docs[c.doc_id]
            if d is None:
                continue
            meta = {**d.metadata, **c.metadata}
            hits.append(
                Hit(
                    c.text,
                    score,
                    d.title or d.source,
                    cid,
                    d.doc_id,
                    d.source,
                    c.section,
                    meta,
                    cos[cid],
                    kscore.get(cid, 0.0),
                )
            )
        if rerank is not None:
            hits = apply_reranker(rerank, query, hits[: max(top_k * 2, top_k)])
        return hits[:top_k]

    # -- answering ----------------------------------------------------------------------------------------
    def ask(
        self,
        question: str,
        llm: ChatEngine | None = None,
        stream: bool = False,
        top_k: int = 4,
        min_similarity: float = 0.25,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        repetition_penalty: float = 1.0,
        **search_kwargs: Any,
    ) -> Answer | AnswerStream:
        """Answer `question` from retrieved chunks only, with `[n]` citations.

        When no chunk reaches `min_similarity` the LLM is not called and the answer says nothing was found.
        If the LLM cites nothing, each answer sentence that overlaps a source is cited as such
        (`Answer.citation_mode == "attributed"`); `Answer.references` lists the sources either way. The answer
        stops at the first sentence it repeats (small greedy models loop).
        `llm=None` loads the packaged default `xpullm.LLM`. With `stream=True` returns an `AnswerStream`: iterate
        for text deltas, then read `.answer` (or call `.result()`).
        """
        hits = self.search(question, top_k=top_k, min_similarity=min_similarity, **search_kwargs)
        if not hits:
            answer = Answer(NO_ANSWER, {}, (), question, grounded=False)
            return AnswerStream(iter([answer.text]), lambda _t: answer) if stream else answer
        if llm is None:
            from xpullm.engine import LLM

            llm = LLM()
        count, budget = None, None
        if isinstance(llm, TokenCounter):
            count = llm.count_tokens
            budget = (
                llm.context_length - max_new_tokens - 64
            )  # 64: chat-template markup around the two messages
        hits = fit_sources(question, hits, count, budget)
        # No repetition penalty by default: the engine's penalty counts the prompt's tokens too, so it pushes the
        # model away from every word of the sources and from the `[n]` markers, which are what a grounded answer
        # must copy (at 1.1 SmolLM2-135M wrote off-topic text instead of the source's facts). Loops are cut instead.
        params = {
            "max_new_tokens": max_new_tokens,
            "temperature": temperature,
            "repetition_penalty": repetition_penalty,
        }
        sources = tuple(hits)

        def finish(text: str) -> Answer:
            text = cut_repetition(text.strip())
            citations, mode = extract_citations(text, sources), "model"
            if not citations and text and NO_ANSWER not in text:
                text = attribute_citations(text, sources, self._embed_texts, question=question)
                citations = extract_citations(text, sources)
                mode = "attributed" if citations else "none"
            return Answer(text, citations, sources, question, grounded=True, citation_mode=mode)

        if stream:
            deltas = llm.stream_chat(llm_messages(question, hits), **params)
            return AnswerStream(until_repetition(iter(deltas)), finish)
        return finish(llm.chat(llm_messages(question, hits), **params).text)


DEFAULT_EMBEDDER_NAME = "sentence-transformers/all-MiniLM-L6-v2"


def _load_embedder(embedder: EmbeddingModel | str | os.PathLike[str] | None) -> EmbeddingModel:
    if embedder is None or isinstance(embedder, (str, os.PathLike)):
        from xpullm.embeddings import Embedder

        return Embedder(embedder)
    return embedder


def _make_embedder(embedder: EmbeddingModel | str | os.PathLike[str] | None) -> EmbeddingModel:
    emb = _load_embedder(embedder)
    if not isinstance(emb, EmbeddingModel):
        raise TypeError(
            f"embedder must be an xpullm.Embedder, a model path/hub id or None; {type(emb).__name__} does not "
            "follow xpullm.protocols.EmbeddingModel (model_name, dim, embed_matrix, count_tokens)"
        )
    return emb


def _embedder_name(embedder: EmbeddingModel) -> str:
    return embedder.model_name


def _attach_metadata(
    items: list[JobItem], metadata: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None
) -> list[JobItem]:
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
