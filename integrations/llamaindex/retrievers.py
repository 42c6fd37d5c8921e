"""`XPULlamaIndexRetriever`: a LlamaIndex retriever over an xpullm knowledge base."""

from __future__ import annotations

from typing import Any

from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

__all__ = ["XPULlamaIndexRetriever"]


class XPULlamaIndexRetriever(BaseRetriever):
    """Retrieve `NodeWithScore`s from an xpullm `KnowledgeBase` (hybrid BM25 + vector search).

    Args:
        knowledge_base: an open `xpullm.rag.KnowledgeBase`.
        similarity_top_k: number of nodes to return.
        search_kwargs: passed to `KnowledgeBase.search` (vector_weight, fusion, filters, min_similarity, rerank).
    """

    def __init__(self, knowledge_base: Any, similarity_top_k: int = 4, **search_kwargs: Any) -> None:
        if similarity_top_k < 1:
            raise ValueError(f"similarity_top_k must be >= 1, got {similarity_top_k}")
        self.knowledge_base = knowledge_base
        self.similarity_top_k = similarity_top_k
        self.search_kwargs = search_kwargs
        super().__init__()

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        hits = self.knowledge_base.search(
            query_bundle.query_str, top_k=self.similarity_top_k, **self.search_kwargs
        )
        return [
            NodeWithScore(
                node=TextNode(
                    id_=f"{h.doc_id}:{h.chunk_id}",
                    text=h.text,
                    metadata={
                        **h.metadata,
                        "source": h.source,
                        "title": h.document,
                        "doc_id": h.doc_id,
                        "section": h.section,
                    },
                ),
                score=h.score,
            )
            for h in hits
        ]
