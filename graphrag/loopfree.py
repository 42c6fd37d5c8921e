"""Loop-free generated text: cut an answer or description where a small model starts repeating itself.

Greedy small models loop ("1831, 1831, 1831, ...", a sentence written twice, "Merged description: Merged
description: ...", a bare count "1. 2. 3. 4. ..."). `cut_loops` keeps the text up to the first repeat (a whole sentence seen before, or a phrase
repeated back to back, found by `xpullm.engine.loops`); `stop_at_loop` does the same to a stream and closes the
engine's generator at the repeat, so the rest of the token budget is never spent.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from xpullm.answers import stream_until

__all__ = ["cut_loops", "stop_at_loop", "strip_echo"]


def _repeat_start(text: str, final: bool) -> int | None:
    from xpullm.documents.templates import sentence_spans
    from xpullm.engine.loops import normalize_unit, tandem_repeat, tandem_repeat_at_end

    spans = sentence_spans(text)
    seen: set[str] = set()
    found: list[int] = []
    for start, end in spans if final else spans[:-1]:  # a streamed last sentence may still grow
        unit = normalize_unit(text[start:end])
        if unit in seen:
            found.append(start)
            break
        if unit:
            seen.add(unit)
    loop = tandem_repeat(text) if final else tandem_repeat_at_end(text, final=False)
    if loop is not None:
        found.append(loop)
    # Repeats inside one "word" ("REPL.REPL.REPL.", "Al,Al,Al,") have no spaces for the word-based check.
    glued = _GLUED_REPEAT.search(text)
    if glued is not None:
        found.append(glued.start() + len(glued.group(1)))
    # A bare count ("1. 2. 3. 4. 5. ..." / "1: 2: 3: ...") repeats a shape, not a text: no check above sees it.
    counting = _COUNTING.search(text)
    if counting is not None:
        found.append(counting.start())
    return min(found) if found else None


_COUNTING = re.compile(r"(?<!\S)(?:\d{1,4}[.:)](?:\s+|$)){4,}")
_GLUED_REPEAT = re.compile(r"(\S{2,24}?)\1{3,}")


def cut_loops(text: str) -> str:
    """`text` up to where it starts to loop, stripped (unchanged when it never does)."""
    from xpullm.engine.loops import drop_trailing_marker

    cut = _repeat_start(text, final=True)
    return text.strip() if cut is None else drop_trailing_marker(text[:cut]).strip()


def stop_at_loop(deltas: Iterator[str]) -> Iterator[str]:
    """Pass `deltas` through until the text starts to loop, then stop (and close the engine's stream).

    `cut_loops` of the streamed text equals `cut_loops` of the whole generation, so both paths agree.
    """
    return stream_until(deltas, lambda text: _repeat_start(text, final=False) is not None)


def strip_echo(text: str, label: str) -> str:
    """`text` without leading copies of the prompt's own answer label ("Merged description: Merged ...")."""
    pattern = re.compile(r"^\s*" + re.escape(label.rstrip(":")) + r"\s*:\s*", re.IGNORECASE)
    while True:
        stripped = pattern.sub("", text, count=1)
        if stripped == text:
            return text
        text = stripped
