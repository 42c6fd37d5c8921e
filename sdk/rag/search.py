"""Hybrid search over a knowledge base's store and vector index: BM25 and vector candidates, fused into `Hit`s."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from xpullm.rag.retrieval import Candidate, Hit, fuse
from xpullm.rag.storage.base import DocumentRecord, DocumentStore, VectorIndex

if TYPE_CHECKING:
    import numpy as np

__all__ = ["check_query", "hybrid_search"]


def check_query(query: str, top_k: int, vector_weight: float) -> None:
    """Raise a `ValueError` naming the bad search argument."""
    if not isinstance(query, str) or not query.strip():
        raise ValueError(f"query must be a non-empty string, got {query!r}")
    if not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be a positive int, got {top_k!r}")
    if not 0.0 <= float(vector_weight) <= 1.0:
        raise ValueError(f"vector_weight must be in [0, 1], got {vector_weight!r}")


def hybrid_search(
    store: DocumentStore,
    vectors: VectorIndex,
    query: str,
    qvec: np.ndarray,
    n: int,
    vector_weight: float,
    fusion: str,
    filters: Mapping[str, Any] | None,
    min_similarity: float | None,
) -> list[Hit]:
    """Every fused hit for `query` (embedded as `qvec`) from `n` candidates per retriever, best first.

    `vector_weight` 1.0 keeps the vector order, 0.0 the BM25 order; in between `fusion` blends them.
    """
    import numpy as np

    allowed = store.chunk_ids_matching(dict(filters)) if filters else None
    vec = vectors.search(qvec, n, allowed) if vector_weight > 0 else []
    kw = store.search_text(query, n, allowed) if vector_weight < 1 else []
    ids = list(dict.fromkeys([i for i, _ in vec] + [i for i, _ in kw]))
    chunks = store.get_chunks(ids)
    ids = [i for i in ids if i in chunks]  # a chunk deleted since the index was read is simply not a hit
    if not ids:
        return []
    sims = (store.get_vectors(ids) @ np.asarray(qvec, dtype=np.float32)).tolist()
    cos = dict(zip(ids, sims, strict=False))
    vrank = {cid: r for r, (cid, _) in enumerate(vec, start=1)}
    krank = {cid: r for r, (cid, _) in enumerate(kw, start=1)}
    kscore = dict(kw)
    if vector_weight in (0.0, 1.0):  # a single retriever: keep its own order and score
        single = kw if vector_weight == 0.0 else vec
        fused = [(i, s) for i, s in single if i in chunks]
    else:
        coverage = store.term_coverage(query, [i for i in ids if i in kscore])
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
            docs[c.doc_id] = store.get_document(c.doc_id)
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
    return hits
