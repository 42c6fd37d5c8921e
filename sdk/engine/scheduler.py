"""`Scheduler`: which tokens of which sequences go into the next engine step (iteration-level scheduling).

Each step, in order: (1) every running sequence in decode gets its one pending token (plus its speculative draft
tokens, if the core set any: `speculative.py`), (2) what is left of the token
budget (`max_batched_tokens`) goes to prefill chunks of running sequences still reading their prompt, oldest
first, (3) then to sequences admitted from the waiting FIFO. A long prompt is thus prefilled over several steps
while decodes keep flowing (chunked prefill).

Admission reserves every block a sequence can ever need (prompt + max new tokens, capped by the context) before
it starts, reusing the cached blocks of its longest known prompt prefix; a sequence that does not fit waits, in
FIFO order. Nothing is preempted or swapped: a running stream never stalls or recomputes, at the cost of
reserving worst-case memory.
"""

from __future__ import annotations

import contextlib
from collections import deque
from dataclasses import dataclass, field

from xpullm.engine.kv_blocks import BlockPool, block_keys
from xpullm.errors import XPULLMError

__all__ = ["KVBudgetTooSmall", "Scheduler", "Sequence", "StepPlan"]


class KVBudgetTooSmall(XPULLMError, ValueError):
    """A request needs more KV blocks than the whole pool holds; it could never be admitted."""


@dataclass(eq=False)
class Sequence:
    """The scheduler's view of one request: its tokens, how many have KV in the cache, its blocks."""

    prompt: list[int]
    max_len: int
    """Longest the sequence may grow (prompt + new tokens); its blocks are reserved for this many tokens."""
    tokens: list[int] = field(default_factory=list)
    """Prompt then generated tokens; the core appends each sampled token."""
    computed: int = 0
    """Leading tokens whose K/V are in the cache."""
    cached: int = 0
    """Leading prompt tokens taken from the prefix cache (not computed for this sequence)."""
    blocks: list[int] = field(default_factory=list)
    slot: int = -1
    """Row of this sequence in the runner's block-table tensor (-1: not admitted)."""
    keys: list[int] = field(default_factory=list)
    registered: int = 0
    """Leading full prompt blocks already published to the prefix cache."""
    finished: bool = False
    draft: list[int] = field(default_factory=list)
    """Speculative tokens after the last one, verified with it in the next step (set by the core, then cleared)."""

    def __post_init__(self) -> None:
        if not self.tokens:
            self.tokens = list(self.prompt)

    @property
    def pending(self) -> int:
        """Tokens waiting to be computed (the rest of the prompt, or the last sampled token)."""
        return len(self.tokens) - self.computed

    @property
    def in_prefill(self) -> bool:
        return self.computed < len(self.prompt)


@dataclass
class StepPlan:
    """One step: `(sequence, first position, token count)` per scheduled sequence, decodes first."""

    chunks: list[tuple[Sequence, int, int]]

    @property
    def num_tokens(self) -> int:
        return sum(n for _, _, n in self.chunks)


class Scheduler:
    """Waiting FIFO + running list over a `BlockPool`.

    Args:
        pool: the block bookkeeping.
        max_seqs: rows of the block-table tensor (sequences running at once).
        max_batched_tokens: tokens per step (decode tokens + prefill chunks).
        prefix_cache: reuse and publish full prompt blocks.
    """

    def __init__(
        self, pool: BlockPool, max_seqs: int, max_batched_tokens: int, prefix_cache: bool = True
    ) -> None:
        if max_batched_tokens < max_seqs:
            raise ValueError(
                f"max_batched_tokens={max_batched_tokens} must be >= max_seqs={max_seqs} (every decode needs a slot)"
            )
        self.pool = pool
        self.max_seqs = max_seqs
        self.max_batched_tokens = max_batched_tokens
        self.prefix_cache = prefix_cache
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self._free_slots = list(range(max_seqs - 1, -1, -1))

    def _blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.pool.block_size)

    def add(self, seq: Sequence) -> None:
        """Queue `seq`; raises `KVBudgetTooSmall` when it could never fit the pool."""
        need = self._blocks_for(seq.max_len)
        if need > self.pool.num_blocks:
            raise KVBudgetTooSmall(
                f"a request of up to {seq.max_len} tokens needs {need} KV blocks but the budget holds "
                f"{self.pool.num_blocks} ({self.pool.num_blocks * self.pool.block_size} tokens); lower max_new_tokens "
                "or create the LLM with a larger kv_budget_tokens"
            )
        self.waiting.append(seq)

    @property
    def has_work(self) -> bool:
        return bool(self.running or self.waiting)

    def _admit(self, seq: Sequence) -> bool:
        bs = self.pool.block_size
        need = self._blocks_for(seq.max_len)
        shared: list[int] = []
        queried = 0
        if self.prefix_cache:
            seq.keys = block_keys(seq.prompt, bs)
            # The last prompt token is always computed (it yields the first logits): at most len - 1 cached tokens.
            usable = (len(seq.prompt) - 1) // bs
            queried = min(usable, len(seq.keys))
            shared = self.pool.match_prefix(seq.keys[:usable])
        if not self._free_slots or not self.pool.can_allocate(need - len(shared), shared):
            return False
        seq.blocks = self.pool.allocate(need - len(shared), shared, queried)
        seq.slot = self._free_slots.pop()
        seq.cached = seq.computed = len(shared) * bs
        seq.registered = len(shared)
        self.running.append(seq)
        return True

    def schedule(self) -> StepPlan:
        """Pick the next step's tokens (may be empty when nothing runs and the head of the queue does not fit)."""
        chunks: list[tuple[Sequence, int, int]] = []
        budget = self.max_batched_tokens
        for seq in self.running:
            if not seq.in_prefill and seq.pending == 1:
                n = 1 + len(seq.draft)  # the core sizes drafts to fit the budget after every decode's token
                chunks.append((seq, seq.computed, n))
                budget -= n
        for seq in self.running:
            if budget <= 0:
                break
            if seq.in_prefill:
                n = min(seq.pending, budget)
                chunks.append((seq, seq.computed, n))
                budget -= n
        while self.waiting and budget > 0 and self._admit(self.waiting[0]):
            seq = self.waiting.popleft()
            n = min(seq.pending, budget)
            chunks.append((seq, seq.computed, n))
            budget -= n
        return StepPlan(chunks)

    def advance(self, plan: StepPlan) -> None:
        """Mark the plan's tokens computed and publish prompt blocks that just became full."""
        for seq, start, n in plan.chunks:
            seq.computed = start + n
            if not self.prefix_cache:
                continue
            full = min(seq.computed, len(seq.prompt)) // self.pool.block_size
            for i in range(seq.registered, min(full, len(seq.keys))):
                self.pool.register(seq.blocks[i], seq.keys[i])
            seq.registered = max(seq.registered, full)

    def finish(self, seq: Sequence) -> None:
        """Remove `seq` (finished, cancelled or failed) and free its blocks and slot at once."""
        if seq.finished:
            return
        seq.finished = True
        if seq.slot >= 0:
            self.running.remove(seq)
            self.pool.free(seq.blocks)
            self._free_slots.append(seq.slot)
            seq.blocks, seq.slot = [], -1
        else:
            with contextlib.suppress(ValueError):
                self.waiting.remove(seq)
