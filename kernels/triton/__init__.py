"""Triton kernels for weight-only low-bit matmul on GPUs (CUDA, and Intel GPUs through Triton's XPU backend).

Imported by the kernel registry on the first CUDA / XPU selection, never by `import xpullm`. One kernel object
serves every low-bit format: `prepare` repacks the portable layout once (`layout.py`), `matmul` picks a
launch configuration per (shape, batch bucket) (`configs.py`, `launch.py`) and runs the programs in `jit.py`:
for 1..8 decode rows a split-K CUDA-core GEMV (float, or int4 x int8 with `dp4a` on CUDA, which also takes up
to 16 rows per program), tensor-core tiles for up to 16 rows, and for prefill either tensor-core tiles or
dequantize + vendor GEMM, whichever the tuner measured faster. `decode_ops.py` and `attention.py` hold the fused
per-token ops of the engine's GPU decode step; `pdl.py` overlaps consecutive kernels on Hopper and later.
The XPU path compiles through the same code but is not yet verified on Intel hardware.
"""

from __future__ import annotations

from typing import Any

import torch

from xpullm.kernels.registry import Kernel, register_kernel
from xpullm.kernels.triton.configs import CONFIG_TABLES, Q8_FORMATS, LaunchConfig
from xpullm.kernels.triton.launch import (
    Q8Activations,
    dequantize,
    export_tuned,
    load_tuned,
    matmul,
    matmul_q8,
    quantize_activations,
    run,
    run_q8,
    select_config,
    time_cold,
    tune,
)
from xpullm.kernels.triton.layout import FORMAT_CODES, TritonWeight, pack_weight, unpack_weight
from xpullm.kernels.triton.op import matmul_op

__all__ = [
    "CONFIG_TABLES",
    "FORMATS",
    "LaunchConfig",
    "Q8Activations",
    "TritonLowBitKernel",
    "TritonWeight",
    "dequantize",
    "export_tuned",
    "load_tuned",
    "matmul",
    "matmul_op",
    "matmul_q8",
    "pack_weight",
    "quantize_activations",
    "run",
    "run_q8",
    "select_config",
    "time_cold",
    "tune",
    "unpack_weight",
]

FORMATS = tuple(FORMAT_CODES)


class TritonLowBitKernel(Kernel):
    """Fused dequantize-matmul for every low-bit format, in Triton."""

    name = "triton"

    def supports(self, qw: Any) -> bool:
        """Low-bit formats whose groups hold whole 4-word blocks (group sizes 32..256, or one per row)."""
        if qw.format not in FORMAT_CODES or qw.scales is None:
            return False
        planes = 32 // FORMAT_CODES[qw.format][1]
        return qw.scales.shape[1] == 1 or int(qw.group_size) % (4 * planes) == 0

    def prepare(self, qw: Any, device: torch.device) -> TritonWeight:
        """Repack into the device layout on `device` (once, at load)."""
        return pack_weight(qw, device)

    def export(self, state: TritonWeight) -> dict[str, Any]:
        """The portable codes, scales and zeros, read back from the device layout (no host copy is kept)."""
        return unpack_weight(state)

    def matmul(self, x: torch.Tensor, state: TritonWeight) -> torch.Tensor:
        """y [..., N] = x [..., K] @ W^T (through a custom op while `torch.compile` traces)."""
        if torch.compiler.is_compiling():
            return matmul_op(x, state)
        return matmul(x, state)

    def takes_q8(self, state: TritonWeight) -> bool:
        """Whether `matmul_q8` runs this weight: integer 4-bit formats on CUDA (the `dp4a` GEMV)."""
        return state.format in Q8_FORMATS and state.device.type == "cuda"

    def quantize(self, x: torch.Tensor) -> Q8Activations:
        """x [..., K] as the int8 activation rows `matmul_q8` takes (`quantize_activations`)."""
        return quantize_activations(x)

    def matmul_q8(self, act: Q8Activations, state: TritonWeight) -> torch.Tensor:
        """y [M, N] for activation rows already quantized to int8 per block of 32 (a fused producer's output:
        `decode_ops.add_rms_norm(..., quantize=True)`, `decode_ops.silu_mul(..., quantize=True)`)."""
        return matmul_q8(act, state)


# Same object for both GPU kinds; priority above the reference (-100) and the dense kernel (0).
register_kernel(formats=FORMATS, device="cuda", priority=100)(TritonLowBitKernel)
register_kernel(formats=FORMATS, device="xpu", priority=100)(TritonLowBitKernel)
