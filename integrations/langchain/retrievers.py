"""`XPURetriever`: a LangChain retriever over an xpullm knowledge base (hybrid BM25 + vector search)."""

from __future__ import annotations

from typing import Any

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict, Field, model_validator

from xpullm.integrations._fields import StrictArguments

__all__ = ["XPURetriever"]


class XPURetriever(StrictArguments, BaseRetriever):
    """Retrieve LangChain `Document`s from an xpullm `KnowledgeBase`.

    ```python
    retriever = XPURetriever(knowledge_base=KnowledgeBase.open("my_kb"), k=4)
    retriever.invoke("how do I reset the device?")
    ```
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    knowledge_base: Any = None
    """An open `xpullm.rag.KnowledgeBase` (or pass `path` instead)."""
    path: str | None = None
    """Folder of a knowledge base to open read-only when `knowledge_base` is not given."""
    k: int = Field(default=4, ge=1)
    """Number of documents to return."""
    vector_weight: float = Field(default=0.5, ge=0.0, le=1.0)
    """1.0 = vector search only, 0.0 = keyword (BM25) only."""
    fusion: str = "weighted"
    """How the two result lists are fused: "weighted" or "rrf"."""
    filters: dict[str, Any] | None = None
    """Document or metadata filters, e.g. {"team": "sales"}."""
    min_similarity: float | None = None
    """Drop hits whose cosine similarity to the query is below this."""

    @model_validator(mode="after")
    def _open(self) -> XPURetriever:
        if self.knowledge_base is None:
            if self.path is None:
                raise ValueError(
                    "XPURetriever needs knowledge_base=KnowledgeBase(...) or path='folder/of/a/base'"
                )
            from xpullm.rag import KnowledgeBase

            self.knowledge_base = KnowledgeBase.open(self.path, read_only=True)
        return self

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun, **kwargs: Any
    ) -> list[Document]:
        params = {
            "top_k": kwargs.pop("k", self.k),
            "vector_weight": kwargs.pop("vector_weight", self.vector_weight),
            "fusion": kwargs.pop("fusion", self.fusion),
            "filters": kwargs.pop("filters", self.filters),
            "min_similarity": kwargs.pop("min_similarity", self.min_similarity),
        }
        if kwargs:
            raise TypeError(
                f"unexpected search arguments {sorted(kwargs)}; use k, vector_weight, fusion, filters, min_similarity"
            )
        hits = self.knowledge_base.search(query, **params)
        return [
            Document(
                page_content=h.text,
                id=str(h.chunk_id),
                metadata={
                    **h.metadata,
                    "source": h.source,
                    "title": h.document,
                    "doc_id": h.doc_id,
                    "chunk_id": h.chunk_id,
                    "section": h.section,
                    "score": h.score,
                    "vector_score": h.vector_score,
                    "bm25_score": h.bm25_score,
                },
            )
            for h in hits
        ]
