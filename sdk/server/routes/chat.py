"""POST /v1/chat/completions: chat completion, streamed (SSE) or not; tools and response_format through the
grammar engine."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

from fastapi import APIRouter, Request

from xpullm.server.engine import Finished, GenerationStream, TextDelta, TokenLogprobs
from xpullm.server.errors import APIError
from xpullm.server.protocol import (
    ChatCompletionRequest,
    NamedToolChoice,
    chat_chunk,
    chat_logprobs,
    new_id,
    now,
    usage,
)
from xpullm.server.routes.params import (
    finish_reason,
    generation_params,
    in_thread,
    reject_unsupported_sampling,
    seeded,
    submit,
)
from xpullm.server.routes.streams import EngineStreamResponse, collect, merge, sse, stream_frames
from xpullm.server.state import state_of
from xpullm.server.tools import call_schema, parse_tool_calls, plain_messages

__all__ = ["router"]

router = APIRouter()


@router.post("/v1/chat/completions", response_model=None)
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
    """Chat completion, streamed (SSE) or not; tools and response_format through the grammar engine."""
    state = state_of(request)
    engine = state.text_engine(body.model)
    reject_unsupported_sampling(body)
    if body.top_logprobs is not None and not body.logprobs:
        raise APIError.bad_request("top_logprobs", "top_logprobs needs logprobs: true")
    logprobs = (body.top_logprobs or 0) if body.logprobs else None
    for i, m in enumerate(body.messages):
        if isinstance(m.content, list) and any(p.get("type") != "text" for p in m.content):
            raise APIError.unsupported(f"messages[{i}].content", "only text content parts are supported")
    tools = body.tools if body.tools and body.tool_choice != "none" else None
    choice = body.tool_choice or "auto"
    if isinstance(choice, NamedToolChoice) and choice.function.name not in {
        t.function.name for t in tools or []
    }:
        raise APIError.bad_request(
            "tool_choice", f"tool_choice names {choice.function.name!r}, which is not in tools"
        )
    if tools is None and choice == "required":
        raise APIError.bad_request("tool_choice", "tool_choice='required' needs a non-empty tools list")
    schema = _response_schema(body)
    forced = tools is not None and choice != "auto"
    if forced:
        if schema is not None:
            raise APIError.bad_request(
                "response_format", "response_format cannot be combined with a forced tool_choice"
            )
        schema = call_schema(tools, choice)
    messages = plain_messages(body.messages, tools)
    prompt_ids = await in_thread(engine.encode_chat, messages)
    max_tokens = body.max_completion_tokens or body.max_tokens
    params = generation_params(
        body, engine, state.default_max_tokens, len(prompt_ids), max_tokens, schema, logprobs
    )
    await in_thread(engine.check, params)
    streams = submit(engine, [(prompt_ids, p) for p in seeded(params, body.n)])
    id_, created = new_id("chatcmpl"), now()
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return EngineStreamResponse(
            _chat_stream(streams, id_, created, body.model, tools, include_usage, logprobs is not None),
            streams,
        )
    results = await collect(streams, request)
    choices = []
    for i, r in enumerate(results):
        calls = parse_tool_calls(r.text, tools) if tools else None
        message: dict[str, Any] = {"role": "assistant", "content": None if calls else r.text, "refusal": None}
        if calls:
            message["tool_calls"] = calls
        choices.append(
            {
                "index": i,
                "message": message,
                "logprobs": chat_logprobs(r.tokens) if logprobs is not None else None,
                "finish_reason": finish_reason(r.finished, calls),
            }
        )
    return {
        "id": id_,
        "object": "chat.completion",
        "created": created,
        "model": body.model,
        "system_fingerprint": None,
        "choices": choices,
        "usage": usage(results[0].finished.prompt_tokens, sum(r.finished.completion_tokens for r in results)),
    }


def _response_schema(body: ChatCompletionRequest) -> dict[str, Any] | None:
    fmt = body.response_format
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return {"type": "object"}
    if fmt.json_schema is None or not fmt.json_schema.schema_:
        raise APIError.bad_request(
            "response_format.json_schema", "response_format type json_schema needs json_schema.schema"
        )
    return fmt.json_schema.schema_


async def _chat_stream(
    streams: list[GenerationStream],
    id_: str,
    created: int,
    model: str,
    tools: list[Any] | None,
    include_usage: bool,
    with_logprobs: bool,
) -> AsyncIterator[str]:
    def chunk(choices: list[dict[str, Any]], usage_: dict[str, int] | None = None) -> str:
        return sse(chat_chunk(id_, created, model, choices, usage_, include_usage))

    def choice(
        i: int, delta: dict[str, Any], finish: str | None = None, tokens: Sequence[TokenLogprobs] = ()
    ) -> dict[str, Any]:
        lp = chat_logprobs(tokens) if with_logprobs and tokens else None
        return {"index": i, "delta": delta, "logprobs": lp, "finish_reason": finish}

    # With tools the answer may turn out to be a call: it is held back and sent whole at the end.
    held = [""] * len(streams)
    held_tokens: list[list[TokenLogprobs]] = [[] for _ in streams]
    finals: list[Finished | None] = [None] * len(streams)

    async def frames() -> AsyncIterator[str]:
        for i in range(len(streams)):
            yield chunk([choice(i, {"role": "assistant", "content": "", "refusal": None})])
        async for i, ev in merge(streams):
            if isinstance(ev, TextDelta):
                if tools:
                    held[i] += ev.text
                    held_tokens[i] += ev.logprobs
                elif ev.text or ev.logprobs:
                    yield chunk([choice(i, {"content": ev.text}, tokens=ev.logprobs)])
                continue
            finals[i] = ev
            calls = parse_tool_calls(held[i], tools) if tools else None
            if calls:
                delta = {"tool_calls": [dict(c, index=k) for k, c in enumerate(calls)]}
                yield chunk([choice(i, delta, tokens=held_tokens[i])])
            elif held[i] or held_tokens[i]:
                yield chunk([choice(i, {"content": held[i]}, tokens=held_tokens[i])])
            yield chunk([choice(i, {}, finish_reason(ev, calls))])

    def usage_frame() -> str:
        done = [f for f in finals if f is not None]
        return chunk([], usage(done[0].prompt_tokens, sum(f.completion_tokens for f in done)))

    # aclosing: a client that leaves closes this generator, and with it the inner one (which cancels at once).
    async with contextlib.aclosing(
        stream_frames(streams, frames(), usage_frame if include_usage else None)
    ) as out:
        async for frame in out:
            yield frame
