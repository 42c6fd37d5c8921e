"""What a step costs on this machine: timed on the runner itself, in the row and block the engine keeps spare.

`build_core` reserves one block-table row and one block beyond the allocator's (the step graphs' scratch), so these
timings write K/V nowhere a sequence reads. `measured_row_cost` is the default `SpeculativeConfig.verify_cost`: what
one more verified token adds to a one-token step differs by an order of magnitude between machines (timed here:
0.07-0.08 for the packaged 135M model on a 2-core Xeon with AMX, 0.003 for a Llama-3-8B in bf16 and 0.03 in fp8 on
an H100; docs/benchmarks-speculative.md), and a drafter told the wrong cost drafts too little or too much.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from xpullm.engine.runner import ModelRunner

__all__ = ["DEFAULT_ROW_COST", "measured_row_cost", "step_time"]

DEFAULT_ROW_COST = 0.15
"""The row cost when it cannot be timed (a runner without spare pools: tensor-parallel engines)."""
MAX_ROW_COST = 0.9
"""Upper clamp of a measured row cost (above it no draft pays anyway; a noisy timing must not say more)."""

SLOW_PAIR_S = 0.25
"""A pair of timed steps longer than this (seconds) is repeated twice, not `repeat` times."""

_MEASURED: dict[tuple[Any, ...], float] = {}  # one timing per model shape, machine set-up and row count


def _spare(runner: ModelRunner) -> tuple[int, int]:
    """The spare block-table row, pointed at the spare block for all of its positions."""
    row, block = runner.block_tables.shape[0] - 1, runner.k_pool.shape[1] - 1
    runner.block_tables[row].fill_(block)
    return row, block


def _seconds(fn: Callable[[], torch.Tensor]) -> float:
    start = time.perf_counter()
    fn().sum().item()  # .item(): the step has finished
    return time.perf_counter() - start


def step_time(runner: ModelRunner, repeat: int = 3) -> float:
    """Seconds of one one-token step (the best of `repeat`) in the spare row, so no sequence's K/V is touched."""
    row, _ = _spare(runner)
    return min(_seconds(lambda: runner.forward([0], [0], [row], [0])) for _ in range(repeat))


def _key(runner: ModelRunner, rows: int, context: int) -> tuple[Any, ...]:
    dec = runner.dec
    shapes = tuple((name, tuple(t.shape), t.dtype) for name, t in dec.lm_head.named_parameters())
    layer = dec.layers[0]
    kinds = tuple(type(getattr(layer, n, None)).__name__ for n in ("qkv", "o_proj", "gate_up", "down"))
    formats = tuple(getattr(getattr(layer, n, None), "format_name", None) for n in ("qkv", "gate_up"))
    return (
        type(dec).__name__, len(dec.layers), shapes, kinds, formats, str(runner.device), runner.k_pool.dtype,
        torch.get_num_threads(), runner.graphs is not None, rows, context,
    )  # fmt: skip


def measured_row_cost(runner: ModelRunner, rows: int, context: int = 256, repeat: int = 5) -> float:
    """What one more token adds to a one-token step, relative to that step: (t(rows) / t(1) - 1) / (rows - 1),
    steps at `context` tokens into the spare row (attention over that many positions), the best of `repeat`
    interleaved timings each (2 where a pair of steps takes over `SLOW_PAIR_S`). Timed once per model shape,
    device, thread count and row count in a process (engines over the same model share it); `DEFAULT_ROW_COST`
    where the runner has no spare pools to time in."""
    if rows < 2 or not hasattr(runner, "k_pool") or not hasattr(runner, "block_tables"):
        return DEFAULT_ROW_COST
    positions = min(runner.cos.shape[0], runner.block_tables.shape[1] * runner.block_size)
    context = max(0, min(context, positions - rows))
    key = _key(runner, rows, context)
    if key in _MEASURED:
        return _MEASURED[key]
    row, _ = _spare(runner)
    one = lambda: runner.forward([0], [context], [row], [0])  # noqa: E731
    many = lambda: runner.forward(  # noqa: E731
        [0] * rows, list(range(context, context + rows)), [row] * rows, list(range(rows))
    )
    one(), many()  # first calls: graph capture, kernel tuning, caches
    t1, tk = _seconds(one), _seconds(many)
    if t1 + tk > SLOW_PAIR_S:  # a big model on a CPU: a few seconds of timing at start is enough
        repeat = min(repeat, 2)
    for _ in range(repeat - 1):  # interleaved: a busy moment slows both, the minimum keeps the quiet one
        t1 = min(t1, _seconds(one))
        tk = min(tk, _seconds(many))
    cost = min(MAX_ROW_COST, max(0.0, (tk / t1 - 1.0) / (rows - 1)))
    _MEASURED[key] = cost
    return cost
