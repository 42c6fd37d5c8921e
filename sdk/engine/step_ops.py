"""The fixed-shape decode step (`static_step`, what CUDA graphs record) and its ops: plain PyTorch or fused GPU.

A decode step is, per layer: residual add + RMSNorm, the q/k/v projection, RoPE + cache write, attention over
the cache, the output projection, residual add + RMSNorm, gate/up, SwiGLU, down. `static_step` spells that
sequence once and asks a `StepOps` for each piece, so the same code runs
- `StepOps`: eager PyTorch arithmetic on any device (the CPU tests compare it with the eager decoder), and
- `FusedStepOps` (CUDA / XPU with Triton): the residual add inside the next norm's kernel, one decode-attention
  kernel over the filled cache columns, and - for projections whose kernel multiplies int8 activations (the
  `dp4a` GEMV of `sym_int4` / `asym_int4`) - activations quantized by the kernel that produces them (the norm,
  SwiGLU) instead of a separate quantizer launch per projection.
At batch 1 an 8B model's step is ~15 small kernels per layer besides the projections, each costing more in
launch and memory round trips than in arithmetic; the fused ops cut that to 6.
Where the fused ops run, the decoder's eager (unreplayed) unpadded step is `static_step` too, so switching
CUDA graphs off does not change a single token.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from xpullm.linear import LowBitLinear
from xpullm.settings import runtime_settings

if TYPE_CHECKING:
    from xpullm.engine.decode import StaticCacheDecoder

__all__ = ["FusedStepOps", "StepOps", "decoder_layers", "rotate_qk", "static_step"]

# Steps of up to `XPULLM_Q8_ROWS` rows (default 1) get their activations quantized by the producing kernel, for
# the int8-activation GEMV (H100, sym_int4 g128, one Llama-3-8B layer's projections: 87.7 us vs 105.1 us for the
# best bf16 tensor-core tile at one row). Taller batches keep bf16 activations and the tuner's choice among the
# tiles: with int8 activations up to 8 rows (the rule before 2026-12-05) the engine's 8-stream step took 6.55 ms
# against 5.41 ms at 32 streams, while the tiles cost the same at 8 rows as at 1 (109.2 vs 105.1 us per layer,
# `bench/gpu_batched.py`, H100).


class StepOps:
    """Plain PyTorch: the eager decoder's own arithmetic, with attention masked over the whole static cache."""

    def __init__(self, norm: Any, act: Any) -> None:
        self._norm = norm
        self._act = act

    def prepare(self, pos: torch.Tensor, capacity: int) -> Any:
        """Per-step state shared by every layer: here the mask of the filled cache columns (this one included)."""
        cols = torch.arange(capacity, device=pos.device)
        return (cols <= pos)[None, None, None]  # [1, 1, 1, capacity]

    def add_norm(
        self,
        x: torch.Tensor,
        delta: torch.Tensor | None,
        weight: torch.Tensor,
        eps: float,
        consumer: nn.Module,
    ) -> tuple[torch.Tensor, Any]:
        """(h, RMSNorm(h)) with h = x + delta (x when delta is None); the norm is `consumer`'s input."""
        h = x if delta is None else x + delta
        return h, self._norm(h, (h.shape[-1],), weight, eps)

    def project(self, mod: nn.Module, act: Any, batch: int, t: int = 1) -> torch.Tensor:
        """mod(act) as [batch, t, out_features]."""
        return mod(act).view(batch, t, -1)

    def gate(self, gu: torch.Tensor, consumer: nn.Module) -> Any:
        """SwiGLU of the fused gate/up output, as `consumer`'s input."""
        return self._act(gu)

    def attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor, state: Any, scale: float
    ) -> torch.Tensor:
        """Attention of q [B, H, 1, D] over cache columns 0..pos of k, v [B, KV, C, D] -> [B, 1, H * D]."""
        b, h, _, d = q.shape
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=state, scale=scale, enable_gqa=k.shape[1] != h
        )
        return out.transpose(1, 2).reshape(b, 1, h * d)

    def input_of(self, x: torch.Tensor, consumer: nn.Module) -> Any:
        """`x` in the form `consumer` takes (the attention output before the output projection)."""
        return x


class FusedStepOps(StepOps):
    """Fused Triton kernels (`xpullm.kernels.triton.decode_ops` and `.attention`)."""

    def __init__(self, decode_ops: ModuleType, attention: ModuleType) -> None:
        super().__init__(decode_ops.rms_norm, decode_ops.silu_mul)
        self._ops = decode_ops
        self._attention = attention
        self._q8: dict[int, bool] = {}
        self._q8_rows = runtime_settings().q8_rows

    def _takes_q8(self, mod: nn.Module, rows: int) -> bool:
        """Whether `mod` is a bias-free low-bit projection whose kernel multiplies int8 activations."""
        if rows > self._q8_rows:
            return False
        key = id(mod)
        if key not in self._q8:
            self._q8[key] = (
                isinstance(mod, LowBitLinear) and mod.bias is None and mod.kernel.takes_q8(mod.state)
            )
        return self._q8[key]

    def prepare(self, pos: torch.Tensor, capacity: int) -> Any:
        return None  # the attention kernel reads pos itself

    def add_norm(
        self,
        x: torch.Tensor,
        delta: torch.Tensor | None,
        weight: torch.Tensor,
        eps: float,
        consumer: nn.Module,
    ) -> tuple[torch.Tensor, Any]:
        q8 = self._takes_q8(consumer, x.shape[0] * x.shape[1])
        return self._ops.add_rms_norm(x, delta, weight, eps, quantize=q8)

    def project(self, mod: nn.Module, act: Any, batch: int, t: int = 1) -> torch.Tensor:
        if isinstance(act, torch.Tensor):
            return super().project(mod, act, batch, t)
        return mod.kernel.matmul_q8(act, mod.state).view(batch, t, -1)

    def gate(self, gu: torch.Tensor, consumer: nn.Module) -> Any:
        return self._ops.silu_mul(gu, quantize=self._takes_q8(consumer, gu.shape[0] * gu.shape[1]))

    def attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor, state: Any, scale: float
    ) -> torch.Tensor:
        return self._attention.decode_attention(q, k, v, pos, scale)

    def input_of(self, x: torch.Tensor, consumer: nn.Module) -> Any:
        if self._takes_q8(consumer, x.shape[0] * x.shape[1]):
            return consumer.kernel.quantize(x)
        return x


def rotate_qk(
    layer: Any, qkv: torch.Tensor, h: int, kv: int, eps: float, cos: torch.Tensor, sin: torch.Tensor
) -> torch.Tensor:
    """The q and k heads of `qkv` [B, H + 2 KV, t, D] (per-head RMSNorm first for Qwen3), rotated by RoPE.

    RoPE is `addcmul(x * cos, roll(x, D/2), sin)` with sin's first half negated: one op instead of neg + cat.
    """
    if layer.q_norm is not None:
        d = qkv.shape[-1]
        q = F.rms_norm(qkv[:, :h], (d,), layer.q_norm, eps)
        k = F.rms_norm(qkv[:, h : h + kv], (d,), layer.k_norm, eps)
        qk = torch.cat((q, k), dim=1)
    else:
        qk = qkv[:, : h + kv]
    return torch.addcmul(qk * cos, qk.roll(qk.shape[-1] // 2, -1), sin)


Attention = Callable[[int, Any, torch.Tensor], torch.Tensor]
"""`fn(layer index, layer, qkv [B, t, (H + 2 KV) D]) -> attention output [B, t, H D]` (or `input_of`'s form):
RoPE on q and k, k and v written to the layer's cache, attention over the cache. Each decode path brings its own
(eager slices, one native CPU call, fixed-shape GPU kernels); the rest of the layer is `decoder_layers`."""


def decoder_layers(
    dec: StaticCacheDecoder, x: torch.Tensor, ops: StepOps, attention: Attention
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The llama decoder layer stack, written once for every decode path: x [B, t, hidden] -> (x, delta).

    Per layer: residual add + RMSNorm, q/k/v projection, `attention`, output projection, residual add + RMSNorm,
    gate/up, SwiGLU, down. The last layer's MLP output comes back as `delta`, not yet added, so the caller can fuse
    that add into the final norm (`x + delta` is the hidden state).
    """
    batch, t = x.shape[0], x.shape[1]
    eps = dec.eps
    delta = None  # the residual branch's output, added to x inside the next norm
    for i, layer in enumerate(dec.layers):
        x, y = ops.add_norm(x, delta, layer.attn_norm, eps, layer.qkv)
        attn = attention(i, layer, ops.project(layer.qkv, y, batch, t))
        delta = ops.project(layer.o_proj, ops.input_of(attn, layer.o_proj), batch, t)
        x, y = ops.add_norm(x, delta, layer.mlp_norm, eps, layer.gate_up)
        delta = ops.project(
            layer.down, ops.gate(ops.project(layer.gate_up, y, batch, t), layer.down), batch, t
        )
    return x, delta


@torch.inference_mode()
def static_step(dec: StaticCacheDecoder, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """One decode step of `dec` (a StaticCacheDecoder) with fixed shapes: x [B, 1, hidden] at column `pos`.

    The graph-capturable twin of `StaticCacheDecoder._forward` for unpadded batches (`graphs.py` says how a
    fixed shape changes it); the pieces come from `dec.step_ops`. Returns logits [B, V].
    """
    batch = x.shape[0]
    h, kv, d = dec.n_heads, dec.n_kv, dec.head_dim
    eps, ops = dec.eps, dec.step_ops
    rope_write = dec.rope_write
    if rope_write is None:
        cos = dec.cos.index_select(0, pos)[None, None]  # [1, 1, 1, d]
        sin = dec.sin.index_select(0, pos)[None, None]
    k_all, v_all = dec.kv_cache
    state = ops.prepare(pos, k_all.shape[3])

    def attention(i: int, layer: Any, qkv: torch.Tensor) -> torch.Tensor:
        k_cache, v_cache = k_all[i], v_all[i]
        if rope_write is not None:  # one fused kernel: RoPE on q and k, k and v written at column pos
            q = rope_write(qkv.view(batch, -1), dec.cos, dec.sin, pos, k_cache, v_cache, h, kv)
        else:
            qkv = qkv.view(batch, 1, h + 2 * kv, d).transpose(1, 2)
            qk = rotate_qk(layer, qkv, h, kv, eps, cos, sin)
            k_cache.index_copy_(2, pos, qk[:, h:])
            v_cache.index_copy_(2, pos, qkv[:, h + kv :])
            q = qk[:, :h]
        return ops.attend(q, k_cache, v_cache, pos, state, dec.scale)

    x, delta = decoder_layers(dec, x, ops, attention)
    x, y = ops.add_norm(x, delta, dec.final_norm, eps, dec.lm_head)
    return ops.project(dec.lm_head, y, batch)[:, -1]
