"""Answer support: each sentence of a knowledge-base answer must be backed by the chunk(s) it cites.

Small models answer in-topic questions the sources do not answer with invented facts and plausible citations
("approximately 212,000 [2]"). A sentence is supported by its cited chunks when
1. every fact-like token it holds (numbers, capitalized names) occurs in them, also those it repeats from the
   question: "The mayor of Kerrow is ... [2]" citing a chunk that never names Kerrow, or "The 2019 race took
   place in 2019 [1]" citing a chunk without 2019, answer from a source that is about something else, and
2. its support score reaches `SupportConfig.min_score`: a blend of lexical precision (the share of the sentence's
   content words, question words aside, found in the chunks) and the embedder's cosine between sentence and chunk
   (a bi-encoder stand-in for entailment). The threshold is calibrated by `bench/kb_quality.py` on labelled
   sentences (see docs/rag.md).
A sentence that only restates itself or the question ("The mayor of Kerrow Harbour is the mayor of Kerrow Harbour")
says nothing a source could support: its score is 0.
An unsupported sentence is cut back to its longest supported clause ("... in 1968, after the IDA was founded in
1963" keeps "... in 1968.") or dropped with its citations; an answer left with no supported cited sentence becomes
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
    missing: tuple[str, ...]  # fact-like tokens (its own or the question's) that no cited source contains
    supported: bool  # whether (part of) it is kept
    kept: str = ""  # what the answer keeps: the sentence, its longest supported clause prefix, or nothing


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


_COPULA = re.compile(r"\s(?:is|was|are|were)\s", re.IGNORECASE)


def _says_nothing(text: str, asked: set[str]) -> bool:
    """Whether the part after the sentence's first "is/was/are/were" only repeats the part before it and the
    question ("X is X", "The winner was the winner of the race"): a tautology a small model writes instead of a fact."""
    m = _COPULA.search(text)
    if m is None:
        return False
    said = _content(text[m.end() :])
    return bool(said) and said <= _content(text[: m.start()]) | asked


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


_CLAUSE = re.compile(r"[,;:]\s+|\s+(?:and|but|or|when|after|while|because|so|which|although)\s+")
_MIN_CLAUSE_WORDS = 4  # a kept prefix must still say something


def _prefixes(plain: str) -> list[str]:
    """The sentence cut at each clause boundary, longest first (prefixes of 4+ words)."""
    cuts = sorted({m.start() for m in _CLAUSE.finditer(plain)}, reverse=True)
    out = [plain[:c].rstrip(" ,;:") for c in cuts]
    return [p for p in out if len(p.split()) >= _MIN_CLAUSE_WORDS]


def check_support(
    sentences: Sequence[str],
    sources: Sequence[Hit],
    question: str,
    embed: Callable[[list[str]], Any],
    config: SupportConfig = SupportConfig(),
) -> list[SentenceSupport]:
    """Judge each answer sentence against the sources it cites (or all sources when it cites none).

    An unsupported sentence is trimmed to its longest supported clause prefix when it has one ("It closed in 1961,
    when the company ..." keeps "It closed in 1961."); otherwise it is dropped.
    """
    import numpy as np

    if not sentences or not sources:
        return []
    plain = [_CITE.sub("", s).strip() or s for s in sentences]
    source_vecs = np.asarray(embed([h.text for h in sources]), dtype=np.float32)
    asked = _content(question)
    source_words = [_content(f"{h.document} {h.section} {h.text}") for h in sources]
    cited = [tuple(n for n in cited_numbers(s) if 1 <= n <= len(sources)) for s in sentences]
    pools = [[n - 1 for n in c] or list(range(len(sources))) for c in cited]

    def judge(texts: list[str], owners: list[int]) -> list[tuple[float, tuple[str, ...]]]:
        vecs = np.asarray(embed(texts), dtype=np.float32) if texts else np.zeros((0, source_vecs.shape[1]))
        cos = vecs @ source_vecs.T
        out = []
        for row, (text, i) in enumerate(zip(texts, owners, strict=True)):
            known = set().union(*(source_words[j] for j in pools[i]))
            novel = _content(text) - asked
            missing = tuple(
                sorted(_facts(text) - known)
            )  # the question's names count: the source must hold them
            lexical = len(novel & known) / len(novel) if novel else 0.0
            w = config.lexical_weight if novel else 0.0  # a text that only echoes the question: cosine alone
            score = w * lexical + (1 - w) * max(float(cos[row, j]) for j in pools[i])
            out.append((0.0 if _says_nothing(text, asked) else score, missing))
        return out

    verdicts = judge(plain, list(range(len(plain))))
    ok = [not missing and score >= config.min_score for score, missing in verdicts]
    trims = [(i, p) for i in range(len(plain)) if not ok[i] for p in _prefixes(plain[i])]
    trimmed: dict[int, str] = {}
    for (i, prefix), (score, missing) in zip(
        trims, judge([p for _, p in trims], [i for i, _ in trims]), strict=True
    ):
        if i not in trimmed and not missing and score >= config.min_score:  # longest supported prefix first
            marks = "".join(f" [{n}]" for n in cited[i])
            trimmed[i] = f"{prefix}.{marks}"
    out = []
    for i, sentence in enumerate(sentences):
        score, missing = verdicts[i]
        kept = sentence if ok[i] else trimmed.get(i, "")
        out.append(SentenceSupport(sentence, cited[i], round(score, 4), missing, bool(kept), kept))
    return out


def kept_text(checks: Sequence[SentenceSupport]) -> str:
    """The answer rebuilt from its supported sentences."""
    return " ".join(c.kept for c in checks if c.kept)
