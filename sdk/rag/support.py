"""Answer support: each sentence of a knowledge-base answer must be backed by the chunk(s) it cites.

Small models answer in-topic questions the sources do not answer with invented facts and plausible citations
("approximately 212,000 [2]"). A sentence is supported by its cited chunks when
1. every fact-like token it holds (numbers, capitalized names) occurs in them, also those it repeats from the
   question: "The mayor of Kerrow is ... [2]" citing a chunk that never names Kerrow, or "The 2019 race took
   place in 2019 [1]" citing a chunk without 2019, answer from a source that is about something else, and
2. its support score reaches `SupportConfig.min_score`: a blend of lexical precision (the share of the sentence's
   content words, question words aside, found in the chunks) and the embedder's cosine between sentence and chunk
   (a bi-encoder stand-in for entailment). The threshold is calibrated by `bench/kb_quality.py` on labelled
   sentences (see docs/rag.md), and
3. the chunks name the question's entities (also when the sentence does not repeat them: "The building is the Komae
   Station [4]" for "What building does Kerrow station house now?" cites a chunk without Kerrow), and
4. the chunks state the property the question asks about, not only the entity it names (`focus_terms`: the
   question's words that are neither names nor question words, "last keeper" in "Who was the last keeper of the
   Varn Lighthouse?"): at least half of them occur in the cited chunks, and every fact the answer adds (a number
   or name the question does not hold) sits in a chunk sentence holding one of them. "The last keeper of the Varn
   Lighthouse is the 31-meter-tall Varn Lighthouse [1]" fails: the chunk's 31 is about the tower's height, in a
   sentence without "keeper"; so does "The water in Kerrow Harbour is 410 metres deep [1]" (the breakwater's
   length).
A sentence that only restates itself or the question ("The mayor of Kerrow Harbour is the mayor of Kerrow Harbour")
says nothing a source could support: its score is 0.
An unsupported sentence is cut back to its longest supported clause ("... in 1968, after the IDA was founded in
1963" keeps "... in 1968."), or rewritten to the cited chunk's own sentence that states the asked property with a
fact the draft took from it ("... a nature reserve on November 19, 1968, when ... by the IDA [1]" becomes "The
marsh became a nature reserve in 1968 after a campaign led by the teacher Per Vangsmo. [1]"), or dropped with its
citations. A supported sentence that cites nothing is cited with the source that supports it best ("The answer is:
140." from the ferry chunk). An answer left with no supported cited sentence becomes the refusal (`NO_ANSWER`).
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
    "focus_terms",
    "kept_text",
    "states_focus",
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
    kept: str = ""  # what the answer keeps: the sentence, a clause prefix, the source's sentence, or nothing
    states_asked: bool = True  # its sources state the asked property (`focus_terms`), not only the entity


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


# "How many / how much": the form of the question, not the property it asks about.
_ASKING = frozenset({"many", "much"})


# Irregular past forms, so the question's "begin" meets the source's "began" (forms with a second common meaning,
# such as "found" or "left", are not listed).
_IRREGULAR_TEXT = (
    "began:begin begun:begin became:become won:win ran:run built:build held:hold took:take taken:take made:make "
    "kept:keep led:lead sold:sell bought:buy grew:grow grown:grow wrote:write written:write rose:rise fell:fall "
    "gave:give given:give came:come went:go gone:go saw:see seen:see brought:bring taught:teach drew:draw "
    "drawn:draw flew:fly stood:stand told:tell paid:pay met:meet lost:lose chose:choose chosen:choose sent:send "
    "spent:spend sank:sink sunk:sink struck:strike sang:sing sung:sing wore:wear worn:wear ate:eat eaten:eat "
    "drove:drive driven:drive rode:ride ridden:ride broke:break broken:break spoke:speak spoken:speak "
    "froze:freeze frozen:freeze hid:hide hidden:hide bore:bear born:bear thought:think caught:catch fought:fight"
)
_IRREGULAR = dict(pair.split(":") for pair in _IRREGULAR_TEXT.split())


def _stem(word: str) -> str:
    """A crude stem so 'founded' / 'founder' / 'founding', 'bakery' / 'bakeries', 'move' / 'moved' and
    'began' / 'begin' meet."""
    w = word.lower().replace("’", "'").removesuffix("'s")
    w = _IRREGULAR.get(w, w)
    for suffix in ("ies", "ing", "ed", "es", "s", "y"):
        if len(w) > len(suffix) + 2 and w.endswith(suffix):
            w = w[: -len(suffix)]
            break
    if len(w) >= 4 and w.endswith("e"):  # 'move' meets 'moved' / 'moving' (whose 'e' went with the suffix)
        w = w[:-1]
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


def focus_terms(question: str) -> set[str]:
    """The (stemmed) words of `question` that name the property asked about: its content words that are neither
    names (capitalized after the first word) nor numbers nor question words ("How many passengers can the MV
    Tarnel carry?" -> passengers, carry)."""
    out = set()
    for i, t in enumerate(_words(question)):
        low = t.lower()
        if (
            _number(t) is None
            and low not in _STOPWORDS
            and low not in _ASKING
            and not (i > 0 and t[0].isupper())
        ):
            out.add(_stem(t))
    return out


def states_focus(sentence: str, focus: set[str]) -> bool:
    """Whether `sentence` names one of the `focus_terms` of a question (compared as the same crude stems)."""
    return bool(focus & {_stem(t) for t in _words(sentence)})


def _chunk_sentences(hit: Hit) -> list[str]:
    from xpullm.documents.templates import split_sentences

    return split_sentences(hit.text)


def check_support(
    sentences: Sequence[str],
    sources: Sequence[Hit],
    question: str,
    embed: Callable[[list[str]], Any],
    config: SupportConfig = SupportConfig(),
) -> list[SentenceSupport]:
    """Judge each answer sentence against the sources it cites (or all sources when it cites none).

    An unsupported sentence is trimmed to its longest supported clause prefix when it has one ("It closed in 1961,
    when the company ..." keeps "It closed in 1961."), else rewritten to a sentence of its cited chunks that states
    the asked property with a fact the draft took from it, else dropped. A supported sentence that cites nothing
    gets the source that supports it best.
    """
    import numpy as np

    if not sentences or not sources:
        return []
    plain = [_CITE.sub("", s).strip() or s for s in sentences]
    source_vecs = np.asarray(embed([h.text for h in sources]), dtype=np.float32)
    asked = _content(question)
    focus = focus_terms(question)
    asked_names = _facts(question)  # the question's names and numbers: a source that lacks them is about else
    source_words = [_content(f"{h.document} {h.section} {h.text}") for h in sources]
    source_sentences = [_chunk_sentences(h) for h in sources]
    sentence_words = [[_content(x) for x in ss] for ss in source_sentences]
    cited = [tuple(n for n in cited_numbers(s) if 1 <= n <= len(sources)) for s in sentences]
    every = list(range(len(sources)))

    def states_asked(text: str, pool: list[int]) -> bool:
        """The pool's chunks state the asked property of the asked entity: they hold the question's names, half the
        focus terms occur in them, and each fact the text adds sits in a chunk sentence with a focus term."""
        known = set().union(*(source_words[j] for j in pool))
        if (
            asked_names - known
        ):  # about another entity: "The building is the Komae Station" for Kerrow station
            return False
        if not focus:
            return True
        if 2 * len(focus & known) < len(focus):
            return False
        near = [w for j in pool for w in sentence_words[j] if w & focus]
        return all(any(f in w for w in near) for f in _facts(text) - asked)

    def judge(texts: list[str], pools: list[list[int]]) -> list[tuple[float, tuple[str, ...], bool]]:
        vecs = np.asarray(embed(texts), dtype=np.float32) if texts else np.zeros((0, source_vecs.shape[1]))
        cos = vecs @ source_vecs.T
        out = []
        for row, (text, pool) in enumerate(zip(texts, pools, strict=True)):
            known = set().union(*(source_words[j] for j in pool))
            novel = _content(text) - asked
            missing = tuple(
                sorted(_facts(text) - known)
            )  # the question's names count: the source must hold them
            lexical = len(novel & known) / len(novel) if novel else 0.0
            w = config.lexical_weight if novel else 0.0  # a text that only echoes the question: cosine alone
            score = w * lexical + (1 - w) * max(float(cos[row, j]) for j in pool)
            out.append((0.0 if _says_nothing(text, asked) else score, missing, states_asked(text, pool)))
        return out

    def passes(verdict: tuple[float, tuple[str, ...], bool]) -> bool:
        score, missing, on_topic = verdict
        return not missing and score >= config.min_score and on_topic

    # An uncited sentence is judged against each source alone: the best one that supports it is its citation.
    pools = [[n - 1 for n in c] or every for c in cited]
    verdicts = judge(plain, pools)
    uncited = [i for i in range(len(plain)) if not cited[i]]
    alone = judge([plain[i] for i in uncited for _ in every], [[j] for _ in uncited for j in every])
    attributed = set()
    for k, i in enumerate(uncited):
        tried = alone[k * len(every) : (k + 1) * len(every)]
        good = [j for j in every if passes(tried[j])]
        if good:
            best = max(good, key=lambda j: (tried[j][0], -j))
            verdicts[i], pools[i], cited[i] = tried[best], [best], (best + 1,)
            attributed.add(i)
    ok = [passes(v) for v in verdicts]

    def marks(i: int) -> str:
        return "".join(f" [{n}]" for n in cited[i])

    trims = [(i, p) for i in range(len(plain)) if not ok[i] for p in _prefixes(plain[i])]
    kept: dict[int, str] = {}
    for (i, prefix), verdict in zip(
        trims, judge([p for _, p in trims], [pools[i] for i, _ in trims]), strict=True
    ):
        if i not in kept and passes(verdict):  # longest supported prefix first
            kept[i] = f"{prefix}.{marks(i)}"
    # Rewrite: a sentence of the cited chunk that holds a fact the draft took from it, with the asked property.
    rewrites: list[tuple[int, int, str, int]] = []  # (draft, source, chunk sentence, facts shared)
    for i in range(len(plain)):
        if ok[i] or i in kept or not focus or not cited[i]:
            continue
        taken = _facts(plain[i]) - asked
        for j in pools[i]:
            if asked_names - source_words[j]:
                continue
            for text, words in zip(source_sentences[j], sentence_words[j], strict=True):
                shared = len(taken & words)
                if shared and words & focus:
                    rewrites.append((i, j, text, shared))
    judged = judge([t for _, _, t, _ in rewrites], [[j] for _, j, _, _ in rewrites])
    ranked = sorted(zip(rewrites, judged, strict=True), key=lambda r: (-r[0][3], -r[1][0]))
    for (i, j, text, _), verdict in ranked:
        if i not in kept and passes(verdict):
            kept[i] = f"{text.rstrip()} [{j + 1}]"
    out = []
    for i, sentence in enumerate(sentences):
        score, missing, on_topic = verdicts[i]
        if ok[i]:
            keep = f"{plain[i]}{marks(i)}" if i in attributed else sentence
        else:
            keep = kept.get(i, "")
        out.append(SentenceSupport(sentence, cited[i], round(score, 4), missing, bool(keep), keep, on_topic))
    return out


def kept_text(checks: Sequence[SentenceSupport]) -> str:
    """The answer rebuilt from its supported sentences."""
    return " ".join(c.kept for c in checks if c.kept)
