"""Constrained decoding with llguidance: every sampled token keeps the output inside a grammar.

The grammar comes from a JSON schema (`json_schema=`) or a Lark grammar in llguidance's syntax (`grammar=`); both
compile to one llguidance grammar. At each step a matcher per batch row computes the tokens that can still lead to
a complete match; all others get -inf logits before sampling. When the match is complete the matcher only allows
EOS, so generation stops there.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import torch

from xpullm.engine.params import GenerationParams, InvalidParameter

__all__ = ["GrammarConstraint", "InvalidGrammar", "llg_tokenizer"]


class InvalidGrammar(InvalidParameter):
    """The json_schema or grammar argument is not something llguidance can compile; `name` says which one."""


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


def _llg_grammar(field: str, value: Any) -> str:
    """Translate a json_schema dict or a Lark string into llguidance's grammar text (not yet checked)."""
    import llguidance

    if field == "grammar":
        return llguidance.LLMatcher.grammar_from_lark(value)
    try:
        return llguidance.LLMatcher.grammar_from_json_schema(json.dumps(value))
    except (TypeError, ValueError) as exc:
        raise InvalidGrammar(field, value, f"a JSON-serialisable schema ({exc})") from exc


class GrammarConstraint:
    """One llguidance matcher per batch row, applied to logits before sampling.

    Args:
        field: the generation parameter the constraint came from (`json_schema` or `grammar`), named in errors.
        value: the schema dict or the Lark grammar text.
    """

    def __init__(
        self, field: str, value: Any, tokenizer: Any, batch: int, vocab_size: int, eos_ids: list[int]
    ) -> None:
        import llguidance
        import llguidance.torch as llt

        self._llt = llt
        grammar = _llg_grammar(field, value)
        lltok = llg_tokenizer(tokenizer, vocab_size, eos_ids)
        is_error, errors = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, lltok)
        if is_error:
            what = (
                "a JSON schema llguidance supports (simplify it)"
                if field == "json_schema"
                else "a Lark grammar"
            )
            raise InvalidGrammar(field, value, f"{what}; llguidance says: {' '.join(errors).strip()}")
        self.matchers = [llguidance.LLMatcher(lltok, grammar) for _ in range(batch)]
        self.vocab_size = vocab_size
        self._bitmask = llt.allocate_token_bitmask(batch, vocab_size)

    @classmethod
    def from_params(
        cls, params: GenerationParams, tokenizer: Any, batch: int, vocab_size: int, eos_ids: list[int]
    ) -> GrammarConstraint | None:
        """The constraint `params` asks for (json_schema or grammar), or None for free generation."""
        if params.json_schema is not None:
            return cls("json_schema", params.json_schema, tokenizer, batch, vocab_size, eos_ids)
        if params.grammar is not None:
            return cls("grammar", params.grammar, tokenizer, batch, vocab_size, eos_ids)
        return None

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
        """True when the match is complete and nothing but EOS may follow."""
        return self.matchers[row].is_stopped()
