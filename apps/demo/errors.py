"""Readable error messages for the UI: users see what was wrong and what to do, never a stack trace."""

from __future__ import annotations

import logging

__all__ = ["UserFacingError", "friendly"]

log = logging.getLogger("xpullm.apps.demo")

# Exceptions whose message is already written for people (xpullm's errors name the bad value and the fix).
_READABLE = (ValueError, FileNotFoundError, FileExistsError, KeyError, PermissionError, TimeoutError)


class UserFacingError(Exception):
    """Bad input from the UI (empty question, unsupported file, ...); the message is shown as is."""


def friendly(exc: BaseException) -> str:
    """One readable line for `exc`; unexpected errors are logged with their traceback on the server only."""
    from xpullm.errors import XPULLMError

    if isinstance(exc, (UserFacingError, XPULLMError, *_READABLE)):
        text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
        return text or type(exc).__name__
    log.exception("unexpected error in the demo", exc_info=exc)
    return f"Something went wrong ({type(exc).__name__}: {exc}). The server log has the details."
