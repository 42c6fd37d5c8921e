"""The backend of the engine seam on `xpullm.LLM` and `xpullm.Embedder`: up to `max_running` requests generate at
once, each on its own thread, and up to `max_queue` more wait in a FIFO queue (one more gets 429).

Each running request is one call of the LLM's streaming path from its own thread, so an engine that batches
concurrent calls (continuous batching) shares its steps between them, and one that serializes calls on a model
takes them in turn. A cancelled waiting request leaves the queue at once; a cancelled running one gives its slot
back at once (the next waiting request starts) while its thread stops the generation after the current token.
Everything below the public API of `LLM` goes through `llm_seam`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import threading
import time
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

from xpullm.engine.params import GenerationParams, TokenLogprob
from xpullm.models import DEFAULT_EMBEDDER_NAME
from xpullm.server import llm_seam
from xpullm.server.engine import EngineStats, Finished, QueueFull, StreamEvent, TextDelta, TokenLogprobs
from xpullm.server.metrics import Metrics
from xpullm.server.token_text import TokenTexts

# The id clients send for the packaged embedder (`model="all-MiniLM-L6-v2"`): its hub name without the org.
DEFAULT_EMBEDDER_ID = DEFAULT_EMBEDDER_NAME.rsplit("/", 1)[-1]

if TYPE_CHECKING:
    from xpullm.embeddings import Embedder
    from xpullm.engine import LLM

__all__ = ["LocalEmbeddingEngine", "LocalTextEngine"]

_END = object()


class _Job:
    """One submitted sequence; its thread pushes events into the submitting event loop."""

    def __init__(self, engine: LocalTextEngine, prompt_ids: list[int], params: GenerationParams) -> None:
        self._engine = engine
        self.prompt_ids = prompt_ids
        self.cancel_event = threading.Event()
        self.params = dataclasses.replace(params, cancel=self.cancel_event)
        # KV positions this sequence may use: its prompt plus what it may generate, within the window.
        self.kv_tokens = min(engine.context_length, len(prompt_ids) + params.max_new_tokens)
        self.submitted = time.perf_counter()
        self._loop = asyncio.get_running_loop()
        self._events: asyncio.Queue[Any] = asyncio.Queue()
        self.done = False

    def push(self, item: Any) -> None:
        """Thread-safe: hand an event (or an exception, or _END) to the consumer."""
        # A closed event loop (server shutting down) has nobody left to listen.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._events.put_nowait, item)

    def cancel(self) -> None:
        """Stop this request and free its slot at once (waiting or running)."""
        if self.cancel_event.is_set():
            return
        self.cancel_event.set()
        self._engine._cancelled(self)

    async def __aiter__(self) -> AsyncIterator[StreamEvent]:
        try:
            while True:
                item = await self._events.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            # Leaving early (client gone, task cancelled, error) frees the slot.
            if not self.done:
                self.cancel()


class LocalTextEngine:
    """`TextEngine` over one `xpullm.LLM`: `max_running` generating requests, a bounded FIFO queue behind them.

    Args:
        llm: the model (loaded lazily by `load`).
        model_id: the name clients pass as `model` (default: the LLM's model name).
        max_queue: requests allowed to wait while `max_running` run; one more gets `QueueFull` (HTTP 429).
        max_running: requests generating at once, each from its own thread (a batching engine shares its steps
            between them; a serializing one takes them in turn).
        metrics: where time-to-first-token, token counts and outcomes are recorded.
    """

    def __init__(
        self,
        llm: LLM,
        model_id: str | None = None,
        max_queue: int = 64,
        metrics: Metrics | None = None,
        max_running: int = 1,
    ) -> None:
        for name, value in (("max_queue", max_queue), ("max_running", max_running)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} is invalid: expected an int >= 1")
        self._llm = llm
        self.model_id = model_id or llm.model_name
        self.max_queue = max_queue
        self.max_running = max_running
        self.metrics = metrics or Metrics()
        self._waiting: collections.deque[_Job] = collections.deque()
        self._running: set[_Job] = set()
        self._threads: set[threading.Thread] = set()
        self._lock = threading.Lock()
        self._closing = False
        self._ready = False
        self._token_texts: TokenTexts | None = None

    # -- TextEngine -------------------------------------------------------------------------------------------

    @property
    def llm(self) -> Any:
        """The `LLM` this engine serves (the server closes it on shutdown: tensor-parallel workers stop)."""
        return self._llm

    @property
    def ready(self) -> bool:
        return self._ready

    @property
    def context_length(self) -> int:
        return self._llm.context_length

    def load(self) -> None:
        self._llm.context_length  # noqa: B018 - loads the model and tokenizer
        self._token_texts = TokenTexts(self._llm.tokenizer)
        self._ready = True

    def encode_chat(self, messages: list[dict[str, Any]]) -> list[int]:
        return llm_seam.encode_chat(self._llm, messages)

    def encode_prompt(self, prompt: str, field: str) -> list[int]:
        return llm_seam.encode_prompt(self._llm, prompt, field)

    def check(self, params: GenerationParams) -> None:
        llm_seam.check_logprobs(self._llm, params)
        llm_seam.check_constraint(self._llm, params)

    def decode(self, ids: list[int]) -> str:
        """The text of token ids (special tokens kept): what a prompt looked like to the model."""
        return self._llm.tokenizer.decode(ids, skip_special_tokens=False)

    def count_tokens(self, text: str) -> int:
        """Tokens `text` takes as generated output (no special tokens added)."""
        return len(self._llm.tokenizer(text, add_special_tokens=False)["input_ids"])

    def submit(self, prompt_ids: list[int], params: GenerationParams) -> _Job:
        job = _Job(self, prompt_ids, params)
        with self._lock:
            if self._closing:
                raise RuntimeError("the server is shutting down; no new requests are accepted")
            if len(self._waiting) >= self.max_queue:
                self.metrics.count("rejected")
                raise QueueFull(self.max_queue)
            self._waiting.append(job)
            self._admit()
        return job

    def stats(self) -> EngineStats:
        with self._lock:
            return EngineStats(
                queued=len(self._waiting),
                running=len(self._running),
                kv_tokens=sum(j.kv_tokens for j in self._running),
                kv_capacity=self._llm.context_length * self.max_running if self._ready else 0,
            )

    @property
    def threads(self) -> int:
        """Generation threads alive (running requests, plus cancelled ones finishing their current token)."""
        with self._lock:
            return len(self._threads)

    def close(self) -> None:
        with self._lock:
            self._closing = True
            waiting = list(self._waiting)
            self._waiting.clear()
            threads = list(self._threads)
        for job in waiting:
            job.done = True
            job.push(RuntimeError("the server shut down before this request started"))
        for thread in threads:
            thread.join()

    # -- internals -------------------------------------------------------------------------------------------

    def _admit(self) -> None:
        """Start waiting requests while slots are free (call with the lock held)."""
        while self._waiting and len(self._running) < self.max_running and not self._closing:
            job = self._waiting.popleft()
            self._running.add(job)
            thread = threading.Thread(target=self._run, args=(job,), name="xpullm-serve-request", daemon=True)
            self._threads.add(thread)
            thread.start()

    def _cancelled(self, job: _Job) -> None:
        with self._lock:
            if job.done:
                return  # finished already: its consumer is closing the stream
            if job in self._running:
                # The slot is free now; the job's thread ends after its current token.
                self._running.discard(job)
                self._admit()
                self.metrics.count("cancelled")
                return
            try:
                self._waiting.remove(job)
            except ValueError:
                return  # finished already
        job.done = True
        self.metrics.count("cancelled")
        job.push(Finished("cancelled", len(job.prompt_ids), 0))
        job.push(_END)

    def _run(self, job: _Job) -> None:
        try:
            self._generate(job)
        finally:
            with self._lock:
                self._running.discard(job)
                self._threads.discard(threading.current_thread())
                self._admit()

    def _generate(self, job: _Job) -> None:
        started = time.perf_counter()
        gen = llm_seam.stream_ids(self._llm, job.prompt_ids, job.params)
        first = True
        tokens: list[TokenLogprobs] = []  # generated since the last text delta
        try:
            while True:
                try:
                    item = next(gen)
                except StopIteration as stop:
                    completion = stop.value
                    break
                if isinstance(item, TokenLogprob):
                    tokens.append(self._wire_logprobs(item))
                    continue
                if first:
                    first = False
                    self.metrics.observe_ttft(time.perf_counter() - job.submitted)
                job.push(TextDelta(item, tuple(tokens)))
                tokens.clear()
            if tokens:  # tokens whose text never showed (a stripped stop string) still count
                job.push(TextDelta("", tuple(tokens)))
        except Exception as exc:  # reported to the client as a 500 error object
            job.done = True
            self.metrics.count("failed")
            job.push(exc)
            return
        if first and completion.completion_tokens:
            self.metrics.observe_ttft(started - job.submitted + completion.first_token_s)
        self.metrics.observe_completion(
            completion.prompt_tokens,
            completion.completion_tokens,
            completion.decode_tok_s,
            completion.timings.draft_tokens,
            completion.timings.accepted_tokens,
        )
        job.done = True
        job.push(Finished(completion.finish_reason, completion.prompt_tokens, completion.completion_tokens))
        job.push(_END)

    def _wire_logprobs(self, lp: TokenLogprob) -> TokenLogprobs:
        text = self._token_texts
        chosen = text(lp.token_id)
        top = tuple((t.token, t.bytes, v) for t, v in ((text(i), v) for i, v in lp.top))
        return TokenLogprobs(chosen.token, chosen.bytes, lp.logprob, top)


class LocalEmbeddingEngine:
    """`EmbeddingEngine` over one `xpullm.Embedder` (built in `load`), run on its own worker thread."""

    def __init__(
        self,
        model: str | None = None,
        low_bit: str | None = None,
        device: str = "auto",
        model_id: str | None = None,
    ) -> None:
        self._spec = (model, low_bit, device)
        self._model_id = model_id
        self.model_id = model_id or (model or DEFAULT_EMBEDDER_ID)
        self._embedder: Embedder | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_embedder(cls, embedder: Embedder, model_id: str | None = None) -> LocalEmbeddingEngine:
        """Wrap an already built `Embedder`."""
        engine = cls(model_id=model_id or embedder.model_name)
        engine._embedder = embedder
        return engine

    @property
    def ready(self) -> bool:
        return self._embedder is not None

    @property
    def max_tokens(self) -> int:
        return self._embedder.max_seq_length

    @property
    def dim(self) -> int:
        return int(self._embedder.dim)

    def load(self) -> None:
        if self._embedder is None:
            from xpullm.embeddings import Embedder

            model, low_bit, device = self._spec
            self._embedder = Embedder(model=model, low_bit=low_bit, device=device)
            self.model_id = self._model_id or self._embedder.model_name

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [len(ids) for ids in self._embedder.tokenizer(list(texts))["input_ids"]]

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        def work() -> list[list[float]]:
            with self._lock:
                return self._embedder.embed(list(texts))

        return await asyncio.to_thread(work)

    def close(self) -> None:
        return None
