"""Incremental detokenization with stop strings: the one place that decides which text a caller sees.

`generate` and `stream` both read their text from a `TextAssembler`, so the streamed deltas join to exactly the
generated text. Stop strings are matched on decoded text (so they may span several tokens) and stripped; while the
tail of the text could still grow into a stop string it is held back from the stream.

Decoding is the engine's largest per-token host cost: with transformers' fast tokenizers the text comes straight
from the Rust tokenizer (`decoder_for`), which is what their `decode` returns for these arguments without its
Python argument handling (about 6x less host time per token; at 32 streams that was most of the time a step's
host work kept the GPU waiting).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["TextAssembler", "decoder_for"]


def decoder_for(tokenizer: Any) -> Callable[[list[int]], str]:
    """ids -> text, as `tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)`.

    For a transformers fast tokenizer whose class keeps the base `decode` / `_decode` (these only convert the
    arguments, call the Rust tokenizer's `decode`, and with clean-up off change nothing), the Rust `decode`
    itself; for any other tokenizer its own `decode`."""
    fast = getattr(sys.modules.get("transformers"), "PreTrainedTokenizerFast", None)
    backend = getattr(tokenizer, "_tokenizer", None)
    if (
        fast is not None
        and isinstance(tokenizer, fast)
        and type(tokenizer).decode is fast.decode
        and type(tokenizer)._decode is fast._decode
        and callable(getattr(backend, "decode", None))
    ):
        return functools.partial(backend.decode, skip_special_tokens=True)
    return functools.partial(tokenizer.decode, skip_special_tokens=True, clean_up_tokenization_spaces=False)


class TextAssembler:
    """Accumulates one sequence's generated tokens into text, finding stop strings and streamable deltas."""

    def __init__(
        self, tokenizer: Any, stop: tuple[str, ...] = (), decode: Callable[[list[int]], str] | None = None
    ) -> None:
        """`decode`: the tokenizer's `decoder_for`, when the caller has it already (one per engine)."""
        self._decode = decode or decoder_for(tokenizer)
        self._stop = stop
        self._max_stop = max((len(s) for s in stop), default=0)
        self.ids: list[int] = []
        # Decode window: text of ids[_prefix:_read] is already in self.text; decoding a short window (and not the
        # whole sequence each step) keeps the cost per token constant.
        self._prefix = 0
        self._read = 0
        self.text = ""
        self._emitted = 0
        self.stopped = False

    def push(self, token_id: int) -> None:
        """Add one generated token; sets `stopped` when a stop string completes."""
        if self.stopped:
            return
        self.ids.append(token_id)
        before = self._decode(self.ids[self._prefix : self._read])
        after = self._decode(self.ids[self._prefix :])
        # An incomplete UTF-8 sequence decodes to U+FFFD; wait for the token that completes the character.
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return
        self._append(after[len(before) :])
        self._prefix, self._read = self._read, len(self.ids)

    def finish(self) -> None:
        """Flush text still waiting in the decode window (e.g. a trailing partial character)."""
        if self.stopped or self._read == len(self.ids):
            return
        before = self._decode(self.ids[self._prefix : self._read])
        after = self._decode(self.ids[self._prefix :])
        if len(after) > len(before):
            self._append(after[len(before) :])
        self._read = len(self.ids)

    def _append(self, delta: str) -> None:
        start = max(0, len(self.text) - self._max_stop + 1)
        self.text += delta
        if not self._stop:
            return
        hits = [i for i in (self.text.find(s, start) for s in self._stop) if i >= 0]
        if hits:
            self.text = self.text[: min(hits)]
            self.stopped = True

    def take_delta(self, final: bool = False) -> str:
        """Text not yet handed out, minus a tail that might still become a stop string (unless final)."""
        end = len(self.text)
        if not final and not self.stopped:
            end -= self._held_back()
        if end <= self._emitted:
            return ""
        out = self.text[self._emitted : end]
        self._emitted = end
        return out

    def _held_back(self) -> int:
        # Longest suffix of the text that is a proper prefix of some stop string.
        best = 0
        for s in self._stop:
            for n in range(min(len(s) - 1, len(self.text)), best, -1):
                if self.text.endswith(s[:n]):
                    best = n
                    break
        return best
