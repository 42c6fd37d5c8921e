"""`XPUReranker`: a LangChain document compressor that reorders documents by the LLM's relevance judgement."""

from __future__ import annotations

from collections.abc import Sequence

from langchain_core.callbacks import Callbacks
from langchain_core.documents import BaseDocumentCompressor, Document
from pydantic import ConfigDict, Field, PrivateAttr, model_validator

from xpullm.engine import LLM
from xpullm.integrations._args import LLMArg
from xpullm.integrations._engines import shared_llm
from xpullm.integrations._fields import StrictArguments
from xpullm.integrations._relevance import relevance_scores

__all__ = ["XPUReranker"]


class XPUReranker(StrictArguments, BaseDocumentCompressor):
    """Keep the `top_n` documents the LLM rates most relevant (P("yes") to "does this passage help?").

    Each document gets `metadata["relevance_score"]` in [0, 1].
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, protected_namespaces=(), extra="forbid")

    model: LLMArg = None
    """None (packaged default LLM), a path / hub id, or an `xpullm.LLM` to share a loaded model."""
    low_bit: str | None = None
    """Low-bit format used when this object loads the weights; None follows the checkpoint."""
    device: str = "auto"
    """`auto`, `cpu`, `cuda` or `xpu`."""
    top_n: int = Field(default=3, ge=1)
    """How many documents to return."""

    _engine: LLM = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _resolve(self) -> XPUReranker:
        self._engine = shared_llm(self.model, self.low_bit, self.device)
        return self

    def compress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None
    ) -> Sequence[Document]:
        """Score every document against `query`; return the best `top_n`, most relevant first."""
        if not documents:
            return []
        scores = relevance_scores(self._engine, query, [d.page_content for d in documents])
        ranked = sorted(
            zip(scores, range(len(documents)), documents, strict=True), key=lambda x: (-x[0], x[1])
        )
        return [
            Document(page_content=d.page_content, metadata={**d.metadata, "relevance_score": s}, id=d.id)
            for s, _, d in ranked[: self.top_n]
        ]
