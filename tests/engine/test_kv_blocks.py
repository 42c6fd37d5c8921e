"""`BlockPool` and `Scheduler` bookkeeping: allocation, reference counts, prefix keys, LRU eviction, budgets."""

from __future__ import annotations

import pytest

from xpullm.engine.kv_blocks import BlockPool, OutOfBlocks, block_keys
from xpullm.engine.scheduler import KVBudgetTooSmall, Scheduler, Sequence


def test_allocate_and_free_return_blocks_to_the_pool() -> None:
    pool = BlockPool(4, 16)
    a = pool.allocate(3)
    assert len(set(a)) == 3 and pool.available == 1
    with pytest.raises(OutOfBlocks):
        pool.allocate(2)
    pool.free(a)
    assert pool.available == 4 and all(pool.refcount(b) == 0 for b in a)
    with pytest.raises(ValueError, match="freed more often"):
        pool.free(a[:1])


def test_block_keys_chain_the_prefix() -> None:
    a = block_keys(list(range(40)), 16)
    b = block_keys(list(range(32)) + [99] * 8, 16)
    c = block_keys([7, *list(range(1, 40))], 16)
    assert len(a) == 2  # only full blocks
    assert a == b[:2]
    assert a[0] != c[0] and a[1] != c[1]  # a different first block changes every later key


def test_shared_prefix_blocks_are_refcounted_and_cached_after_free() -> None:
    pool = BlockPool(6, 4)
    keys = block_keys(list(range(12)), 4)
    first = pool.allocate(3)
    for block, key in zip(first, keys, strict=True):
        pool.register(block, key)
    hit = pool.match_prefix(keys)
    assert hit == first
    second = pool.allocate(1, shared=hit[:2], queried=3)
    assert second[:2] == first[:2] and pool.refcount(first[0]) == 2
    pool.free(first)
    assert pool.refcount(first[0]) == 1 and pool.stats().cached == 1  # first[2] is unowned but still keyed
    pool.free(second)
    stats = pool.stats()
    assert stats.used == 0 and stats.cached == 3 and stats.prefix_hits == 2 and stats.prefix_queries == 3
    assert pool.match_prefix(keys) == first  # still found after every owner left


def test_lru_eviction_takes_free_blocks_first_then_oldest_cached() -> None:
    pool = BlockPool(4, 4)
    old = pool.allocate(2)
    pool.register(old[0], 1)
    pool.register(old[1], 2)
    pool.free(old)  # cached, evictable
    new = pool.allocate(2)
    assert set(new).isdisjoint(old) and pool.stats().evictions == 0  # never-used blocks go first
    recent = pool.allocate(1)
    # old[1] went to the LRU before old[0] (tail blocks first), so it is evicted first; its key is dropped.
    assert recent == [old[1]] and pool.stats().evictions == 1
    assert pool.match_prefix([1]) == [old[0]] and pool.match_prefix([2]) == []


def test_cached_blocks_being_reused_are_not_counted_as_room() -> None:
    pool = BlockPool(2, 4)
    a = pool.allocate(2)
    pool.register(a[0], 10)
    pool.register(a[1], 11)
    pool.free(a)
    assert pool.can_allocate(0, shared=a)
    assert not pool.can_allocate(1, shared=a)  # both evictable blocks are the ones being shared
    assert pool.can_allocate(1, shared=a[:1])


def _plan(sched: Scheduler) -> list[tuple[int, int, int]]:
    """(sequence number, start, count) of the next step; the sequences' tokens advance as the engine does."""
    plan = sched.schedule()
    sched.advance(plan)
    out = []
    for seq, start, n in plan.chunks:
        if seq.computed == len(seq.tokens):
            seq.tokens.append(0)  # a sampled token
        out.append((seq.prompt[0], start, n))
    return out


def test_chunked_prefill_shares_the_budget_with_decodes() -> None:
    sched = Scheduler(BlockPool(64, 4), max_seqs=4, max_batched_tokens=8)
    sched.add(Sequence([1] * 3, max_len=10))
    sched.add(Sequence([2] * 20, max_len=30))
    assert _plan(sched) == [(1, 0, 3), (2, 0, 5)]  # all of the short prompt, a chunk of the long one
    assert _plan(sched) == [(1, 3, 1), (2, 5, 7)]  # the decode goes first, the rest of the budget to prefill
    assert _plan(sched) == [(1, 4, 1), (2, 12, 7)]
    assert _plan(sched) == [(1, 5, 1), (2, 19, 1)]  # the long prompt's last token
    assert _plan(sched) == [(1, 6, 1), (2, 20, 1)]  # both decode


def test_admission_waits_for_blocks_in_fifo_order() -> None:
    sched = Scheduler(BlockPool(4, 4), max_seqs=4, max_batched_tokens=64, prefix_cache=False)
    a, b, c = Sequence([1] * 4, 12), Sequence([2] * 4, 8), Sequence([3] * 2, 4)
    for s in (a, b, c):
        sched.add(s)
    assert [n for n, _, _ in _plan(sched)] == [1]  # a holds 3 of 4 blocks; b needs 2, c (1) waits behind it
    assert len(sched.waiting) == 2
    sched.finish(a)
    assert sched.pool.available == 4
    assert [n for n, _, _ in _plan(sched)] == [2, 3]
    with pytest.raises(KVBudgetTooSmall, match="kv_budget_tokens"):
        sched.add(Sequence([4] * 4, 17))


def test_prefix_hit_skips_cached_blocks_but_always_computes_the_last_token() -> None:
    sched = Scheduler(BlockPool(16, 4), max_seqs=4, max_batched_tokens=64)
    first = Sequence(list(range(8)), 10)
    sched.add(first)
    _plan(sched)
    sched.finish(first)
    again = Sequence(
        list(range(8)), 10
    )  # same 8-token prompt: 2 full blocks, but the last token is recomputed
    longer = Sequence([*list(range(8)), 50, 51], 12)
    sched.add(again)
    sched.add(longer)
    assert _plan(sched) == [(0, 4, 4), (0, 8, 2)]
    assert again.cached == 4 and longer.cached == 8
    assert again.blocks[0] == longer.blocks[0] == sched.pool.match_prefix(first.keys)[0]
