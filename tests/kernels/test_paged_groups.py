"""The native paged kernel's token groups: consecutive tokens of one sequence attended in one pass over its keys.

Speculative decoding verifies a draft as one chunk of k + 1 consecutive tokens; the native kernel attends such a
chunk (and prompt chunks) as groups of up to 8 tokens that share every key and value load (`paged_group` in
`csrc/cpu_ops.c`). The engine's promise is that a verified row is bitwise the row plain decoding computes one
token per step, so: each token's output must be bitwise the same whether it comes alone, in a draft-sized chunk,
in a long prompt chunk, next to other sequences' tokens, on any thread count and on every SIMD path the CPU runs.
"""

from __future__ import annotations

import random

import pytest
import torch

from tests.kernels.paged_cases import make_world, run
from xpullm.kernels import cpu_native
from xpullm.kernels.paged import paged_attention

pytestmark = pytest.mark.skipif(
    cpu_native.library() is None, reason="the native CPU library does not build here"
)


def _one_by_one(lengths: list[int], prompt: int) -> list[list[tuple[int, int, int]]]:
    """Sequence 0's prompt in one chunk, then every token in its own step (plain decoding), the others likewise."""
    steps = [[(s, 0, min(prompt, n)) for s, n in enumerate(lengths)]]
    for p in range(prompt, max(lengths)):
        steps.append([(s, p, 1) for s, n in enumerate(lengths) if p < n])
    return steps


def _drafts(lengths: list[int], prompt: int, rng: random.Random) -> list[list[tuple[int, int, int]]]:
    """The same tokens as verification chunks: each step gives each sequence 1..9 tokens (a draft of 0..8 plus
    its last token), shuffled within the step."""
    steps = [[(s, 0, min(prompt, n)) for s, n in enumerate(lengths)]]
    done = [min(prompt, n) for n in lengths]
    while any(d < n for d, n in zip(done, lengths, strict=True)):
        step = []
        for s, n in enumerate(lengths):
            if done[s] < n:
                take = min(rng.randint(1, 9), n - done[s])
                step.append((s, done[s], take))
                done[s] += take
        rng.shuffle(step)
        steps.append(step)
    return steps


@pytest.mark.parametrize("kv_cache_dtype", ["auto", "int8", "fp8_e4m3"])
@pytest.mark.parametrize("isa", cpu_native.isa_paths())
def test_draft_chunks_are_bitwise_one_token_steps(kv_cache_dtype: str, isa: str) -> None:
    # SmolLM2's attention shape (9 heads over 3 kv heads of 64) and an odd one (8 over 2 of 80: 64 + 16 columns).
    for seed, (h, kv, d) in enumerate([(9, 3, 64), (8, 2, 80)]):
        lengths = [150, 61, 97]
        world = make_world(seed, h, kv, d, 16, lengths, norms=seed == 1, kv_cache_dtype=kv_cache_dtype)
        before = torch.get_num_threads()
        try:
            with cpu_native.forced_isa(isa):
                torch.set_num_threads(1)
                plain, plain_pools = run(world, _one_by_one(lengths, 40), paged_attention)
                for threads in (1, 2):
                    torch.set_num_threads(threads)
                    rng = random.Random(seed * 10 + threads)
                    drafted, pools = run(world, _drafts(lengths, 40, rng), paged_attention)
                    whole, _ = run(world, [[(s, 0, n) for s, n in enumerate(lengths)]], paged_attention)
                    for key, row in plain.items():
                        assert torch.equal(drafted[key], row), f"{key}: a draft chunk ({threads})"
                        assert torch.equal(whole[key], row), f"{key}: one chunk"
                    for name, pool in plain_pools.items():
                        assert torch.equal(pool.view(torch.uint8), pools[name].view(torch.uint8)), name
        finally:
            torch.set_num_threads(before)


def test_group_size_setter_changes_no_bit_and_rejects_bad_sizes() -> None:
    """`xq_set_paged_group` (the benchmarks' before / after switch) bounds the group size to 1..8 and returns the
    previous size; groups of one token (the kernel before groups) give the very same bits."""
    lib = cpu_native.library()
    lengths = [120, 33]
    world = make_world(3, 9, 3, 64, 16, lengths, norms=False)
    schedule = _drafts(lengths, 30, random.Random(3))
    grouped, _ = run(world, schedule, paged_attention)
    assert lib.xq_set_paged_group(1) == 8
    try:
        assert lib.xq_set_paged_group(0) == 1 and lib.xq_set_paged_group(9) == 1  # out of range: unchanged
        single, _ = run(world, schedule, paged_attention)
    finally:
        lib.xq_set_paged_group(8)
    assert all(torch.equal(single[key], row) for key, row in grouped.items())
