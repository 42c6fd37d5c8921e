"""CUDA-graph decode steps for `StaticCacheDecoder`: one captured graph per batch size, replayed every token.

At batch 1 a decode step of a small or low-bit model is a few hundred short kernels; launching them from
Python costs more than running them. A CUDA graph records the launches once and replays them with one call.
A graph needs fixed shapes and addresses, so the captured step differs from the eager one in two places:
- the new token's position is a device tensor (RoPE rows are gathered and the K/V column written by index),
- attention runs over the whole cache with a mask of the filled columns, instead of over a slice.
Everything else (norms, projections through the same low-bit kernels, MLP) is the eager code's arithmetic;
where Triton is available RoPE and the K/V write are one fused kernel (`kernels/triton/decode_ops.py`).

Only unpadded batches replay graphs: padded rows attend per row over their own keys (exact batch ==
sequential, see `decode.py`), which is left to the eager path. Prefill is always eager. A capture that fails
(an op that cannot be captured, out of memory) is reported once and that batch size stays eager.
`XPULLM_CUDA_GRAPHS=0` switches graphs off.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Any

import torch

from xpullm.engine.decode import rotate_qk

__all__ = ["GraphedDecoder", "graphs_enabled"]


def graphs_enabled(device: torch.device) -> bool:
    """CUDA graphs are used on CUDA devices unless XPULLM_CUDA_GRAPHS=0."""
    return device.type == "cuda" and os.environ.get("XPULLM_CUDA_GRAPHS", "1") != "0"


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    x: torch.Tensor  # [B, 1, hidden] input hidden states (the embedding lookup stays outside the graph)
    pos: torch.Tensor  # long [1]: the cache column this step writes
    logits: torch.Tensor  # [B, V] output


@torch.inference_mode()
def static_step(dec: Any, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """One decode step of `dec` (a StaticCacheDecoder) with fixed shapes: x [B, 1, hidden] at column `pos`.

    The graph-capturable twin of `StaticCacheDecoder._forward` for unpadded batches (see the module docstring
    for the two differences); the pieces come from `dec.step_ops` (`step_ops.py`). Returns logits [B, V].
    """
    batch = x.shape[0]
    h, kv, d = dec.n_heads, dec.n_kv, dec.head_dim
    eps, ops = dec.eps, dec.step_ops
    rope_write = dec._rope_write
    if rope_write is None:
        cos = dec._cos.index_select(0, pos)[None, None]  # [1, 1, 1, d]
        sin = dec._sin.index_select(0, pos)[None, None]
    state = ops.prepare(pos, dec._k.shape[3])
    delta = None  # the residual branch's output, added to x inside the next norm
    for i, layer in enumerate(dec.layers):
        x, y = ops.add_norm(x, delta, layer.attn_norm, eps, layer.qkv)
        k_cache, v_cache = dec._k[i], dec._v[i]
        qkv = ops.project(layer.qkv, y, batch)
        if rope_write is not None:  # one fused kernel: RoPE on q and k, k and v written at column pos
            q = rope_write(qkv.view(batch, -1), dec._cos, dec._sin, pos, k_cache, v_cache, h, kv)
        else:
            qkv = qkv.view(batch, 1, h + 2 * kv, d).transpose(1, 2)
            qk = rotate_qk(layer, qkv, h, kv, eps, cos, sin)
            k_cache.index_copy_(2, pos, qk[:, h:])
            v_cache.index_copy_(2, pos, qkv[:, h + kv :])
            q = qk[:, :h]
        attn = ops.attend(q, k_cache, v_cache, pos, state, dec.scale)
        delta = ops.project(layer.o_proj, ops.input_of(attn, layer.o_proj), batch)
        x, y = ops.add_norm(x, delta, layer.mlp_norm, eps, layer.gate_up)
        delta = ops.project(layer.down, ops.gate(ops.project(layer.gate_up, y, batch), layer.down), batch)
    x, y = ops.add_norm(x, delta, dec.final_norm, eps, dec.lm_head)
    return ops.project(dec.lm_head, y, batch)[:, -1]


class GraphedDecoder:
    """A `StaticCacheDecoder` whose unpadded decode steps replay CUDA graphs (same `start` / `step` API).

    Graphs are keyed by batch size and by the cache and RoPE tensors they were recorded on; when
    `StaticCacheDecoder` reallocates those (a longer or wider request), the old graphs are dropped and the next
    step records again. Attribute reads fall through to the wrapped decoder.
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self._graphs: dict[int, _Captured | None] = {}  # None: capture failed for this batch size
        self._buffers_key: tuple[int, ...] | None = None
        self.replays = 0  # steps served from a graph (tests and benchmarks read it)

    def __getattr__(self, name: str) -> Any:
        if name == "inner":  # not set yet (copy / unpickle): no recursion through this method
            raise AttributeError(name)
        return getattr(self.inner, name)

    @property
    def capacity(self) -> int:
        return self.inner.capacity

    def start(self, input_ids: torch.Tensor, pad: torch.Tensor, max_len: int) -> torch.Tensor:
        """Prefill (eager)."""
        logits = self.inner.start(input_ids, pad, max_len)
        key = (self.inner._k.data_ptr(), self.inner._k.shape[3], self.inner._cos.data_ptr())
        if key != self._buffers_key:
            self._graphs.clear()  # recorded on buffers that no longer exist
            self._buffers_key = key
        return logits

    @torch.inference_mode()
    def step(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Append one token per row [B]; next-token logits [B, V] (a fresh tensor, safe to keep)."""
        dec = self.inner
        if dec._pad is not None or dec.pos >= dec.capacity:
            return dec.step(token_ids)  # padded rows: exact per-row attention; a full cache: its error
        batch = token_ids.shape[0]
        if batch not in self._graphs:
            self._graphs[batch] = self._capture(batch)
        cap = self._graphs[batch]
        if cap is None:
            return dec.step(token_ids)
        cap.x.copy_(dec.embed(token_ids[:, None]))
        cap.pos.fill_(dec.pos)
        cap.graph.replay()
        dec.pos += 1
        self.replays += 1
        return cap.logits.clone()

    def _capture(self, batch: int) -> _Captured | None:
        dec = self.inner
        x = torch.zeros(batch, 1, dec.hidden, dtype=dec.dtype, device=dec.device)
        # Warm-up and capture write K/V column `pos`, which this very step overwrites before reading it.
        pos = torch.full((1,), dec.pos, dtype=torch.long, device=dec.device)
        try:
            stream = torch.cuda.Stream(dec.device)
            stream.wait_stream(torch.cuda.current_stream(dec.device))
            with torch.cuda.stream(stream):
                static_step(dec, x, pos)  # tunes kernels and fills allocator pools outside the capture
            torch.cuda.current_stream(dec.device).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                logits = static_step(dec, x, pos)
        except (RuntimeError, torch.cuda.OutOfMemoryError) as exc:
            warnings.warn(
                f"xpullm: CUDA-graph capture failed for batch {batch} ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0][:200]}); decoding this batch size eagerly",
                stacklevel=3,
            )
            return None
        return _Captured(graph=graph, x=x, pos=pos, logits=logits)
