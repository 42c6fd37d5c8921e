"""The engine over a tensor-parallel model: every rank runs the same decoder and paged runner on its shard.

Rank 0 lives in the `LLM`'s process and owns everything a caller sees (tokenizer, scheduler, sampling, stop
strings); its decoder and runner are `Mirrored`, so each prefill, decode step and block-table write also runs on
the workers (`xpullm.parallel.launch`), whose sharded layers meet rank 0's in the collectives. Logits are
all-gathered, so sampling on rank 0 alone sees the whole vocabulary. On CUDA each rank's decoder is the CUDA-graph
one, whose captured step holds the NCCL all-reduces and all-gather (unmeasured: no multi-GPU machine was lent).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from xpullm.engine.decode import StaticCacheDecoder, build_decoder
from xpullm.engine.runner import ModelRunner
from xpullm.parallel import Mirrored, RankContext, RankSet, TensorParallelError, load_shard, parallelize

__all__ = ["RankProgram", "TensorParallelModel", "TensorParallelSpec", "build_rank", "start_tensor_parallel"]


@dataclass(frozen=True)
class TensorParallelSpec:
    """What every rank loads (sent to the workers, so plain picklable values)."""

    model: str  # a GGUF file, HF folder or xpullm low-bit folder
    low_bit: str | None = None  # None: the checkpoint's own format
    dtype: torch.dtype = torch.float32  # activations (rank 0 picks it for its device; all ranks use the same)
    group_size: int | None = None


class RankProgram:
    """One rank's shard and the engine objects over it: the decoder, and the paged runner once rank 0 sizes it."""

    def __init__(self, model: nn.Module, dtype: torch.dtype, device: torch.device) -> None:
        from xpullm.engine.llm import _cast_float_params

        model.eval()
        _cast_float_params(model, dtype)
        self.model = model
        self.decoder: Any = build_decoder(model, dtype, device)
        self.static: StaticCacheDecoder = getattr(self.decoder, "inner", self.decoder)
        if not isinstance(self.static, StaticCacheDecoder):
            raise TensorParallelError(
                f"model_type {getattr(model.config, 'model_type', '?')!r} does not decode through the static "
                "decoder, so it cannot be split; tensor parallelism takes llama / mistral / qwen2 / qwen3 models"
            )
        self.runner: ModelRunner | None = None

    def build_runner(self, num_blocks: int, block_size: int, max_seqs: int, max_positions: int,
                     buckets: list[int], scratch_block: int, scratch_row: int) -> None:  # fmt: skip
        """The paged runner with rank 0's pool sizes and step graphs (block ids are rank 0's scheduler's, and a
        graph-replayed step must meet rank 0's in the same collectives, so every rank builds the same runner)."""
        from xpullm.engine.step_graphs import attach_step_graphs

        self.runner = ModelRunner(self.static, num_blocks, block_size, max_seqs, max_positions)
        attach_step_graphs(self.runner, buckets, scratch_block=scratch_block, scratch_row=scratch_row)


def build_rank(ctx: RankContext) -> RankProgram:
    """Load rank `ctx.rank`'s shard, wrap its layers in the collectives and build its decoder (every rank)."""
    spec: TensorParallelSpec = ctx.payload
    model, plan = load_shard(spec.model, ctx.rank, ctx.world, low_bit=spec.low_bit, device=ctx.device,
                             dtype=spec.dtype, group_size=spec.group_size)  # fmt: skip
    parallelize(model, plan, ctx.group)
    return RankProgram(model, spec.dtype, ctx.device)


class TensorParallelModel:
    """Rank 0's handle on a running world: its shard, the mirrored decoder, and the ranks to close."""

    def __init__(self, ranks: RankSet, program: RankProgram) -> None:
        self.ranks = ranks
        self.program = program
        self.model = program.model
        self.static = program.static
        self._lock = threading.Lock()  # one call at a time across decoder and runner: the ranks meet in order
        self.decoder = Mirrored(program.decoder, "decoder", ("start", "step"), ranks, self._lock)

    def wrap_runner(
        self, runner: ModelRunner, buckets: list[int], scratch_block: int, scratch_row: int
    ) -> Mirrored:
        """Build the same runner on every worker and return rank 0's, mirrored (`build_core`'s hook)."""
        sizes = (runner.k_pool.shape[1], runner.block_size, runner.block_tables.shape[0], runner.cos.shape[0])
        with self._lock:
            self.ranks.call("build_runner", *sizes, list(buckets), scratch_block, scratch_row)
        self.program.runner = runner
        return Mirrored(runner, "runner", ("set_table", "forward"), self.ranks, self._lock)

    def close(self) -> None:
        """Stop the workers and leave the world."""
        self.ranks.close()


def start_tensor_parallel(spec: TensorParallelSpec, world: int, device: torch.device,
                          timeout_s: float = 600.0) -> TensorParallelModel:  # fmt: skip
    """Spawn ranks 1..world-1, load every shard (rank 0 here) and return rank 0's handle.

    The split is planned here first (config and format only, no weights), so an impossible one fails before any
    worker starts.
    """
    from xpullm.loading.format_choice import choose_format
    from xpullm.loading.resolve import resolve_source
    from xpullm.parallel import plan_for_source, read_config

    src = resolve_source(spec.model)
    choice = choose_format(src, spec.low_bit, group_size=spec.group_size)
    plan_for_source(src, read_config(src), world, choice, spec.group_size)
    ranks = RankSet(world, device, "xpullm.engine.tensor_parallel:build_rank", spec, timeout_s=timeout_s)
    program = ranks.start()
    return TensorParallelModel(ranks, program)
