"""`TranscriptLLM`: an engine-shaped object that answers from a recorded transcript.

Use it to replay a recorded job exactly (tests, audits, reproducing a bug report) without the model that made it.
It follows the engine contract (`generate`, `count_tokens`, `context_length`, `model_name`); a prompt that is not in
the transcript raises `CacheMiss` naming its hash, so a replay can never drift silently.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xpullm.graphrag.cache import cache_key, read_transcript
from xpullm.graphrag.errors import CacheMiss, ConfigError

__all__ = ["Completion", "TranscriptLLM", "approx_token_count"]

_TOKEN = re.compile(r"\w+|[^\w\s]")


def approx_token_count(text: str) -> int:
    """Words and punctuation marks: a deterministic stand-in tokenizer for replayed transcripts."""
    return len(_TOKEN.findall(text))


@dataclass(frozen=True)
class Completion:
    """Same fields as the engine's `Completion`."""

    text: str
    finish_reason: str = "stop"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    first_token_s: float = 0.0
    decode_tok_s: float = 0.0


class TranscriptLLM:
    """Answers prompts from a JSONL transcript written by `LLMCache.export_transcript`.

    delay_s: seconds to wait per answered prompt, so a replayed job takes real time (lets tests kill it mid-run).
    log_path: every answered prompt's hash is appended here (one line each), to count calls across processes.
    """

    def __init__(
        self,
        transcript: str | Path,
        *,
        context_length: int = 8192,
        delay_s: float = 0.0,
        log_path: str | Path | None = None,
    ) -> None:
        entries = read_transcript(transcript)
        models = sorted({e.model for e in entries})
        if len(models) != 1:
            raise ConfigError(
                f"transcript {str(transcript)!r} must hold calls of exactly one model, found {models}"
            )
        self.model_name = models[0]
        self.context_length = context_length
        self._answers = {e.key: e for e in entries}
        self._delay = delay_s
        self._log = Path(log_path) if log_path is not None else None

    def count_tokens(self, text: str) -> int:
        """Tokens by `approx_token_count` (the transcript was recorded with the same counter)."""
        return approx_token_count(text)

    def generate(self, prompt: str | Sequence[str], **params: Any) -> Completion | list[Completion]:
        """The recorded answer(s) for `prompt` under exactly these params."""
        if isinstance(prompt, str):
            return self._one(prompt, params)
        return [self._one(p, params) for p in prompt]

    def _one(self, prompt: str, params: dict[str, Any]) -> Completion:
        key = cache_key(self.model_name, prompt, params)
        entry = self._answers.get(key)
        if entry is None:
            raise CacheMiss(key, "transcript", prompt)
        if self._delay:
            time.sleep(self._delay)
        if self._log is not None:
            with self._log.open("a") as fh:
                fh.write(key + "\n")
        return Completion(entry.text, entry.finish_reason, entry.prompt_tokens, entry.completion_tokens)
