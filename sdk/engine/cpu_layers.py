"""`NativeLayerStack`: the llama layer stack on CPU as two native calls per layer around attention.

`decoder_layers` spends, per layer, about a dozen Python-level calls (residual adds, two norms, four projections
through `nn.Module.__call__` and the kernel's ctypes wrapper, SwiGLU as three ATen ops); for the packaged 135M
model at batch 1 that was a third of a decode step. Where every projection of every layer runs a native tiled
integer kernel (sym_int4, asym_int4, nf4, fp4, sym_int8) on CPU in fp32, the engine's runner calls this instead:

    xq_norm_linear   h += delta; qkv = rms_norm(h) @ Wqkv^T          (activations quantised once, in C)
    attention        the runner's callback (paged attention), unchanged
    xq_out_mlp       h += attn @ Wo^T; delta = down(silu(g) * u), [g | u] = rms_norm(h) @ Wgu^T

Each piece is the unfused arithmetic (the same C norm, quantiser, tile kernels and SwiGLU as the CPU's step ops),
so the result is `decoder_layers`' bit for bit, and a row's result does not depend on the other rows of the step
(batch invariance holds as before). Buffers are allocated once per forward and shared by the layers. `XPULLM_FUSED_OPS=0` turns
it off (the runner then runs `decoder_layers` over the step ops).
"""

from __future__ import annotations

import ctypes
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from xpullm.kernels import cpu_native
from xpullm.linear import LowBitLinear

if TYPE_CHECKING:
    from xpullm.engine.decode import StaticCacheDecoder

__all__ = ["NativeLayerStack"]

_STATE = operator.attrgetter("state")


@dataclass
class _Plan:
    """One layer's arguments, fixed at build: norm weight pointers (the layer holds the tensors) and projection
    descriptors (with the states whose tensors they point into, kept alive and checked before every forward)."""

    layer: Any
    attn_norm: int
    mlp_norm: int
    qkv: cpu_native.LinearDesc
    o: cpu_native.LinearDesc
    gate_up: cpu_native.LinearDesc
    down: cpu_native.LinearDesc
    held: tuple[tuple[nn.Module, Any], ...]

    def __post_init__(self) -> None:
        # Addresses of the descriptors, as the C calls take them (this plan keeps the descriptors alive).
        self.addr = tuple(ctypes.addressof(d) for d in (self.qkv, self.o, self.gate_up, self.down))


def _tiled(mod: nn.Module) -> cpu_native.NativeTiledState | None:
    """The native tiled state of a bias-free low-bit projection in eval mode without hooks (the native calls
    would skip them), else None."""
    if not isinstance(mod, LowBitLinear) or mod.bias is not None or mod.training:
        return None
    if mod._forward_hooks or mod._forward_pre_hooks:
        return None
    state = mod.state
    if not isinstance(mod.kernel, cpu_native._NativeTiledKernel) or not isinstance(
        state, cpu_native.NativeTiledState
    ):
        return None
    return state


class NativeLayerStack:
    """Runs `decoder_layers`' arithmetic as `xq_norm_linear` + attention + `xq_out_mlp` per layer (module doc)."""

    def __init__(self, dec: StaticCacheDecoder, plans: list[_Plan]) -> None:
        self._dec = dec
        self._plans = plans
        self._lib = cpu_native.library()
        self.hidden = dec.hidden
        self.eps = float(dec.eps)
        descs = [d for p in plans for d in (p.qkv, p.o, p.gate_up, p.down)]
        self._k_max = max(d.k for d in descs)
        self._qkv_rows = max(p.qkv.n_out for p in plans)
        self._gu_rows = max(p.gate_up.n_out for p in plans)
        held = [pair for p in plans for pair in p.held]
        self._mods, self._states = tuple(m for m, _ in held), tuple(s for _, s in held)

    @classmethod
    def build(cls, dec: StaticCacheDecoder) -> NativeLayerStack | None:
        """The stack for `dec`'s layers, or None where one of them does not fit (another kernel, a bias, an
        adapter-wrapped projection, a shape the calls do not take)."""
        if dec.device.type != "cpu" or dec.dtype != torch.float32 or cpu_native.library() is None:
            return None
        plans = []
        for layer in dec.layers:
            mods = (layer.qkv, layer.o_proj, layer.gate_up, layer.down)
            states = [_tiled(m) for m in mods]
            if any(s is None for s in states):
                return None
            qkv, o, gu, down = states
            # The calls read the norm output at the projections' padded width and write hidden-wide residuals.
            if (
                o.shape[0] != dec.hidden
                or down.shape[0] != dec.hidden
                or gu.shape[0] % 2
                or qkv.padded_k < dec.hidden
                or gu.padded_k < dec.hidden
                or down.padded_k < gu.shape[0] // 2
                or not all(
                    w.dtype == torch.float32 and w.is_contiguous() for w in (layer.attn_norm, layer.mlp_norm)
                )
            ):
                return None
            descs = [cpu_native.linear_desc(s) for s in states]
            held = tuple(zip(mods, states, strict=True))
            plans.append(
                _Plan(layer, layer.attn_norm.data_ptr(), layer.mlp_norm.data_ptr(), *descs, held=held)
            )
        return cls(dec, plans)

    def valid(self) -> bool:
        """Whether every projection still holds the state the descriptors point into (a reload or device move
        replaces it)."""
        return all(
            map(operator.is_, map(_STATE, self._mods), self._states)
        )  # C-level loop: ~120 pairs a step

    def run(
        self,
        x: torch.Tensor,
        attention: Callable[[int, Any, torch.Tensor], torch.Tensor],
        index: Sequence[int],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`decoder_layers` over layers `index` of x [1, N, hidden]: returns (x, delta) as it does. `attention`
        takes (position in `index`, layer, qkv [1, N, (H + 2 KV) D]) and returns [1, N, H D]."""
        n, hidden, eps, lib = x.shape[1], self.hidden, self.eps, self._lib
        threads = torch.get_num_threads()
        h = x.reshape(n, hidden).to(torch.float32, copy=True)  # updated in place, layer by layer
        qkv_flat = torch.empty(n * self._qkv_rows)
        delta = torch.empty(n, hidden)
        scratch = cpu_native.LayerScratch.new(n, self._k_max, self._gu_rows)
        h_p, qkv_p, delta_p = h.data_ptr(), qkv_flat.data_ptr(), delta.data_ptr()
        y_p, gu_p, acts_p = scratch.y.data_ptr(), scratch.gu.data_ptr(), scratch.acts.data_ptr()
        pending = None  # the previous layer's MLP output, added into h by the next norm
        for j, i in enumerate(index):
            p = self._plans[i]
            qkv_a, o_a, gu_a, down_a = p.addr
            status = lib.xq_norm_linear(
                h_p, pending, p.attn_norm, eps, n, hidden, qkv_a, qkv_p, y_p, acts_p, threads
            )
            rows = p.qkv.n_out
            attn = attention(j, p.layer, qkv_flat[: n * rows].view(1, n, rows)).reshape(n, -1).contiguous()
            status |= lib.xq_out_mlp(
                attn.data_ptr(), attn.shape[1], h_p, o_a, p.mlp_norm, eps, gu_a, down_a, n, hidden, delta_p, y_p,
                gu_p, acts_p, threads,
            )  # fmt: skip
            if status:
                raise RuntimeError(
                    "the native CPU layer calls found no SIMD path (the library reported none)"
                )
            pending = delta_p
        if pending is None:  # no layers: x itself and a zero delta
            delta.zero_()
        return h.view(1, n, hidden), delta.view(1, n, hidden)
