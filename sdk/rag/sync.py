"""Keeping the vector index in line with the document store, which is the source of truth.

Writes commit to the store first, then update the index; `IndexSync.lock` orders that pair against a reader's
`refresh`, and the store's generation counter tells a reader (or a reopened base after a crash) to re-sync.
"""

from __future__ import annotations

import threading

from xpullm.rag.storage.base import DocumentStore, VectorIndex

__all__ = ["IndexSync"]


class IndexSync:
    """Re-syncs `vectors` from `store` when the store changed since the last look."""

    def __init__(self, store: DocumentStore, vectors: VectorIndex) -> None:
        self.store = store
        self.vectors = vectors
        self.lock = threading.RLock()  # orders "commit to the store, then update the index" against refreshes
        self._generation = -1

    def refresh(self) -> None:
        """Bring the index in line with the store (after a crash, or when another process wrote)."""
        with self.lock:
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

    def committed(self) -> None:
        """Call under `lock` after a write updated both the store and the index: they agree again."""
        self._generation = self.store.generation()

    def check(self) -> dict[str, int]:
        """Counts that must agree in a consistent base."""
        with self.lock:
            chunks = self.store.chunk_ids()
            return {
                "chunks": len(chunks),
                "vectors": len(self.vectors),
                "fts_rows": len(self.store.fts_ids()),
                "chunks_without_vector": len(chunks - self.vectors.ids()),
                "vectors_without_chunk": len(self.vectors.ids() - chunks),
            }
