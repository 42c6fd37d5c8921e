"""Speculative decoding: a drafter proposes a sequence's next tokens, the engine verifies them in one step.

A decoding sequence with a draft of k tokens contributes its last token plus the k drafts as one chunk of k + 1
tokens with logits for every row (`EngineCore._launch`, `_verify`). The paged attention kernel computes each
token over keys 0..its position of its own sequence whatever the chunking, so row i's logits are bitwise the logits plain
decoding would see after accepting drafts 0..i-1: the core takes the row's token exactly as plain decoding
would (argmax, or the request's own sampler and seeded generator in the same order), keeps going while that
token equals the draft, and rolls the sequence back to the last accepted position (rejected positions' K/V are
simply overwritten later). Greedy output is therefore identical to plain decoding, and so is seeded sampling.

Why sampling stays exact: our drafters are deterministic (a draft is one token per position, q = a point mass on
d). Rejection sampling then accepts d with probability min(1, p(d) / q(d)) = p(d) and on rejection draws from
norm(max(0, p - q)) = p without d. Drawing x ~ p and accepting iff x == d has the same joint law (x = d with
probability p(d), else x ~ p restricted to the other tokens), and drawing with the request's generator in plain
decoding's order makes it the very same draw. `rejection_sample` below is the general rule for drafters with a
full distribution q (tested against plain sampling); the core does not need it for point-mass drafts.

Drafters (registry `DRAFTERS`, picked by `SpeculativeConfig.method`):
- `prompt_lookup`: the continuation of the longest suffix match in prompt + generated text (the sequence's last
  m tokens occur earlier; where equally long matches continue differently, the continuation most of them share,
  the latest on ties, its chance scaled by that share), cut where it stops paying: the chance that a copy
  continues grows with the length of the match so far (measured with the packaged model: ~0.3 after a one-token
  match, ~0.45 after two, 0.85-0.9 after five or more), so draft token j is kept while the estimated chance that
  drafts 1..j are all accepted, times `expected_speedup`, exceeds the cost of its verified row. Each request
  corrects the prior rates with its own accepted and rejected continuations (`_MatchRates`). Free to compute;
  pays off on grounded answers, summaries and extraction, which copy spans of their input.
- `prompt_lookup_latest`: the simpler rule it replaced, kept as the baseline: the continuation of the latest
  earlier occurrence of the last n tokens (n from 5 down to 2), as many tokens as the request's single acceptance
  estimate says (below).
- `self_speculative` (IPEX-LLM's idea, the layer-skipping variant of Draft & Verify): the same model with only
  some layers drafts k tokens greedily, through the same runner and KV pools (the draft writes K/V of its layers
  at positions the verification step then rewrites), stopping early when its top probability is low.
- `low_bit_draft` (IPEX-LLM's recipe): a copy of the model in a lower-bit format drafts greedily on its own runner,
  over the model's own KV pools by default (`draft_model.py`).
- `lookup_low_bit`: prompt lookup where it finds a continuation that pays, the low-bit copy for the other
  sequences, sized by the copy's own acceptance estimate and cost.

Whether drafting pays depends on acceptance and cost. A drafter that sizes its own drafts (`sizes_drafts`, prompt
lookup) gets the most tokens the step allows and each draft row's cost (`DraftSlot.row_cost`, below) and proposes
nothing when no token pays. For the others `SpecState` keeps each request's per-token acceptance
estimate a (decayed counts of accepted and rejected draft tokens) and drafts the k that maximizes expected tokens
per step over step cost, (1 - a^(k+1)) / (1 - a) / (1 + k * c), with c the cost of one draft token relative to a
plain step: the drafter's own `cost` plus the extra verified row. A row costs `verify_cost` of a one-token step
(timed on the engine's runner when it starts unless set, `step_cost.py`);
with B sequences decoding in the step it costs B r / (1 + B r), r = verify_cost / (1 - verify_cost), of what each
of their tokens costs (a draft slows every request of the step, so it must beat the batch's own tokens). When no
k beats plain decoding the request stops drafting for a while (exponential back-off), then probes with one token;
so chat with nothing to copy runs at plain-decoding speed.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import torch

from xpullm.engine.step_cost import DEFAULT_ROW_COST
from xpullm.errors import XPULLMError

if TYPE_CHECKING:
    from xpullm.engine.runner import ModelRunner

__all__ = [
    "DRAFTERS",
    "DraftSlot",
    "Drafter",
    "LatestLookupDrafter",
    "LayerSkipDrafter",
    "LookupLowBitDrafter",
    "LowBitDrafter",
    "PromptLookupDrafter",
    "SpecState",
    "SpeculativeConfig",
    "UnknownDrafter",
    "expected_gain",
    "make_drafter",
    "register_drafter",
    "rejection_sample",
    "resolve_speculative",
]


class UnknownDrafter(XPULLMError, ValueError):
    """A speculative method name that no drafter is registered under."""


@dataclass(frozen=True)
class SpeculativeConfig:
    """How the engine drafts and verifies tokens (one config per engine; requests may opt out)."""

    method: str = "prompt_lookup"
    """A drafter in `DRAFTERS`: `prompt_lookup`, `self_speculative` (skipped layers draft), `low_bit_draft` (a
    lower-bit copy of the model drafts) or `lookup_low_bit` (prompt lookup where it finds a continuation that pays,
    the low-bit copy for the other sequences)."""
    num_draft: int = 6
    """Most draft tokens verified per sequence and step (k): with the packaged model on CPU longer caps verified
    more rejected rows than they saved steps (replayed greedy traces, `docs/benchmarks-speculative.md`)."""
    start_draft: int = 4
    """Draft length a request starts with; it grows after fully accepted drafts and shrinks after rejections."""
    ngram_max: int = 32
    """prompt_lookup: longest suffix match measured (longer ones count as this long)."""
    ngram_min: int = 1
    """prompt_lookup: shortest suffix match drafted from (a one-token match still pays now and then: its drafts
    are cut by its low continuation rate)."""
    match_rates: tuple[float, ...] = (0.3, 0.45, 0.7, 0.8, 0.85, 0.85, 0.85, 0.9)
    """prompt_lookup: prior chance that the next token continues a suffix match of 1, 2, ... tokens (the last
    entry for all longer ones), measured on the packaged model's grounded answers, summaries and extraction."""
    rate_prior_weight: float = 10.0
    """prompt_lookup: pseudo-counts behind `match_rates`; a request's own continuations move them (a weak prior
    chased one request's noise in replayed traces)."""
    rate_decay: float = 0.8
    """prompt_lookup: weight of a request's older continuation outcomes per new one (recent ones count most)."""
    expected_speedup: float = 1.2
    """prompt_lookup: an accepted draft token saves a step's cost over this (the speed-up drafting brings), so a
    drafted token pays while its acceptance chance exceeds its row's cost times this. 1.7 went with the fixed row
    cost of 0.15; with the row cost timed per machine, 1.2 drafted as well or better on every grounded workload on
    a Xeon with AMX (`bench/spec_decode.py`, docs/benchmarks-speculative.md)."""
    draft_layers: tuple[int, ...] | None = None
    """self_speculative: layers the draft runs (None: the first and last quarter plus every other middle layer)."""
    draft_min_prob: float = 0.3
    """self_speculative, low_bit_draft, lookup_low_bit: stop a draft when the draft model's top probability falls
    below this."""
    draft_format: str = "sym_int4"
    """low_bit_draft, lookup_low_bit: the format of the model's draft copy (IPEX-LLM's recipe: INT4 drafts for a
    bf16 / fp8 / int8 model)."""
    draft_group_size: int | None = None
    """low_bit_draft, lookup_low_bit: the draft format's group size (None: the format's default)."""
    draft_head_format: str | None = "sym_int8"
    """low_bit_draft, lookup_low_bit: the format of the copy's LM head (None: `draft_format`). IPEX-LLM's mixed
    precision keeps the head in 8 bits: on the packaged model an int8 head raised the int4 copy's tokens per step
    on every workload measured (2.04 -> 2.56 on knowledge-base answers; docs/benchmarks-speculative.md), for ~6%
    more draft bytes on a Llama-3-8B."""
    draft_kv_cache_dtype: str = "shared"
    """low_bit_draft, lookup_low_bit: the draft copy's KV. `shared`: it attends over the model's own pools - the
    model's K/V of every verified token - with no pools of its own and no catch-up on prompts or skipped tokens
    (packaged model over its dense copy: tokens per step 1.88 -> 2.49 on knowledge-base answers, 2.12 -> 2.70 on
    summaries; docs/benchmarks-speculative.md). Or a KV dtype (`int8`, `fp8_e4m3`, `bf16`, `auto`): pools of its
    own, shaped like the model's, fed the copy's own K/V."""
    verify_cost: float | None = None
    """Cost of verifying one more token in a step, relative to a one-token step (None: timed on the engine's own
    runner when it starts, `step_cost.measured_row_cost` at 1 + `num_draft` tokens). It differs by an order of
    magnitude between machines: 0.12-0.18 with the packaged 135M model on a 2-core AMD EPYC, 0.04-0.10 on a 2-core
    Xeon with AMX (`bench/spec_row_cost.py`), near 0 for big models on GPUs. Set it to make drafting independent of
    the machine (the tests' step counts do)."""
    draft_cost: float | None = None
    """Cost of drafting one token relative to a step (None: the drafter's own estimate, 0 for prompt lookup); for
    `lookup_low_bit`, of the low-bit copy's tokens (lookup's are free)."""

    def __post_init__(self) -> None:
        if self.method not in DRAFTERS:
            raise UnknownDrafter(
                f"speculative method {self.method!r} is unknown; use one of {sorted(DRAFTERS)} (or 'off')"
            )
        if not 1 <= self.start_draft <= self.num_draft:
            raise ValueError(
                f"start_draft={self.start_draft} must be between 1 and num_draft={self.num_draft}"
            )
        if not 1 <= self.ngram_min <= self.ngram_max:
            raise ValueError(f"ngram_min={self.ngram_min} must be between 1 and ngram_max={self.ngram_max}")
        if self.method in ("low_bit_draft", "lookup_low_bit"):
            from xpullm.engine.draft_model import SHARED_KV
            from xpullm.formats import get_format
            from xpullm.kernels.paged import KV_CACHE_DTYPES

            get_format(self.draft_format)  # an unknown format fails here, naming the known ones
            if self.draft_head_format is not None:
                get_format(self.draft_head_format)
            if self.draft_kv_cache_dtype not in (*KV_CACHE_DTYPES, SHARED_KV):
                raise ValueError(
                    f"draft_kv_cache_dtype={self.draft_kv_cache_dtype!r} is not known: choose {SHARED_KV!r} (the "
                    f"model's own pools) or one of {sorted(KV_CACHE_DTYPES)}"
                )
        if self.verify_cost is not None and not 0.0 <= self.verify_cost < 1.0:
            raise ValueError(
                f"verify_cost={self.verify_cost} must be at least 0 and below 1 (or None: measured)"
            )
        if not self.match_rates or not all(0.0 < r < 1.0 for r in self.match_rates):
            raise ValueError(
                f"match_rates={self.match_rates} must be non-empty chances strictly between 0 and 1"
            )


def resolve_speculative(value: SpeculativeConfig | str | None) -> SpeculativeConfig | None:
    """`LLM(speculative=...)`: a config, a method name, or None / 'off' for plain decoding."""
    if value is None or value == "off":
        return None
    if isinstance(value, SpeculativeConfig):
        return value
    if isinstance(value, str):
        return SpeculativeConfig(method=value)
    raise UnknownDrafter(
        f"speculative={value!r} is invalid: expected a method name {sorted(DRAFTERS)}, 'off', None or a "
        "SpeculativeConfig"
    )


@dataclass
class DraftSlot:
    """One sequence asking for a draft this step."""

    tokens: list[int]
    """Prompt + generated tokens; the last one's K/V is not computed yet (it is the step's first token)."""
    k: int
    """Most draft tokens wanted."""
    slot: int
    """The sequence's row in the runner's block tables."""
    state: Any
    """What the drafter's `start` returned for this request."""
    row_cost: float = DEFAULT_ROW_COST
    """Cost of one verified draft row relative to a token of this step (`SpecState.cost`)."""


class Drafter(Protocol):
    """Proposes draft tokens for a batch of sequences (called from the engine thread only)."""

    cost: float
    """Cost of drafting one token, relative to one plain decode step."""
    sizes_drafts: bool
    """True when the drafter picks each draft's length itself (from `DraftSlot.row_cost`): `SpecState` then only
    caps it; False when `SpecState`'s acceptance estimate sets `DraftSlot.k`."""

    def start(self, prompt: list[int]) -> Any:
        """Per-request state, created at submission (None when the drafter keeps none)."""
        ...

    def propose(self, batch: list[DraftSlot]) -> list[list[int]]:
        """Up to `slot.k` draft tokens per slot (possibly none)."""
        ...


DRAFTERS: dict[str, Callable[[ModelRunner, SpeculativeConfig], Drafter]] = {}


def register_drafter(name: str) -> Callable[[Callable[..., Drafter]], Callable[..., Drafter]]:
    """Register a drafter factory `(runner, config) -> Drafter` under `name`."""

    def deco(factory: Callable[..., Drafter]) -> Callable[..., Drafter]:
        DRAFTERS[name] = factory
        return factory

    return deco


def make_drafter(runner: ModelRunner, config: SpeculativeConfig) -> Drafter:
    """The drafter `config.method` names, over `runner`'s model."""
    return DRAFTERS[config.method](runner, config)


# -- prompt lookup ---------------------------------------------------------------------------------------------


class _MatchRates:
    """One request's chance that the next token continues a suffix match of length m: decayed counts of its own
    outcomes on top of the prior `match_rates` (weighted `rate_prior_weight`)."""

    def __init__(self, config: SpeculativeConfig) -> None:
        self.prior = config.match_rates
        self.weight = config.rate_prior_weight
        self.decay = config.rate_decay
        self.hits = [0.0] * len(self.prior)
        self.trials = [0.0] * len(self.prior)

    def _bucket(self, m: int) -> int:
        return min(m, len(self.prior)) - 1

    def rate(self, m: int) -> float:
        """Estimated chance that a match of `m` tokens continues with its source's next token."""
        b = self._bucket(m)
        return (self.hits[b] + self.weight * self.prior[b]) / (self.trials[b] + self.weight)

    def record(self, m: int, continued: bool) -> None:
        """One outcome: the token after a match of `m` tokens was (not) the source's next token."""
        self.hits = [h * self.decay for h in self.hits]
        self.trials = [t * self.decay for t in self.trials]
        b = self._bucket(m)
        self.trials[b] += 1.0
        self.hits[b] += continued


class _Lookup:
    """One request's prompt-lookup state: where each token occurs, the continuation rates, the pending draft."""

    def __init__(self, config: SpeculativeConfig) -> None:
        self.config = config
        self.rates = _MatchRates(config)
        self.after: dict[int, list[int]] = {}  # token -> positions right after its occurrences, oldest first
        self.done = 0  # tokens before this index are in `after`
        self.pending: tuple[int, list[int], int] | None = None  # (position of draft[0], draft, match length)

    def _index(self, tokens: list[int]) -> None:
        # A token is indexed once its continuation exists; the last token is the one being matched.
        for i in range(self.done, len(tokens) - 1):
            self.after.setdefault(tokens[i], []).append(i + 1)
        self.done = max(self.done, len(tokens) - 1)

    def _learn(self, tokens: list[int]) -> None:
        """Score the previous draft against the tokens that followed it (verification keeps the accepted drafts
        and then the model's own token, which differs from the draft at the first rejection)."""
        if self.pending is None or len(tokens) <= self.pending[0]:
            return  # no draft out, or it has not been verified yet
        at, draft, m = self.pending
        self.pending = None
        for j, tok in enumerate(draft):
            if at + j >= len(tokens):
                break
            continued = tokens[at + j] == tok
            self.rates.record(m + j, continued)
            if not continued:
                break

    def match(self, tokens: list[int]) -> tuple[int, list[int]]:
        """(m, ats): the longest m such that the last m tokens also end earlier, and the positions right after
        each such earlier occurrence, latest first; (0, []) when the last token occurs nowhere before."""
        self._index(tokens)
        n = len(tokens)
        best, ats = 0, []
        cap = self.config.ngram_max
        for at in reversed(self.after.get(tokens[-1], ())[-_MAX_OCCURRENCES:]):
            m = 1
            while m < cap and at - 1 - m >= 0 and tokens[at - 1 - m] == tokens[n - 1 - m]:
                m += 1
            if m > best:
                best, ats = m, [at]
            elif m == best:
                ats.append(at)
        return best, ats

    def draft(self, tokens: list[int], k: int, min_chance: float) -> list[int]:
        """Up to k tokens continuing the longest suffix match, while the chance that all of them are accepted
        stays above `min_chance`. Where equally long matches continue differently, the draft takes the most
        common continuation (the latest on ties) and its chance shrinks by the share that agrees."""
        self._learn(tokens)
        m, ats = self.match(tokens)
        if m < self.config.ngram_min:
            return []
        n = len(tokens)
        out: list[int] = []
        chance = 1.0
        while len(out) < k and ats:
            j = len(out)
            counts: dict[int, int] = {}
            for at in ats:
                counts[tokens[at + j]] = counts.get(tokens[at + j], 0) + 1
            top = max(counts.values())
            tok = next(
                tokens[at + j] for at in ats if counts[tokens[at + j]] == top
            )  # latest of the most common
            chance *= self.rates.rate(m + j) * top / len(ats)
            if chance <= min_chance:
                break
            out.append(tok)
            ats = [at for at in ats if tokens[at + j] == tok and at + j + 1 < n]
        if out:
            self.pending = (n, out, m)
        return out


# Occurrences of the last token compared per draft (the latest ones): bounds a step's work on long prompts.
_MAX_OCCURRENCES = 256


class PromptLookupDrafter:
    """Drafts the continuation of the longest suffix match in prompt + generated text, as far as it pays."""

    cost = 0.0
    sizes_drafts = True

    def __init__(self, config: SpeculativeConfig) -> None:
        self.config = config

    def start(self, prompt: list[int]) -> _Lookup:
        return _Lookup(self.config)

    def propose(self, batch: list[DraftSlot]) -> list[list[int]]:
        speedup = self.config.expected_speedup
        return [s.state.draft(s.tokens, s.k, s.row_cost * speedup) for s in batch]


@register_drafter("prompt_lookup")
def _prompt_lookup(runner: ModelRunner, config: SpeculativeConfig) -> Drafter:
    return PromptLookupDrafter(config)


class _NgramIndex:
    """For each n: n-gram -> position right after its latest occurrence that has a continuation."""

    def __init__(self, ngram_min: int, ngram_max: int) -> None:
        self.sizes = range(ngram_max, ngram_min - 1, -1)
        self.maps: dict[int, dict[tuple[int, ...], int]] = {n: {} for n in self.sizes}
        self.done = 0  # n-grams ending before this index are in the maps

    def update(self, tokens: list[int]) -> None:
        # An n-gram ending at i is indexed once token i + 1 exists (its continuation).
        for i in range(self.done, len(tokens) - 1):
            for n in self.sizes:
                if i + 1 >= n:
                    self.maps[n][tuple(tokens[i + 1 - n : i + 1])] = i + 1
        self.done = max(self.done, len(tokens) - 1)

    def lookup(self, tokens: list[int], k: int) -> list[int]:
        self.update(tokens)
        for n in self.sizes:
            if len(tokens) < n:
                continue
            at = self.maps[n].get(tuple(tokens[-n:]))
            if at is not None:
                return tokens[at : at + k]
        return []


class LatestLookupDrafter:
    """The baseline: k tokens after the latest earlier occurrence of the last n-gram, n from `ngram_max` down to
    `ngram_min` (k set by `SpecState`)."""

    cost = 0.0
    sizes_drafts = False

    def __init__(self, ngram_min: int = 2, ngram_max: int = 5) -> None:
        self.ngram_min, self.ngram_max = ngram_min, ngram_max

    def start(self, prompt: list[int]) -> _NgramIndex:
        return _NgramIndex(self.ngram_min, self.ngram_max)

    def propose(self, batch: list[DraftSlot]) -> list[list[int]]:
        return [s.state.lookup(s.tokens, s.k) for s in batch]


@register_drafter("prompt_lookup_latest")
def _prompt_lookup_latest(runner: ModelRunner, config: SpeculativeConfig) -> Drafter:
    return LatestLookupDrafter()


# -- self-speculative (layer skipping) -----------------------------------------------------------------------


def default_draft_layers(n_layers: int) -> tuple[int, ...]:
    """The first and last quarter of the layers, and every other layer between them."""
    q = max(1, n_layers // 4)
    middle = range(q, n_layers - q)
    return tuple(sorted({*range(q), *middle[::2], *range(n_layers - q, n_layers)}))


class LayerSkipDrafter:
    """The target model with only `layers` drafts greedily, one batched partial forward per draft position."""

    def __init__(self, runner: ModelRunner, layers: tuple[int, ...], min_prob: float) -> None:
        n = len(runner.dec.layers)
        bad = [i for i in layers if not 0 <= i < n]
        if bad or not layers:
            raise ValueError(f"draft_layers={layers} must be a non-empty subset of 0..{n - 1}")
        self.runner = runner
        self.layers = tuple(sorted(set(layers)))
        self.min_prob = min_prob
        self.cost = len(self.layers) / n  # the LM head and step overhead come on top: a lower bound
        self.sizes_drafts = False

    def start(self, prompt: list[int]) -> None:
        return None

    def propose(self, batch: list[DraftSlot]) -> list[list[int]]:
        return _greedy_drafts(self.runner, batch, self.min_prob, self.layers)


def _greedy_drafts(
    runner: ModelRunner, batch: list[DraftSlot], min_prob: float, layers: tuple[int, ...] | None = None
) -> list[list[int]]:
    """Greedy drafts over the model's own KV pools: each sequence's last token (whose K/V no step has written yet)
    and then its drafts, one batched forward per draft position through `runner` (the model with only `layers`,
    or a copy sharing its pools); the K/V these write sit where the verifying step writes next."""
    drafts: list[list[int]] = [[] for _ in batch]
    live = [i for i, s in enumerate(batch) if s.k > 0]
    while live:
        ids = [drafts[i][-1] if drafts[i] else batch[i].tokens[-1] for i in live]
        pos = [len(batch[i].tokens) - 1 + len(drafts[i]) for i in live]
        rows = [batch[i].slot for i in live]
        logits = runner.forward(ids, pos, rows, list(range(len(live))), layers=layers)
        live = _extend_confident(logits, live, drafts, batch, min_prob)
    return drafts


def _extend_confident(
    logits: torch.Tensor, live: list[int], drafts: list[list[int]], batch: list[DraftSlot], min_prob: float
) -> list[int]:
    """Append each live sequence's greedy token (logits row j for sequence live[j]) when the draft model's top
    probability reaches `min_prob`; the sequences that want more drafts after it."""
    top = logits.float().softmax(-1).max(-1)
    nxt, conf = top.indices.tolist(), top.values.tolist()
    keep = []
    for j, i in enumerate(live):
        if conf[j] < min_prob:
            continue
        drafts[i].append(nxt[j])
        if len(drafts[i]) < batch[i].k:
            keep.append(i)
    return keep


@register_drafter("self_speculative")
def _self_speculative(runner: ModelRunner, config: SpeculativeConfig) -> Drafter:
    layers = config.draft_layers or default_draft_layers(len(runner.dec.layers))
    return LayerSkipDrafter(runner, layers, config.draft_min_prob)


# -- self-speculative (a low-bit copy of the model) -----------------------------------------------------------


@dataclass
class _DraftKV:
    """One request's draft pools: the tokens whose K/V they hold, position by position."""

    fed: list[int] = field(default_factory=list)
    settled: int = 0
    """fed[:settled] were the sequence's own tokens at its last proposal: those never change, only later ones."""

    def resume(self, tokens: list[int]) -> int:
        """The first position of `tokens` whose K/V the pools lack (at most the last token, which every proposal
        feeds); `fed` then records all of `tokens`, which this proposal feeds from there."""
        i, n = min(self.settled, len(tokens) - 1), min(len(self.fed), len(tokens) - 1)
        while i < n and self.fed[i] == tokens[i]:
            i += 1
        self.fed[i:] = tokens[i:]
        self.settled = len(tokens)
        return i


def _spans(spans: list[tuple[DraftSlot, int, int]]) -> tuple[list[int], list[int], list[int]]:
    """(token ids, positions, block-table rows) of each slot's tokens[start:end], one flat step."""
    ids: list[int] = []
    pos: list[int] = []
    rows: list[int] = []
    for slot, start, end in spans:
        ids += slot.tokens[start:end]
        pos += range(start, end)
        rows += [slot.slot] * (end - start)
    return ids, pos, rows


class LowBitDrafter:
    """A lower-bit copy of the model (`draft_model.low_bit_copy`) drafts greedily on its own runner and pools.

    The copy's pools hold K/V for the tokens it was fed (`_DraftKV.fed`); at each proposal a sequence first feeds
    what changed since (the tokens after the longest common prefix of `fed` and the sequence: usually the
    verifying step's correction or bonus token), in the same forward that drafts its first token. Catch-ups longer
    than `CATCH_UP` tokens (a new prompt, a request that paused drafting) run first, in chunks of at most
    `CHUNK` tokens.

    `shared` (`draft_kv_cache_dtype="shared"`): the copy attends over the model's own pools instead - the K/V the
    model wrote for every verified token - and drafts as the skipped-layer drafter does (the last token, then its
    drafts; their K/V land where the verifying step writes next). No pools of its own, nothing to catch up.
    """

    CATCH_UP = 16
    CHUNK = 512

    def __init__(self, draft: ModelRunner, min_prob: float, cost: float, shared: bool = False) -> None:
        self.draft = draft
        self.min_prob = min_prob
        self.cost = cost
        self.shared = shared
        """The copy runs over the model's own pools (`draft_model.SHARED_KV`): nothing to catch up."""
        self.sizes_drafts = False

    def start(self, prompt: list[int]) -> _DraftKV:
        return _DraftKV()

    def propose(self, batch: list[DraftSlot]) -> list[list[int]]:
        if self.shared:
            return _greedy_drafts(self.draft, batch, self.min_prob)
        drafts: list[list[int]] = [[] for _ in batch]
        live = [i for i, s in enumerate(batch) if s.k > 0]
        starts = {i: batch[i].state.resume(batch[i].tokens) for i in live}
        # Long gaps first, without logits: all but each sequence's last token.
        long = [i for i in live if len(batch[i].tokens) - 1 - starts[i] > self.CATCH_UP]
        ids, pos, rows = _spans([(batch[i], starts[i], len(batch[i].tokens) - 1) for i in long])
        for c in range(0, len(ids), self.CHUNK):
            self.draft.forward(ids[c : c + self.CHUNK], pos[c : c + self.CHUNK], rows[c : c + self.CHUNK], [])
        for i in long:
            starts[i] = len(batch[i].tokens) - 1
        # First forward: each sequence's short catch-up and its last token; logits at the last token.
        ids, pos, rows = _spans([(batch[i], starts[i], len(batch[i].tokens)) for i in live])
        last = list(itertools.accumulate(len(batch[i].tokens) - starts[i] for i in live))
        last = [n - 1 for n in last]
        while live:
            logits = self.draft.forward(ids, pos, rows, last)
            live = _extend_confident(logits, live, drafts, batch, self.min_prob)
            ids = [drafts[i][-1] for i in live]
            pos = [len(batch[i].tokens) - 1 + len(drafts[i]) for i in live]
            rows = [batch[i].slot for i in live]
            last = list(range(len(live)))
            for i in live:
                batch[i].state.fed.append(drafts[i][-1])
        return drafts


def _low_bit_drafter(runner: ModelRunner, config: SpeculativeConfig) -> LowBitDrafter:
    from xpullm.engine.draft_model import SHARED_KV, draft_runner, low_bit_copy, weight_bytes
    from xpullm.engine.step_cost import step_time

    dec = low_bit_copy(runner.dec, config.draft_format, config.draft_group_size, config.draft_head_format)
    draft = draft_runner(runner, dec, config.draft_kv_cache_dtype)
    # Graph-replayed decode on an accelerator streams the weights: a draft token costs about the copy's bytes over
    # the model's (at least 0.1: attention, norms and launches do not shrink with the weights). CPU steps run
    # eagerly, with overheads the bytes do not show: there the two steps are timed.
    cost = max(0.1, weight_bytes(dec) / max(1, weight_bytes(runner.dec)))
    if runner.device.type == "cpu":
        cost = max(cost, step_time(draft) / step_time(runner))
    return LowBitDrafter(draft, config.draft_min_prob, cost, config.draft_kv_cache_dtype == SHARED_KV)


@register_drafter("low_bit_draft")
def _low_bit_draft(runner: ModelRunner, config: SpeculativeConfig) -> Drafter:
    return _low_bit_drafter(runner, config)


# -- both: prompt lookup where the text offers a copy, the low-bit copy elsewhere -------------------------------


@dataclass
class _HybridState:
    """One request's state under `LookupLowBitDrafter`: prompt lookup's, the draft pools', and the acceptance
    estimate and back-off of the low-bit copy's drafts (a `SpecState`), with the copy's last draft to score."""

    lookup: _Lookup
    kv: _DraftKV
    copy: SpecState
    pending: tuple[int, list[int]] | None = None
    """(position of draft[0], draft) of the copy's last draft, scored at the next proposal."""

    def learn(self, tokens: list[int]) -> None:
        """Score the copy's previous draft against the tokens verification kept (its accepted prefix, then the
        model's own token)."""
        if self.pending is None or len(tokens) <= self.pending[0]:
            return
        at, draft = self.pending
        self.pending = None
        accepted = 0
        while (
            accepted < len(draft) and at + accepted < len(tokens) and tokens[at + accepted] == draft[accepted]
        ):
            accepted += 1
        self.copy.update(len(draft), accepted)


class LookupLowBitDrafter:
    """Prompt lookup where the text so far offers a continuation that pays (free to draft), the model's low-bit
    copy (`LowBitDrafter`) for the other sequences of the step.

    Grounded text alternates between spans copied from the input, which prompt lookup drafts for nothing, and the
    model's own words, where only a draft model guesses well. The copy's draft length follows its own per-request
    acceptance estimate and cost (a `SpecState` over the copy's drafts alone; they are scored against the tokens
    verification kept, like prompt lookup's), so where the copy does not pay it pauses. Over the model's pools (the
    default) it has nothing to catch up; with pools of its own they catch up on the tokens it skipped in its next
    forward (`_DraftKV`)."""

    cost = 0.0  # lookup's drafts are free; the copy's cost is weighed here, per sequence
    sizes_drafts = True

    def __init__(self, lookup: PromptLookupDrafter, copy: LowBitDrafter, config: SpeculativeConfig) -> None:
        self.lookup = lookup
        self.copy = copy
        self.config = config

    def start(self, prompt: list[int]) -> _HybridState:
        cost = self.copy.cost if self.config.draft_cost is None else self.config.draft_cost
        copy = SpecState(self.config, None, draft_cost=cost)
        return _HybridState(self.lookup.start(prompt), _DraftKV(), copy)

    def propose(self, batch: list[DraftSlot]) -> list[list[int]]:
        slots = [DraftSlot(s.tokens, s.k, s.slot, s.state.lookup, s.row_cost) for s in batch]
        drafts = self.lookup.propose(slots)
        rest: list[int] = []
        for i, (s, draft) in enumerate(zip(batch, drafts, strict=True)):
            state: _HybridState = s.state
            state.learn(s.tokens)
            if draft:
                continue
            state.copy.verify_cost = s.row_cost  # this step's row cost (the batch's share included)
            k = min(s.k, state.copy.want())
            if k > 0:
                rest.append(i)
                slots[i] = DraftSlot(s.tokens, k, s.slot, state.kv, s.row_cost)
        if rest:
            for i, draft in zip(rest, self.copy.propose([slots[i] for i in rest]), strict=True):
                state = batch[i].state
                if draft:
                    drafts[i] = draft
                    state.pending = (len(batch[i].tokens), draft)
                else:
                    state.copy.missed()
        return drafts


@register_drafter("lookup_low_bit")
def _lookup_low_bit(runner: ModelRunner, config: SpeculativeConfig) -> Drafter:
    return LookupLowBitDrafter(PromptLookupDrafter(config), _low_bit_drafter(runner, config), config)


# -- per-request adaptation ------------------------------------------------------------------------------------


def expected_gain(alpha: float, k: int, cost: float) -> float:
    """Expected tokens per step over the step's relative cost, for k draft tokens each accepted with `alpha`."""
    tokens = k + 1.0 if alpha >= 1.0 else (1.0 - alpha ** (k + 1)) / (1.0 - alpha)
    return tokens / (1.0 + k * cost)


@dataclass
class SpecState:
    """One request's acceptance estimate, draft length and back-off."""

    config: SpeculativeConfig
    drafter_state: Any = None
    verify_cost: float = DEFAULT_ROW_COST
    """Cost of verifying one more token in a one-token step, relative to that step."""
    draft_cost: float = 0.0
    """Cost of drafting one token relative to a plain step (the drafter's)."""
    sizes_drafts: bool = False
    """The drafter sizes its drafts itself (`Drafter.sizes_drafts`): `want` only caps them at `num_draft`."""
    hits: float = 3.0
    """Decayed count of accepted draft tokens (the prior: optimistic, 3 of 4)."""
    misses: float = 1.0
    """Decayed count of rejected draft tokens."""
    pause: int = 0
    """Steps left without drafting."""
    backoff: int = 4
    """Length of the next pause (doubles each time drafting still does not pay)."""
    probing: bool = False
    drafted: int = 0
    accepted: int = 0

    @property
    def alpha(self) -> float:
        """Estimated chance that the next draft token is accepted."""
        return self.hits / (self.hits + self.misses)

    def cost(self, decoding: int = 1) -> float:
        """Cost of one draft token relative to a token of a step where `decoding` sequences decode."""
        r = self.verify_cost / max(1e-6, 1.0 - self.verify_cost)
        return decoding * r / (1.0 + decoding * r) + self.draft_cost

    def best_k(self, decoding: int = 1) -> tuple[int, float]:
        """The draft length with the best expected gain, and that gain (1.0 = plain decoding's)."""
        a, c = self.alpha, self.cost(decoding)
        return max(
            ((k, expected_gain(a, k, c)) for k in range(1, self.config.num_draft + 1)), key=lambda x: x[1]
        )

    def want(self, decoding: int = 1) -> int:
        """Draft tokens to ask for this step, with `decoding` sequences in it (0 while drafting does not pay)."""
        if self.sizes_drafts:  # it weighs each token against `cost(decoding)` and declines what does not pay
            return self.config.num_draft
        if self.pause > 0:
            self.pause -= 1
            if self.pause == 0:
                self.probing = True
            return 1 if self.probing else 0
        if self.probing:
            return 1
        k, gain = self.best_k(decoding)
        if gain <= 1.0:
            self.pause = self.backoff
            self.backoff = min(2 * self.backoff, 256)
            return 0
        return k

    def missed(self) -> None:
        """A costly drafter (self-speculative) spent a draft step and proposed nothing: count it as a rejection."""
        self.hits = 0.7 * self.hits
        self.misses = 0.7 * self.misses + 1.0
        self.probing = False

    def update(self, drafted: int, accepted: int) -> None:
        """Record a verified draft: `accepted` of its `drafted` tokens matched."""
        if drafted <= 0:
            return
        self.drafted += drafted
        self.accepted += accepted
        self.hits = 0.7 * self.hits + accepted
        self.misses = 0.7 * self.misses + (accepted < drafted)
        if self.probing:
            self.probing = False
            if accepted:  # the probe paid: start over from the prior
                self.backoff = 4
                self.hits, self.misses = max(self.hits, 3.0), min(self.misses, 1.0)


# -- rejection sampling (drafters with a full distribution) --------------------------------------------------


def rejection_sample(
    p: torch.Tensor, q: torch.Tensor, draft: int, generator: torch.Generator | None = None
) -> tuple[bool, int]:
    """Speculative sampling's accept rule for one position: target probs `p` [V], draft probs `q` [V], the drafted
    token. Accept `draft` with probability min(1, p/q); otherwise draw from norm(max(0, p - q)). The returned
    token is distributed exactly as p. Returns (accepted, token)."""
    u = torch.rand((), generator=generator, device=p.device)
    if float(u) * float(q[draft]) <= float(p[draft]):
        return True, draft
    residual = (p - q).clamp_min(0)
    total = residual.sum()
    if float(total) <= 0:  # p == q: acceptance was certain up to rounding
        return True, draft
    return False, int(torch.multinomial(residual / total, 1, generator=generator))
