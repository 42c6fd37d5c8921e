"""`EngineCore`: continuous batching - many requests share every forward step, in one background thread.

`submit` turns a prompt and its `GenerationParams` into a request (its own sampler and seeded generator, stop
strings through a `TextAssembler`, its own grammar matcher, max tokens, cancellation) and returns a `Request`
handle at once. The step loop owns the model: each iteration it drops cancelled requests, asks the `Scheduler`
for the step's tokens (decodes, then prefill chunks, then newly admitted prompts), runs one flattened forward
(`ModelRunner`), and turns each returned logits row into its request's next token. Text deltas, the final
`Completion` or an error reach the caller through the request's callback, from the engine thread.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from xpullm.engine.constrained import GrammarConstraint
from xpullm.engine.kv_blocks import BlockPool
from xpullm.engine.params import Completion, GenerationParams
from xpullm.engine.runner import ModelRunner
from xpullm.engine.sampling import Sampler
from xpullm.engine.scheduler import KVBudgetTooSmall, Scheduler, Sequence, StepPlan
from xpullm.engine.stopping import TextAssembler

__all__ = [
    "CoreStats",
    "EngineConfig",
    "EngineCore",
    "KVBudgetTooSmall",
    "Request",
    "build_core",
    "default_kv_tokens",
]

Event = Callable[[str, Any], None]
"""`fn(kind, value)`: kind `delta` (str), `done` (Completion) or `error` (an exception); called from the engine."""

_IDLE_EXIT_S = 30.0  # the engine thread ends after this long without work (restarted by the next submit)


@dataclass(frozen=True)
class EngineConfig:
    """Knobs of the continuous-batching engine."""

    block_size: int = 16
    """Token slots per KV block (the unit of allocation and of prefix sharing)."""
    max_batched_tokens: int = 256
    """Tokens per forward step (decodes + prefill chunks): bounds a step's latency while a long prompt arrives."""
    max_seqs: int = 64
    """Sequences running at once (rows of the block-table tensor)."""
    kv_budget_tokens: int | None = None
    """KV memory in tokens; None: min(context * 8, ~10% of RAM on CPU / 50% of free GPU memory)."""
    prefix_cache: bool = True
    """Share the KV blocks of identical prompt prefixes (LRU-evicted under the budget)."""
    on_accelerators: bool = False
    """Run the engine on CUDA / XPU too (needs a non-reference paged kernel). Off by default until measured there:
    engine steps are eager (no CUDA graphs per batch bucket yet), so one stream is slower than the static
    decoder's graph-captured steps, which GPUs keep (serialized) meanwhile."""


@dataclass(frozen=True)
class CoreStats:
    """A snapshot for metrics (`/metrics`, benchmarks, tests)."""

    queue_len: int
    running: int
    kv_used_blocks: int
    kv_total_blocks: int
    kv_cached_blocks: int
    prefix_hit_blocks: int
    prefix_query_blocks: int
    evicted_blocks: int
    tokens_generated: int
    steps: int
    last_ttft_s: float


class Request:
    """One submitted generation; `cancel()` stops it after the current step (or removes it from the queue)."""

    def __init__(self, seq: Sequence, params: GenerationParams, assembler: TextAssembler, sampler: Sampler,
                 constraint: GrammarConstraint | None, on_event: Event, context: int) -> None:  # fmt: skip
        self.seq = seq
        self.params = params
        self.assembler = assembler
        self.sampler = sampler
        self.constraint = constraint
        self.on_event = on_event
        self.context = context
        self.submitted = time.perf_counter()
        self.first_t: float | None = None
        self.last_t: float | None = None
        self.finish: str | None = None
        self.fast_greedy = params.greedy and params.repetition_penalty == 1.0 and constraint is None
        self._cancel = threading.Event()

    def cancel(self) -> None:
        """Ask the engine to stop this request (thread-safe, idempotent)."""
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        user = self.params.cancel
        return self._cancel.is_set() or (user is not None and user.is_set())

    def completion(self) -> Completion:
        n = len(self.assembler.ids)
        first = (self.first_t - self.submitted) if self.first_t is not None else 0.0
        span = (self.last_t - self.first_t) if self.first_t is not None and self.last_t is not None else 0.0
        return Completion(
            text=self.assembler.text,
            finish_reason=self.finish or "length",  # type: ignore[arg-type]
            prompt_tokens=len(self.seq.prompt),
            completion_tokens=n,
            first_token_s=first,
            decode_tok_s=(n - 1) / span if n > 1 and span > 0 else 0.0,
        )


class EngineCore:
    """Owns the runner and scheduler and runs the step loop in one background thread."""

    def __init__(self, runner: ModelRunner, pool: BlockPool, config: EngineConfig, tokenizer: Any,
                 eos: list[int], context_length: int) -> None:  # fmt: skip
        self.runner = runner
        self.pool = pool
        self.config = config
        self.scheduler = Scheduler(pool, config.max_seqs, config.max_batched_tokens, config.prefix_cache)
        self._tok = tokenizer
        self._eos = eos
        self._eos_set = frozenset(eos)
        self.context_length = context_length
        self._cv = threading.Condition()
        self._incoming: list[Request] = []
        self._requests: dict[int, Request] = {}  # id(seq) -> request, waiting or running; engine thread only
        self._slot_owner: dict[int, Sequence] = {}  # block-table row -> the sequence whose blocks it holds
        self._thread: threading.Thread | None = None
        self._tokens_generated = 0
        self._steps = 0
        self._last_ttft = 0.0

    # -- caller side

    def submit(self, prompt: list[int], params: GenerationParams, on_event: Event) -> Request:
        """Queue a request (validated here, so bad input raises in the caller's thread)."""
        max_len = min(self.context_length, len(prompt) + params.max_new_tokens)
        seq = Sequence(list(prompt), max_len)
        need = -(-max_len // self.pool.block_size)
        if need > self.pool.num_blocks:
            raise KVBudgetTooSmall(
                f"a request of up to {max_len} tokens needs {need} KV blocks of {self.pool.block_size} tokens but "
                f"the budget holds {self.pool.num_blocks}; lower max_new_tokens or raise kv_budget_tokens"
            )
        vocab = self.runner.vocab_size
        constraint = GrammarConstraint.from_params(params, self._tok, 1, vocab, self._eos or [0])
        sampler = Sampler(params, 1, vocab, self.runner.device)
        if params.repetition_penalty != 1.0:
            sampler.observe(torch.tensor([prompt], device=self.runner.device))
        req = Request(seq, params, TextAssembler(self._tok, params.stop), sampler, constraint, on_event,
                      self.context_length)  # fmt: skip
        with self._cv:
            self._incoming.append(req)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="xpullm-engine", daemon=True)
                self._thread.start()
            self._cv.notify()
        return req

    def stats(self) -> CoreStats:
        """Queue, running and KV counts (read without stopping the engine; values may lag one step)."""
        s = self.pool.stats()
        with self._cv:
            incoming = len(self._incoming)
        return CoreStats(
            queue_len=incoming + len(self.scheduler.waiting), running=len(self.scheduler.running),
            kv_used_blocks=s.used, kv_total_blocks=s.total, kv_cached_blocks=s.cached,
            prefix_hit_blocks=s.prefix_hits, prefix_query_blocks=s.prefix_queries, evicted_blocks=s.evictions,
            tokens_generated=self._tokens_generated, steps=self._steps, last_ttft_s=self._last_ttft,
        )  # fmt: skip

    # -- engine thread

    def _loop(self) -> None:
        while True:
            with self._cv:
                if not self._incoming and not self.scheduler.has_work:
                    self._cv.wait(_IDLE_EXIT_S)
                    if not self._incoming and not self.scheduler.has_work:
                        self._thread = None
                        return
                incoming, self._incoming = self._incoming, []
            try:
                self._iterate(incoming)
            except Exception as exc:  # a bug, not a request's fault: fail everything in flight, keep serving
                for req in list(self._requests.values()):
                    self._drop(req)
                    self._emit(req, "error", exc)

    def _iterate(self, incoming: list[Request]) -> None:
        for req in incoming:
            self.scheduler.add(req.seq)
            self._requests[id(req.seq)] = req
        for req in [r for r in self._requests.values() if r.cancelled]:
            req.finish = "cancelled"
            self._flush(req)
        plan = self.scheduler.schedule()
        if plan.chunks:
            self._step(plan)
        else:  # nothing fits yet (cannot happen with a validated queue, but never spin)
            with self._cv:
                self._cv.wait(0.01)

    def _step(self, plan: StepPlan) -> None:
        ids: list[int] = []
        positions: list[int] = []
        seq_index: list[int] = []
        logit_rows: list[int] = []
        for seq, start, n in plan.chunks:
            if self._slot_owner.get(seq.slot) is not seq:  # first chunk of a newly admitted sequence
                self.runner.set_table(seq.slot, seq.blocks)
                self._slot_owner[seq.slot] = seq
            ids.extend(seq.tokens[start : start + n])
            positions.extend(range(start, start + n))
            seq_index.extend([seq.slot] * n)
            if start + n == len(seq.tokens):
                logit_rows.append(len(ids) - 1)
        by_seq = self._requests
        owners = [by_seq[id(seq)] for seq, start, n in plan.chunks if start + n == len(seq.tokens)]
        try:
            logits = self.runner.forward(ids, positions, seq_index, logit_rows)
        except Exception as exc:  # the step's requests fail; the engine keeps serving the others
            for seq, _, _ in plan.chunks:
                req = by_seq[id(seq)]
                self._drop(req)
                self._emit(req, "error", exc)
            return
        self.scheduler.advance(plan)
        self._steps += 1
        greedy = logits.argmax(-1).tolist() if any(r.fast_greedy for r in owners) else None
        now = time.perf_counter()
        for row, req in enumerate(owners):
            try:
                tid = greedy[row] if req.fast_greedy else self._sample(req, logits[row : row + 1])
                self._accept(req, tid, now)
            except Exception as exc:  # e.g. a grammar matcher rejecting a token: only this request fails
                if id(req.seq) in self._requests:
                    self._drop(req)
                self._emit(req, "error", exc)

    def _sample(self, req: Request, logits: torch.Tensor) -> int:
        if req.constraint is not None:
            logits = req.constraint.mask(logits)
        return int(req.sampler(logits)[0])

    def _accept(self, req: Request, tid: int, now: float) -> None:
        if req.first_t is None:
            req.first_t = now
            self._last_ttft = now - req.submitted
        req.last_t = now
        asm = req.assembler
        if tid in self._eos_set:
            req.finish = "stop"
        else:
            self._tokens_generated += 1
            if req.constraint is not None:
                req.constraint.consume(0, tid)
            asm.push(tid)
            if asm.stopped or (req.constraint is not None and req.constraint.finished(0)):
                req.finish = "stop"
            elif (
                len(asm.ids) >= req.params.max_new_tokens or len(req.seq.prompt) + len(asm.ids) >= req.context
            ):
                req.finish = "length"
        if req.finish is not None:
            self._flush(req)
            return
        delta = asm.take_delta()
        if delta:
            self._emit(req, "delta", delta)
        req.seq.tokens.append(tid)
        if req.sampler._seen is not None:
            req.sampler.observe(torch.tensor([tid], device=self.runner.device))
        if req.cancelled:  # stop now rather than after one more step
            req.finish = "cancelled"
            self._flush(req)

    def _flush(self, req: Request) -> None:
        """Finish `req`: free its blocks, hand out the held-back text and the Completion."""
        self._drop(req)
        req.assembler.finish()
        delta = req.assembler.take_delta(final=True)
        if delta:
            self._emit(req, "delta", delta)
        self._emit(req, "done", req.completion())

    def _emit(self, req: Request, kind: str, value: Any) -> None:
        try:
            req.on_event(kind, value)
        except Exception:  # a listener that is gone (closed event loop) must not stop the engine
            req.cancel()

    def _drop(self, req: Request) -> None:
        self.scheduler.finish(req.seq)
        self._requests.pop(id(req.seq), None)


def default_kv_tokens(context_length: int, bytes_per_token: int, device: torch.device) -> int:
    """min(context * 8 sequences, what fits in ~10% of RAM (CPU) or 50% of free accelerator memory)."""
    if device.type == "cuda":
        room = torch.cuda.mem_get_info(device)[0] // 2
    elif device.type == "xpu":
        room = torch.xpu.mem_get_info(device)[0] // 2
    else:
        import os

        room = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 10
    return max(1, min(context_length * 8, room // bytes_per_token))


def build_core(
    dec: Any,
    tokenizer: Any,
    eos: list[int],
    context_length: int,
    config: EngineConfig,
    wrap_runner: Any = None,
) -> EngineCore:
    """An `EngineCore` over a `StaticCacheDecoder`'s weights, with pools sized by `config` (or the default budget).

    `wrap_runner(runner)` (tensor parallelism) returns the object the core calls instead of the runner itself.
    """
    from xpullm.engine.runner import kv_bytes_per_token

    tokens = config.kv_budget_tokens or default_kv_tokens(context_length, kv_bytes_per_token(dec), dec.device)
    num_blocks = max(1, tokens // config.block_size)
    runner = ModelRunner(dec, num_blocks, config.block_size, config.max_seqs, context_length)
    if wrap_runner is not None:
        runner = wrap_runner(runner)
    return EngineCore(
        runner, BlockPool(num_blocks, config.block_size), config, tokenizer, eos, context_length
    )
