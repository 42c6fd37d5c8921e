"""`ExecutorEmbedder`: an embedder whose vectors are computed by an executor's workers, slice by slice."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from xpullm.protocols import EmbeddingModel

if TYPE_CHECKING:
    import numpy as np

    from xpullm.scaleout.base import Executor

__all__ = ["ExecutorEmbedder", "embed_slice"]


def embed_slice(embedder: EmbeddingModel, item: tuple[list[str], int]) -> np.ndarray:
    """Worker side: one slice of texts embedded by the worker's own copy of the model."""
    texts, batch_size = item
    return embedder.embed_matrix(texts, batch_size=batch_size, show_progress=False)


class ExecutorEmbedder:
    """Follows `EmbeddingModel`: name, dimension and token counts from the local model, vectors from the workers.

    Texts go out in slices of `batch_size` (one forward pass each), so every worker is busy on a long input. A
    worker sorts only its own slice by length, so vectors can differ from a one-process run in the last float32
    bits (batch padding), as any change of batching does (`xpullm.Embedder`'s docstring).
    """

    def __init__(self, embedder: EmbeddingModel, executor: Executor) -> None:
        self.local = embedder
        self.executor = executor

    @property
    def model_name(self) -> str:
        return self.local.model_name

    @property
    def dim(self) -> int:
        return int(self.local.dim)

    def count_tokens(self, text: str) -> int:
        return self.local.count_tokens(text)

    def embed_matrix(
        self, texts: Sequence[str], batch_size: int = 32, show_progress: bool | None = None
    ) -> np.ndarray:
        """float32 [len(texts), dim], rows in input order."""
        import numpy as np

        texts = list(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        slices = [(texts[i : i + batch_size], batch_size) for i in range(0, len(texts), batch_size)]
        for index, vectors in self.executor.map(embed_slice, slices, model=self.local):
            out[index * batch_size : index * batch_size + len(vectors)] = vectors
        return out

    def __getattr__(self, name: str) -> Any:  # anything else (tokenizer, device) is the local model's
        if name == "local":  # not set yet (a copy being built): no recursion
            raise AttributeError(name)
        return getattr(self.local, name)
