"""`XPUEmbeddings`: LangChain `Embeddings` over `xpullm.Embedder` (local folders, hub ids, low-bit weights)."""

from __future__ import annotations

import asyncio
from typing import Any

from langchain_core.embeddings import Embeddings
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from xpullm.integrations._engines import shared_embedder

__all__ = ["XPUEmbeddings"]


class XPUEmbeddings(BaseModel, Embeddings):
    """Sentence embeddings; the model loads on the first `embed_*` call.

    ```python
    from xpullm.integrations.langchain import XPUEmbeddings

    emb = XPUEmbeddings()  # packaged all-MiniLM-L6-v2 (384-d)
    emb.embed_query("hello")[:3]
    ```
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, protected_namespaces=(), extra="forbid")

    model: Any = None
    """None (packaged default), a sentence-transformers folder / hub id, or an `xpullm.Embedder` to share."""
    low_bit: str | None = None
    """Optional low-bit format for the linear layers (e.g. "sym_int8")."""
    device: str = "auto"
    """`auto`, `cpu`, `cuda` or `xpu`."""
    batch_size: int = Field(default=32, ge=1)
    """Texts per forward pass (the embedder sorts by length, so batches pad little)."""

    _handle: Any = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _resolve(self) -> XPUEmbeddings:
        self._handle = shared_embedder(self.model, self.low_bit, self.device)
        return self

    @property
    def embedder(self) -> Any:
        """The loaded `xpullm.Embedder` (loads it on first access)."""
        return self._handle.get()

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Embed a list of texts."""
        return self.embedder.embed(texts, batch_size=self.batch_size)

    def embed_query(self, text: str) -> list[float]:
        """Embed one query."""
        return self.embedder.embed_query(text)

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        """`embed_documents` in a worker thread, so the event loop keeps running."""
        return await asyncio.to_thread(self.embed_documents, texts)

    async def aembed_query(self, text: str) -> list[float]:
        """`embed_query` in a worker thread."""
        return await asyncio.to_thread(self.embed_query, text)
