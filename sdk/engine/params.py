"""Generation parameters, their validation, and the `Completion` result record."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Literal

from xpullm.errors import XPULLMError

__all__ = [
    "MAX_NEW_TOKENS_LIMIT",
    "Completion",
    "ContextOverflow",
    "FinishReason",
    "GenerationParams",
    "InvalidParameter",
    "Timings",
    "TokenLogprob",
]

# OpenAI's cap on `top_logprobs`; more alternatives per token would only cost time.
MAX_TOP_LOGPROBS = 20

# A hard ceiling so a typo such as max_new_tokens=10**9 fails at once instead of allocating a huge cache.
MAX_NEW_TOKENS_LIMIT = 1 << 20

FinishReason = Literal["stop", "length", "cancelled"]


class InvalidParameter(XPULLMError, ValueError):
    """A generation argument (or prompt / message field) with a bad value; the message names the field."""

    def __init__(self, name: str, value: object, expected: str) -> None:
        shown = repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        super().__init__(f"{name}={shown} is invalid: expected {expected}")
        self.name = name
        self.value = value


class ContextOverflow(XPULLMError, ValueError):
    """The prompt (plus at least one new token) does not fit in the model's context window."""

    def __init__(self, prompt_tokens: int, context_length: int, field_name: str = "prompt") -> None:
        super().__init__(
            f"{field_name} is {prompt_tokens} tokens but the context window is {context_length} tokens "
            f"(at least one must stay free for generation); shorten the {field_name} or create the LLM "
            "with a larger max_context if the model supports it"
        )
        self.prompt_tokens = prompt_tokens
        self.context_length = context_length
        self.field_name = field_name


@dataclass(frozen=True)
class GenerationParams:
    """Every knob of one generation call; validated on construction so bad values fail before any work."""

    max_new_tokens: int = 256
    """Upper bound on generated tokens; the call also stops earlier at EOS or a stop string."""
    temperature: float = 0.0
    """0 means greedy (argmax); larger values flatten the distribution."""
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest set of tokens whose probability mass reaches top_p (1 = off)."""
    top_k: int = 0
    """Keep only the k most likely tokens before sampling (0 = off)."""
    repetition_penalty: float = 1.0
    """CTRL-style penalty (>1 discourages tokens already in prompt or output; 1 = off)."""
    seed: int | None = None
    """Seed of the sampler's own generator, so sampled output is reproducible and independent of torch's."""
    stop: tuple[str, ...] = ()
    """Strings that end generation; the matched stop string is not part of the returned text."""
    cancel: threading.Event | None = field(default=None, compare=False)
    """Set this event from any thread to stop generation after the current token."""
    json_schema: dict[str, Any] | None = field(default=None, compare=False)
    """Constrain output to JSON valid against this schema (llguidance); output then always parses."""
    grammar: str | None = None
    """Constrain output to this Lark grammar (llguidance syntax, rule `start`); exclusive with json_schema."""
    speculative: bool = True
    """Let the engine draft and verify several tokens per step when it speculates (same output either way)."""
    logprobs: int | None = None
    """Report each generated token's log-probability and the `logprobs` most likely alternatives (0: the chosen
    token only; None: off), from the model's distribution before temperature, top-k/top-p and grammar masks."""
    min_tokens: int = 0
    """EOS cannot end generation before this many tokens (the EOS token is masked until then; stop strings and
    max_new_tokens still apply)."""
    ignore_eos: bool = False
    """Never end at EOS (it is masked at every step): generation runs to max_new_tokens, a stop string or the
    context's end. For benchmarks that need fixed output lengths."""

    def __post_init__(self) -> None:
        _check_int("max_new_tokens", self.max_new_tokens, 1, MAX_NEW_TOKENS_LIMIT)
        _check_float("temperature", self.temperature, 0.0, None)
        _check_float("top_p", self.top_p, 0.0, 1.0, low_open=True)
        _check_int("top_k", self.top_k, 0, None)
        _check_float("repetition_penalty", self.repetition_penalty, 0.0, None, low_open=True)
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise InvalidParameter("seed", self.seed, "an int or None")
        if self.cancel is not None and not hasattr(self.cancel, "is_set"):
            raise InvalidParameter(
                "cancel", self.cancel, "a threading.Event (anything with is_set()) or None"
            )
        if self.json_schema is not None and not isinstance(self.json_schema, dict):
            raise InvalidParameter("json_schema", self.json_schema, "a JSON schema as a dict, or None")
        if self.grammar is not None and (not isinstance(self.grammar, str) or not self.grammar.strip()):
            raise InvalidParameter("grammar", self.grammar, "a non-empty Lark grammar string, or None")
        if not isinstance(self.speculative, bool):
            raise InvalidParameter("speculative", self.speculative, "True or False")
        if self.logprobs is not None:
            _check_int("logprobs", self.logprobs, 0, MAX_TOP_LOGPROBS)
        _check_int("min_tokens", self.min_tokens, 0, MAX_NEW_TOKENS_LIMIT)
        if not isinstance(self.ignore_eos, bool):
            raise InvalidParameter("ignore_eos", self.ignore_eos, "True or False")
        constrained = self.grammar is not None or self.json_schema is not None
        if constrained and (self.ignore_eos or self.min_tokens):
            raise InvalidParameter(
                "ignore_eos" if self.ignore_eos else "min_tokens",
                self.ignore_eos if self.ignore_eos else self.min_tokens,
                "unset when a grammar or json_schema is given (the grammar decides where output ends)",
            )
        if self.grammar is not None and self.json_schema is not None:
            raise InvalidParameter(
                "grammar", self.grammar, "None when json_schema is also given (one constraint per call)"
            )

    def bans_eos(self, produced: int) -> bool:
        """True while EOS must not be sampled, `produced` tokens into the generation."""
        return self.ignore_eos or produced < self.min_tokens

    @property
    def greedy(self) -> bool:
        """True when decoding takes the argmax (temperature 0)."""
        return self.temperature == 0.0

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> GenerationParams:
        """Build from keyword arguments, normalising `stop` and rejecting unknown names with the valid list."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise InvalidParameter(unknown[0], kwargs[unknown[0]], f"one of the parameters {sorted(known)}")
        if "stop" in kwargs:
            kwargs["stop"] = normalize_stop(kwargs["stop"])
        return cls(**kwargs)


def normalize_stop(stop: object) -> tuple[str, ...]:
    """Accept None, one string, or a list/tuple of non-empty strings; return a tuple."""
    if stop is None:
        return ()
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, (list, tuple)):
        raise InvalidParameter("stop", stop, "a string, a list of strings, or None")
    for s in stop:
        if not isinstance(s, str) or not s:
            raise InvalidParameter("stop", stop, "non-empty strings only")
    return tuple(stop)


def _check_int(name: str, value: object, low: int, high: int | None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidParameter(name, value, "an int")
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"between {low} and {high}"
        raise InvalidParameter(name, value, f"an int {bound}")


def _check_float(name: str, value: object, low: float, high: float | None, low_open: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise InvalidParameter(name, value, "a number")
    too_low = value <= low if low_open else value < low
    if too_low or (high is not None and value > high):
        lo = f"> {low}" if low_open else f">= {low}"
        rng = lo if high is None else f"{lo} and <= {high}"
        raise InvalidParameter(name, value, f"a number {rng}")


@dataclass(frozen=True)
class Timings:
    """How a request's tokens came out of the engine's steps (all zero on the serialized path)."""

    steps: int = 0
    """Engine steps that produced at least one of this request's tokens (the prefill-finishing one included)."""
    tokens: int = 0
    """Tokens those steps produced (completion tokens plus a final EOS)."""
    draft_tokens: int = 0
    """Speculative draft tokens verified."""
    accepted_tokens: int = 0
    """Draft tokens the model agreed with (each one a token gained over plain decoding)."""

    @property
    def acceptance_rate(self) -> float:
        """Accepted / drafted (0 when nothing was drafted)."""
        return self.accepted_tokens / self.draft_tokens if self.draft_tokens else 0.0

    @property
    def tokens_per_step(self) -> float:
        """Tokens per step that produced any (1.0 for plain decoding)."""
        return self.tokens / self.steps if self.steps else 0.0


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token with its log-probability and the most likely tokens at its position."""

    token_id: int
    logprob: float
    """Natural log of the token's probability under the model (<= 0)."""
    top: tuple[tuple[int, float], ...] = ()
    """(token id, logprob) of the `GenerationParams.logprobs` most likely tokens, most likely first."""


@dataclass(frozen=True)
class Completion:
    """The result of one generation: the text plus usage counts and timings."""

    text: str
    """Generated text (prompt not included, stop string stripped)."""
    finish_reason: FinishReason
    """`stop` (EOS or a stop string), `length` (max_new_tokens or context full) or `cancelled`."""
    prompt_tokens: int
    """Tokens in the prompt as the tokenizer counts them (including template/special tokens)."""
    completion_tokens: int
    """Tokens generated, including the ones that formed a stripped stop string, excluding EOS."""
    first_token_s: float
    """Seconds from the call until the first new token was sampled (prefill latency)."""
    decode_tok_s: float
    """Decode speed after the first token, tokens per second (0 when fewer than two tokens)."""
    timings: Timings = field(default_factory=Timings)
    """Steps, tokens per step and speculative acceptance of this request."""
    logprobs: tuple[TokenLogprob, ...] | None = None
    """One entry per generated token (as `completion_tokens` counts them) when `logprobs` was asked for."""

    def __str__(self) -> str:
        return self.text
