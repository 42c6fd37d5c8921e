"""Exceptions of the GraphRAG pipeline; each message names the bad value and the fix."""

from __future__ import annotations

from xpullm.errors import EmbedderMismatch, XPULLMError

__all__ = [
    "CacheMiss",
    "ConfigError",
    "EmbedderMismatch",
    "EmbeddingMismatch",
    "GraphRAGError",
    "IndexNotFound",
    "PromptTooLong",
]


class GraphRAGError(XPULLMError):
    """Base class of every error the GraphRAG pipeline raises on purpose."""


class ConfigError(GraphRAGError, ValueError):
    """A setting that is out of range or unknown."""


class CacheMiss(GraphRAGError, KeyError):
    """Replay mode met a prompt that the recorded transcript does not hold."""

    def __init__(self, key: str, stage: str, prompt: str) -> None:
        head = prompt[:160].replace("\n", " ")
        super().__init__(
            f"replay cache miss for prompt hash {key} (stage {stage!r}): no recorded answer for prompt "
            f"starting {head!r}. Re-record the transcript, or run with cache mode 'read_write'."
        )
        self.key = key
        self.stage = stage

    def __str__(self) -> str:  # KeyError would otherwise print the repr of the message
        return str(self.args[0])


class PromptTooLong(GraphRAGError, ValueError):
    """A prompt plus its answer budget does not fit the model's context window."""

    def __init__(self, stage: str, prompt_tokens: int, max_new_tokens: int, context_length: int) -> None:
        super().__init__(
            f"stage {stage!r}: prompt of {prompt_tokens} tokens + {max_new_tokens} new tokens exceeds the model's "
            f"context window of {context_length}; lower chunks.size / the stage's max_input_tokens, or use a "
            "model with a longer context"
        )
        self.stage = stage
        self.prompt_tokens = prompt_tokens


class IndexNotFound(GraphRAGError, FileNotFoundError):
    """A query or update on a project that has not been indexed."""


EmbeddingMismatch = (
    EmbedderMismatch  # the one embedder-mismatch error (`xpullm.errors`), under its older name
)
