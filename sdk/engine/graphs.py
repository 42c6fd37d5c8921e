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

import warnings
from dataclasses import dataclass
from typing import Any

import torch

from xpullm.engine.step_ops import static_step
from xpullm.settings import runtime_settings

__all__ = ["GraphedDecoder", "graphs_enabled", "static_step"]


def graphs_enabled(device: torch.device) -> bool:
    """CUDA graphs are used on CUDA devices unless XPULLM_CUDA_GRAPHS=0."""
    return device.type == "cuda" and runtime_settings().cuda_graphs


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    x: torch.Tensor  # [B, 1, hidden] input hidden states (the embedding lookup stays outside the graph)
    pos: torch.Tensor  # long [1]: the cache column this step writes
    logits: torch.Tensor  # [B, V] output


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
        k_cache = self.inner.kv_cache[0]
        key = (k_cache.data_ptr(), k_cache.shape[3], self.inner.cos.data_ptr())
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
