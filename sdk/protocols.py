"""The engine contracts: what pipelines, adapters and apps may call on a text engine and an embedding model.

`xpullm.LLM` and `xpullm.Embedder` satisfy these protocols, and so does anything shaped like them (a recorded
transcript replayer, a remote client): the knowledge base, GraphRAG, the integrations and the demo take these types,
never `Any`. They are `runtime_checkable` so a caller can test a capability (`isinstance(llm, StreamingEngine)`)
instead of probing attribute names; such a check only looks at names, the signatures below are the contract.
This module imports nothing heavy: it is safe to import from every layer.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "ChatEngine",
    "EmbeddingModel",
    "Generated",
    "StreamingEngine",
    "TextEngine",
    "TokenCounter",
]

Message = dict[str, str]
"""One chat turn: {"role": "system" | "user" | "assistant", "content": text}."""


class Generated(Protocol):
    """The result of one generation (`xpullm.Completion` has these fields and more)."""

    @property
    def text(self) -> str: ...


@runtime_checkable
class TokenCounter(Protocol):
    """A model that can say how many of its tokens a text takes, and how many fit in one sequence."""

    @property
    def context_length(self) -> int: ...

    def count_tokens(self, text: str) -> int: ...


@runtime_checkable
class TextEngine(TokenCounter, Protocol):
    """Completion with token accounting: what GraphRAG's indexing and queries call.

    `generate` takes one prompt (-> one result) or a list (-> a list, generated as one batch); `params` are the
    engine's generation parameters (`max_new_tokens`, `temperature`, `stop`, ...; see `xpullm.GenerationParams`).
    """

    @property
    def model_name(self) -> str: ...

    def generate(self, prompt: Any, **params: Any) -> Any: ...


@runtime_checkable
class StreamingEngine(TextEngine, Protocol):
    """A `TextEngine` that can also yield a completion's text as it is generated."""

    def stream(self, prompt: str, **params: Any) -> Iterator[str]: ...


@runtime_checkable
class ChatEngine(Protocol):
    """Chat turns in, an answer out (whole or streamed): what the knowledge base's answering and reranking call.

    A `ChatEngine` that is also a `TokenCounter` lets the caller fit its sources into the context window.
    """

    def chat(self, messages: list[Message], **params: Any) -> Generated: ...

    def stream_chat(self, messages: list[Message], **params: Any) -> Iterator[str]: ...


@runtime_checkable
class EmbeddingModel(Protocol):
    """Texts in, one float32 vector each out.

    `model_name` and `dim` identify the vector space: a stored index records them and refuses a different model.
    """

    @property
    def model_name(self) -> str: ...

    @property
    def dim(self) -> int: ...

    def embed_matrix(
        self, texts: Sequence[str], batch_size: int = 32, show_progress: bool | None = None
    ) -> np.ndarray:
        """A float32 array [len(texts), dim], rows in the input order (`show_progress`: None = model's choice)."""
        ...

    def count_tokens(self, text: str) -> int:
        """Tokens of `text` under the model's tokenizer (chunks are sized with it)."""
        ...
