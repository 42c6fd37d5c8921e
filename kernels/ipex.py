"""Intel Extension for PyTorch (IPEX) as an optional CPU kernel backend: its weight-only-quantized (WOQ) linear.

Where `intel_extension_for_pytorch` imports, its WOQ linear (`ipex_prepack.weight_only_qlinear_prepack` +
`torch_ipex.ipex_woq_linear`, the op behind `ipex.llm.quantization.IPEXWeightOnlyQuantizedLinear`) registers for
the formats IPEX's CPU WOQ takes: `sym_int4`, `asym_int4` (IPEX int4 with a float zero point, zp = -min/scale),
`nf4`, `sym_int8` and `fp8_e4m3`. It never runs `fp4` or `fp8_e5m2` (IPEX has no such weight type).

IPEX is never required and never imported by `import xpullm` or `import xpullm.kernels`: this module only looks
the package up (`importlib.util.find_spec`) until the registry asks whether the kernel is available. IPEX 2.8 is
built against torch 2.8, so it lives in its own environment (`pip install xpullm[ipex]`, `make test-ipex`).
`XPULLM_IPEX=0` keeps it out of the registry where it is installed.

Priority, per format, from a measured table (`bench/cpu_kernels.py --kernels ipex_woq,...` in that environment;
docs/benchmarks-cpu-avx512.md, "IPEX as a kernel backend"): IPEX 2.8 builds its fast WOQ kernels (libxsmm/TPP,
AMX) only for CPUs with AVX512-FP16 (Sapphire Rapids and later). On every other CPU, this project's AMD EPYC
Zen 5 included, the op dequantizes the whole weight with ATen ops and runs a dense GEMM on every call: 8-1700x
slower than the native kernels (priority 20) for one row (M=1), and slower than PyTorch's int4/int8 ops (10).
Against the reference kernel (-100), which does the same dequantize-and-multiply: sym_int4 1.2-1.7x faster
(priority 5, so it runs where neither the native library nor PyTorch's op takes the weight); asym_int4, sym_int8
and fp8_e4m3 within the noise of it, nf4 3-100x slower (-110: below the reference, which needs no extra package,
so never picked by default). An AVX512-FP16 CPU, where IPEX's fast path runs, has not been measured (none was
available).

The WOQ op runs with `lowp_mode=NONE` (fp32 compute on fp32 activations): its twin is the activations in fp32
times the format's exact dequantisation (nf4's fp32 levels), up to float summation order.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import logging
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from xpullm.kernels.registry import Kernel, register_kernel
from xpullm.settings import runtime_settings  # layer 0: imports nothing from xpullm

__all__ = ["IPEX_FORMATS", "IPEX_PRIORITY", "IpexWoqKernel", "IpexWoqState", "ipex_module"]

log = logging.getLogger(__name__)

# Our format -> IPEX's `WoqWeightDtype` value (intel_extension_for_pytorch.quantization.WoqWeightDtype).
IPEX_FORMATS: dict[str, int] = {"sym_int8": 1, "sym_int4": 2, "asym_int4": 2, "nf4": 3, "fp8_e4m3": 4}
_LOWP_NONE = 0  # WoqLowpMode.NONE: compute in the activations' dtype (fp32)
_ACT_QUANT_PER_IC_BLOCK = 1  # WoqActQuantMode default; only read by lowp_mode INT8


@functools.cache
def ipex_module() -> Any | None:
    """`intel_extension_for_pytorch` imported, or None where it is not installed or does not import here."""
    if importlib.util.find_spec("intel_extension_for_pytorch") is None:
        return None
    try:
        return importlib.import_module("intel_extension_for_pytorch")
    except Exception as exc:  # a wheel built for another torch fails in many ways (ImportError, OSError, ...)
        log.warning(
            "intel_extension_for_pytorch is installed but does not import (%s): install it with the torch it was "
            "built for (pip install xpullm[ipex] pins both); the IPEX kernel is off",
            str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__,
        )
        return None


@dataclass
class IpexWoqState:
    """IPEX's packed op context, plus the portable weight it was built from (for `export` and row lookups)."""

    context: Any  # torch.ScriptObject from ipex_prepack.weight_only_qlinear_prepack
    qw: Any  # the QuantizedWeight (IPEX's packed layout is not read back)
    in_features: int
    padded_k: int
    out_features: int

    def dequantize_rows(self, rows: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Rows of the float weight (a tied embedding's lookup), the format's exact values."""
        qw = self.qw
        pick = lambda t: None if t is None else t[rows]  # noqa: E731
        part = type(qw)(qw.format, (rows.numel(), qw.shape[1]), qw.group_size, qw.data[rows], pick(qw.scales),
                        pick(qw.zeros))  # fmt: skip
        return part.dequantize(dtype)


def _ipex_weight(qw: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(codes, fp32 scales, fp32 zero points or None) in IPEX's plain layout: [N, K] codes (4-bit: two per byte,
    even column in the low nibble, as ours), scales/zero points [N, groups] (per-channel: [N])."""
    scales = qw.scales.float()
    zeros = None
    if qw.format == "asym_int4":  # ours: q * s + m; IPEX: (q - zp) * s, so zp = -m / s
        zeros = -qw.zeros.float() / scales
    data = qw.data.view(torch.float8_e4m3fn) if qw.format == "fp8_e4m3" else qw.data
    if scales.shape[1] == 1:
        scales = scales[:, 0].contiguous()
        zeros = None if zeros is None else zeros[:, 0].contiguous()
    return data.contiguous(), scales.contiguous(), zeros


class IpexWoqKernel(Kernel):
    """IPEX's weight-only-quantized linear (fp32 compute), where `intel_extension_for_pytorch` imports."""

    name = "ipex_woq"

    def available(self) -> bool:
        return runtime_settings().ipex and ipex_module() is not None

    def supports(self, qw: Any) -> bool:
        if qw.format not in IPEX_FORMATS or qw.scales is None or not self.available():
            return False
        if not bool(torch.isfinite(qw.scales).all()):
            return False
        # asym_int4 needs zp = -m / s: a zero scale with a nonzero minimum has no IPEX form.
        return qw.format != "asym_int4" or bool((qw.scales != 0).all())

    def prepare(self, qw: Any, device: torch.device) -> IpexWoqState:
        ipex_module()  # registers the torch.ops.ipex_prepack / torch_ipex ops
        data, scales, zeros = _ipex_weight(qw)
        n, k = qw.shape
        padded = qw.padded_k
        group = -1 if scales.dim() == 1 else qw.group_size
        context = torch.ops.ipex_prepack.weight_only_qlinear_prepack(
            data, IPEX_FORMATS[qw.format], [n, padded], scales, zeros, None, None, None, group, _LOWP_NONE,
            _ACT_QUANT_PER_IC_BLOCK, False,
        )  # fmt: skip
        return IpexWoqState(context, qw, k, padded, n)

    def matmul(self, x: torch.Tensor, state: IpexWoqState) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1]).float()
        if state.padded_k != state.in_features:
            x2 = F.pad(x2, (0, state.padded_k - state.in_features))
        y = torch.ops.torch_ipex.ipex_woq_linear(x2.contiguous(), state.context.get_data_handle())
        y = y.reshape(*lead, state.out_features)
        return y if x.dtype == torch.float32 else y.to(x.dtype)

    def twin_activations(self, x: torch.Tensor, qw: Any) -> torch.Tensor:
        return x.float()

    def export(self, state: IpexWoqState) -> Any:
        return state.qw


# Measured against the other CPU kernels (module docstring): format -> priority.
IPEX_PRIORITY: dict[str, int] = {
    "sym_int4": 5,
    "asym_int4": -110,
    "nf4": -110,
    "sym_int8": -110,
    "fp8_e4m3": -110,
}
for _priority in sorted(set(IPEX_PRIORITY.values())):
    register_kernel(
        formats=tuple(f for f, p in IPEX_PRIORITY.items() if p == _priority), device="cpu", priority=_priority
    )(IpexWoqKernel)
