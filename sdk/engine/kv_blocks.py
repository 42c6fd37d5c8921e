"""`BlockPool`: the bookkeeping of paged KV memory (which physical block belongs to whom), no tensors.

The KV pools hold `num_blocks` blocks of `block_size` token slots each (`runner.py` owns the tensors). A sequence
owns a list of block ids. Blocks are reference-counted so sequences can share the blocks of a common prompt prefix:
every FULL prompt block is keyed by a chained hash (parent block's key + the block's token ids), so a key names
the whole prefix up to and including that block. A block whose count drops to 0 keeps its key and joins an LRU
list: it can be found again by a later request until allocation needs the room; allocation takes never-used free
blocks first, then evicts the least recently used cached block (dropping its key).

Streaming (`StreamingWindow`): a sequence keeps only its first `sinks` tokens and its last `window` tokens. Its
block-table row is a ring (`xpullm.kernels.paged.table_column`): the sink blocks stay in the first columns, the
others cycle through the rest. When a new block's column still holds an older block, that block has left the
window: it is freed back to the pool and a fresh block takes the column (`slide`). So a sequence never owns more
than `width` blocks however long it runs.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from xpullm.kernels.paged import ring_width, table_column

__all__ = ["BlockPool", "BlockStats", "OutOfBlocks", "StreamingWindow", "block_keys"]


class OutOfBlocks(RuntimeError):
    """An allocation asked for more blocks than are free or evictable (callers check `can_allocate` first)."""


def block_keys(tokens: Sequence[int], block_size: int) -> list[int]:
    """Chained keys of every full block of `tokens`: key[i] hashes key[i - 1] and the block's token ids."""
    keys: list[int] = []
    parent = 0
    for start in range(0, len(tokens) - block_size + 1, block_size):
        parent = hash((parent, tuple(tokens[start : start + block_size])))
        keys.append(parent)
    return keys


@dataclass(frozen=True)
class BlockStats:
    """A snapshot of the pool for metrics."""

    total: int
    """Blocks in the pool."""
    used: int
    """Blocks owned by at least one sequence."""
    cached: int
    """Unowned blocks that still hold a keyed prefix (evictable)."""
    prefix_hits: int
    """Blocks reused from the prefix cache since start."""
    prefix_queries: int
    """Full prompt blocks looked up since start."""
    evictions: int
    """Cached blocks evicted to make room since start."""


class BlockPool:
    """Allocation, reference counts, prefix keys and LRU eviction over `num_blocks` block ids."""

    def __init__(self, num_blocks: int, block_size: int) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"num_blocks={num_blocks} and block_size={block_size} must both be >= 1")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self._free: list[int] = list(
            range(num_blocks - 1, -1, -1)
        )  # never used (or unkeyed): pop() from the end
        self._refs = [0] * num_blocks
        self._key_of: list[int | None] = [None] * num_blocks
        self._by_key: dict[int, int] = {}
        self._lru: OrderedDict[int, None] = OrderedDict()  # refcount-0 keyed blocks, oldest first
        self.prefix_hits = 0
        self.prefix_queries = 0
        self.evictions = 0

    # -- queries

    @property
    def available(self) -> int:
        """Blocks an allocation can take now: free ones plus evictable cached ones."""
        return len(self._free) + len(self._lru)

    def match_prefix(self, keys: Sequence[int]) -> list[int]:
        """Block ids of the longest run of leading `keys` present in the cache (no reference taken)."""
        found = []
        for key in keys:
            block = self._by_key.get(key)
            if block is None:
                break
            found.append(block)
        return found

    def can_allocate(self, new_blocks: int, shared: Sequence[int] = ()) -> bool:
        """Whether `allocate(new_blocks, shared)` would succeed (shared blocks sitting in the LRU are not room)."""
        idle_shared = sum(1 for b in shared if self._refs[b] == 0)
        return new_blocks <= self.available - idle_shared

    def stats(self) -> BlockStats:
        """Counts for metrics."""
        used = self.num_blocks - self.available
        return BlockStats(
            self.num_blocks, used, len(self._lru), self.prefix_hits, self.prefix_queries, self.evictions
        )

    # -- changes

    def allocate(self, new_blocks: int, shared: Sequence[int] = (), queried: int = 0) -> list[int]:
        """Take a reference on each `shared` block, then `new_blocks` fresh ones; return shared + fresh ids.

        `queried` is how many full prompt blocks were looked up (hit-rate statistics only).
        """
        if not self.can_allocate(new_blocks, shared):
            raise OutOfBlocks(f"{new_blocks} new blocks asked for, {self.available} free or evictable")
        for b in shared:
            if self._refs[b] == 0:
                self._lru.pop(b)
            self._refs[b] += 1
        self.prefix_hits += len(shared)
        self.prefix_queries += queried
        fresh = [self._take() for _ in range(new_blocks)]
        return [*shared, *fresh]

    def _take(self) -> int:
        if self._free:
            block = self._free.pop()
        else:
            block, _ = self._lru.popitem(last=False)
            self._forget(block)
            self.evictions += 1
        self._refs[block] = 1
        return block

    def _forget(self, block: int) -> None:
        key = self._key_of[block]
        if key is not None:
            self._key_of[block] = None
            if self._by_key.get(key) == block:
                del self._by_key[key]

    def register(self, block: int, key: int) -> None:
        """Key a full, computed block so later prompts with the same prefix reuse it (first writer wins)."""
        if self._key_of[block] is not None or key in self._by_key:
            return
        self._key_of[block] = key
        self._by_key[key] = block

    def free(self, blocks: Sequence[int]) -> None:
        """Drop one reference on each block; unowned keyed blocks become evictable cache, the rest free."""
        for b in reversed(blocks):  # tail blocks first, so a prefix's head blocks are evicted last
            if self._refs[b] <= 0:
                raise ValueError(f"block {b} freed more often than allocated")
            self._refs[b] -= 1
            if self._refs[b] == 0:
                if self._key_of[b] is not None:
                    self._lru[b] = None
                else:
                    self._free.append(b)

    def refcount(self, block: int) -> int:
        """References held on `block`."""
        return self._refs[block]

    def clear_cache(self) -> None:
        """Forget every cached prefix (e.g. after the weights change); owned blocks are untouched."""
        for b in list(self._lru):
            self._forget(b)
            self._free.append(b)
        self._lru.clear()
        for b in range(self.num_blocks):
            self._forget(b)


@dataclass(frozen=True)
class StreamingWindow:
    """Every sequence's KV in streaming mode: `sinks` first tokens + the last `window` tokens, in a ring of block
    table columns wide enough for one step's tokens on top of the window."""

    sinks: int
    window: int
    block_size: int
    step_tokens: int
    """The most tokens one step computes for one sequence (the scheduler's `max_batched_tokens`)."""

    def __post_init__(self) -> None:
        if self.window < 1 or self.sinks < 0:
            raise ValueError(
                f"streaming needs window >= 1 and sinks >= 0 tokens; got window={self.window}, sinks={self.sinks}"
            )

    @property
    def width(self) -> int:
        """Block-table columns (and most blocks) one sequence holds."""
        return ring_width(self.window, self.sinks, self.block_size, self.step_tokens)

    @property
    def sink_blocks(self) -> int:
        """Leading blocks that never leave (they hold the sink tokens)."""
        return -(-self.sinks // self.block_size)

    def slide(self, pool: BlockPool, blocks: list[int], held: list[int], first: int, last: int) -> bool:
        """Make the columns of absolute blocks first..last hold them: a column still holding an older block
        (one that left the window) frees it and takes a fresh one. `blocks` / `held`: per column, the physical
        block and the absolute block it holds (updated in place). Returns whether any column changed."""
        changed = False
        for b in range(first, last + 1):
            c = table_column(b, self.window, self.sinks, self.block_size, self.width)
            if held[c] == b:
                continue
            pool.free([blocks[c]])  # first: the freed block is room for the fresh one
            blocks[c] = pool.allocate(1)[0]
            held[c] = b
            changed = True
        return changed
