"""Graph-replayed engine steps (`xpullm.engine.step_graphs`) on CPU, through the `EAGER_REPLAY` backend: the same
bucket padding, scratch rows and static buffers as a CUDA / XPU graph, with the recorded step re-run instead of
replayed. On the real default model the tokens must be bitwise those of plain eager steps (the native CPU kernels
are row-independent, so pad rows change nothing). The GPU twin is tests/engine/test_engine_gpu.py."""

from __future__ import annotations

import pytest
import torch

from xpullm.engine import LLM
from xpullm.engine.core import EngineConfig
from xpullm.engine.step_graphs import EAGER_REPLAY, StepGraphs, attach_step_graphs, graph_backend

PROMPTS = [
    "The capital of France is",
    "Hi",
    "List three colors:",
    "def fibonacci(n):",
    "Water boils at a temperature of",
]
BUCKETS = (1, 2, 4, 8)


def _engine(llm: LLM, graphs: bool) -> LLM:
    """A fresh engine over the shared model; with EAGER_REPLAY step graphs for steps of <= 8 tokens."""
    other = LLM(llm.model, tokenizer=llm.tokenizer, engine=EngineConfig(max_batched_tokens=16, max_seqs=8))
    core = other.engine
    if graphs:
        attach_step_graphs(core.runner, BUCKETS, core.pool.num_blocks, core.config.max_seqs, EAGER_REPLAY)
    return other


@pytest.fixture(scope="module")
def eager(llm: LLM) -> LLM:
    return _engine(llm, graphs=False)


@pytest.fixture(scope="module")
def replayed(llm: LLM) -> LLM:
    return _engine(llm, graphs=True)


def test_cpu_engines_get_no_graphs(llm: LLM, eager: LLM) -> None:
    assert graph_backend(torch.device("cpu")) is None
    assert llm.engine.runner.graphs is None and eager.engine.runner.graphs is None


def test_scratch_block_and_row_are_reserved_beside_the_pool(replayed: LLM) -> None:
    core = replayed.engine
    runner, graphs = core.runner, core.runner.graphs
    assert isinstance(graphs, StepGraphs)
    assert runner.k_pool.shape[1] == core.pool.num_blocks + 1  # the BlockPool never hands out the last block
    assert runner.block_tables.shape[0] == core.config.max_seqs + 1
    assert graphs.scratch_block == core.pool.num_blocks and graphs.scratch_row == core.config.max_seqs
    assert runner.block_tables[graphs.scratch_row].eq(graphs.scratch_block).all()


def test_bucket_for_pads_to_the_next_bucket(replayed: LLM) -> None:
    graphs = replayed.engine.runner.graphs
    assert [graphs.bucket_for(n) for n in (1, 2, 3, 4, 5, 8, 9, 16)] == [1, 2, 4, 4, 8, 8, None, None]
    assert graphs.max_tokens == 8


def test_bad_buckets_and_scratch_are_refused(replayed: LLM) -> None:
    runner = replayed.engine.runner
    blocks = runner.k_pool.shape[1]
    with pytest.raises(ValueError, match="positive ints"):
        StepGraphs(runner, [0, 4], EAGER_REPLAY, blocks - 1, 0)
    with pytest.raises(ValueError, match="spare"):
        StepGraphs(runner, [1], EAGER_REPLAY, blocks, 0)


def test_concurrent_replayed_steps_give_bitwise_the_eager_tokens(eager: LLM, replayed: LLM) -> None:
    want = eager.generate(PROMPTS, max_new_tokens=8)
    graphs = replayed.engine.runner.graphs
    steps_before = replayed.engine.stats().steps
    got = replayed.generate(PROMPTS, max_new_tokens=8)
    assert [c.text for c in got] == [c.text for c in want]
    assert [c.completion_tokens for c in got] == [c.completion_tokens for c in want]
    steps = replayed.engine.stats().steps - steps_before
    # Five prompts of 2-8 tokens admitted in 16-token steps (eager: larger than every bucket), then decode steps
    # of 5, 4, ... tokens padded to buckets 8, 4, 2, 1 as requests finish.
    assert 0 < graphs.replays < steps
    assert graphs.captured() and all(graphs.captured().values())
    assert set(graphs.captured()) <= set(BUCKETS)
    # A second round records nothing new: the buffers and graphs are reused.
    captures = graphs.captures
    again = replayed.generate(PROMPTS, max_new_tokens=8)  # the same steps, so the same buckets
    assert [c.text for c in again] == [c.text for c in want]
    assert graphs.captures == captures


def test_pad_rows_write_only_slot_zero_of_the_scratch_block(replayed: LLM) -> None:
    replayed.generate(PROMPTS[:3], max_new_tokens=4)  # three decodes padded to bucket 4: one pad row per step
    runner, graphs = replayed.engine.runner, replayed.engine.runner.graphs
    scratch_k = runner.k_pool[:, graphs.scratch_block]  # [layers, kv heads, block_size, head_dim]
    assert scratch_k[:, :, 0].abs().sum() > 0  # pad rows (position 0) wrote here
    assert scratch_k[:, :, 1:].abs().sum() == 0  # and nowhere else in the block


def test_alone_equals_concurrent_with_replayed_steps(replayed: LLM) -> None:
    alone = [replayed.generate(p, max_new_tokens=6).text for p in PROMPTS[:3]]
    together = [c.text for c in replayed.generate(PROMPTS[:3], max_new_tokens=6)]
    assert together == alone


def test_embedding_outside_the_graph_gives_the_same_tokens(eager: LLM) -> None:
    """Embeddings that are not a plain nn.Embedding (low-bit ones) are looked up before the graph, into a buffer."""
    core = eager.engine
    want = [c.text for c in eager.generate(PROMPTS[:3], max_new_tokens=6)]
    graphs = StepGraphs(core.runner, BUCKETS, EAGER_REPLAY, core.pool.num_blocks, core.config.max_seqs, False)
    assert graphs._x is not None
    core.runner.graphs = graphs
    try:
        assert [c.text for c in eager.generate(PROMPTS[:3], max_new_tokens=6)] == want
    finally:
        core.runner.graphs = None  # the fixture's engine stays graph-free for the other tests
    assert graphs.replays > 0
