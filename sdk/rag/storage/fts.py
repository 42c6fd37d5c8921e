"""Free text -> a safe SQLite FTS5 query: content words, quoted, OR-ed (BM25 then ranks the overlap)."""

from __future__ import annotations

import re

__all__ = ["fts_query", "query_terms", "quote_term"]

# Words that match almost every chunk: dropping them from the keyword query keeps BM25 about the content words.
_STOPWORDS_TEXT = (
    "a an and are as at be but by can did do does for from had has have how i if in into is it its me my no not "
    "of on or our so such than that the their them then there these they this to was we were what when where "
    "which who whom why will with would you your about after all also any been before being between both could "
    "each few he her here him his more most must other over own same she should some through under until up very"
)
_STOPWORDS = frozenset(_STOPWORDS_TEXT.split())
_WORD = re.compile(r"\w+", re.UNICODE)


def query_terms(text: str) -> list[str]:
    """Content words of a query, lower-cased, in order, without repeats (all words if every one is a stopword)."""
    words = [w.lower() for w in _WORD.findall(text)]
    content = [w for w in words if w not in _STOPWORDS] or words
    return list(dict.fromkeys(content))


def quote_term(term: str) -> str:
    return '"' + term.replace('"', '""') + '"'


def fts_query(text: str) -> str:
    """Turn free text into a safe FTS5 query: quoted content words joined by OR (BM25 ranks the overlap)."""
    return " OR ".join(quote_term(w) for w in query_terms(text))
