"""Graph-replayed engine steps: one captured graph per token-count bucket, padded with scratch rows.

On a GPU an engine step of a few tokens is a few hundred short kernels (projections, norms, paged attention per
layer); launching them from Python costs more than running them. A graph records the launches once and replays
them with one call. A graph needs fixed shapes and addresses, so:

- a step of n tokens replays the graph of the smallest bucket B >= n (`EngineConfig.graph_buckets`, by default
  1, 2, 4, ..., 64). The B - n pad rows are dummy tokens at position 0 of a scratch block-table row whose entries
  all name the scratch block (one block and one table row the engine reserves beside the `BlockPool`'s and never
  hands out): their K/V writes land there, their attention reads only there, and their logits are dropped.
  Projections, norms and the MLP are row-independent and paged attention reads only a token's own sequence, so
  pad rows do not touch the real rows' values;
- the inputs live in one static int64 buffer: for bucket B its first 3 B entries are the token ids, positions and
  block-table rows (one host-to-device copy per step). A plain `nn.Embedding` runs inside the graph; any other
  embedding (a low-bit one whose rows `_EmbedRows` caches on the host) runs before it, into a static buffer of
  hidden states. The pools, the block-table tensor (written in place at admission) and the RoPE tables are the
  runner's own fixed tensors;
- steps of more tokens than the largest bucket (long prompt chunks) run eagerly, as does a bucket whose capture
  failed (reported once).

A bucket is captured on its first step (a warm-up run first compiles and tunes the kernels for that shape). All
graphs of an engine share one memory pool: replays never overlap and each step's logits are copied out before the
next. Backends by device type: CUDA (`torch.cuda.CUDAGraph`), XPU (`torch.xpu.XPUGraph`, where this torch has it);
CPU engines have none. `EAGER_REPLAY` re-runs the recorded function on the same buffers instead of replaying a
graph: no speed gain, but the padding, scratch rows and buffers run exactly as with a graph, which is how the CPU
tests check them. `XPULLM_CUDA_GRAPHS=0` switches graphs off.
"""

from __future__ import annotations

import bisect
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from xpullm.engine.host_copy import to_device
from xpullm.settings import runtime_settings

if TYPE_CHECKING:
    from xpullm.engine.runner import ModelRunner

__all__ = [
    "DEFAULT_BUCKETS",
    "EAGER_REPLAY",
    "GraphBackend",
    "StepGraphs",
    "attach_step_graphs",
    "graph_backend",
]

DEFAULT_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
"""Token counts with a graph: powers of two, so a step pads at most to twice its size (and the low-bit kernels'
row buckets, also powers of two, see the same shapes)."""

Recorded = Callable[[], torch.Tensor]
"""The step a graph records: reads the static buffers, returns the logits tensor."""


@dataclass(frozen=True)
class GraphBackend:
    """How one device type records and replays a step."""

    name: str
    capture: Callable[[Recorded, torch.device, Any], tuple[Callable[[], None], torch.Tensor]]
    """`capture(fn, device, pool) -> (replay, out)`: warm up, record `fn`; `replay()` rewrites `out` in place."""
    new_pool: Callable[[], Any]
    """A memory-pool token the graphs of one engine share (None: no pool)."""


def _cuda_capture(fn: Recorded, device: torch.device, pool: Any) -> tuple[Callable[[], None], torch.Tensor]:
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        fn()  # compiles and tunes the kernels for this shape, and fills allocator pools, outside the capture
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    # thread_local: callers' threads keep using the GPU (sampler tensors at submit) while the engine thread records.
    with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
        out = fn()
    return graph.replay, out


def _xpu_capture(fn: Recorded, device: torch.device, pool: Any) -> tuple[Callable[[], None], torch.Tensor]:
    stream = torch.xpu.Stream(device)
    stream.wait_stream(torch.xpu.current_stream(device))
    with torch.xpu.stream(stream):
        fn()
    torch.xpu.current_stream(device).wait_stream(stream)
    graph = torch.xpu.XPUGraph()
    with torch.xpu.graph(graph, pool=pool):
        out = fn()
    return graph.replay, out


def _eager_capture(fn: Recorded, device: torch.device, pool: Any) -> tuple[Callable[[], None], torch.Tensor]:
    out = fn()
    return (lambda: out.copy_(fn())), out


_BACKENDS: dict[str, GraphBackend] = {
    "cuda": GraphBackend("cuda", _cuda_capture, lambda: torch.cuda.graph_pool_handle()),
    "xpu": GraphBackend("xpu", _xpu_capture, lambda: torch.xpu.graph_pool_handle()),
}
EAGER_REPLAY = GraphBackend("eager", _eager_capture, lambda: None)
"""Re-runs the recorded step on the static buffers (any device): the graph path's bookkeeping without a graph."""


def _xpu_graphs() -> bool:
    xpu = getattr(torch, "xpu", None)
    return all(hasattr(xpu, name) for name in ("XPUGraph", "graph", "graph_pool_handle"))


_AVAILABLE: dict[str, Callable[[], bool]] = {"cuda": lambda: True, "xpu": _xpu_graphs}


def graph_backend(device: torch.device) -> GraphBackend | None:
    """The graph backend for `device`: CUDA, XPU where torch has XPU graphs; None on CPU or with
    XPULLM_CUDA_GRAPHS=0 (then every engine step runs eagerly)."""
    available = _AVAILABLE.get(device.type)
    if available is None or not available() or not runtime_settings().cuda_graphs:
        return None
    return _BACKENDS[device.type]


@dataclass
class _Captured:
    replay: Callable[[], None]
    logits: torch.Tensor  # [bucket, V], rewritten by every replay


class StepGraphs:
    """A `ModelRunner`'s small steps, replayed from graphs captured per token-count bucket (module docstring).

    Args:
        runner: the runner whose `forward_hidden` the graphs record.
        buckets: token counts that get a graph (sorted and deduplicated here).
        backend: how to record and replay (`graph_backend(device)` or `EAGER_REPLAY`).
        scratch_block: a pool block no sequence owns; pad rows write their K/V there.
        scratch_row: a block-table row no sequence owns; filled here with `scratch_block`.
        embed_in_graph: look the tokens up inside the graph; None: when the embedding is a plain `nn.Embedding`.
    """

    def __init__(
        self,
        runner: ModelRunner,
        buckets: Sequence[int],
        backend: GraphBackend,
        scratch_block: int,
        scratch_row: int,
        embed_in_graph: bool | None = None,
    ) -> None:
        if not buckets or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in buckets):
            raise ValueError(
                f"graph buckets must be a non-empty list of positive ints; got {list(buckets)!r}"
            )
        blocks, rows = runner.k_pool.shape[1], runner.block_tables.shape[0]
        if not (0 <= scratch_block < blocks and 0 <= scratch_row < rows):
            raise ValueError(
                f"scratch block {scratch_block} / row {scratch_row} outside the runner's {blocks} blocks / "
                f"{rows} block-table rows; build the runner with one of each to spare (build_core does)"
            )
        self.runner = runner
        self.buckets = tuple(sorted(set(buckets)))
        self.backend = backend
        self.scratch_block = scratch_block
        self.scratch_row = scratch_row
        runner.block_tables[scratch_row].fill_(scratch_block)
        dec, dev, top = runner.dec, runner.device, self.buckets[-1]
        inside = isinstance(dec.embed.embed, nn.Embedding) if embed_in_graph is None else embed_in_graph
        self._x = None if inside else torch.zeros((1, top, dec.hidden), dtype=dec.dtype, device=dev)
        # Bucket B reads its first 3 B entries as [3, B]: token ids, positions, block-table rows.
        self._index = torch.zeros(3 * top, dtype=torch.long, device=dev)
        self._graphs: dict[int, _Captured | None] = {}  # None: the capture failed, that bucket runs eagerly
        self._pool: Any = None
        self.captures = 0  # graphs recorded (tests and benchmarks read these)
        self.replays = 0  # steps served from a graph

    @property
    def max_tokens(self) -> int:
        """The largest step a graph serves."""
        return self.buckets[-1]

    def bucket_for(self, n: int) -> int | None:
        """The smallest bucket >= n tokens, or None when the step is larger than every bucket."""
        i = bisect.bisect_left(self.buckets, n)
        return self.buckets[i] if i < len(self.buckets) else None

    def captured(self) -> dict[int, bool]:
        """bucket -> whether its graph was recorded (False: its capture failed) for the buckets tried so far."""
        return {b: cap is not None for b, cap in sorted(self._graphs.items())}

    def run(
        self,
        input_ids: Sequence[int] | torch.Tensor,
        positions: Sequence[int],
        seq_index: Sequence[int],
        logit_rows: Sequence[int],
    ) -> torch.Tensor | None:
        """The step's logits [len(logit_rows), V] from its bucket's graph, or None when it must run eagerly.
        `input_ids` may be a device tensor (tokens the device sampled, not yet read by the host): then nothing
        here waits for the device."""
        n = len(input_ids)
        bucket = self.bucket_for(n)
        if bucket is None or (bucket in self._graphs and self._graphs[bucket] is None):
            return None
        pad = bucket - n
        index = self._index[: 3 * bucket]
        on_device = isinstance(input_ids, torch.Tensor)
        ids = [0] * n if on_device else input_ids
        index.copy_(to_device([*ids, *[0] * pad, *positions, *[0] * pad, *seq_index,
                               *[self.scratch_row] * pad], index.device))  # fmt: skip
        if on_device:
            index[:n].copy_(input_ids)
        if self._x is not None:
            # Pad rows keep whatever embedding the buffer last held: finite values whose results are dropped.
            embed = self.runner.dec.embed
            rows = embed.on_device(index[None, :n]) if on_device else embed(index[None, :n])
            self._x[0, :n].copy_(rows[0])
        cap = self._graphs.get(bucket)
        if cap is None:
            cap = self._graphs[bucket] = self._capture(bucket)
            if cap is None:
                return None
        cap.replay()
        self.replays += 1
        if len(logit_rows) == n and all(r == i for i, r in enumerate(logit_rows)):  # a decode step: no index
            return cap.logits[:n].clone()
        rows = torch.tensor(logit_rows, dtype=torch.long, device=self.runner.device)
        return cap.logits.index_select(0, rows)

    def _capture(self, bucket: int) -> _Captured | None:
        runner = self.runner
        ids, pos, rows = self._index[: 3 * bucket].view(3, bucket)
        embed = runner.dec.embed

        def step() -> torch.Tensor:
            with torch.inference_mode():
                x = embed.embed(ids[None]).to(embed.dtype) if self._x is None else self._x[:, :bucket]
                return runner.forward_hidden(x, pos, rows, None)

        if self._pool is None:
            self._pool = self.backend.new_pool()
        try:
            # The warm-up and the recording run this very step's inputs: the K/V they write are the ones the
            # replay writes again, so the step's result does not change.
            replay, logits = self.backend.capture(step, runner.device, self._pool)
        except RuntimeError as exc:  # an op that cannot be recorded, out of memory
            warnings.warn(
                f"xpullm: {self.backend.name} graph capture failed for engine steps of {bucket} tokens "
                f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); those steps run eagerly",
                stacklevel=4,
            )
            return None
        self.captures += 1
        return _Captured(replay, logits)


def attach_step_graphs(
    runner: ModelRunner,
    buckets: Sequence[int],
    scratch_block: int,
    scratch_row: int,
    backend: GraphBackend | None = None,
) -> StepGraphs | None:
    """Give `runner` graph-replayed small steps (`runner.graphs`) when `backend` (default: the device's
    `graph_backend`) exists and `buckets` is not empty; returns the `StepGraphs` or None (eager steps)."""
    backend = backend or graph_backend(runner.device)
    runner.graphs = None if backend is None or not buckets else StepGraphs(
        runner, buckets, backend, scratch_block, scratch_row
    )  # fmt: skip
    return runner.graphs
