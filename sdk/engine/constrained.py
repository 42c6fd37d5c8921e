"""JSON-schema constrained decoding with llguidance: every sampled token keeps the output schema-valid.

At each step the matcher computes the set of tokens that can still lead to valid JSON; all others get -inf
logits before sampling. When the JSON value is complete the matcher only allows EOS, so generation stops there.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import torch

from xpullm.errors import XPULLMError

__all__ = ["InvalidSchema", "JsonConstraint", "llg_tokenizer"]


class InvalidSchema(XPULLMError, ValueError):
    """The json_schema argument is not a schema llguidance can compile."""


_TOKENIZERS: dict[int, Any] = {}
_TOK_LOCK = threading.Lock()


def llg_tokenizer(tokenizer: Any, vocab_size: int, eos_ids: list[int]) -> Any:
    """The llguidance view of a HF fast tokenizer; built once per tokenizer (it takes about a second)."""
    import llguidance.hf

    key = id(tokenizer)
    with _TOK_LOCK:
        if key not in _TOKENIZERS:
            # Model vocab can exceed the tokenizer's (padding rows); llguidance must know the logits' width.
            _TOKENIZERS[key] = llguidance.hf.from_tokenizer(
                tokenizer, n_vocab=vocab_size, eos_token=eos_ids[0]
            )
        return _TOKENIZERS[key]


class JsonConstraint:
    """One llguidance matcher per batch row, applied to logits before sampling."""

    def __init__(
        self, schema: dict[str, Any], tokenizer: Any, batch: int, vocab_size: int, eos_ids: list[int]
    ):
        import llguidance
        import llguidance.torch as llt

        self._llt = llt
        try:
            grammar = llguidance.LLMatcher.grammar_from_json_schema(json.dumps(schema))
        except (TypeError, ValueError) as exc:
            raise InvalidSchema(f"json_schema could not be serialised: {exc}") from exc
        lltok = llg_tokenizer(tokenizer, vocab_size, eos_ids)
        is_error, errors = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, lltok)
        if is_error:
            raise InvalidSchema(f"json_schema is not supported: {errors}; simplify the schema")
        self.matchers = [llguidance.LLMatcher(lltok, grammar) for _ in range(batch)]
        self.vocab_size = vocab_size
        self._bitmask = llt.allocate_token_bitmask(batch, vocab_size)

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        """Return logits [B, V] with tokens the grammar forbids set to -inf (on a float32 copy)."""
        logits = logits.float().contiguous()
        for row, m in enumerate(self.matchers):
            self._llt.fill_next_token_bitmask(m, self._bitmask, row)
        self._llt.apply_token_bitmask_inplace(logits, self._bitmask.to(logits.device))
        return logits

    def consume(self, row: int, token: int) -> None:
        """Advance row's matcher; raises if the model's token is rejected (a bug, since we masked)."""
        m = self.matchers[row]
        if m.is_stopped():
            return
        if not m.consume_token(token):
            raise RuntimeError(f"constrained decoding rejected token {token}: {m.get_error()}")

    def finished(self, row: int) -> bool:
        """True when the JSON value is complete and nothing but EOS may follow."""
        return self.matchers[row].is_stopped()
