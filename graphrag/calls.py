"""`LLMCaller`: the only way the pipeline talks to the model.

Every call is (1) wrapped in the chat template, (2) checked against the context window, (3) looked up in the cache,
(4) sent to the engine only when missing (all of a stage's missing calls at once, in batches, through an executor:
this process's bounded thread pool, or a Ray cluster's model-holding workers), (5) stored and counted by this
process, the cache's only writer, as each batch comes back. Stages never call `llm.generate` directly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from xpullm.graphrag.cache import CacheEntry, LLMCache, cache_key
from xpullm.graphrag.config import LLMConfig
from xpullm.graphrag.errors import PromptTooLong
from xpullm.graphrag.stats import IndexStats
from xpullm.protocols import StreamingEngine, TextEngine
from xpullm.scaleout import Executor, LocalExecutor

__all__ = ["CallResult", "EngineAnswer", "LLMCaller", "Prompt", "generate_batch"]

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


class EngineAnswer(NamedTuple):
    """What a worker sends back for one prompt (plain values: it crosses process boundaries)."""

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


def generate_batch(llm: TextEngine, item: tuple[list[str], dict[str, Any]]) -> list[EngineAnswer]:
    """One batch of formatted prompts through `llm.generate` (runs wherever the executor runs it)."""
    texts, params = item
    outs = llm.generate(texts if len(texts) > 1 else texts[0], **params)
    outs = list(outs) if isinstance(outs, list | tuple) else [outs]
    return [
        EngineAnswer(
            str(getattr(o, "text", o)),
            str(getattr(o, "finish_reason", "stop")),
            int(getattr(o, "prompt_tokens", 0) or 0),
            int(getattr(o, "completion_tokens", 0) or 0),
        )
        for o in outs
    ]


class LLMCaller:
    """Cached, counted, context-checked access to an engine object (`generate`, `count_tokens`, ...).

    executor: where missing calls run (default: this process, `llm.concurrency` batches at once); the caller
    formats prompts, counts tokens and writes the cache here either way.
    """

    def __init__(
        self,
        llm: TextEngine,
        cache: LLMCache,
        stats: IndexStats,
        config: LLMConfig | None = None,
        progress: bool = False,
        executor: Executor | None = None,
    ) -> None:
        self.llm = llm
        self.cache = cache
        self.stats = stats
        self.config = config or LLMConfig()
        self.progress = progress
        self.executor = executor or LocalExecutor()

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
                entry = CacheEntry(key, stage, model, params, text, *out)
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
    ) -> Iterator[tuple[list[tuple[str, str]], list[EngineAnswer]]]:
        """(batch, answers) as batches come back from the executor (the local one: in submission order).

        Every missing call of a stage is submitted at once (bounded by `config.concurrency` locally, by the workers
        on Ray), so an engine that batches concurrent requests sees them together. Each batch is stored as soon as
        it is back, so a killed job loses only the batches still out; on one process the cache then holds the
        rows in the order of a sequential run.
        """
        items = [([t for _, t in b], params) for b in batches]
        pairs = self.executor.map(generate_batch, items, model=self.llm, concurrency=self.config.concurrency)
        for index, answers in pairs:
            yield batches[index], answers


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
