"""`KnowledgeBase`: one folder = a document store (SQLite + FTS5 by default) + a vector index (FAISS). No servers.

The base composes collaborators that each own one concern: the store and the index (`xpullm.rag.storage`, chosen
by name in `KBConfig`), the writer lock (`writer`), store/index consistency (`sync`), ingestion jobs (`ingest`),
hybrid search (`search`) and cited answers (`answer`).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from xpullm.answers import AnswerStream
from xpullm.documents import ChunkingConfig, template_names
from xpullm.embeddings import as_embedding_model
from xpullm.models import DEFAULT_EMBEDDER_NAME
from xpullm.protocols import ChatEngine, EmbeddingModel
from xpullm.rag.answer import NO_ANSWER, CitedAnswer, answer_from_hits
from xpullm.rag.errors import (
    EmbedderMismatch,
    KnowledgeBaseError,
    KnowledgeBaseExists,
    UnknownTemplate,
)
from xpullm.rag.ingest import Ingestor, IngestReport, ProgressFn, doc_id_for, plan_items, safe_name
from xpullm.rag.jobs import OPEN_STATUSES, cancel_jobs, supersede_items
from xpullm.rag.rerank import Reranker, RerankFn, apply_reranker
from xpullm.rag.retrieval import Hit
from xpullm.rag.search import check_query, hybrid_search
from xpullm.rag.storage.base import DocumentRecord
from xpullm.rag.storage.registry import find_store, read_base_meta, store_kind, vector_index_kind
from xpullm.rag.support import SupportConfig
from xpullm.rag.sync import IndexSync
from xpullm.rag.writer import WriterLock
from xpullm.scaleout import Executor, make_executor

__all__ = ["DocumentNotFound", "KBConfig", "KnowledgeBase"]

TEXTS_DIR = "texts"


class DocumentNotFound(KnowledgeBaseError, KeyError):
    """A document id or source that the base does not hold."""


@dataclass(frozen=True)
class KBConfig:
    """Per-base settings, stored in the base and restored by `open`."""

    chunk_tokens: int = 200  # embedder tokens per chunk; under all-MiniLM's 256 so nothing is truncated
    overlap_tokens: int = 32  # tokens repeated between neighbouring `naive` chunks
    default_template: str = "naive"  # what `template="auto"` uses for types not in AUTO_TEMPLATES
    embed_batch_size: int = 32  # texts per forward pass of the embedder
    # chunks per committed batch: bigger = faster, smaller = less redone after a kill
    ingest_batch_chunks: int = 128
    index_save_interval_s: float = 5.0  # how often the FAISS file is rewritten during a long job
    store: str = "sqlite"  # document store, by name (`xpullm.rag.storage.register_store`)
    vector_index: str = "faiss"  # vector index, by name (`xpullm.rag.storage.register_vector_index`)


@contextlib.contextmanager
def _executor(spec: Executor | str | None) -> Iterator[Executor]:
    """The executor `spec` names; one made here from a name is closed afterwards."""
    runner = make_executor(spec)
    try:
        yield runner
    finally:
        if runner is not spec:
            runner.close()


class KnowledgeBase:
    """A local, embedded knowledge base. Use `KnowledgeBase.create(path)` or `KnowledgeBase.open(path)`."""

    def __init__(self, path: Path, embedder: EmbeddingModel, config: KBConfig, read_only: bool) -> None:
        self.path = path
        self.embedder = embedder
        self.config = config
        self.read_only = read_only
        dim = int(embedder.dim)
        self.store = store_kind(config.store).open(path, dim)
        self.vectors = vector_index_kind(config.vector_index)(path, dim)
        self._sync = IndexSync(self.store, self.vectors)
        self._writer = WriterLock(path, self.store, read_only)
        # Re-sync in memory: writing the index file is the writer's job (it holds the lock); the next write or
        # close() of a writer persists the repaired index. A damaged file is rewritten now when no one writes.
        self._sync.refresh()
        if self.vectors.recovered and not read_only:
            self._writer.persist_repair(self.vectors)

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
            config: chunking, batching and storage settings, stored with the base.
            exist_ok: open an existing base at `path` instead of failing (its embedder must match).
        """
        path = Path(path).expanduser().absolute()
        if find_store(path) is not None:
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
        (
            store_kind(config.store),
            vector_index_kind(config.vector_index),
        )  # unknown names fail before any write
        emb = as_embedding_model(embedder)
        path.mkdir(parents=True, exist_ok=True)
        kb = cls(path, emb, config, read_only=False)
        kb.store.set_meta("embedder", emb.model_name)
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
        stored_name, stored_dim, stored = read_base_meta(path, f"KnowledgeBase.create({str(path)!r})")
        config = KBConfig(**stored)
        if embedder is None:
            emb = as_embedding_model(None if stored_name == DEFAULT_EMBEDDER_NAME else stored_name)
        else:
            emb = as_embedding_model(embedder, check=False)
            # Compare before checking the interface: a different model is the more useful error.
            name, dim = str(getattr(emb, "model_name", type(emb).__name__)), int(getattr(emb, "dim", 0))
            if name != stored_name or dim != stored_dim:
                raise EmbedderMismatch(
                    f"{path} was built with embedder {stored_name!r} ({stored_dim}-d) but {name!r} "
                    f"({dim}-d) was given; open it with embedder=None (or that model), or create a new base"
                )
            emb = as_embedding_model(emb)
        return cls(path, emb, config, read_only=read_only)

    @staticmethod
    def stored_embedder(path: str | os.PathLike[str]) -> str:
        """Name of the embedding model the base at `path` was built with."""
        path = Path(path).expanduser().absolute()
        return read_base_meta(path, f"`xpullm kb create {path}`")[0]

    def close(self) -> None:
        """Save the vector index, release the writer lock and close the store."""
        with self._sync.lock:
            if not self.read_only and self._writer.held:
                self.vectors.save()
            self._writer.release()
            self.store.close()

    def __enter__(self) -> KnowledgeBase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"KnowledgeBase({str(self.path)!r}, documents={len(self.documents())}, chunks={len(self.vectors)})"

    def check(self) -> dict[str, int]:
        """Counts that must agree in a consistent base (used by tests and `xpullm kb ls --check`)."""
        return self._sync.check()

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
        on_progress: ProgressFn | None = None,
        executor: Executor | str | None = None,
    ) -> IngestReport:
        """Ingest files/folders (`paths`) and/or in-memory `texts` as one resumable job.

        Re-adding unchanged content is a no-op; a changed file replaces its chunks. Bad files are reported as
        failed with a reason while the rest go in.

        Args:
            texts: document texts; `names` gives each a name (also its title and dedup key; default: its hash).
            template: a template name for every document, `"auto"` (by extension), or a mapping from extension
                (`".csv"`) or name to template.
            metadata: one dict for every document, or one per document (files first, then texts).
            show_progress: progress bars (default: for 10+ documents, and for any file of many chunk batches).
            on_progress: called after every committed batch with an `IngestProgress` (chunks of the current
                file and documents of the job done so far).
            executor: where parsing, chunking and embedding run: None (this process), "ray" (the Ray cluster
                Ray finds; CLI `--ray`), "ray:HOST:PORT" or an `xpullm.scaleout.Executor`. This process stays the
                only writer of the base (docs/scale-out.md).
        """
        self._writer.acquire()
        items = plan_items(
            paths, texts, names, template, self.config.default_template, metadata, recursive, self.text_path
        )
        job_id = self.store.create_job(items)
        supersede_items(self.store, job_id, (it.source for it in items))
        with _executor(executor) as runner:
            return self._ingestor(on_progress, runner).run(job_id, show_progress=show_progress)

    def resume(
        self,
        show_progress: bool | None = None,
        on_progress: ProgressFn | None = None,
        executor: Executor | str | None = None,
    ) -> list[IngestReport]:
        """Finish every interrupted job (their unfinished items only); `executor` as for `add`."""
        self._writer.acquire()
        with _executor(executor) as runner:
            return [
                self._ingestor(on_progress, runner).run(job["job_id"], show_progress=show_progress)
                for job in self.store.jobs()
                if job["status"] in OPEN_STATUSES
            ]

    def cancel_jobs(self, job_ids: Sequence[int] | None = None) -> list[int]:
        """Close interrupted jobs (all, or `job_ids`) without finishing them; returns the ids closed."""
        self._writer.acquire()
        return cancel_jobs(self.store, job_ids)

    def _ingestor(self, on_progress: ProgressFn | None, executor: Executor) -> Ingestor:
        embedder = executor.embedder(self.embedder)
        batch = self.config.embed_batch_size
        return Ingestor(
            store=self.store,
            vectors=self.vectors,
            sync=self._sync,
            embed=lambda texts: embedder.embed_matrix(texts, batch_size=batch, show_progress=False),
            chunking=self.chunking_config(),
            text_path=self.text_path,
            batch_chunks=self.config.ingest_batch_chunks,
            save_interval_s=self.config.index_save_interval_s,
            on_progress=on_progress,
            tokens=self.embedder,
            executor=executor,
        )

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
        self._writer.acquire()
        doc = self.get_document(doc_id)
        with self._sync.lock:
            removed = self.store.delete_document(doc.doc_id)
            self.vectors.remove(removed)
            self._sync.committed()
            self.vectors.save()
        if doc.source.startswith("text:"):
            self.text_path(doc.source).unlink(missing_ok=True)
        return len(removed)

    def embed_texts(self, texts: list[str]) -> Any:
        """float32 unit vectors [len(texts), dim] from the base's embedder (what `EmbeddingReranker` takes)."""
        return self.embedder.embed_matrix(texts, batch_size=self.config.embed_batch_size, show_progress=False)

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
            rerank: None, a `Reranker` (`EmbeddingReranker(kb.embed_texts)`, `LLMReranker(llm)`) or
                `fn(query, hits) -> hits`.
            min_similarity: drop hits whose cosine to the query is below this.
            candidates: how many each retriever proposes before fusion (default max(4 * top_k, 20)).
        """
        check_query(query, top_k, vector_weight)
        self._sync.refresh()
        qvec = self.embedder.embed_matrix([query], show_progress=False)[0]
        n = candidates or max(4 * top_k, 20)
        hits = hybrid_search(
            self.store, self.vectors, query, qvec, n, vector_weight, fusion, filters, min_similarity
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
        support: SupportConfig | None = None,
        **search_kwargs: Any,
    ) -> CitedAnswer | AnswerStream[CitedAnswer]:
        """Answer `question` from retrieved chunks only, with `[n]` citations.

        When no chunk reaches `min_similarity` the LLM is not called and the answer says nothing was found.
        If the LLM cites nothing, each answer sentence that overlaps a source is cited as such
        (`Answer.citation_mode == "attributed"`); `Answer.references` lists the sources either way. The answer
        stops at the first sentence it repeats (small greedy models loop). Each sentence must be supported by the
        chunk it cites (`support`, default `SupportConfig()`): unsupported ones are dropped, and an answer left
        with none is refused (`Answer.refused`; `Answer.support` holds the verdicts, `Answer.draft` the raw text).
        `llm=None` loads the packaged default `xpullm.LLM`. With `stream=True` returns an `AnswerStream`: iterate
        for text deltas, then read `.answer` (or call `.result()`).
        """
        hits = self.search(question, top_k=top_k, min_similarity=min_similarity, **search_kwargs)
        if not hits:
            answer = CitedAnswer(NO_ANSWER, {}, (), question, grounded=False, refused=True)
            return AnswerStream(iter([answer.text]), lambda _t: answer) if stream else answer
        if llm is None:
            from xpullm.engine import LLM

            llm = LLM(low_bit=None)  # None: the checkpoint's own format (Q4_1 -> asym_int4, lossless)
        # No repetition penalty by default: the engine's penalty counts the prompt's tokens too, so it pushes the
        # model away from every word of the sources and from the `[n]` markers, which are what a grounded answer
        # must copy (at 1.1 SmolLM2-135M wrote off-topic text instead of the source's facts). Loops are cut instead.
        params = {
            "max_new_tokens": max_new_tokens,
            "temperature": temperature,
            "repetition_penalty": repetition_penalty,
        }
        return answer_from_hits(
            question, hits, llm, self.embed_texts, stream, params, support or SupportConfig()
        )
