"""`EngineCore`: continuous batching - many requests share every forward step, in one background thread.

`submit` turns a prompt and its `GenerationParams` into a request (its own sampler and seeded generator, stop
strings through a `TextAssembler`, its own grammar matcher, max tokens, cancellation) and returns a `Request`
handle at once. The step loop owns the model: each iteration it drops cancelled requests, asks the `Scheduler`
for the step's tokens (decodes, then prefill chunks, then newly admitted prompts), runs one flattened forward
(`ModelRunner`), and turns each returned logits row into its request's next token. Text deltas, the final
`Completion` or an error reach the caller through the request's callback, from the engine thread.

With speculative decoding on (`EngineConfig.speculative`), a drafter first proposes tokens for the decoding
requests; each such request's step chunk is its last token plus the drafts, and the core accepts row by row while
the model's token equals the draft, then rolls the sequence back to its last accepted position (`speculative.py`).

On accelerators a step is queued (`_launch`) and then completed (`_complete`): the last step's text is made while
the device runs it, and where every running request decodes greedily without drafts, the next step is queued
before this one's tokens are read, fed by their argmax on the device (`EngineConfig.launch_ahead`, `_run_ahead`).
"""

from __future__ import annotations

import atexit
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from xpullm.engine.constrained import GrammarConstraint
from xpullm.engine.host_copy import to_device, to_host
from xpullm.engine.kv_blocks import BlockPool, StreamingWindow
from xpullm.engine.params import Completion, GenerationParams, InvalidParameter, Timings, TokenLogprob
from xpullm.engine.runner import ModelRunner
from xpullm.engine.sampling import Sampler
from xpullm.engine.scheduler import KVBudgetTooSmall, Scheduler, Sequence, StepPlan
from xpullm.engine.speculative import DraftSlot, SpecState, SpeculativeConfig, make_drafter
from xpullm.engine.step_cost import DEFAULT_ROW_COST, measured_row_cost
from xpullm.engine.step_graphs import DEFAULT_BUCKETS, attach_step_graphs
from xpullm.engine.stopping import TextAssembler, decoder_for

__all__ = [
    "ENGINE_ON_ACCELERATOR",
    "CoreStats",
    "EngineConfig",
    "EngineCore",
    "KVBudgetTooSmall",
    "Request",
    "build_core",
    "default_kv_tokens",
]

Event = Callable[[str, Any], None]
"""`fn(kind, value)`: kind `delta` (str), `done` (Completion) or `error` (an exception); called from the engine.
With `GenerationParams.logprobs` set, also `token` (TokenLogprob) for each generated token, before its text's delta."""

_IDLE_EXIT_S = 30.0  # the engine thread ends after this long without work (restarted by the next submit)
_EXIT_JOIN_S = 5.0  # at interpreter exit, how long to wait for an engine thread to leave its step

# Engine threads are daemons (a forgotten LLM must not keep a program alive), but a daemon thread still inside a
# torch op when the interpreter finalizes aborts the process ("terminate called without an active exception").
# So at exit every live engine cancels what it runs and its thread is joined before finalization starts.
_LIVE_CORES: weakref.WeakSet[EngineCore] = weakref.WeakSet()


def _stop_engines_at_exit() -> None:
    for core in list(_LIVE_CORES):
        core.stop(_EXIT_JOIN_S)


atexit.register(_stop_engines_at_exit)


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
    on_accelerators: bool | None = None
    """Run the engine on CUDA / XPU too (needs a non-reference paged kernel); None: the device's entry in
    `ENGINE_ON_ACCELERATOR`. Otherwise GPUs decode through the serialized static decoder (one call at a time)."""
    graph_buckets: tuple[int, ...] = DEFAULT_BUCKETS
    """Token counts whose steps replay a captured graph on CUDA / XPU (a step pads up to the next bucket; larger
    steps run eagerly); (): no graphs."""
    speculative: SpeculativeConfig | None = field(default_factory=SpeculativeConfig)
    """Speculative decoding (drafter, draft length, adaptation); None decodes one token per step. Outputs are the
    same either way; prompt lookup (the default) measured faster on grounded prompts and no slower on open chat."""
    kv_cache_dtype: str = "auto"
    """KV pool element: "auto" (the activation dtype), "bf16", "int8" or "fp8_e4m3" (8-bit codes + one fp32 scale
    per token and kv head: ~2x the tokens of bf16 / ~4x of fp32 in the same bytes, read directly by the kernels)."""
    kv_budget_bytes: int | None = None
    """KV memory in bytes (turned into tokens by the KV dtype's bytes per token); kv_budget_tokens wins."""
    streaming: bool = False
    """Keep each sequence's first `streaming_sinks` tokens + its last `streaming_window` tokens only: generation
    and prompts run past the context length, KV memory per sequence stays bounded (docs/engine.md: trade-off)."""
    streaming_sinks: int = 4
    """Attention-sink tokens streaming keeps (StreamingLLM: the first few tokens soak up attention mass)."""
    streaming_window: int | None = None
    """Recent tokens streaming attends; None: the context length minus the sinks."""
    overlap_text: bool | None = None
    """Turn a step's tokens into text (detokenization, stop strings, the callers' events) while the device runs
    the next step, one step behind; None: on for CUDA / XPU, whose steps run asynchronously (on a CPU the step
    is the engine thread's own work, so overlapping would only delay every token by a step). Outputs are the
    same either way; a request ended by a stop string may have one more token computed and dropped."""

    launch_ahead: bool | None = None
    """Queue the next decode step before the host has read this step's tokens: its input ids are this step's
    argmax, taken on the device, so the device never waits for the host's token bookkeeping between steps. Only
    steps where every running request decodes greedily without drafts (no prefill, no arrivals waiting) run
    ahead; a row whose token the host then picks differently (EOS banned by min_tokens) or whose request has
    ended is dropped and recomputed or forgotten. None: on where `overlap_text` is (CUDA / XPU). Outputs are the
    same either way."""

    def __post_init__(self) -> None:
        from xpullm.kernels.paged import KV_CACHE_DTYPES

        if self.kv_cache_dtype not in KV_CACHE_DTYPES:
            raise InvalidParameter("kv_cache_dtype", self.kv_cache_dtype, f"one of {sorted(KV_CACHE_DTYPES)}")
        if self.streaming_sinks < 0:
            raise InvalidParameter("streaming_sinks", self.streaming_sinks, "an int >= 0")
        if self.streaming_window is not None and self.streaming_window < 1:
            raise InvalidParameter("streaming_window", self.streaming_window, "an int >= 1 or None")


# Whether `LLM` runs the engine on an accelerator when `EngineConfig.on_accelerators` is None. CUDA: on since the
# H100 measurement of 2026-12-05 (bench/engine_gpu.py, docs/benchmarks-batching.md): one stream through `LLM` at
# 0.96x the serialized static decoder (int4 and bf16), 8 streams 2.6x (int4) / 7.7x (bf16) one stream's aggregate,
# plus what only the engine has (concurrent callers, logprobs, speculative decoding, 8-bit KV, streaming).
# XPU: unmeasured, so the serialized path stays.
ENGINE_ON_ACCELERATOR: dict[str, bool] = {"cuda": True, "xpu": False}


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
    draft_tokens: int = 0
    """Speculative draft tokens verified (all requests since start)."""
    accepted_draft_tokens: int = 0
    """Draft tokens accepted: tokens gained over plain decoding."""
    ahead_steps: int = 0
    """Steps queued before the host had read the previous step's tokens (`EngineConfig.launch_ahead`)."""


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
        self.logprobs: list[TokenLogprob] = []
        self.fast_greedy = params.greedy and params.repetition_penalty == 1.0 and constraint is None
        self.spec: SpecState | None = None  # set by the core when this request may speculate
        self.steps = 0  # engine steps that produced tokens for this request
        self.produced = 0  # tokens those steps produced (EOS included)
        self.kept = 0  # of those, the ones the text gets (EOS excluded): what max_new_tokens counts
        self.closed = False  # its last events (final text, done or error) are sent
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
            timings=Timings(
                steps=self.steps,
                tokens=self.produced,
                draft_tokens=self.spec.drafted if self.spec else 0,
                accepted_tokens=self.spec.accepted if self.spec else 0,
            ),
            logprobs=tuple(self.logprobs) if self.params.logprobs is not None else None,
        )


@dataclass
class _Launched:
    """A step queued on the device whose tokens the host has not taken yet."""

    chunks: list[tuple[Sequence, int, int]]
    owners: list[tuple[Request, list[int]]]
    """The requests that get tokens from this step, with their drafts."""
    first_rows: list[int]
    """Per owner, its first logits row (one row per draft token, plus one)."""
    logits: torch.Tensor
    argmax: torch.Tensor | None
    """Each logits row's argmax on the device (when a greedy request is in the step): a step run ahead reads it."""
    greedy: Callable[[], list[int]] | None
    """Waits for `argmax` on the host (and for nothing queued after it)."""
    fed_from: list[int] = field(default_factory=list)
    """Run ahead: per chunk, the previous step's logits row whose argmax is its input token."""
    stale: set[int] = field(default_factory=set)
    """Run ahead: id()s of sequences whose input token the host picked differently (their rows are dropped)."""

    def keep(self, i: int) -> bool:
        seq = self.chunks[i][0]
        return not seq.finished and id(seq) not in self.stale


class EngineCore:
    """Owns the runner and scheduler and runs the step loop in one background thread."""

    def __init__(self, runner: ModelRunner, pool: BlockPool, config: EngineConfig, tokenizer: Any,
                 eos: list[int], context_length: int) -> None:  # fmt: skip
        self.runner = runner
        self.pool = pool
        self.config = config
        self.streaming = _streaming(config, context_length)
        self.scheduler = Scheduler(
            pool, config.max_seqs, config.max_batched_tokens, config.prefix_cache, self.streaming
        )
        self._tok = tokenizer
        self._decode = decoder_for(tokenizer)  # one per engine: every request's TextAssembler shares it
        self._eos = eos
        self._eos_set = frozenset(eos)
        self.context_length = context_length
        self._cv = threading.Condition()
        self._incoming: list[Request] = []
        self._requests: dict[int, Request] = {}  # id(seq) -> request, waiting or running; engine thread only
        self._slot_owner: dict[int, Sequence] = {}  # block-table row -> the sequence whose blocks it holds
        # Text work of the last step's tokens, done while the GPU runs the next step (`_drain`): (request, token,
        # its logprob), or (request, None, None) once the request has finished on the token side.
        self._pending: list[tuple[Request, int | None, TokenLogprob | None]] = []
        overlap = config.overlap_text
        self._overlap = runner.device.type != "cpu" if overlap is None else overlap
        ahead = self._overlap if config.launch_ahead is None else config.launch_ahead
        # A tensor-parallel runner mirrors its calls to other ranks, which take host token ids only.
        self._launch_ahead = ahead and self.streaming is None and isinstance(runner, ModelRunner)
        self._ahead: _Launched | None = None  # the step queued ahead, its tokens not taken yet
        self._ahead_steps = 0
        self._stale_rows = 0  # rows run ahead on a token the host did not keep (recomputed)
        self._thread: threading.Thread | None = None
        self._tokens_generated = 0
        self._steps = 0
        self._last_ttft = 0.0
        spec = config.speculative
        self._drafter = make_drafter(runner, spec) if spec is not None else None
        self.verify_cost: float = DEFAULT_ROW_COST
        """What one more verified token adds to a one-token step: the config's, or timed here on the runner."""
        if spec is not None and self.streaming is None:
            measured = spec.verify_cost is None
            self.verify_cost = measured_row_cost(runner, 1 + spec.num_draft) if measured else spec.verify_cost
        self._draft_tokens = 0
        self._accepted_tokens = 0
        self._stopping = False
        _LIVE_CORES.add(self)

    # -- caller side

    def stop(self, timeout: float | None = None) -> None:
        """Cancel every queued and running request and end the engine thread (waiting up to `timeout` seconds
        for its current step). Called for every engine at interpreter exit; a later `submit` starts afresh."""
        with self._cv:
            self._stopping = True
            thread = self._thread
            self._cv.notify_all()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        with self._cv:
            if thread is None or not thread.is_alive():  # else it stops after its step
                self._stopping = False

    def submit(self, prompt: list[int], params: GenerationParams, on_event: Event) -> Request:
        """Queue a request (validated here, so bad input raises in the caller's thread)."""
        max_len = len(prompt) + params.max_new_tokens
        if self.streaming is None:
            max_len = min(self.context_length, max_len)
        seq = Sequence(list(prompt), max_len)
        need = self.scheduler.blocks_for(max_len)
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
        context = sys.maxsize if self.streaming else self.context_length  # streaming: no context end
        req = Request(seq, params, TextAssembler(self._tok, params.stop, self._decode), sampler, constraint, on_event,
                      context)  # fmt: skip
        if self._drafter is not None and params.speculative and not self.streaming:
            # Grammar-constrained requests speculate too: `_verify` masks and consumes row by row, only the tokens
            # it emits, so the matcher never needs a rollback.
            cfg = self.config.speculative
            # A drafter that sizes its drafts weighs its costly part itself (the hybrid's low-bit copy).
            own = cfg.draft_cost is None or self._drafter.sizes_drafts
            drafting = self._drafter.cost if own else cfg.draft_cost
            state = self._drafter.start(req.seq.prompt)
            req.spec = SpecState(cfg, state, self.verify_cost, drafting, self._drafter.sizes_drafts)
        with self._cv:
            self._incoming.append(req)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="xpullm-engine", daemon=True)
                self._thread.start()
            self._cv.notify()
        return req

    def submit_all(self, items: Iterable[tuple[list[int], GenerationParams, Event]]) -> list[Request]:
        """Queue (prompt, params, on_event) requests as one arrival: the engine thread takes them together, so a
        caller's batch shares its first step whatever the thread was doing. If one is refused, the ones queued
        before it are cancelled and the error raised."""
        queued: list[Request] = []
        with self._cv:  # re-entrant (`submit` takes it too); the engine thread takes arrivals only under it
            try:
                for prompt, params, on_event in items:
                    queued.append(self.submit(prompt, params, on_event))
            except BaseException:
                for req in queued:
                    req.cancel()
                raise
        return queued

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
            draft_tokens=self._draft_tokens, accepted_draft_tokens=self._accepted_tokens,
            ahead_steps=self._ahead_steps,
        )  # fmt: skip

    # -- engine thread

    def _loop(self) -> None:
        while True:
            with self._cv:
                if self._stopping:
                    incoming, self._incoming = self._incoming, []
                    self._thread = None
                    break
                if not self._incoming and not self.scheduler.has_work and self._ahead is None:
                    self._cv.wait(_IDLE_EXIT_S)
                    if not self._incoming and not self.scheduler.has_work:
                        self._thread = None
                        return
                incoming, self._incoming = self._incoming, []
            try:
                self._iterate(incoming)
            except Exception as exc:  # a bug, not a request's fault: fail everything in flight, keep serving
                self._ahead = None
                self._drain()
                for req in list(self._requests.values()):
                    self._fail(req, exc)
        # Stopped: what was queued or running ends as cancelled (its blocks freed, its caller told).
        self._ahead = None
        self._drain()
        for req in incoming:
            self.scheduler.add(req.seq)
            self._requests[id(req.seq)] = req
        for req in list(self._requests.values()):
            req.finish = "cancelled"
            self._flush(req)

    def _iterate(self, incoming: list[Request]) -> None:
        for req in incoming:
            self.scheduler.add(req.seq)
            self._requests[id(req.seq)] = req
        for req in [r for r in self._requests.values() if r.cancelled]:
            req.finish = "cancelled"
            self._flush(req)
        step, self._ahead = self._ahead, None
        if step is None:
            if self._drafter is not None:
                self._draft()
            plan = self.scheduler.schedule()
            if not plan.chunks:  # nothing fits yet (cannot happen with a validated queue, but never spin)
                self._drain()
                with self._cv:
                    self._cv.wait(0.01)
                return
            step = self._launch(plan.chunks)
        else:  # run ahead: its rows of requests that have ended, or whose input token was wrong, are dropped
            kept = [i for i in range(len(step.chunks)) if step.keep(i)]
            step.chunks = [step.chunks[i] for i in kept]
            step.owners = [step.owners[i] for i in kept]
            step.first_rows = [step.first_rows[i] for i in kept]
        if step is not None:
            self.scheduler.advance(StepPlan(step.chunks))
            self._complete(step)
        # The last tokens' text and events go out before the loop may idle.
        if not self.scheduler.has_work and self._ahead is None:
            self._drain()

    def _draft(self) -> None:
        """Set `seq.draft` for the decoding requests that speculate, within the step's token budget."""
        decoding = [s for s in self.scheduler.running if not s.in_prefill and s.pending == 1]
        spare = self.scheduler.max_batched_tokens - len(decoding)
        batch: list[DraftSlot] = []
        owners: list[Sequence] = []
        for seq in decoding:
            spec = self._requests[id(seq)].spec
            if spec is None or spare <= 0:
                continue
            left = len(seq.prompt) + self._requests[id(seq)].params.max_new_tokens - len(seq.tokens)
            # Verified positions stay inside the reserved blocks; the last token a step can add is a free one.
            k = min(spec.want(len(decoding)), seq.max_len - len(seq.tokens), left - 1, spare)
            if k > 0:
                batch.append(DraftSlot(seq.tokens, k, seq.slot, spec.drafter_state, spec.cost(len(decoding))))
                owners.append(seq)
                spare -= k
        if not batch:
            return
        for seq, slot, draft in zip(owners, batch, self._drafter.propose(batch), strict=True):  # type: ignore[union-attr]
            seq.draft = list(draft[: slot.k])
            if not draft and self._drafter.cost > 0:  # type: ignore[union-attr]
                self._requests[id(seq)].spec.missed()  # type: ignore[union-attr]

    def _launch(
        self, chunks: list[tuple[Sequence, int, int]], fed: torch.Tensor | None = None
    ) -> _Launched | None:
        """Queue one step of `chunks` on the device; None when the forward raised (its requests fail, the engine
        keeps serving the others). `fed`: the step's input ids as a device tensor (a step run ahead: one decode
        token per chunk, sampled on the device by the step before it)."""
        ids: list[int] = []
        positions: list[int] = []
        seq_index: list[int] = []
        logit_rows: list[int] = []
        owners: list[tuple[Request, list[int]]] = []
        first_rows: list[int] = []
        by_seq = self._requests
        for seq, start, n in chunks:
            if self._slot_owner.get(seq.slot) is not seq or seq.table_changed:  # new, or its ring moved on
                self.runner.set_table(seq.slot, seq.blocks)
                self._slot_owner[seq.slot] = seq
                seq.table_changed = False
            draft, seq.draft = seq.draft, []
            if fed is None:
                ids.extend([seq.tokens[start], *draft] if draft else seq.tokens[start : start + n])
            positions.extend(range(start, start + n))
            seq_index.extend([seq.slot] * n)
            if fed is not None or start + n == len(seq.tokens) + len(draft):
                first_rows.append(len(logit_rows))
                # a row per draft, plus one
                logit_rows.extend(range(len(positions) - 1 - len(draft), len(positions)))
                owners.append((by_seq[id(seq)], draft))
        try:
            logits = self.runner.forward(ids if fed is None else fed, positions, seq_index, logit_rows)
        except Exception as exc:
            self._drain()
            for seq, _, _ in chunks:
                self._fail(by_seq[id(seq)], exc)
            return None
        self._steps += 1
        argmax = greedy = None
        if any(r.fast_greedy for r, _ in owners):
            argmax = logits.argmax(-1)
            greedy = to_host(argmax)
        return _Launched(chunks, owners, first_rows, logits, argmax, greedy)

    def _complete(self, step: _Launched) -> None:
        """Take a queued step's tokens (its plan already advanced): first queue the next step ahead where it may
        run, then the last step's text while the device works, then each request's tokens."""
        if self._launch_ahead:
            self._ahead = self._run_ahead(step)
        if self._overlap:
            # The step runs on the device while the last step's tokens become text here. A stop string found now
            # ends its request; the token this step computes for it is dropped below.
            self._drain()
        greedy = step.greedy() if step.greedy is not None else None
        now = time.perf_counter()
        for (req, draft), first in zip(step.owners, step.first_rows, strict=True):
            if req.finish is not None or req.closed:
                continue
            try:
                self._verify(req, draft, first, step.logits, greedy, now)
            except Exception as exc:  # e.g. a grammar matcher rejecting a token: only this request fails
                self._drain()
                self._fail(req, exc)
        ahead = self._ahead
        if ahead is not None and greedy is not None:
            # Rows run ahead on a token the host did not keep (EOS banned: the host took the next best) are stale.
            for (seq, start, _), row in zip(ahead.chunks, ahead.fed_from, strict=True):
                if not seq.finished and (len(seq.tokens) != start + 1 or seq.tokens[start] != greedy[row]):
                    ahead.stale.add(id(seq))
                    self._stale_rows += 1
        if not self._overlap:
            self._drain()

    def _run_ahead(self, step: _Launched) -> _Launched | None:
        """Queue the step after `step` before reading its tokens, when every running request is in `step` as one
        greedy decode token with nothing waiting to join: its input ids are `step`'s argmax rows, on the device.
        A request whose token from `step` is surely its last is left out (that row would be wasted)."""
        running = len(self.scheduler.running)
        if (
            step.argmax is None
            or self.scheduler.waiting
            or not len(step.chunks) == len(step.owners) == running
        ):
            return None
        with self._cv:
            if self._incoming:
                return None
        chunks: list[tuple[Sequence, int, int]] = []
        rows: list[int] = []
        for (seq, start, n), (req, draft), first in zip(
            step.chunks, step.owners, step.first_rows, strict=True
        ):
            if n != 1 or draft or not req.fast_greedy or req.spec is not None or req.cancelled:
                return None
            if req.kept + 1 < req.params.max_new_tokens and len(seq.prompt) + req.kept + 1 < req.context:
                chunks.append((seq, start + 1, 1))
                rows.append(first)
        if not chunks:
            return None
        argmax = step.argmax
        fed = (
            argmax
            if rows == list(range(len(argmax)))
            else argmax.index_select(0, to_device(rows, argmax.device))
        )
        ahead = self._launch(chunks, fed)
        if ahead is not None:
            ahead.fed_from = rows
            self._ahead_steps += 1
        return ahead

    def _verify(
        self, req: Request, draft: list[int], first: int, logits: torch.Tensor, greedy: list[int] | None,
        now: float,
    ) -> None:  # fmt: skip
        """Take the request's tokens from its logits rows (one, or one per draft plus one), exactly as plain
        decoding would: row i is conditioned on drafts 0..i-1, so it is used only while they all matched."""
        req.steps += 1
        accepted = 0
        for i in range(len(draft) + 1):
            row = first + i
            k = req.params.logprobs
            # Before sampling: a grammar mask may write into an fp32 logits row in place.
            logp = torch.log_softmax(logits[row].float(), dim=-1) if k is not None else None
            tid = self._pick(req, logits, row, greedy)
            req.produced += 1
            self._accept(req, tid, now, None if logp is None else _token_logprob(logp, tid, k))  # type: ignore[arg-type]
            if req.finish is not None or i == len(draft) or tid != draft[i]:
                break
            accepted += 1
        if draft:
            req.spec.update(len(draft), accepted)  # type: ignore[union-attr]
            self._draft_tokens += len(draft)
            self._accepted_tokens += accepted
            if req.finish is None:  # roll back: K/V is valid up to the last accepted draft
                req.seq.computed = len(req.seq.tokens) - 1

    def _pick(self, req: Request, logits: torch.Tensor, row: int, greedy: list[int] | None) -> int:
        """The request's token from logits row `row`, with EOS masked while its params ban it."""
        ban = bool(self._eos) and req.params.bans_eos(req.produced)
        if req.fast_greedy and greedy is not None and not (ban and greedy[row] in self._eos_set):
            return greedy[row]
        one = logits[row : row + 1]
        if ban:
            one = one.clone()
            one[:, self._eos] = float("-inf")
        return int(one.argmax(-1)) if req.fast_greedy else self._sample(req, one)

    def _sample(self, req: Request, logits: torch.Tensor) -> int:
        if req.constraint is not None:
            logits = req.constraint.mask(logits)
        return int(req.sampler(logits)[0])

    def _accept(self, req: Request, tid: int, now: float, lp: TokenLogprob | None = None) -> None:
        """The token side of a new token, before the next step is planned: EOS, length and grammar ends, the
        sequence and the sampler. Its text (stop strings, deltas, logprob events) is queued for `_drain`."""
        if req.first_t is None:
            req.first_t = now
            self._last_ttft = now - req.submitted
        req.last_t = now
        if tid in self._eos_set:
            req.finish = "stop"
        else:
            self._tokens_generated += 1
            req.kept += 1
            self._pending.append((req, tid, lp))
            if req.constraint is not None:
                req.constraint.consume(0, tid)
                if req.constraint.finished(0):
                    req.finish = "stop"
            if req.finish is None and (
                req.kept >= req.params.max_new_tokens or len(req.seq.prompt) + req.kept >= req.context
            ):
                req.finish = "length"
        if req.finish is not None:
            self._end(req)
            return
        req.seq.tokens.append(tid)
        if req.sampler._seen is not None:
            req.sampler.observe(torch.tensor([tid], device=self.runner.device))
        if req.cancelled:  # stop now rather than after one more step
            req.finish = "cancelled"
            self._end(req)

    def _end(self, req: Request) -> None:
        """`req` has finished on the token side: out of the next plans at once; its last text and `done` follow
        its queued tokens (`_drain`)."""
        self._drop(req)
        self._pending.append((req, None, None))

    def _drain(self) -> None:
        """The queued tokens' text, in order: logprob events, stop strings, deltas, and the last events of
        requests that have finished. A stop string ends its request here (tokens after it are dropped)."""
        pending, self._pending = self._pending, []
        for req, tid, lp in pending:
            if req.closed:
                continue
            if tid is None:
                self._close(req)
                continue
            if lp is not None:
                req.logprobs.append(lp)
                self._emit(req, "token", lp)
            asm = req.assembler
            asm.push(tid)
            if asm.stopped:
                req.finish = "stop"
                self._drop(req)
                self._close(req)
                continue
            delta = asm.take_delta()
            if delta:
                self._emit(req, "delta", delta)

    def _flush(self, req: Request) -> None:
        """Finish `req` now (cancelled): free its blocks, hand out its queued and held-back text and `done`."""
        self._drop(req)
        self._drain()
        self._close(req)

    def _close(self, req: Request) -> None:
        """The held-back text and the Completion of a finished request (once)."""
        if req.closed:
            return
        req.closed = True
        req.assembler.finish()
        delta = req.assembler.take_delta(final=True)
        if delta:
            self._emit(req, "delta", delta)
        self._emit(req, "done", req.completion())

    def _fail(self, req: Request, exc: BaseException) -> None:
        """End `req` with an error (its queued text already out: callers drain first)."""
        self._drop(req)
        if not req.closed:
            req.closed = True
            self._emit(req, "error", exc)

    def _emit(self, req: Request, kind: str, value: Any) -> None:
        try:
            req.on_event(kind, value)
        except Exception:  # a listener that is gone (closed event loop) must not stop the engine
            req.cancel()

    def _drop(self, req: Request) -> None:
        self.scheduler.finish(req.seq)
        self._requests.pop(id(req.seq), None)


def _token_logprob(logp: torch.Tensor, tid: int, k: int) -> TokenLogprob:
    """The chosen token's log-probability and the `k` most likely tokens, from one log-softmaxed row [V]."""
    top = torch.topk(logp, k) if k else None
    pairs = tuple(zip(top.indices.tolist(), top.values.tolist(), strict=True)) if top is not None else ()
    return TokenLogprob(tid, float(logp[tid]), pairs)


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


def _streaming(config: EngineConfig, context_length: int) -> StreamingWindow | None:
    """Streaming's ring for `config` (None when streaming is off)."""
    if not config.streaming:
        return None
    window = config.streaming_window or max(1, context_length - config.streaming_sinks)
    return StreamingWindow(config.streaming_sinks, window, config.block_size, config.max_batched_tokens)


def build_core(
    dec: Any,
    tokenizer: Any,
    eos: list[int],
    context_length: int,
    config: EngineConfig,
    wrap_runner: Any = None,
) -> EngineCore:
    """An `EngineCore` over a `StaticCacheDecoder`'s weights, with pools sized by `config` (or the default budget)
    in the KV dtype it names; the model's sliding windows (and streaming's) go to every layer's attention.

    `wrap_runner(runner, buckets, scratch_block, scratch_row)` (tensor parallelism) returns the object the core
    calls instead of the runner itself.
    """
    from xpullm.engine.runner import kv_bytes_per_token, layer_windows

    per_token = kv_bytes_per_token(dec, config.kv_cache_dtype)
    tokens = config.kv_budget_tokens
    if tokens is None and config.kv_budget_bytes is not None:
        tokens = max(1, config.kv_budget_bytes // per_token)
    tokens = tokens or default_kv_tokens(context_length, per_token, dec.device)
    num_blocks = max(1, tokens // config.block_size)
    windows = layer_windows(dec.config, len(dec.layers))
    streaming = _streaming(config, context_length)
    sinks, width = 0, None
    if streaming is not None:  # every layer windowed (the ring holds no more), the model's own where narrower
        windows = [min(w, streaming.window) if w else streaming.window for w in windows]
        sinks, width = streaming.sinks, streaming.width
    # One block and one block-table row beyond the scheduler's: the step graphs' scratch, where pad rows write.
    runner = ModelRunner(
        dec, num_blocks + 1, config.block_size, config.max_seqs + 1, context_length, config.kv_cache_dtype,
        windows, sinks, width,
    )  # fmt: skip
    buckets = [b for b in config.graph_buckets if b <= config.max_batched_tokens]
    attach_step_graphs(runner, buckets, scratch_block=num_blocks, scratch_row=config.max_seqs)
    if wrap_runner is not None:  # every rank builds the same runner, step graphs included
        runner = wrap_runner(runner, buckets, num_blocks, config.max_seqs)
    return EngineCore(
        runner, BlockPool(num_blocks, config.block_size), config, tokenizer, eos, context_length
    )
