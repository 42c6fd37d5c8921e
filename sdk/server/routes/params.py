"""From a chat/completion request to the engine: `GenerationParams`, seeded choices, submission, finish reasons."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from xpullm.engine.params import MAX_NEW_TOKENS_LIMIT, GenerationParams
from xpullm.server.engine import Finished, GenerationStream, TextEngine
from xpullm.server.errors import APIError, from_exception
from xpullm.server.protocol import ChatCompletionRequest, CompletionRequest

__all__ = [
    "finish_reason",
    "generation_params",
    "in_thread",
    "reject_unsupported_sampling",
    "seeded",
    "submit",
]


def reject_unsupported_sampling(body: ChatCompletionRequest | CompletionRequest) -> None:
    """400 for sampling fields this engine cannot honour (silently ignoring them would change results)."""
    for name in ("frequency_penalty", "presence_penalty"):
        if getattr(body, name):
            raise APIError.unsupported(name, "not supported by this engine; leave it unset or 0")
    if body.logit_bias:
        raise APIError.unsupported("logit_bias", "not supported by this engine; leave it unset")


def generation_params(
    body: ChatCompletionRequest | CompletionRequest,
    engine: TextEngine,
    default_max_tokens: int | None,
    prompt_len: int,
    max_tokens: int | None,
    json_schema: dict[str, Any] | None = None,
    logprobs: int | None = None,
) -> GenerationParams:
    """The engine's parameters for one request (a bad value is a 400 naming the wire field)."""
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    # Without max_tokens, generation may use the whole rest of the window (as OpenAI does).
    room = engine.context_length - prompt_len
    try:
        return GenerationParams(
            max_new_tokens=min(max_tokens or default_max_tokens or room, MAX_NEW_TOKENS_LIMIT),
            temperature=1.0 if body.temperature is None else body.temperature,
            top_p=1.0 if body.top_p is None else body.top_p,
            seed=body.seed,
            stop=tuple(stop),
            json_schema=json_schema,
            logprobs=logprobs,
            min_tokens=body.min_tokens,
            ignore_eos=body.ignore_eos,
        )
    except Exception as exc:
        raise from_exception(exc) from exc


def seeded(params: GenerationParams, n: int) -> list[GenerationParams]:
    """n sequences of one request; a seed is offset per choice so sampled choices differ but stay reproducible."""
    if params.seed is None:
        return [params] * n
    return [replace(params, seed=params.seed + i) for i in range(n)]


def submit(engine: TextEngine, jobs: Sequence[tuple[list[int], GenerationParams]]) -> list[GenerationStream]:
    """Submit every sequence of a request, or none: a failure (e.g. a full queue) cancels those already in."""
    streams: list[GenerationStream] = []
    try:
        for ids, params in jobs:
            streams.append(engine.submit(ids, params))
    except BaseException as exc:
        for s in streams:
            s.cancel()
        raise from_exception(exc) from exc
    return streams


def finish_reason(fin: Finished, calls: list[dict[str, Any]] | None) -> str:
    """The wire `finish_reason` of one choice."""
    if calls:
        return "tool_calls"
    # A disconnected client never reads its finish reason; a server-side stop reads as "stop".
    return "length" if fin.finish_reason == "length" else "stop"


async def in_thread(fn: Any, *args: Any) -> Any:
    """`fn(*args)` off the event loop; engine errors become API errors."""
    try:
        return await asyncio.to_thread(fn, *args)
    except Exception as exc:
        raise from_exception(exc) from exc
