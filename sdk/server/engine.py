"""The engine seam: what the HTTP layer needs from a text generator and an embedder, as `typing.Protocol`s.

The routes only ever call these protocols, so today's one-request-at-a-time backend (`local_engine`) can be swapped
for the continuous-batching engine without touching the HTTP code. A text engine takes a tokenized prompt plus
`GenerationParams`, queues it (bounded), and returns a `GenerationStream`: an async iterator of `TextDelta`s ending
with one `Finished`, and a `cancel()` that frees the request's slot at once (queued) or after the current token
(running).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from xpullm.engine.params import GenerationParams
from xpullm.errors import XPULLMError

__all__ = [
    "EmbeddingEngine",
    "EngineStats",
    "Finished",
    "GenerationStream",
    "QueueFull",
    "StreamEvent",
    "TextDelta",
    "TextEngine",
    "TokenLogprobs",
]


class QueueFull(XPULLMError, RuntimeError):
    """The engine's waiting queue holds `max_queue` requests already; the client should retry later (429)."""

    def __init__(self, max_queue: int) -> None:
        super().__init__(
            f"the request queue is full ({max_queue} waiting); retry later or start the server with a larger "
            "--max-queue"
        )
        self.max_queue = max_queue


@dataclass(frozen=True)
class TokenLogprobs:
    """One generated token for the wire's `logprobs`: its text, bytes and log-probability, and the alternatives."""

    token: str
    bytes: tuple[int, ...]
    logprob: float
    top: tuple[tuple[str, tuple[int, ...], float], ...] = ()
    """(token, bytes, logprob) of the most likely tokens at this position, most likely first."""


@dataclass(frozen=True)
class TextDelta:
    """A piece of generated text (detokenized; stop strings already removed)."""

    text: str
    logprobs: tuple[TokenLogprobs, ...] = ()
    """When the request asked for them: the tokens generated since the previous delta (a token held back, e.g.
    as part of a possible stop string, comes with a later delta; the last ones may come with empty text)."""


@dataclass(frozen=True)
class Finished:
    """The last event of a stream: why it ended and the exact token counts."""

    finish_reason: str
    """`stop`, `length` or `cancelled`."""
    prompt_tokens: int
    completion_tokens: int


StreamEvent = TextDelta | Finished


@dataclass(frozen=True)
class EngineStats:
    """A snapshot for /metrics."""

    queued: int
    """Requests waiting for a slot."""
    running: int
    """Requests generating now."""
    kv_tokens: int
    """KV-cache positions reserved by the running requests."""
    kv_capacity: int
    """KV-cache positions the engine can hold at once (0 when unknown)."""


@runtime_checkable
class GenerationStream(Protocol):
    """One submitted request: iterate its events; `cancel()` stops it (idempotent, callable from any task)."""

    def __aiter__(self) -> AsyncIterator[StreamEvent]: ...

    def cancel(self) -> None: ...


@runtime_checkable
class TextEngine(Protocol):
    """A text generator behind the server."""

    model_id: str
    """The name clients pass as `model`."""

    @property
    def ready(self) -> bool:
        """True once the model is loaded and requests can be served."""
        ...

    @property
    def context_length(self) -> int:
        """Maximum prompt + generated tokens per sequence."""
        ...

    def load(self) -> None:
        """Load the model (blocking; the app calls it in a thread at startup)."""
        ...

    def encode_chat(self, messages: list[dict[str, Any]]) -> list[int]:
        """Render messages with the chat template and tokenize; raises ContextOverflow when too long."""
        ...

    def encode_prompt(self, prompt: str, field: str) -> list[int]:
        """Tokenize a raw prompt; raises InvalidParameter / ContextOverflow naming `field`."""
        ...

    def check(self, params: GenerationParams) -> None:
        """Validate what can only be checked against the model (e.g. that a json_schema compiles)."""
        ...

    def submit(self, prompt_ids: list[int], params: GenerationParams) -> GenerationStream:
        """Queue one sequence; raises QueueFull when the queue is full."""
        ...

    def stats(self) -> EngineStats:
        """Queue length, running requests and KV usage now."""
        ...

    def close(self) -> None:
        """Let the running request finish, fail the queued ones, and stop the workers."""
        ...


@runtime_checkable
class EmbeddingEngine(Protocol):
    """A sentence embedder behind the server."""

    model_id: str

    @property
    def ready(self) -> bool: ...

    @property
    def max_tokens(self) -> int:
        """Tokens per input the model sees; longer inputs are rejected (never truncated)."""
        ...

    @property
    def dim(self) -> int:
        """Size of every vector."""
        ...

    def load(self) -> None: ...

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens each text takes (special tokens included)."""
        ...

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """One vector per text, in order, computed without blocking the event loop."""
        ...

    def close(self) -> None: ...
