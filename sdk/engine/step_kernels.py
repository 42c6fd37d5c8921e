"""Which implementation runs each small decoder op on a device: a registry, like the matmul kernels'.

The projections pick their kernel through `xpullm.kernels.registry`; the ops between them (RMSNorm, SwiGLU, the
fused RoPE + KV write of the GPU graph step, the one-call CPU decode attention, paged attention, and the engine's
whole layer stack where it runs as fused native calls) are chosen here, by (op, device type) and a predicate on the `OpContext` (activation dtype, native library, head size,
Qwen3's q/k norms). `StaticCacheDecoder` and the engine's runner both ask `select_op`; the highest priority entry
whose predicate holds wins, and a `"*"` entry at priority 0 is every op's portable fallback.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import torch
import torch.nn.functional as F

from xpullm.kernels import cpu_native
from xpullm.settings import runtime_settings

__all__ = ["OpContext", "OpImpl", "gpu_decode_ops", "register_op", "registered_ops", "select_op", "swiglu"]


@dataclass(frozen=True)
class OpContext:
    """What an implementation may depend on."""

    device: str
    """Device type: `cpu`, `cuda`, `xpu`."""
    dtype: torch.dtype
    """Activation dtype."""
    head_dim: int = 64
    """Attention head size (fused GPU RoPE wants a power of two <= 256)."""
    qk_norm: bool = False
    """Qwen3-style per-head norms on q and k before RoPE."""


@dataclass(frozen=True)
class OpImpl:
    """One registered implementation; `load(ctx)` returns the callable (None: the op is not fused here)."""

    op: str
    device: str
    name: str
    priority: int
    when: Callable[[OpContext], bool]
    load: Callable[[OpContext], Any]


_OPS: list[OpImpl] = []


def register_op(
    op: str, device: str, name: str, priority: int = 0, when: Callable[[OpContext], bool] = lambda c: True
) -> Callable[[Callable[[OpContext], Any]], Callable[[OpContext], Any]]:
    """Decorator: `load(ctx) -> callable` implements `op` on `device` (`cpu`/`cuda`/`xpu`/`*`) where `when(ctx)`."""

    def add(load: Callable[[OpContext], Any]) -> Callable[[OpContext], Any]:
        _OPS.append(OpImpl(op, device, name, priority, when, load))
        _OPS.sort(key=lambda e: -e.priority)
        return load

    return add


def select_op(op: str, ctx: OpContext) -> OpImpl:
    """The best implementation of `op` for `ctx` (raises LookupError naming the op when none is registered)."""
    for impl in _OPS:
        if impl.op == op and impl.device in (ctx.device, "*") and impl.when(ctx):
            return impl
    raise LookupError(f"no implementation of decoder op {op!r} for {ctx}; register one with register_op")


def registered_ops(ctx: OpContext) -> dict[str, str]:
    """op -> name of the implementation `select_op` picks for `ctx` (for logs and benchmarks)."""
    return {op: select_op(op, ctx).name for op in dict.fromkeys(e.op for e in _OPS)}


def swiglu(gu: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up for the fused gate/up projection's output [..., 2F]."""
    g, u = gu.chunk(2, dim=-1)
    return F.silu(g) * u


def gpu_decode_ops(device: torch.device | str) -> ModuleType | None:
    """`xpullm.kernels.triton.decode_ops` on CUDA / XPU when Triton imports (and XPULLM_FUSED_OPS != 0), else None.

    Each of its kernels replaces 3-8 small ATen kernels per layer (RMSNorm, SwiGLU, RoPE + KV write); at batch 1
    a decode step is hundreds of such kernels, so this is most of the step's non-matmul time.
    """
    if torch.device(device).type not in ("cuda", "xpu") or not runtime_settings().fused_ops:
        return None
    try:
        from xpullm.kernels.triton import decode_ops
    except ImportError:
        return None
    return decode_ops


def _native(ctx: OpContext) -> bool:
    # The native CPU ops are fp32 (one call instead of ~8 ATen ops for a norm, ~10 for a decode attention).
    return ctx.dtype == torch.float32 and cpu_native.library() is not None


def _gpu(ctx: OpContext) -> bool:
    return gpu_decode_ops(ctx.device) is not None


def _fusable_rope(ctx: OpContext) -> bool:
    d = ctx.head_dim
    return _gpu(ctx) and not ctx.qk_norm and d & (d - 1) == 0 and d <= 256


# -- RMSNorm: fn(x, shape, weight, eps)
register_op("rms_norm", "*", "torch")(lambda ctx: F.rms_norm)
register_op("rms_norm", "cpu", "cpu_native", 10, _native)(lambda ctx: cpu_native.rms_norm)
for _dev in ("cuda", "xpu"):
    register_op("rms_norm", _dev, "triton", 10, _gpu)(lambda ctx: gpu_decode_ops(ctx.device).rms_norm)

# -- SwiGLU on the fused gate/up output: fn(gu)
register_op("silu_mul", "*", "torch")(lambda ctx: swiglu)
register_op("silu_mul", "cpu", "cpu_native", 10, _native)(lambda ctx: cpu_native.silu_mul)
for _dev in ("cuda", "xpu"):
    register_op("silu_mul", _dev, "triton", 10, _gpu)(lambda ctx: gpu_decode_ops(ctx.device).silu_mul)

# -- RoPE + KV-cache write fused into one kernel for the fixed-shape (graph) step; None: RoPE by `rotate_qk`
register_op("rope_kv_write", "*", "unfused")(lambda ctx: None)
for _dev in ("cuda", "xpu"):
    register_op("rope_kv_write", _dev, "triton", 10, _fusable_rope)(
        lambda ctx: gpu_decode_ops(ctx.device).rope_kv_write
    )

# -- one decode step's RoPE + cache write + attention as one call (static cache); None: eager attention
register_op("decode_attention", "*", "eager")(lambda ctx: None)
register_op("decode_attention", "cpu", "cpu_native", 10, lambda c: _native(c) and not c.qk_norm)(
    lambda ctx: cpu_native.decode_attention
)


# -- the engine's whole layer stack: load(ctx) gives `build(dec) -> stack or None` (None: `decoder_layers` over the
#    step ops). On CPU in fp32, two native calls per layer around attention (`cpu_layers.py`).
def _native_stack(ctx: OpContext) -> bool:
    return _native(ctx) and runtime_settings().fused_ops


def _load_native_stack(ctx: OpContext) -> Any:
    from xpullm.engine.cpu_layers import NativeLayerStack

    return NativeLayerStack.build


register_op("layer_stack", "*", "step_ops")(lambda ctx: None)
register_op("layer_stack", "cpu", "cpu_native", 10, _native_stack)(_load_native_stack)


# -- paged attention over the engine's block pools (signature in docs/engine.md)
def _kernels_paged(ctx: OpContext) -> bool:
    import importlib.util

    return importlib.util.find_spec("xpullm.kernels.paged") is not None


@register_op("paged_attention", "*", "reference")
def _load_reference(ctx: OpContext) -> Any:
    from xpullm.engine._paged_ref import reference_paged_attention

    return reference_paged_attention


@register_op("paged_attention", "*", "kernels.paged", 10, _kernels_paged)
def _load_kernels_paged(ctx: OpContext) -> Any:
    from xpullm.kernels.paged import paged_attention

    return paged_attention
