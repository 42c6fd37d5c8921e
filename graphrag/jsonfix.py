"""Lenient JSON reading for model answers: code fences, prose around the object, trailing commas, cut-off output.

Constrained decoding makes valid JSON the normal case; this is the safety net for engines without it and for answers
cut by the token budget (finish_reason "length").
"""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = ["parse_json_object"]

_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)
_TRAILING_COMMA = re.compile(r",\s*([}\]])")


def parse_json_object(text: str) -> tuple[dict[str, Any] | None, bool]:
    """(object, repaired): the JSON object in `text`, and whether it needed repair; (None, False) if unreadable."""
    stripped = text.strip()
    try:
        value = json.loads(stripped)
        return (value, False) if isinstance(value, dict) else (None, False)
    except json.JSONDecodeError:
        pass
    candidates = [m.group(1) for m in _FENCE.finditer(stripped)]
    start = stripped.find("{")
    if start != -1:
        candidates.append(stripped[start:])
    for cand in candidates:
        for attempt in (cand, _cut_after_object(cand), _close_open(cand)):
            if attempt is None:
                continue
            attempt = _TRAILING_COMMA.sub(r"\1", attempt)
            try:
                value = json.loads(attempt)
            except json.JSONDecodeError:
                continue
            if isinstance(value, dict):
                return value, True
    return None, False


def _cut_after_object(text: str) -> str | None:
    """The text up to the brace closing the first object (drops prose after it)."""
    depth, in_str, esc = 0, False, False
    for i, ch in enumerate(text):
        if in_str:
            esc = ch == "\\" and not esc
            if ch == '"' and not esc:
                in_str = False
            continue
        if ch == '"':
            in_str = True
        elif ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
            if depth == 0:
                return text[: i + 1]
    return None


def _close_open(text: str) -> str:
    """Close an object cut off mid-way: end the open string, drop a dangling key/comma, close brackets."""
    stack: list[str] = []
    in_str, esc = False, False
    for ch in text:
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
            continue
        if ch == '"':
            in_str = True
        elif ch in "{[":
            stack.append("}" if ch == "{" else "]")
        elif ch in "}]" and stack:
            stack.pop()
    out = text + ('"' if in_str else "")
    out = re.sub(r',\s*"[^"]*"\s*:?\s*$', "", out)  # a key with no value yet
    out = re.sub(r"[,:]\s*$", "", out.rstrip())
    return out + "".join(reversed(stack))
