"""The embedded vector index: exact inner-product FAISS search, saved atomically next to the SQLite file.

Exact (flat) search is a deliberate choice: at laptop scale (10^4-10^5 chunks of 384-d) it answers in a few
milliseconds and never loses recall, and deletions are exact.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["FaissVectorIndex", "IndexRebuilt"]


class IndexRebuilt(UserWarning):
    """The vector index file was unreadable and is rebuilt from the document store (which holds every vector)."""


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as exc:
        raise ImportError("knowledge bases need faiss: `pip install 'xpullm[rag]'` (faiss-cpu)") from exc
    return faiss


class FaissVectorIndex:
    """`VectorIndex` over `faiss.IndexIDMap2(IndexFlatIP)`; ids are the chunk ids of the document store."""

    def __init__(self, path: str | Path, dim: int) -> None:
        faiss = _faiss()
        self.path = Path(path)
        self.dim = dim
        self._lock = threading.RLock()
        self.recovered = False  # the file was unreadable: this index starts empty and is rebuilt by its owner
        self._index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        if self.path.exists():
            problem = self._load(faiss)
            if problem:
                # The document store holds every vector, so a bad file costs a rebuild, never data.
                warnings.warn(
                    f"{self.path} {problem}; rebuilding it from the document store's vectors", IndexRebuilt, 2
                )
                self.recovered = True

    def _load(self, faiss: Any) -> str:
        """Read the file into `_index`; return why it cannot be used ('' when it was read)."""
        if self.path.stat().st_size == 0:
            return "is empty"
        try:
            index = faiss.read_index(str(self.path))
        except RuntimeError:  # faiss raises RuntimeError (a long C++ trace) for truncated or foreign bytes
            return "is damaged or truncated (faiss cannot read it)"
        if not isinstance(index, faiss.IndexIDMap2):
            return f"holds a {type(index).__name__}, not the IndexIDMap2 a knowledge base writes"
        if index.d != self.dim:
            return f"has dimension {index.d}, not the base's {self.dim}"
        self._index = index
        return ""

    def __len__(self) -> int:
        return int(self._index.ntotal)

    def add(self, ids: Sequence[int], vectors: Any) -> None:
        """Add `vectors` under `ids`."""
        import numpy as np

        if len(ids) == 0:
            return
        vecs = np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(ids), self.dim)
        with self._lock:
            self._index.add_with_ids(vecs, np.asarray(ids, dtype=np.int64))

    def remove(self, ids: Iterable[int]) -> None:
        """Drop `ids` (absent ids are ignored)."""
        import numpy as np

        arr = np.asarray(list(ids), dtype=np.int64)
        if arr.size:
            with self._lock:
                self._index.remove_ids(arr)

    def ids(self) -> set[int]:
        """Every id held."""
        faiss = _faiss()
        with self._lock:
            return set(faiss.vector_to_array(self._index.id_map).tolist())

    def search(self, vector: Any, k: int, allowed: set[int] | None = None) -> list[tuple[int, float]]:
        """Top `k` (id, cosine); `allowed` restricts the search through a FAISS id selector."""
        import numpy as np

        faiss = _faiss()
        with self._lock:
            if len(self) == 0 or k <= 0:
                return []
            q = np.ascontiguousarray(vector, dtype=np.float32).reshape(1, self.dim)
            k = min(k, len(self))
            if allowed is None:
                scores, ids = self._index.search(q, k)
            else:
                if not allowed:
                    return []
                selector = faiss.IDSelectorBatch(np.asarray(sorted(allowed), dtype=np.int64))
                scores, ids = self._index.search(q, k, params=faiss.SearchParameters(sel=selector))
        return [(int(i), float(s)) for i, s in zip(ids[0], scores[0], strict=False) if i != -1]

    def save(self) -> None:
        """Write to a temporary file, then rename: a crash mid-save keeps the previous index file."""
        faiss = _faiss()
        tmp = self.path.with_name(self.path.name + ".tmp")
        with self._lock:
            faiss.write_index(self._index, str(tmp))
            os.replace(tmp, self.path)
            self.recovered = False
