"""`XPUEmbeddings`: LangChain `Embeddings` over `xpullm.Embedder` (local folders, hub ids, low-bit weights)."""

from __future__ import annotations

import asyncio
from typing import Any

from langchain_core.embeddings import Embeddings
from pydantic import ConfigDict, Field, PrivateAttr, model_validator

from xpullm.integrations._args import EmbedderArg
from xpullm.integrations._engines import LazyEmbedder, shared_embedder
from xpullm.integrations._fields import StrictArguments

__all__ = ["XPUBgeEmbeddings", "XPUEmbeddings"]

# langchain_community's IpexLLMBgeEmbeddings default query instruction (BGE's English retrieval prompt).
BGE_QUERY_INSTRUCTION_EN = "Represent this question for searching relevant passages: "
# model_kwargs keys of IpexLLMBgeEmbeddings that mean something here / that are accepted and unused.
_BGE_MODEL_KWARGS = {"device", "low_bit"}
_BGE_IGNORED_MODEL_KWARGS = {"trust_remote_code"}
_BGE_ENCODE_KWARGS = {"normalize_embeddings", "batch_size"}


class XPUEmbeddings(StrictArguments, Embeddings):
    """Sentence embeddings; the model loads on the first `embed_*` call.

    ```python
    from xpullm.integrations.langchain import XPUEmbeddings

    emb = XPUEmbeddings()  # packaged all-MiniLM-L6-v2 (384-d)
    emb.embed_query("hello")[:3]
    ```
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, protected_namespaces=(), extra="forbid")

    model: EmbedderArg = None
    """None (packaged default), a sentence-transformers folder / hub id, or an `xpullm.Embedder` to share."""
    low_bit: str | None = None
    """Optional low-bit format for the linear layers (e.g. "sym_int8")."""
    device: str = "auto"
    """`auto`, `cpu`, `cuda` or `xpu`."""
    batch_size: int = Field(default=32, ge=1)
    """Texts per forward pass (the embedder sorts by length, so batches pad little)."""

    _handle: LazyEmbedder = PrivateAttr(default=None)

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


class XPUBgeEmbeddings(StrictArguments, Embeddings):
    """Drop-in for langchain_community's `IpexLLMBgeEmbeddings`: same arguments, xpullm's embedder underneath.

    ```python
    from xpullm.integrations.langchain import XPUBgeEmbeddings as IpexLLMBgeEmbeddings

    emb = IpexLLMBgeEmbeddings(
        model_name="BAAI/bge-large-en-v1.5",  # a hub id or a local folder; None = packaged all-MiniLM-L6-v2
        model_kwargs={"device": "cpu"},
        encode_kwargs={"normalize_embeddings": True},
    )
    ```
    Queries get `query_instruction` prepended and documents `embed_instruction`, as in IpexLLMBgeEmbeddings.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, protected_namespaces=(), extra="forbid")

    model_name: str | None = None
    """A sentence-transformers folder or hub id (IpexLLM's default BAAI/bge-small-en-v1.5 needs the hub);
    None = the packaged all-MiniLM-L6-v2."""
    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    """`device` ("cpu", "xpu", "cuda", "auto") and `low_bit`; `trust_remote_code` is accepted and unused."""
    encode_kwargs: dict[str, Any] = Field(default_factory=dict)
    """`normalize_embeddings` (True L2-normalizes; False keeps the model folder's own setting) and `batch_size`."""
    query_instruction: str = BGE_QUERY_INSTRUCTION_EN
    """Prepended to every query (BGE's retrieval instruction)."""
    embed_instruction: str = ""
    """Prepended to every document."""
    cache_folder: str | None = None
    """Accepted for source compatibility; xpullm reads hub models from the Hugging Face cache."""

    _handle: LazyEmbedder = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _resolve(self) -> XPUBgeEmbeddings:
        for what, given, known in (
            ("model_kwargs", self.model_kwargs, _BGE_MODEL_KWARGS | _BGE_IGNORED_MODEL_KWARGS),
            ("encode_kwargs", self.encode_kwargs, _BGE_ENCODE_KWARGS),
        ):
            unknown = sorted(set(given) - known)
            if unknown:
                raise ValueError(f"{what} keys {unknown} are not supported; use any of {sorted(known)}")
        device = self.model_kwargs.get("device", "auto")
        self._handle = shared_embedder(self.model_name, self.model_kwargs.get("low_bit"), device)
        return self

    @property
    def embedder(self) -> Any:
        """The loaded `xpullm.Embedder` (loads it on first access)."""
        return self._handle.get()

    def _finish(self, vectors: list[list[float]]) -> list[list[float]]:
        if not self.encode_kwargs.get("normalize_embeddings"):
            return vectors
        return [[x / n for x in v] if (n := sum(x * x for x in v) ** 0.5) > 0 else v for v in vectors]

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Embed documents (each prefixed with `embed_instruction`)."""
        texts = [self.embed_instruction + t.replace("\n", " ") for t in texts]
        batch = self.encode_kwargs.get("batch_size", 32)
        return self._finish(self.embedder.embed(texts, batch_size=batch))

    def embed_query(self, text: str) -> list[float]:
        """Embed one query (prefixed with `query_instruction`)."""
        return self._finish([self.embedder.embed_query(self.query_instruction + text.replace("\n", " "))])[0]

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        """`embed_documents` in a worker thread."""
        return await asyncio.to_thread(self.embed_documents, texts)

    async def aembed_query(self, text: str) -> list[float]:
        """`embed_query` in a worker thread."""
        return await asyncio.to_thread(self.embed_query, text)
