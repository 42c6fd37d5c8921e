"""The OpenAI wire protocol: request schemas (pydantic, as FastAPI wants) and response/chunk builders.

Unknown request fields are ignored, as the OpenAI API does for fields it does not know; known fields the engine
cannot honour are rejected with a 400 that names them (see `routes`).
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from xpullm.server.engine import TokenLogprobs

__all__ = [
    "ChatCompletionRequest",
    "ChatMessage",
    "CompletionRequest",
    "EmbeddingRequest",
    "ResponseFormat",
    "Tool",
    "chat_chunk",
    "chat_logprobs",
    "completion_logprobs",
    "new_id",
    "usage",
]


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class StreamOptions(_Lenient):
    include_usage: bool = False
    """Send one extra chunk with `usage` (and empty `choices`) before `[DONE]`."""


class FunctionDef(_Lenient):
    name: str
    description: str | None = None
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    strict: bool | None = None


class Tool(_Lenient):
    type: Literal["function"] = "function"
    function: FunctionDef


class NamedFunction(_Lenient):
    name: str


class NamedToolChoice(_Lenient):
    type: Literal["function"] = "function"
    function: NamedFunction


class JSONSchemaFormat(_Lenient):
    name: str = "response"
    description: str | None = None
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Lenient):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None


class ChatMessage(_Lenient):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


class _Sampling(_Lenient):
    """Fields shared by chat and text completions."""

    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1, le=16)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    # vLLM's extra sampling fields, which load generators (guidellm, vLLM's benchmarks) send.
    ignore_eos: bool = False
    min_tokens: int = Field(default=0, ge=0)


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None
    logprobs: int | None = None


class EmbeddingRequest(_Lenient):
    model: str
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None


def new_id(prefix: str) -> str:
    """An id such as `chatcmpl-<hex>`, one per response (a stream's chunks all share it)."""
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    """`created`: Unix seconds."""
    return int(time.time())


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """The `usage` object."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def chat_chunk(
    id_: str,
    created: int,
    model: str,
    choices: list[dict[str, Any]],
    usage_: dict[str, int] | None = None,
    with_usage: bool = False,
) -> dict[str, Any]:
    """One `chat.completion.chunk`; `usage` is present (null until the last chunk) when the client asked for it."""
    chunk: dict[str, Any] = {
        "id": id_,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": choices,
    }
    if with_usage:
        chunk["usage"] = usage_
    return chunk


def chat_logprobs(tokens: list[TokenLogprobs] | tuple[TokenLogprobs, ...]) -> dict[str, Any]:
    """A chat choice's `logprobs`: `content` lists each token with its bytes, logprob and `top_logprobs`."""
    return {
        "content": [
            {
                "token": t.token,
                "logprob": t.logprob,
                "bytes": list(t.bytes),
                "top_logprobs": [{"token": a, "logprob": v, "bytes": list(b)} for a, b, v in t.top],
            }
            for t in tokens
        ],
        "refusal": None,
    }


def completion_logprobs(
    tokens: list[TokenLogprobs] | tuple[TokenLogprobs, ...], offset: int
) -> dict[str, Any]:
    """A text completion choice's legacy `logprobs` (parallel lists); `offset` is the first token's character
    offset in the choice's text. As in OpenAI's API each `top_logprobs` entry also holds the chosen token."""
    out: dict[str, list[Any]] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for t in tokens:
        top = {a: v for a, _, v in t.top}
        top.setdefault(t.token, t.logprob)
        out["tokens"].append(t.token)
        out["token_logprobs"].append(t.logprob)
        out["top_logprobs"].append(top)
        out["text_offset"].append(offset)
        offset += len(t.token)
    return out
