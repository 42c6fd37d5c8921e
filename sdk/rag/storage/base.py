"""The three storage roles a knowledge base needs, as interfaces.

The pipeline (`xpullm.rag.kb`) talks only to these, so a server-backed store (Postgres, Elasticsearch, a vector
database) can replace the embedded SQLite/FAISS pair without touching ingestion or search.

Consistency rule every implementation keeps: the document store is the source of truth. A chunk row and its vector
are written in one transaction there; the vector index is a derived copy that `sync_from` brings back in line after
a crash (no chunk without a vector, no vector without a chunk).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

__all__ = ["ChunkRecord", "DocumentRecord", "DocumentStore", "FullTextIndex", "JobItem", "VectorIndex"]


@dataclass(frozen=True)
class DocumentRecord:
    """One ingested document."""

    doc_id: str
    source: str  # file path or `text:<name>`; unique per base, so re-adding the same source replaces it
    title: str
    content_hash: str  # sha256 of the raw bytes: unchanged content is skipped
    template: str
    metadata: dict[str, Any] = field(default_factory=dict)
    n_chunks: int = 0
    added_at: float = 0.0


@dataclass(frozen=True)
class ChunkRecord:
    """One retrievable piece of a document."""

    chunk_id: int
    doc_id: str
    ordinal: int  # position inside its document
    text: str
    section: str = ""  # heading path such as "Setup > Linux", empty when the template keeps none
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class JobItem:
    """One source inside an ingestion job."""

    job_id: int
    ordinal: int
    source: str
    kind: str  # "file" or "text"
    status: str  # pending | added | replaced | skipped | failed | superseded | cancelled
    reason: str = ""
    template: str = "naive"
    metadata: dict[str, Any] = field(default_factory=dict)
    title: str = ""


@runtime_checkable
class FullTextIndex(Protocol):
    """Keyword (BM25) search over chunk texts."""

    def search_text(self, query: str, k: int, allowed: set[int] | None = None) -> list[tuple[int, float]]:
        """Best `k` chunk ids for `query` with a BM25 score (higher is better)."""
        ...


@runtime_checkable
class VectorIndex(Protocol):
    """Nearest-neighbour search over unit vectors (inner product == cosine)."""

    dim: int
    recovered: bool  # its stored file was unreadable, so it started empty: the owner re-syncs and saves it

    def add(self, ids: Sequence[int], vectors: Any) -> None:
        """Add `vectors` [n, dim] float32 under `ids`."""
        ...

    def remove(self, ids: Iterable[int]) -> None:
        """Drop the vectors of `ids` (missing ids are ignored)."""
        ...

    def search(self, vector: Any, k: int, allowed: set[int] | None = None) -> list[tuple[int, float]]:
        """Best `k` (chunk id, cosine) pairs, optionally restricted to `allowed` ids."""
        ...

    def ids(self) -> set[int]:
        """Every id held."""
        ...

    def save(self) -> None:
        """Persist atomically (a crash leaves the previous file intact)."""
        ...

    def __len__(self) -> int: ...


@runtime_checkable
class DocumentStore(FullTextIndex, Protocol):
    """Documents, chunks with their vectors, metadata and ingestion jobs; transactional. Keyword search too."""

    def close(self) -> None: ...

    def get_meta(self, key: str) -> str | None: ...

    def set_meta(self, key: str, value: str) -> None: ...

    def find_document(self, source: str) -> DocumentRecord | None: ...

    def find_by_hash(self, content_hash: str) -> DocumentRecord | None: ...

    def get_document(self, doc_id: str) -> DocumentRecord | None: ...

    def list_documents(self) -> list[DocumentRecord]: ...

    def write_documents(
        self,
        batch: Sequence[tuple[DocumentRecord, Sequence[ChunkRecord], Any]],
        job_updates: Sequence[JobItem],
    ) -> tuple[dict[str, list[int]], list[int]]:
        """In one transaction: replace each document and its chunks+vectors, and record job item outcomes.

        A document's `n_chunks` is stored as given when set (a large file commits its chunks over several calls).

        Returns (new chunk ids per doc_id, chunk ids removed from replaced documents).
        """
        ...

    def append_chunks(
        self, doc_id: str, chunks: Sequence[ChunkRecord], vectors: Any, job_updates: Sequence[JobItem]
    ) -> list[int]:
        """In one transaction: add a later batch of a large document's chunks+vectors and job outcomes."""
        ...

    def count_doc_chunks(self, doc_id: str) -> int:
        """Chunks stored for `doc_id` (below its `n_chunks` while a large file is half ingested)."""
        ...

    def delete_document(self, doc_id: str) -> list[int]:
        """Delete a document and its chunks; return the removed chunk ids."""
        ...

    def get_chunks(self, chunk_ids: Sequence[int]) -> dict[int, ChunkRecord]: ...

    def get_vectors(self, chunk_ids: Sequence[int]) -> Any: ...

    def chunk_ids(self) -> set[int]: ...

    def chunk_ids_matching(self, filters: dict[str, Any]) -> set[int]: ...

    def generation(self) -> int:
        """A counter bumped by every write; readers use it to notice new data."""
        ...

    def fts_ids(self) -> set[int]:
        """Chunk ids that the keyword index holds (a consistency check: equals `chunk_ids()`)."""
        ...

    def term_coverage(self, query: str, chunk_ids: Sequence[int]) -> dict[int, float]:
        """Per chunk, the IDF-weighted share of the query's words it contains (0..1)."""
        ...

    def create_job(self, items: Sequence[JobItem]) -> int:
        """Record a new ingestion job with its items (all pending); returns its id."""
        ...

    def record_items(self, items: Sequence[JobItem]) -> None:
        """Record the outcome of job items that wrote nothing (skipped, failed)."""
        ...

    def job_items(self, job_id: int) -> list[JobItem]: ...

    def set_job_status(self, job_id: int, status: str) -> None: ...

    def jobs(self) -> list[dict[str, Any]]:
        """Every job with its status and item counts, newest last."""
        ...
