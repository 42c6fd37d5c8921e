"""`LLMCaller`: the only way the pipeline talks to the model.

Every call is (1) wrapped in the chat template, (2) checked against the context window, (3) looked up in the cache,
(4) sent to the engine only when missing (all of a stage's missing calls at once, in batches, through a bounded
thread pool), (5) stored in order and counted. Stages never call `llm.generate` directly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from xpullm.graphrag.cache import CacheEntry, LLMCache, cache_key
from xpullm.graphrag.config import LLMConfig
from xpullm.graphrag.errors import PromptTooLong
from xpullm.graphrag.stats import IndexStats
from xpullm.protocols import StreamingEngine, TextEngine

__all__ = ["CallResult", "LLMCaller", "Prompt"]

Prompt = str | list[dict[str, str]]


@dataclass(frozen=True)
class CallResult:
    """One answer, whether it came from the engine or the cache."""

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    cached: bool
    key: str


class LLMCaller:
    """Cached, counted, context-checked access to an engine object (`generate`, `count_tokens`, ...)."""

    def __init__(
        self,
        llm: TextEngine,
        cache: LLMCache,
        stats: IndexStats,
        config: LLMConfig | None = None,
        progress: bool = False,
    ) -> None:
        self.llm = llm
        self.cache = cache
        self.stats = stats
        self.config = config or LLMConfig()
        self.progress = progress

    @property
    def model_name(self) -> str:
        return str(self.llm.model_name)

    @property
    def context_length(self) -> int:
        return int(self.llm.context_length)

    def count_tokens(self, text: str) -> int:
        """Tokens of `text` under the model's tokenizer."""
        return int(self.llm.count_tokens(text))

    def format(self, prompt: Prompt) -> str:
        """The exact text sent to the engine (chat template applied when the model has one).

        A prompt is a string (one user turn) or a list of {"role", "content"} messages (gleaning continues a
        conversation); without a template the turns are joined by newlines.
        """
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        tok = getattr(self.llm, "tokenizer", None)
        if not self.config.chat_template or tok is None or not getattr(tok, "chat_template", None):
            return prompt if isinstance(prompt, str) else "\n".join(m["content"] for m in messages)
        return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def fits(self, prompt: Prompt, max_new_tokens: int) -> bool:
        """Whether `prompt` (after templating) plus its answer budget fits the context window."""
        return self.count_tokens(self.format(prompt)) + max_new_tokens <= self.context_length

    def budget(self, max_new_tokens: int, reserve: int = 0) -> int:
        """Tokens left for prompt content after the answer budget and a fixed reserve (instructions, template)."""
        return max(0, self.context_length - max_new_tokens - reserve)

    def params(
        self,
        max_new_tokens: int,
        stop: Sequence[str] | None,
        json_schema: dict | None,
        grammar: str | None = None,
    ) -> dict[str, Any]:
        """Engine keyword arguments of one call; they are part of its cache key (a constraint changes the answer)."""
        p: dict[str, Any] = {"max_new_tokens": int(max_new_tokens), "temperature": self.config.temperature}
        if stop:
            p["stop"] = list(stop)
        if json_schema is not None:
            p["json_schema"] = json_schema
        if grammar is not None:
            p["grammar"] = grammar
        if self.config.seed is not None and self.config.temperature > 0:
            p["seed"] = self.config.seed
        return p

    def generate(
        self,
        prompts: Sequence[Prompt],
        *,
        stage: str,
        max_new_tokens: int,
        stop: Sequence[str] | None = None,
        json_schema: dict | None = None,
        grammar: str | None = None,
        on_batch: Callable[[], None] | None = None,
    ) -> list[CallResult]:
        """Answers for `prompts`, in order. Raises `PromptTooLong` before any call if one prompt cannot fit.

        json_schema / grammar (a Lark grammar) constrain the answers; at most one of them may be given.
        """
        params = self.params(max_new_tokens, stop, json_schema, grammar)
        model = self.model_name
        texts = [self.format(p) for p in prompts]
        keys = [cache_key(model, t, params) for t in texts]
        results: dict[str, CallResult] = {}
        counters = self.stats.stage(stage)
        missing: list[tuple[int, str, str]] = []
        pending: set[str] = set()
        for key, text in zip(keys, texts, strict=True):
            if key in results or key in pending:
                counters.cache_hits += 1  # the same prompt twice in one stage is asked once
                continue
            if self.cache.mode == "replay":
                results[key] = _from_entry(self.cache.require(key, stage, text))
                counters.cache_hits += 1
                continue
            entry = self.cache.get(key)
            if entry is not None:
                results[key] = _from_entry(entry)
                counters.cache_hits += 1
                continue
            n_tok = self.count_tokens(text)
            if n_tok + max_new_tokens > self.context_length:
                raise PromptTooLong(stage, n_tok, max_new_tokens, self.context_length)
            missing.append((n_tok, key, text))
            pending.add(key)
        # Prompts of similar length share a batch: the engine pads a batch to its longest prompt, so mixing a
        # 3,000-token report context with 300-token ones would prefill mostly padding. (Keys do not depend on order.)
        missing.sort(key=lambda m: m[0])
        batches = [
            [(key, text) for _, key, text in missing[i : i + self.config.batch_size]]
            for i in range(0, len(missing), self.config.batch_size)
        ]
        for batch, outs in _progress(
            self._submit_all(batches, params), self.progress and len(missing) > 0, stage, len(batches)
        ):
            entries = []
            for (key, text), out in zip(batch, outs, strict=True):
                entry = CacheEntry(
                    key=key,
                    stage=stage,
                    model=model,
                    params=params,
                    prompt=text,
                    text=str(getattr(out, "text", out)),
                    finish_reason=str(getattr(out, "finish_reason", "stop")),
                    prompt_tokens=int(getattr(out, "prompt_tokens", 0) or 0),
                    completion_tokens=int(getattr(out, "completion_tokens", 0) or 0),
                )
                entries.append(entry)
                results[key] = CallResult(
                    entry.text, entry.finish_reason, entry.prompt_tokens, entry.completion_tokens, False, key
                )
                counters.llm_calls += 1
                counters.prompt_tokens += entry.prompt_tokens
                counters.completion_tokens += entry.completion_tokens
            self.cache.put_many(entries)
            self.stats.save()
            if on_batch is not None:
                on_batch()
        out = [results[k] for k in keys]
        self.stats.count(f"{stage}.empty_answers", sum(1 for r in out if not r.text.strip()))
        return out

    def generate_one(self, prompt: Prompt, **kw: Any) -> CallResult:
        """`generate` for a single prompt."""
        return self.generate([prompt], **kw)[0]

    def stream(self, prompt: str, *, stage: str, max_new_tokens: int) -> Iterator[str]:
        """Stream an answer; a cached answer is replayed as one piece, a fresh one is stored when it finishes."""
        params = self.params(max_new_tokens, None, None)
        text = self.format(prompt)
        key = cache_key(self.model_name, text, params)
        counters = self.stats.stage(stage)
        entry = self.cache.require(key, stage, text) if self.cache.mode == "replay" else self.cache.get(key)
        if entry is not None:
            counters.cache_hits += 1
            yield entry.text
            return
        n_tok = self.count_tokens(text)
        if n_tok + max_new_tokens > self.context_length:
            raise PromptTooLong(stage, n_tok, max_new_tokens, self.context_length)
        if not isinstance(self.llm, StreamingEngine):  # an engine without streaming: one piece
            piece = self.generate_one(prompt, stage=stage, max_new_tokens=max_new_tokens).text
            yield piece
            return
        pieces = []
        for piece in self.llm.stream(text, **params):
            pieces.append(piece)
            yield piece
        full = "".join(pieces)
        n_out = self.count_tokens(full)
        counters.llm_calls += 1
        counters.prompt_tokens += n_tok
        counters.completion_tokens += n_out
        self.cache.put_many(
            [CacheEntry(key, stage, self.model_name, params, text, full, "stop", n_tok, n_out)]
        )

    def _submit_all(
        self, batches: list[list[tuple[str, str]]], params: dict[str, Any]
    ) -> Iterator[tuple[list[tuple[str, str]], list[Any]]]:
        """(batch, answers) in submission order, while up to `config.concurrency` batches are in the engine at once.

        Every missing call of a stage is submitted at once (bounded by the pool), so an engine that batches
        concurrent requests (continuous batching) sees them together; an engine with one lock simply runs them in
        turn. The caller, the only writer, stores each batch when it is next in order, so the cache holds the same
        rows in the same order as a sequential run.
        """
        if self.config.concurrency <= 1 or len(batches) <= 1:
            for batch in batches:
                yield batch, self._engine_generate([t for _, t in batch], params)
            return
        from concurrent.futures import ThreadPoolExecutor

        pool = ThreadPoolExecutor(max_workers=self.config.concurrency, thread_name_prefix="graphrag-llm")
        try:
            futures = [pool.submit(self._engine_generate, [t for _, t in b], params) for b in batches]
            for batch, future in zip(batches, futures, strict=True):
                yield batch, future.result()
        finally:
            pool.shutdown(
                wait=True, cancel_futures=True
            )  # an error or interrupt stops the calls not yet started

    def _engine_generate(self, texts: list[str], params: dict[str, Any]) -> list[Any]:
        outs = self.llm.generate(texts if len(texts) > 1 else texts[0], **params)
        return list(outs) if isinstance(outs, list | tuple) else [outs]


def _from_entry(entry: CacheEntry) -> CallResult:
    return CallResult(
        entry.text, entry.finish_reason, entry.prompt_tokens, entry.completion_tokens, True, entry.key
    )


def _progress(items: Iterator[Any], enabled: bool, stage: str, total_batches: int) -> Any:
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(
        items, desc=f"{stage} ({total_batches} batches)", unit="batch", total=total_batches, leave=False
    )
