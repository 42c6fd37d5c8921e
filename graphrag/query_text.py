"""Text rules of the query engine: which drift follow-ups are real questions, what reads as a refusal, and the
content words a question and its context share."""

from __future__ import annotations

import re

__all__ = ["REFUSES", "content_words", "follow_ups", "one_line"]

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
