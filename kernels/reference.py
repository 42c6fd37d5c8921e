"""Reference kernels: dequantize the portable weight, then `F.linear`. Every fast kernel is tested against these.

They run on any device and any format, and are slow on purpose-free grounds: the weight is decoded on every
call, so memory stays at the low-bit size. Only the layout-free `qw.dequantize` is used (duck typing), which
keeps this layer free of imports from the core package above it.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from xpullm.kernels.registry import Kernel, register_kernel

ALL_FORMATS = (
    "sym_int4",
    "asym_int4",
    "nf4",
    "fp4",
    "sym_int8",
    "fp8_e4m3",
    "fp8_e5m2",
    "bf16",
    "fp16",
    "fp32",
)
PASSTHROUGH = ("bf16", "fp16", "fp32")


@register_kernel(formats=ALL_FORMATS, device="*", priority=-100)
class ReferenceKernel(Kernel):
    """Decode the whole weight to the activation dtype on every call, then `F.linear`."""

    name = "reference"

    def prepare(self, qw: Any, device: torch.device) -> Any:
        return qw.to(device)

    def matmul(self, x: torch.Tensor, state: Any) -> torch.Tensor:
        return F.linear(x, state.dequantize(x.dtype))

    def export(self, state: Any) -> Any:
        return state


@register_kernel(formats=PASSTHROUGH, device="*", priority=0)
class DenseKernel(Kernel):
    """Pass-through formats: the stored tensor already is the weight."""

    name = "dense"

    def prepare(self, qw: Any, device: torch.device) -> Any:
        return qw.data.to(device)

    def matmul(self, x: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        return F.linear(x.to(state.dtype), state).to(x.dtype)

    def export(self, state: torch.Tensor) -> dict[str, Any]:
        return {"codes": state, "scales": None, "zeros": None}
