"""OpenAI-style error objects and the mapping from xpullm's exceptions to HTTP statuses."""

from __future__ import annotations

from typing import Any

from xpullm.engine.params import ContextOverflow, InvalidParameter
from xpullm.errors import XPULLMError
from xpullm.server.engine import QueueFull

__all__ = ["APIError", "error_body", "from_exception"]


class APIError(XPULLMError):
    """An error answered as `{"error": {"message", "type", "param", "code"}}` with an HTTP status."""

    def __init__(
        self, status: int, message: str, type_: str, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.param = param
        self.code = code

    @classmethod
    def bad_request(cls, param: str | None, message: str, code: str | None = None) -> APIError:
        """400 naming the offending request field."""
        return cls(400, message, "invalid_request_error", param, code)

    @classmethod
    def unsupported(cls, param: str, what: str) -> APIError:
        """400 for a field the engine cannot honour."""
        return cls(400, f"{param}: {what}", "invalid_request_error", param, "unsupported_parameter")

    def body(self) -> dict[str, Any]:
        """The JSON body."""
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """`{"error": {...}}` as the OpenAI API shapes it."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


# The engine names its own parameters; the wire protocol has its own names for some of them.
_PARAM_NAMES = {"max_new_tokens": "max_tokens", "json_schema": "response_format"}


def from_exception(exc: BaseException) -> APIError:
    """The APIError an engine-side exception becomes (ContextOverflow/InvalidParameter -> 400, QueueFull -> 429)."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, QueueFull):
        return APIError(429, str(exc), "rate_limit_error", None, "queue_full")
    if isinstance(exc, ContextOverflow):
        return APIError(400, str(exc), "invalid_request_error", exc.field_name, "context_length_exceeded")
    if isinstance(exc, InvalidParameter):
        name = exc.name.split("[", 1)[0]
        param = _PARAM_NAMES.get(name, exc.name)
        return APIError(400, str(exc), "invalid_request_error", param, None)
    return APIError(500, f"internal error: {type(exc).__name__}: {exc}", "server_error", None, None)
