"""Today's backend of the engine seam: `xpullm.LLM` and `xpullm.Embedder` behind a bounded FIFO queue.

`LLM` serializes generations on one model (its KV cache is shared state), so one worker thread runs the queue one
request at a time. Waiting requests sit in a deque bounded by `max_queue`; a cancelled waiting request leaves the
deque at once, a cancelled running one stops after its current token through the engine's `cancel` event. This
module is the only place the server touches engine internals (`LLM._run` for exact per-request token counts); the
continuous-batching engine replaces it as a whole.
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

from xpullm.engine.params import GenerationParams
from xpullm.models import DEFAULT_EMBEDDER_NAME
from xpullm.server.engine import EngineStats, Finished, QueueFull, StreamEvent, TextDelta
from xpullm.server.metrics import Metrics

# The id clients send for the packaged embedder (`model="all-MiniLM-L6-v2"`): its hub name without the org.
DEFAULT_EMBEDDER_ID = DEFAULT_EMBEDDER_NAME.rsplit("/", 1)[-1]

if TYPE_CHECKING:
    from xpullm.embeddings import Embedder
    from xpullm.engine import LLM

__all__ = ["LocalEmbeddingEngine", "LocalTextEngine"]

_END = object()


class _Job:
    """One queued sequence; the worker thread pushes its events into the submitting event loop."""

    def __init__(self, engine: LocalTextEngine, prompt_ids: list[int], params: GenerationParams) -> None:
        self._engine = engine
        self.prompt_ids = prompt_ids
        self.cancel_event = threading.Event()
        self.params = dataclasses.replace(params, cancel=self.cancel_event)
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
        """Stop this request: out of the queue at once if waiting, after the current token if running."""
        if self.cancel_event.is_set():
            return
        self.cancel_event.set()
        self._engine._dequeue(self)

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
    """`TextEngine` over one `xpullm.LLM`: a bounded queue and one worker thread.

    Args:
        llm: the model (loaded lazily by `load`).
        model_id: the name clients pass as `model` (default: the LLM's model name).
        max_queue: requests allowed to wait while one runs; one more gets `QueueFull` (HTTP 429).
        metrics: where time-to-first-token, token counts and outcomes are recorded.
    """

    def __init__(
        self, llm: LLM, model_id: str | None = None, max_queue: int = 64, metrics: Metrics | None = None
    ) -> None:
        if isinstance(max_queue, bool) or not isinstance(max_queue, int) or max_queue < 1:
            raise ValueError(f"max_queue={max_queue!r} is invalid: expected an int >= 1")
        self._llm = llm
        self.model_id = model_id or llm.model_name
        self.max_queue = max_queue
        self.metrics = metrics or Metrics()
        self._waiting: collections.deque[_Job] = collections.deque()
        self._cv = threading.Condition()
        self._running: _Job | None = None
        self._running_kv = 0
        self._closing = False
        self._ready = False
        self._worker = threading.Thread(target=self._work, name="xpullm-serve-engine", daemon=True)

    # -- TextEngine -------------------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._ready

    @property
    def context_length(self) -> int:
        return self._llm.context_length

    def load(self) -> None:
        self._llm.context_length  # noqa: B018 - loads the model and tokenizer
        self._vocab = int(self._llm.model.config.vocab_size)
        if not self._worker.is_alive():
            self._worker.start()
        self._ready = True

    def encode_chat(self, messages: list[dict[str, Any]]) -> list[int]:
        return self._llm._encode_chat(messages)

    def encode_prompt(self, prompt: str, field: str) -> list[int]:
        return self._llm._encode_prompt(prompt, field)

    def check(self, params: GenerationParams) -> None:
        if params.json_schema is None and params.grammar is None:
            return
        from xpullm.engine.constrained import GrammarConstraint

        # Compiling once here turns a bad schema into a 400 before a stream's headers are sent.
        GrammarConstraint.from_params(params, self._llm.tokenizer, 1, self._vocab, self._llm._eos or [0])

    def submit(self, prompt_ids: list[int], params: GenerationParams) -> _Job:
        job = _Job(self, prompt_ids, params)
        with self._cv:
            if self._closing:
                raise RuntimeError("the server is shutting down; no new requests are accepted")
            if len(self._waiting) >= self.max_queue:
                self.metrics.rejected += 1
                raise QueueFull(self.max_queue)
            self._waiting.append(job)
            self._cv.notify()
        return job

    def stats(self) -> EngineStats:
        with self._cv:
            running = 1 if self._running is not None else 0
            return EngineStats(
                queued=len(self._waiting),
                running=running,
                kv_tokens=self._running_kv if running else 0,
                kv_capacity=self._llm.context_length if self._ready else 0,
            )

    def close(self) -> None:
        with self._cv:
            self._closing = True
            waiting = list(self._waiting)
            self._waiting.clear()
            self._cv.notify_all()
        for job in waiting:
            job.done = True
            job.push(RuntimeError("the server shut down before this request started"))
        if self._worker.is_alive():
            self._worker.join()

    # -- internals -------------------------------------------------------------------------------------------

    def _dequeue(self, job: _Job) -> None:
        with self._cv:
            try:
                self._waiting.remove(job)
            except ValueError:
                return  # running or finished: the cancel event stops it
        job.done = True
        self.metrics.cancelled += 1
        job.push(Finished("cancelled", len(job.prompt_ids), 0))
        job.push(_END)

    def _work(self) -> None:
        while True:
            with self._cv:
                while not self._waiting and not self._closing:
                    self._cv.wait()
                if not self._waiting:
                    return
                job = self._waiting.popleft()
                self._running = job
                self._running_kv = min(
                    self._llm.context_length, len(job.prompt_ids) + job.params.max_new_tokens
                )
            try:
                self._run(job)
            finally:
                with self._cv:
                    self._running = None

    def _run(self, job: _Job) -> None:
        started = time.perf_counter()
        gen = self._llm._run([job.prompt_ids], job.params)
        first = True
        try:
            while True:
                try:
                    _, delta = next(gen)
                except StopIteration as stop:
                    completion = stop.value[0]
                    break
                if first:
                    first = False
                    self.metrics.observe_ttft(time.perf_counter() - job.submitted)
                job.push(TextDelta(delta))
        except Exception as exc:  # reported to the client as a 500 error object
            job.done = True
            self.metrics.failed += 1
            job.push(exc)
            return
        if first and completion.completion_tokens:
            self.metrics.observe_ttft(started - job.submitted + completion.first_token_s)
        self.metrics.observe_completion(
            completion.prompt_tokens, completion.completion_tokens, completion.decode_tok_s
        )
        if completion.finish_reason == "cancelled":
            self.metrics.cancelled += 1
        job.done = True
        job.push(Finished(completion.finish_reason, completion.prompt_tokens, completion.completion_tokens))
        job.push(_END)


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
