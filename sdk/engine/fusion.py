"""Projection fusion: sibling projections that read the same input (q/k/v, gate/up) become one module.

At batch 1 each extra kernel call costs more in dispatch than it saves, so the static decoder fuses siblings into
one matmul where a fuser for their module type is registered (`@register_fuser`), else calls them one by one.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from xpullm.linear import LowBitLinear, fuse_linears

__all__ = ["fused", "register_fuser"]

Fuser = Callable[[list[nn.Module]], "nn.Module | None"]
_FUSERS: dict[type, Fuser] = {}


def register_fuser(module_type: type) -> Callable[[Fuser], Fuser]:
    """Register how sibling projections of `module_type` (same input) become one module with concatenated output.

    A fuser returns None when it cannot fuse this particular set; the decoder then calls the modules one by one.
    """

    def add(fn: Fuser) -> Fuser:
        _FUSERS[module_type] = fn
        return fn

    return add


@register_fuser(nn.Linear)
def _fuse_linear(mods: list[nn.Module]) -> nn.Module | None:
    ws = [m.weight for m in mods]
    if len({w.shape[1] for w in ws}) != 1 or len({(w.dtype, w.device) for w in ws}) != 1:
        return None
    weight = torch.cat([w.detach() for w in ws])
    bias = None
    if any(m.bias is not None for m in mods):
        bias = torch.cat(
            [m.bias.detach() if m.bias is not None else weight.new_zeros(m.out_features) for m in mods]
        )
    fused = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    fused.weight = nn.Parameter(weight, requires_grad=False)
    if bias is not None:
        fused.bias = nn.Parameter(bias, requires_grad=False)
    # Point the original modules at slices of the fused tensor, so the model keeps working and weights exist once.
    row = 0
    for m in mods:
        n = m.out_features
        m.weight = nn.Parameter(weight[row : row + n], requires_grad=False)
        if m.bias is not None:
            m.bias = nn.Parameter(bias[row : row + n], requires_grad=False)
        row += n
    return fused


@register_fuser(LowBitLinear)
def _fuse_low_bit(mods: list[nn.Module]) -> nn.Module | None:
    """Concatenate LowBitLinear siblings row-wise (`xpullm.linear.fuse_linears`), or None when they differ.

    The fused copy is extra memory next to the originals (the model keeps working unchanged); at batch 1 one
    kernel call instead of two or three saves more time than the copy costs for models this engine targets.
    """
    try:
        fused = fuse_linears(mods)  # type: ignore[arg-type]
    except ValueError:  # different formats / group sizes / input widths: call them one by one
        return None
    # Only worth it when the fused weight runs the same (fast) kernel the parts ran.
    return fused if fused.kernel.name == mods[0].kernel.name else None


class _Concat(nn.Module):
    """Calls sibling projections one by one and concatenates (when no fuser applies)."""

    def __init__(self, mods: list[nn.Module]) -> None:
        super().__init__()
        self.mods = nn.ModuleList(mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([m(x) for m in self.mods], dim=-1)


def fused(mods: list[nn.Module]) -> nn.Module:
    """One module computing every sibling projection of `mods` (same input), outputs concatenated."""
    if len(mods) == 1:
        return mods[0]
    if len({type(m) for m in mods}) == 1:
        fuser = _FUSERS.get(type(mods[0]))
        if fuser is not None:
            fused = fuser(mods)
            if fused is not None:
                return fused
    return _Concat(mods)
