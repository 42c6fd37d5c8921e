"""Answer support: each sentence of a knowledge-base answer must be backed by the chunk(s) it cites.

Small models answer in-topic questions the sources do not answer with invented facts and plausible citations
("approximately 212,000 [2]"). A sentence is supported by its cited chunks when
1. every fact-like token it adds to the question (numbers, capitalized names) occurs in them, and
2. its support score reaches `SupportConfig.min_score`: a blend of lexical precision (the share of the sentence's
   content words, question words aside, found in the chunks) and the embedder's cosine between sentence and chunk
   (a bi-encoder stand-in for entailment). The threshold is calibrated by `bench/kb_quality.py` on labelled
   sentences (see docs/rag.md).
Unsupported sentences are dropped with their citations; an answer left with no supported cited sentence becomes
the refusal (`NO_ANSWER`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from xpullm.rag.retrieval import Hit

__all__ = [
    "SentenceSupport",
    "SupportConfig",
    "answer_sentences",
    "check_support",
    "cited_numbers",
    "kept_text",
]


@dataclass(frozen=True)
class SupportConfig:
    """How strict the answer-support check is."""

    enabled: bool = True
    min_score: float = 0.5  # support score a sentence needs (calibrated: bench/kb_quality.py --calibrate)
    lexical_weight: float = 0.5  # share of lexical precision in the score; the rest is sentence-chunk cosine


@dataclass(frozen=True)
class SentenceSupport:
    """The verdict on one answer sentence."""

    sentence: str
    cited: tuple[int, ...]  # source numbers it cites ([n]); empty when it cites none
    score: float  # support score against its cited sources (all sources when it cites none)
    missing: tuple[str, ...]  # fact-like tokens it adds that no cited source contains
    supported: bool


_CITE = re.compile(r"\s*\[(\d+(?:\s*,\s*\d+)*)\]")
_TOKEN = re.compile(r"\d[\d,.]*\d|\d|[^\W\d_]+(?:['’][^\W\d_]+)?")
_STOPWORDS_TEXT = (
    "a an and are as at be been but by can could did do does for from had has have he her his how i if in into is "
    "it its me my no not of on or our she so such than that the their them then there these they this to was we "
    "were what when where which who whom why will with would you your also about after all any before being "
    "between both each more most other over same some through under until very "
    # words about answering, not facts: "The answer to this question is: ..." / "According to the source ..."
    "answer answers question questions source sources according based information text passage"
)
_STOPWORDS = frozenset(_STOPWORDS_TEXT.split())


def _stem(word: str) -> str:
    """A crude stem so 'founded' / 'founder' / 'founding' and 'bakery' / 'bakeries' meet."""
    w = word.lower().replace("’", "'").removesuffix("'s")
    for suffix in ("ies", "ing", "ed", "es", "s", "y"):
        if len(w) > len(suffix) + 3 and w.endswith(suffix):
            w = w[: -len(suffix)]
            break
    return w[:7]


def _number(token: str) -> str | None:
    return token.replace(",", "").rstrip(".") if token[0].isdigit() else None


def _words(text: str) -> list[str]:
    return _TOKEN.findall(_CITE.sub(" ", text))


def _content(text: str) -> set[str]:
    out = set()
    for t in _words(text):
        num = _number(t)
        if num is not None:
            out.add(num)
        elif t.lower() not in _STOPWORDS:
            out.add(_stem(t))
    return out


def _facts(sentence: str) -> set[str]:
    """Numbers and capitalized words that do not start the sentence: what an invented answer invents."""
    words = _words(sentence)
    facts = set()
    for i, t in enumerate(words):
        num = _number(t)
        if num is not None:
            facts.add(num)
        elif i > 0 and t[0].isupper() and t.lower() not in _STOPWORDS:
            facts.add(_stem(t))
    return facts


_LEADING_CITES = re.compile(r"^((?:\[\d+(?:\s*,\s*\d+)*\]\s*)+)")


def answer_sentences(text: str) -> list[str]:
    """The answer's sentences, each with its citations: a marker written after the full stop ("... Point. [2]")
    belongs to the sentence before it."""
    from xpullm.documents.templates import split_sentences

    out: list[str] = []
    for sentence in split_sentences(text):
        lead = _LEADING_CITES.match(sentence)
        if lead and out:
            out[-1] = f"{out[-1]} {lead.group(1).strip()}"
            sentence = sentence[lead.end() :].strip()
        if sentence:
            out.append(sentence)
    return out


def cited_numbers(sentence: str) -> tuple[int, ...]:
    """The `[n]` / `[n, m]` numbers a sentence cites, in order."""
    nums: list[int] = []
    for m in _CITE.finditer(sentence):
        nums += [int(p) for p in m.group(1).split(",") if int(p) not in nums]
    return tuple(nums)


def check_support(
    sentences: Sequence[str],
    sources: Sequence[Hit],
    question: str,
    embed: Callable[[list[str]], Any],
    config: SupportConfig = SupportConfig(),
) -> list[SentenceSupport]:
    """Judge each answer sentence against the sources it cites (or all sources when it cites none)."""
    import numpy as np

    if not sentences or not sources:
        return []
    plain = [_CITE.sub("", s).strip() or s for s in sentences]
    vecs = np.asarray(embed(plain + [h.text for h in sources]), dtype=np.float32)
    cos = vecs[: len(plain)] @ vecs[len(plain) :].T
    asked = _content(question)
    source_words = [_content(f"{h.document} {h.section} {h.text}") for h in sources]
    out = []
    for i, sentence in enumerate(sentences):
        cited = tuple(n for n in cited_numbers(sentence) if 1 <= n <= len(sources))
        pool = [n - 1 for n in cited] or list(range(len(sources)))
        known = set().union(*(source_words[j] for j in pool))
        novel = _content(sentence) - asked
        missing = tuple(sorted(_facts(sentence) - asked - known))
        lexical = len(novel & known) / len(novel) if novel else 0.0
        similarity = max(float(cos[i, j]) for j in pool)
        w = config.lexical_weight if novel else 0.0  # a sentence that only echoes the question: cosine alone
        score = w * lexical + (1 - w) * similarity
        supported = not missing and score >= config.min_score
        out.append(SentenceSupport(sentence, cited, round(score, 4), missing, supported))
    return out


def kept_text(checks: Sequence[SentenceSupport]) -> str:
    """The answer rebuilt from its supported sentences."""
    return " ".join(c.sentence for c in checks if c.supported)
