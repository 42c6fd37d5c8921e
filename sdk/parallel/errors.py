"""The exceptions of tensor parallelism: a split that cannot be made, and a rank that stopped."""

from __future__ import annotations

from xpullm.errors import XPULLMError

__all__ = ["RankFailed", "TensorParallelError"]


class TensorParallelError(XPULLMError, ValueError):
    """A model, format or device set that cannot be split over the asked number of ranks."""


class RankFailed(XPULLMError, RuntimeError):
    """A tensor-parallel worker process exited or raised; the ranks are unusable and must be started again."""
