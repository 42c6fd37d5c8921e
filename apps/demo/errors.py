"""Readable error messages for the UI: users see what was wrong and what to do, never a stack trace."""

from __future__ import annotations

import logging
import re

__all__ = ["UserFacingError", "for_people", "friendly"]

log = logging.getLogger("xpullm.apps.demo")

# Exceptions whose message is already written for people (xpullm's errors name the bad value and the fix).
_READABLE = (ValueError, FileNotFoundError, FileExistsError, KeyError, PermissionError, TimeoutError)


# An absolute path of two or more parts (POSIX, or Windows with a drive letter), quoted or not.
_PATH = re.compile(r"(?<![\w:/])(?:[A-Za-z]:)?(?:[/\\][\w.~+@-]+){2,}[/\\]?")
# A clause that tells a Python programmer what to call (`KnowledgeBase.open('...')`): no use on a web page.
_API_HINT = re.compile(r"`?\b[A-Z]\w*\.\w+\(")


def for_people(text: str) -> str:
    """`text` without server paths (each becomes its last part) and without clauses naming a Python call."""
    clauses = [c for c in re.split(r";\s+", text) if not _API_HINT.search(c)]
    text = "; ".join(clauses) if clauses else text
    return _PATH.sub(lambda m: m.group(0).rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1], text)


class UserFacingError(Exception):
    """Bad input from the UI (empty question, unsupported file, ...); the message is shown as is."""


def friendly(exc: BaseException) -> str:
    """One readable line for `exc` (no server paths, no Python API hints); unexpected errors are logged with their
    traceback on the server only."""
    from xpullm.errors import XPULLMError

    if isinstance(exc, (UserFacingError, XPULLMError, *_READABLE)):
        text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
        return for_people(text) or type(exc).__name__
    log.exception("unexpected error in the demo", exc_info=exc)
    return f"Something went wrong ({type(exc).__name__}: {for_people(str(exc))}). The server log has the details."
