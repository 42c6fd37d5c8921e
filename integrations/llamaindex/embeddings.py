"""`XPUEmbedding`: a LlamaIndex `BaseEmbedding` over `xpullm.Embedder` with real batching."""

from __future__ import annotations

import asyncio
from typing import Any

from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.bridge.pydantic import Field, PrivateAttr

from xpullm.integrations._args import EmbedderArg
from xpullm.integrations._engines import LazyEmbedder, shared_embedder
from xpullm.integrations._fields import StrictArguments

__all__ = ["XPUEmbedding"]


class XPUEmbedding(StrictArguments, BaseEmbedding):
    """Sentence embeddings for LlamaIndex; the model loads on first use.

    ```python
    from llama_index.core import Settings
    from xpullm.integrations.llamaindex import XPUEmbedding

    Settings.embed_model = XPUEmbedding()  # packaged all-MiniLM-L6-v2
    ```
    Migrating from the removed `llama_index.embeddings.ipex_llm.IpexLLMEmbedding`: the same arguments work
    (`model_name`, `device`, `trust_remote_code`, `query_instruction`, `text_instruction`, `embed_batch_size`).
    """

    model: EmbedderArg = Field(
        default=None, description="None (packaged default), a folder / hub id, or an xpullm.Embedder."
    )
    low_bit: str | None = Field(default=None, description="Optional low-bit format for the linear layers.")
    device: str = Field(default="auto", description="auto, cpu, cuda or xpu.")
    query_instruction: str | None = Field(default=None, description="Prepended to every query.")
    text_instruction: str | None = Field(default=None, description="Prepended to every document text.")
    trust_remote_code: bool = Field(
        default=False, description="Accepted for IpexLLMEmbedding compatibility; no checkpoint code runs."
    )

    _handle: LazyEmbedder = PrivateAttr(default=None)

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("embed_batch_size", 32)
        super().__init__(**kwargs)
        # IpexLLMEmbedding named the model with `model_name`; `model` wins when both are given.
        spec = self.model if self.model is not None or self.model_name == "unknown" else self.model_name
        self._handle = shared_embedder(spec, self.low_bit, self.device)
        if self.model_name == "unknown":
            self.model_name = self._handle.model_name

    @classmethod
    def class_name(cls) -> str:
        return "XPUEmbedding"

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._handle.get().embed_query((self.query_instruction or "") + query)

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._get_text_embeddings([text])[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        # One call per LlamaIndex batch: the embedder sorts by length and pads each sub-batch to its longest text.
        prefix = self.text_instruction or ""
        return self._handle.get().embed([prefix + t for t in texts], batch_size=self.embed_batch_size)

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return await asyncio.to_thread(self._get_query_embedding, query)

    async def _aget_text_embedding(self, text: str) -> list[float]:
        return await asyncio.to_thread(self._get_text_embedding, text)

    async def _aget_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return await asyncio.to_thread(self._get_text_embeddings, texts)
