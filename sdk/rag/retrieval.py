"""Hybrid retrieval: fuse BM25 and vector candidates (rerankers live in `xpullm.rag.rerank`).

Fusion methods register in `FUSIONS`:
- `weighted`: score = w * cosine + (1 - w) * keyword, keyword = bm25 / max_bm25 * coverage, where coverage is the
  IDF-weighted share of the query's words the chunk contains. Cosine is used raw (comparable across queries, so a
  similarity threshold means the same everywhere). Scaling BM25 by the best candidate alone would give a chunk that
  matched one common word the full keyword score; coverage keeps such weak matches weak.
- `rrf`: reciprocal-rank fusion, sum of 1 / (60 + rank) over the lists a chunk appears in; ignores score scales.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["FUSIONS", "Candidate", "Hit", "fuse"]


@dataclass(frozen=True)
class Hit:
    """One search result."""

    text: str
    score: float  # fused score (higher is better); its scale depends on the fusion method
    document: str  # the document's title (source path for files without a title)
    chunk_id: int
    doc_id: str = ""
    source: str = ""
    section: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    vector_score: float = 0.0  # cosine similarity to the query
    bm25_score: float = 0.0  # 0 when the chunk shares no content word with the query


@dataclass(frozen=True)
class Candidate:
    """A chunk id with its two raw scores, before fusion."""

    chunk_id: int
    cosine: float
    bm25: float
    coverage: float  # IDF-weighted share of query words present, 0..1
    vector_rank: int | None  # 1-based rank in the vector list, None when absent
    bm25_rank: int | None


def _weighted(cands: Sequence[Candidate], vector_weight: float) -> dict[int, float]:
    top_bm25 = max((c.bm25 for c in cands), default=0.0) or 1.0
    return {
        c.chunk_id: vector_weight * c.cosine + (1 - vector_weight) * c.coverage * c.bm25 / top_bm25
        for c in cands
    }


def _rrf(cands: Sequence[Candidate], vector_weight: float, k: int = 60) -> dict[int, float]:
    out = {}
    for c in cands:
        s = 0.0
        if c.vector_rank is not None:
            s += 2 * vector_weight / (k + c.vector_rank)
        if c.bm25_rank is not None:
            s += 2 * (1 - vector_weight) / (k + c.bm25_rank)
        out[c.chunk_id] = s
    return out


FUSIONS: dict[str, Callable[[Sequence[Candidate], float], dict[int, float]]] = {
    "weighted": _weighted,
    "rrf": _rrf,
}


def fuse(cands: Sequence[Candidate], method: str, vector_weight: float) -> list[tuple[int, float]]:
    """Fused (chunk id, score), best first; ties broken by cosine."""
    fn = FUSIONS.get(method)
    if fn is None:
        raise ValueError(f"unknown fusion {method!r}; choose one of: {', '.join(FUSIONS)}")
    scores = fn(cands, vector_weight)
    cos = {c.chunk_id: c.cosine for c in cands}
    return sorted(scores.items(), key=lambda kv: (-kv[1], -cos[kv[0]]))
