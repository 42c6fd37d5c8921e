"""How many bytes a model's weights take, counting low-bit kernel state that is not a parameter."""

from __future__ import annotations

from torch import nn

from xpullm.linear import LowBitLinear

__all__ = ["model_nbytes"]


def model_nbytes(model: nn.Module) -> int:
    """Parameters + buffers + every LowBitLinear's runtime state, each storage counted once."""
    seen: set[int] = set()
    total = 0
    for module in model.modules():
        if isinstance(module, LowBitLinear):
            if id(module) not in seen:
                seen.add(id(module))
                total += module.nbytes
            continue
        for tensor in list(module._parameters.values()) + list(module._buffers.values()):
            if tensor is None:
                continue
            key = tensor.untyped_storage().data_ptr()
            if key not in seen:
                seen.add(key)
                total += tensor.numel() * tensor.element_size()
    return total
