"""Text rules of the query engine: which drift follow-ups are real questions, what reads as a refusal, and the
content words a question and its context share."""

from __future__ import annotations

import re

__all__ = ["REFUSES", "content_words", "follow_ups", "grounded_sentences", "one_line", "says_nothing"]

_PLACEHOLDER = re.compile(r"<[^>]*>|\{[^}]*\}|\bfollow[- ]up (?:question|query)\b", re.IGNORECASE)


def follow_ups(asked: list[str], question: str) -> list[str]:
    """The primer's follow-up queries that are real questions: template text ("<question>"), fragments of under
    three words, the question itself and repeats are dropped."""
    out: list[str] = []
    seen = {" ".join(question.lower().split())}
    for q in asked:
        q = " ".join(q.split())
        key = q.lower()
        if _PLACEHOLDER.search(q) or len(re.findall(r"\w+", q)) < 3 or key in seen:
            continue
        seen.add(key)
        out.append(q)
    return out


# An answer that says the data does not hold what was asked (then no citation is added to it).
REFUSES = re.compile(
    r"\b(no information|not (?:contain|mention|provide|include|say)|does not (?:say|state|mention)|"
    r"(?:do not|don't|cannot|can't) (?:know|answer|find|tell))",
    re.IGNORECASE,
)
_STOP = frozenset(
    [
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "by",
        "for",
        "from",
        "has",
        "have",
        "in",
        "is",
        "it",
        "its",
        "of",
        "on",
        "or",
        "that",
        "the",
        "their",
        "this",
        "to",
        "was",
        "were",
        "which",
        "who",
        "with",
        "what",
        "when",
        "where",
        "why",
        "how",
        "did",
        "does",
        "do",
    ]
)


def content_words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z0-9]+", text.lower()) if w not in _STOP and len(w) > 2}


def one_line(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "/")


# "The answer is:" / "The answer to this question is:" and nothing after it: an empty answer, not a fact.
_LEAD = re.compile(r"^\W*(?:the\s+)?answer(?:\s+to\s+(?:this|the|your)\s+question)?\s+is\s*:?", re.IGNORECASE)
_CITATION = re.compile(r"\[Data:[^\]]*\]")
_NUMBER = re.compile(r"(?<![\w.])\d[\d,.]*(?<![.,])")


def says_nothing(text: str) -> bool:
    """Whether an answer holds no words besides a lead-in ("The answer is:") and citations."""
    return not re.search(r"\w", _LEAD.sub("", _CITATION.sub("", text)))


def _numbers(text: str) -> set[str]:
    return {n.replace(",", "") for n in _NUMBER.findall(_CITATION.sub(" ", text))}


def grounded_sentences(text: str, context: list[str], question: str = "") -> tuple[str, int]:
    """`text` without the sentences that state a number no context record holds; returns (kept text, dropped).

    A small model answers "What is the population of Marlow?" with "The population of Marlow is 2." and "Who won
    the regatta in 2023?" with "The mill won it in 2023." when the records hold no such figure: an invented number
    is the surest sign of an invented answer (the question's own numbers count too: the records must hold them).
    Given the `question`, a number must also stand in a record sentence that names what the question asks about
    (its focus terms, e.g. "population"): "The population of Marlow is 43." is dropped when the records' 43 counts
    otters. A trailing `[Data: ...]` reference stays with the sentence before it.
    """
    from xpullm.documents.templates import sentence_spans, split_sentences
    from xpullm.rag.support import focus_terms, states_focus

    known = set().union(*(_numbers(c) for c in context)) if context else set()
    focus = focus_terms(question) if question else set()
    if focus:  # numbers that stand in a sentence about the asked property
        about = {
            n for c in context for s in split_sentences(c) if states_focus(s, focus) for n in _numbers(s)
        }
        known = about
    kept, dropped, last_dropped = [], 0, False
    for start, end in sentence_spans(text):
        sentence = text[start:end]
        if not _CITATION.sub("", sentence).strip():  # a reference on its own follows its sentence's fate
            if not last_dropped:
                kept.append(sentence.strip())
            continue
        last_dropped = bool(_numbers(sentence) - known)
        if last_dropped:
            dropped += 1
            continue
        kept.append(sentence.strip())
    if not dropped:
        return text, 0
    return " ".join(kept), dropped
