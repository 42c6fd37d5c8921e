"""How many bytes a model's weights take: its parameters and buffers (low-bit layers register theirs)."""

from __future__ import annotations

from torch import nn

__all__ = ["model_nbytes"]


def model_nbytes(model: nn.Module) -> int:
    """Parameters + buffers, each storage counted once (tied weights, shared codebooks)."""
    seen: set[int] = set()
    total = 0
    for tensor in [*model.parameters(), *model.buffers()]:
        key = tensor.untyped_storage().data_ptr()
        if key not in seen:
            seen.add(key)
            total += tensor.numel() * tensor.element_size()
    return total
