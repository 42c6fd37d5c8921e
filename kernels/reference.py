"""Reference kernels: dequantize the portable weight, then `F.linear`. Every fast kernel is tested against these.

They run on any device and any format. The weight is decoded on every call, so memory stays at the low-bit
size at the price of speed. Only the layout-free `qw.dequantize` is used (duck typing), which
keeps this layer free of imports from the core package above it.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F

from xpullm.kernels.registry import Kernel, register_kernel


@functools.cache
def _cpu_native_bf16() -> bool:
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 matmuls run natively (GPUs, AVX512-BF16 / AMX CPUs); elsewhere fp32 is several times faster."""
    return device.type != "cpu" or _cpu_native_bf16()


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype to multiply in: x's own, except bf16/fp16 on CPUs without native support (then fp32)."""
    if x.dtype in (torch.bfloat16, torch.float16) and not native_bf16(x.device):
        return torch.float32
    return x.dtype


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
        dtype = compute_dtype(x)
        return F.linear(x.to(dtype), state.dequantize(dtype)).to(x.dtype)

    def export(self, state: Any) -> Any:
        return state


@register_kernel(formats=PASSTHROUGH, device="*", priority=0)
class DenseKernel(Kernel):
    """Pass-through formats: the stored tensor already is the weight."""

    name = "dense"

    def prepare(self, qw: Any, device: torch.device) -> Any:
        return qw.data.to(device)

    def matmul(self, x: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        dtype = compute_dtype(x) if state.dtype != torch.float32 else torch.float32
        return F.linear(x.to(dtype), state.to(dtype)).to(x.dtype)

    def export(self, state: torch.Tensor) -> dict[str, Any]:
        return {"codes": state, "scales": None, "zeros": None}
