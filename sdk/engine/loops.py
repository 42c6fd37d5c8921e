"""Finding where generated text starts to loop, so a caller can stop the generation and cut the repeat.

Small greedy models fall into loops that a whole-sentence comparison misses:
- a numbered or bulleted list whose items repeat under new numbers ("1. Rye bread. 2. Rye bread. 3. ..."):
  `normalize_unit` drops list markers, case and spacing before units are compared;
- a phrase that repeats inside one endless sentence ("the town of Kerrow in the town of Kerrow in the town ...",
  "1831, 1831, 1831, ..."): `tandem_repeat` finds a run of words repeated back to back.

Both work on words, not tokens, so they apply to any engine's output (streamed or whole).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["LoopRule", "drop_trailing_marker", "normalize_unit", "tandem_repeat", "tandem_repeat_at_end"]

_LIST_MARKER = re.compile(r"^\s*(?:[-*•·]+|\(?\d{1,3}[.)]|\(?[a-zA-Z][.)])\s+")
# Only a marker alone on the last line: "B is 2." ends in a number that is no marker.
_TRAILING_MARKER = re.compile(r"\n[ \t]*(?:[-*•·]+|\(?\d{1,3}[.)]|\(?[a-zA-Z][.)])\s*$")
_WORD = re.compile(r"\S+")
_EDGE_PUNCT = re.compile(r"^\W+|\W+$")
_TAIL_CHARS = 4000  # >> max_unit * 2 words of any language: the most a streamed loop needs before it counts


@dataclass(frozen=True)
class LoopRule:
    """When a run of words repeated back to back counts as a loop."""

    # A short unit must come back this often before it is a loop ("no, no" and "very, very" are prose).
    min_repeats: int = 3
    # ... and cover this many words in all ("1831, 1831, 1831" is 3 words: allowed; nine in a row are not).
    min_words: int = 9
    # Units of this many words or more are a loop after one back-to-back repeat (prose never does that).
    long_unit: int = 8
    # Longest unit looked for; longer loops are whole sentences, which sentence comparison catches.
    max_unit: int = 40


def normalize_unit(text: str) -> str:
    """A sentence or list item reduced to what makes it the same as another: no list marker (`1.`, `-`, `a)`),
    lower case, single spaces. End punctuation stays: "3" (a sentence still being written) is not "3."."""
    return " ".join(_LIST_MARKER.sub("", text).lower().split())


def drop_trailing_marker(text: str) -> str:
    """`text` without a list marker left dangling alone on its last line ("... Croissants.\n4." -> "...
    Croissants."): what a cut in front of a repeated list item leaves behind."""
    return _TRAILING_MARKER.sub("", text).rstrip()


def _words(text: str) -> tuple[list[str], list[int]]:
    spans = [(m.start(), _EDGE_PUNCT.sub("", m.group().lower())) for m in _WORD.finditer(text)]
    kept = [(start, w) for start, w in spans if w]
    return [w for _, w in kept], [start for start, _ in kept]


def _repeat_ending_at(words: list[str], end: int, rule: LoopRule) -> tuple[int, int] | None:
    """(unit length, repeats) of a back-to-back repeat that ends at word `end` (exclusive), or None."""
    for unit in range(1, min(rule.max_unit, end // 2) + 1):
        tail = words[end - unit : end]
        repeats = 1
        while (
            end - (repeats + 1) * unit >= 0
            and words[end - (repeats + 1) * unit : end - repeats * unit] == tail
        ):
            repeats += 1
        if repeats >= 2 and (
            (unit >= rule.long_unit) or (repeats >= rule.min_repeats and repeats * unit >= rule.min_words)
        ):
            return unit, repeats
    return None


def tandem_repeat(text: str, rule: LoopRule = LoopRule()) -> int | None:
    """Character offset where the first looping repeat begins (its first copy is kept), or None."""
    words, starts = _words(text)
    for end in range(2, len(words) + 1):
        found = _repeat_ending_at(words, end, rule)
        if found is not None:
            unit, repeats = found
            return starts[end - (repeats - 1) * unit]
    return None


def tandem_repeat_at_end(text: str, final: bool, rule: LoopRule = LoopRule()) -> int | None:
    """`tandem_repeat` for text that grows: only a repeat that ends with the text is looked for (each call costs
    O(max_unit^2) at most). While streaming (`final` False) the last word may still grow, so it is left out."""
    # Called on every streamed delta, a repeat is seen as soon as it is long enough to count, so only the tail can
    # hold it: reading a bounded tail keeps a whole stream linear in its length.
    offset = max(0, len(text) - _TAIL_CHARS)
    words, starts = _words(text[offset:])
    if offset:
        words, starts = words[1:], starts[1:]  # the first word may be cut in half
    end = len(words) if final else len(words) - 1
    if end < 2:
        return None
    found = _repeat_ending_at(words, end, rule)
    if found is None:
        return None
    unit, repeats = found
    return offset + starts[end - (repeats - 1) * unit]
