"""`ReplayTextEngine`: a text engine that answers from a recorded transcript, keyed by a hash of the request.

It sits behind the same engine seam as the real engine, so a client (Microsoft GraphRAG, LightRAG, ...) talks to
the real HTTP layer, tokenizer, context checks and grammar compiler, and only the generated text comes from the
transcript: a test of a whole tool chain that is exact and fast, and independent of what a tiny model can write.

Key: sha256 of the prompt's text as the model sees it (chat template applied) and the output constraint
(`json_schema` / `grammar`), so the same request always replays the same answer. Sampling settings are not part of
the key: a transcript holds one answer per prompt.

Modes: `replay` answers only from the transcript (a miss is an error naming the request's hash and prompt start);
`record` answers misses with `author(prompt, params)` when that returns text (hand-written answers for calls the
model cannot do, e.g. a structured extraction format), else with the inner engine's real generation, and appends
each new answer to the transcript (JSONL: key, source, prompt head, answer, completion_tokens, finish_reason).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Literal

from xpullm.engine.params import GenerationParams, InvalidParameter
from xpullm.errors import XPULLMError
from xpullm.server.engine import EngineStats, Finished, GenerationStream, StreamEvent, TextDelta
from xpullm.server.local_engine import LocalTextEngine
from xpullm.server.metrics import Metrics

__all__ = ["ReplayMiss", "ReplayTextEngine", "request_key"]

Author = Callable[[str, GenerationParams], "str | None"]


class ReplayMiss(XPULLMError, LookupError):
    """A request whose answer is not in the transcript (replay mode)."""


def request_key(prompt: str, params: GenerationParams) -> str:
    """The transcript key of one request: what determines a greedy answer (prompt text + output constraint)."""
    blob = json.dumps(
        {"prompt": prompt, "json_schema": params.json_schema, "grammar": params.grammar},
        sort_keys=True,
        ensure_ascii=False,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


class _Answer:
    """A replayed answer as a `GenerationStream`: the text in a few deltas, then `Finished` with exact counts."""

    def __init__(
        self, text: str, prompt_tokens: int, completion_tokens: int, finish_reason: str = "stop"
    ) -> None:
        self._text = text
        self._finish = finish_reason
        self._usage = (prompt_tokens, completion_tokens)
        self._cancelled = False

    def cancel(self) -> None:
        self._cancelled = True

    async def __aiter__(self) -> AsyncIterator[StreamEvent]:
        # Several deltas, so streaming clients see a real stream (split on whitespace, joined back exactly).
        pieces = self._text.split(" ")
        for i, piece in enumerate(pieces):
            if self._cancelled:
                yield Finished("cancelled", self._usage[0], 0)
                return
            yield TextDelta(piece if i == len(pieces) - 1 else piece + " ")
            await asyncio.sleep(0)
        yield Finished(self._finish, *self._usage)


class ReplayTextEngine:
    """`TextEngine` answering from `transcript`; `inner` (a loaded-on-demand real engine) tokenizes and checks.

    Args:
        inner: the real engine over the model the transcript was recorded with (its tokenizer and context window
            are used; it generates only in record mode).
        transcript: the JSONL file (read at `load`; appended to in record mode).
        mode: `replay` (misses are errors) or `record`.
        author: record mode only: hand-written answers, `author(prompt_text, params) -> str | None`.
    """

    def __init__(
        self,
        inner: LocalTextEngine,
        transcript: str | Path,
        mode: Literal["replay", "record"] = "replay",
        author: Author | None = None,
    ) -> None:
        if mode not in ("replay", "record"):
            raise ValueError(f"mode={mode!r} is invalid: expected 'replay' or 'record'")
        self._inner = inner
        self.model_id = inner.model_id
        self.metrics: Metrics = inner.metrics
        self.path = Path(transcript)
        self.mode = mode
        self._author = author
        self._answers: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self.replayed: list[str] = []
        """Keys answered from the transcript, in order (tests read it to say which calls were replayed)."""

    # -- TextEngine -------------------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._inner.ready

    @property
    def context_length(self) -> int:
        return self._inner.context_length

    def load(self) -> None:
        if self.path.exists():
            for n, line in enumerate(self.path.read_text().splitlines(), 1):
                if line.strip():
                    try:
                        entry = json.loads(line)
                        self._answers[entry["key"]] = entry
                    except (ValueError, KeyError) as exc:
                        raise ValueError(
                            f"{self.path}:{n}: not a transcript line ({exc}); re-record it"
                        ) from exc
        elif self.mode == "replay":
            raise FileNotFoundError(
                f"transcript {str(self.path)!r} does not exist; record it first (mode='record')"
            )
        self._inner.load()

    def encode_chat(self, messages: list[dict[str, Any]]) -> list[int]:
        return self._inner.encode_chat(messages)

    def encode_prompt(self, prompt: str, field: str) -> list[int]:
        return self._inner.encode_prompt(prompt, field)

    def check(self, params: GenerationParams) -> None:
        if params.logprobs is not None:
            raise InvalidParameter(
                "logprobs",
                params.logprobs,
                "unset: answers replayed from a transcript carry no log-probabilities",
            )
        self._inner.check(params)

    def submit(self, prompt_ids: list[int], params: GenerationParams) -> GenerationStream:
        prompt = self._inner.decode(prompt_ids)
        key = request_key(prompt, params)
        with self._lock:
            entry = self._answers.get(key)
        if entry is not None:
            self.replayed.append(key)
            return _Answer(
                entry["answer"],
                len(prompt_ids),
                entry["completion_tokens"],
                entry.get("finish_reason", "stop"),
            )
        if self.mode == "replay":
            raise ReplayMiss(
                f"no recorded answer for request {key[:16]} (prompt starts {prompt[:160]!r}); the client's "
                f"requests changed since {self.path.name} was recorded: re-record it in mode='record'"
            )
        text = self._author(prompt, params) if self._author is not None else None
        if text is not None:
            self._store(key, "authored", prompt, text, self._inner.count_tokens(text))
            return _Answer(text, len(prompt_ids), self._inner.count_tokens(text))
        return _Recording(self, key, prompt, self._inner.submit(prompt_ids, params))

    def stats(self) -> EngineStats:
        return self._inner.stats()

    def close(self) -> None:
        self._inner.close()

    def _store(
        self,
        key: str,
        source: str,
        prompt: str,
        answer: str,
        completion_tokens: int,
        finish_reason: str = "stop",
    ) -> None:
        entry = {
            "key": key,
            "source": source,
            "prompt_head": prompt[:300],
            "answer": answer,
            "completion_tokens": completion_tokens,
            "finish_reason": finish_reason,
        }
        with self._lock:
            self._answers[key] = entry
            with self.path.open("a") as f:
                f.write(json.dumps(entry, ensure_ascii=False) + "\n")


class _Recording:
    """The inner engine's real stream, passed through; a completed answer is stored in the transcript."""

    def __init__(self, engine: ReplayTextEngine, key: str, prompt: str, stream: GenerationStream) -> None:
        self._engine, self._key, self._prompt, self._stream = engine, key, prompt, stream

    def cancel(self) -> None:
        self._stream.cancel()

    async def __aiter__(self) -> AsyncIterator[StreamEvent]:
        text = ""
        async for ev in self._stream:
            if isinstance(ev, TextDelta):
                text += ev.text
            elif ev.finish_reason in ("stop", "length"):
                self._engine._store(
                    self._key, "model", self._prompt, text, ev.completion_tokens, ev.finish_reason
                )
            yield ev
