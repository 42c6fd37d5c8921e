"""The OpenAI-compatible endpoints: /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/models.

Routes translate the wire protocol to `GenerationParams` and talk to the engines only through the seam in
`engine` (submit, iterate events, cancel). Every sequence is submitted before a response starts, so a full queue
is a 429 and a bad schema a 400, never an error inside a 200 stream. A client that goes away cancels its
sequences at once: streams through Starlette's disconnect listener, plain requests through `_until_disconnect`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from xpullm.engine.params import MAX_NEW_TOKENS_LIMIT, GenerationParams
from xpullm.server.engine import EmbeddingEngine, Finished, GenerationStream, TextDelta, TextEngine
from xpullm.server.errors import APIError, from_exception
from xpullm.server.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    NamedToolChoice,
    chat_chunk,
    new_id,
    now,
    usage,
)
from xpullm.server.tools import call_schema, parse_tool_calls, plain_messages

__all__ = ["ServerState", "router"]

router = APIRouter()


@dataclass
class ServerState:
    """What the routes serve; lives on `app.state.xpullm`."""

    text: TextEngine | None
    embedder: EmbeddingEngine | None
    load_error: str | None = None
    default_max_tokens: int | None = None
    created: int = field(default_factory=now)

    def text_engine(self, model: str) -> TextEngine:
        """The text engine if `model` names it (404 otherwise, 503 while loading)."""
        if self.text is None or model != self.text.model_id:
            raise _unknown_model(model, self)
        _require_ready(self.text, self)
        return self.text

    def embedding_engine(self, model: str) -> EmbeddingEngine:
        """The embedder if `model` names it (404 otherwise, 503 while loading)."""
        if self.embedder is None or model != self.embedder.model_id:
            raise _unknown_model(model, self)
        _require_ready(self.embedder, self)
        return self.embedder

    def model_ids(self) -> list[str]:
        """Every id clients may pass as `model`."""
        return [e.model_id for e in (self.text, self.embedder) if e is not None]


def _state(request: Request) -> ServerState:
    return request.app.state.xpullm


def _unknown_model(model: str, state: ServerState) -> APIError:
    return APIError(
        404,
        f"the model {model!r} does not exist here; served models: {state.model_ids()} (GET /v1/models)",
        "invalid_request_error",
        "model",
        "model_not_found",
    )


def _require_ready(engine: TextEngine | EmbeddingEngine, state: ServerState) -> None:
    if not engine.ready:
        reason = (
            f"loading failed: {state.load_error}" if state.load_error else "retry when GET /health is 200"
        )
        raise APIError(
            503, f"the model {engine.model_id!r} is still loading; {reason}", "service_unavailable"
        )


# -- /v1/models -------------------------------------------------------------------------------------------------


@router.get("/v1/models")
async def list_models(request: Request) -> dict[str, Any]:
    """The served models."""
    st = _state(request)
    return {
        "object": "list",
        "data": [
            {"id": m, "object": "model", "created": st.created, "owned_by": "xpullm"} for m in st.model_ids()
        ],
    }


# -- generation helpers -----------------------------------------------------------------------------------------


def _unsupported_sampling(body: ChatCompletionRequest | CompletionRequest) -> None:
    for name in ("frequency_penalty", "presence_penalty"):
        if getattr(body, name):
            raise APIError.unsupported(name, "not supported by this engine; leave it unset or 0")
    if body.logit_bias:
        raise APIError.unsupported("logit_bias", "not supported by this engine; leave it unset")


def _params(
    body: ChatCompletionRequest | CompletionRequest,
    engine: TextEngine,
    default_max_tokens: int | None,
    prompt_len: int,
    max_tokens: int | None,
    json_schema: dict[str, Any] | None = None,
) -> GenerationParams:
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
        )
    except Exception as exc:
        raise from_exception(exc) from exc


def _seeded(params: GenerationParams, n: int) -> list[GenerationParams]:
    """n sequences of one request; a seed is offset per choice so sampled choices differ but stay reproducible."""
    from dataclasses import replace

    if params.seed is None:
        return [params] * n
    return [replace(params, seed=params.seed + i) for i in range(n)]


def _submit(engine: TextEngine, jobs: Sequence[tuple[list[int], GenerationParams]]) -> list[GenerationStream]:
    streams: list[GenerationStream] = []
    try:
        for ids, params in jobs:
            streams.append(engine.submit(ids, params))
    except BaseException as exc:
        for s in streams:
            s.cancel()
        raise from_exception(exc) from exc
    return streams


async def _merge(streams: list[GenerationStream]) -> AsyncIterator[tuple[int, TextDelta | Finished]]:
    """Events of several streams as (stream index, event), in arrival order."""
    if len(streams) == 1:
        async for ev in streams[0]:
            yield 0, ev
        return
    queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()

    async def pump(i: int, s: GenerationStream) -> None:
        try:
            async for ev in s:
                await queue.put((i, ev))
        except BaseException as exc:
            await queue.put((i, exc))
        await queue.put((i, None))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        open_ = len(streams)
        while open_:
            i, ev = await queue.get()
            if ev is None:
                open_ -= 1
            elif isinstance(ev, BaseException):
                raise ev
            else:
                yield i, ev
    finally:
        for t in tasks:
            t.cancel()
        for s in streams:
            s.cancel()


async def _collect(streams: list[GenerationStream], request: Request) -> list[tuple[str, Finished]]:
    """Run every stream to its end; a client that disconnects first cancels them all."""
    texts = [""] * len(streams)
    finals: list[Finished | None] = [None] * len(streams)

    async def consume() -> None:
        async for i, ev in _merge(streams):
            if isinstance(ev, TextDelta):
                texts[i] += ev.text
            else:
                finals[i] = ev

    work = asyncio.create_task(consume())
    gone = asyncio.create_task(_until_disconnect(request))
    try:
        await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not work.done():
            work.cancel()
            for s in streams:
                s.cancel()
    if not work.done() or work.cancelled():
        raise APIError(499, "client closed the request", "client_closed_request")
    exc = work.exception()
    if exc is not None:
        raise from_exception(exc) from exc
    return [(t, f) for t, f in zip(texts, finals, strict=True) if f is not None]


async def _until_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


class _EngineStreamResponse(StreamingResponse):
    """An SSE response that cancels its sequences when it ends for any reason (done, client gone, error)."""

    def __init__(self, content: AsyncIterator[str], streams: list[GenerationStream]) -> None:
        super().__init__(content, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        self._streams = streams

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            for s in self._streams:
                s.cancel()


def _sse(obj: dict[str, Any] | str) -> str:
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False)}\n\n"


def _sse_error(exc: BaseException) -> str:
    return _sse(from_exception(exc).body())


async def _in_thread(fn: Any, *args: Any) -> Any:
    try:
        return await asyncio.to_thread(fn, *args)
    except Exception as exc:
        raise from_exception(exc) from exc


# -- /v1/chat/completions -----------------------------------------------------------------------------------------


@router.post("/v1/chat/completions", response_model=None)
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
    """Chat completion, streamed (SSE) or not; tools and response_format through the grammar engine."""
    state = _state(request)
    engine = state.text_engine(body.model)
    _unsupported_sampling(body)
    if body.logprobs or body.top_logprobs:
        name = "logprobs" if body.logprobs else "top_logprobs"
        raise APIError.unsupported(
            name, "this engine does not expose token log-probabilities yet; leave it unset"
        )
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
    prompt_ids = await _in_thread(engine.encode_chat, messages)
    max_tokens = body.max_completion_tokens or body.max_tokens
    params = _params(body, engine, state.default_max_tokens, len(prompt_ids), max_tokens, schema)
    await _in_thread(engine.check, params)
    streams = _submit(engine, [(prompt_ids, p) for p in _seeded(params, body.n)])
    id_, created = new_id("chatcmpl"), now()
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return _EngineStreamResponse(
            _chat_stream(streams, id_, created, body.model, tools, include_usage), streams
        )
    results = await _collect(streams, request)
    choices = []
    for i, (text, fin) in enumerate(results):
        calls = parse_tool_calls(text, tools) if tools else None
        message: dict[str, Any] = {"role": "assistant", "content": None if calls else text, "refusal": None}
        if calls:
            message["tool_calls"] = calls
        choices.append(
            {"index": i, "message": message, "logprobs": None, "finish_reason": _finish(fin, calls)}
        )
    return {
        "id": id_,
        "object": "chat.completion",
        "created": created,
        "model": body.model,
        "system_fingerprint": None,
        "choices": choices,
        "usage": usage(results[0][1].prompt_tokens, sum(f.completion_tokens for _, f in results)),
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


def _finish(fin: Finished, calls: list[dict[str, Any]] | None) -> str:
    if calls:
        return "tool_calls"
    # A disconnected client never reads its finish reason; a server-side stop reads as "stop".
    return "length" if fin.finish_reason == "length" else "stop"


async def _stream_frames(
    streams: list[GenerationStream], frames: AsyncIterator[str], usage_frame: Callable[[], str] | None
) -> AsyncIterator[str]:
    """The SSE frames of a streamed response, then its usage frame (when asked for) and `[DONE]`. An error ends
    the stream with an error frame; the generations are cancelled however it ends (a client that left included)."""
    try:
        async for frame in frames:
            yield frame
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        yield _sse_error(exc)
        return
    finally:
        for s in streams:
            s.cancel()
    if usage_frame is not None:
        yield usage_frame()
    yield _sse("[DONE]")


async def _chat_stream(
    streams: list[GenerationStream],
    id_: str,
    created: int,
    model: str,
    tools: list[Any] | None,
    include_usage: bool,
) -> AsyncIterator[str]:
    def chunk(choices: list[dict[str, Any]], usage_: dict[str, int] | None = None) -> str:
        return _sse(chat_chunk(id_, created, model, choices, usage_, include_usage))

    def choice(i: int, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {"index": i, "delta": delta, "logprobs": None, "finish_reason": finish}

    # With tools the answer may turn out to be a call: it is held back and sent whole at the end.
    held = [""] * len(streams)
    finals: list[Finished | None] = [None] * len(streams)

    async def frames() -> AsyncIterator[str]:
        for i in range(len(streams)):
            yield chunk([choice(i, {"role": "assistant", "content": "", "refusal": None})])
        async for i, ev in _merge(streams):
            if isinstance(ev, TextDelta):
                if tools:
                    held[i] += ev.text
                elif ev.text:
                    yield chunk([choice(i, {"content": ev.text})])
                continue
            finals[i] = ev
            calls = parse_tool_calls(held[i], tools) if tools else None
            if calls:
                delta = {"tool_calls": [dict(c, index=k) for k, c in enumerate(calls)]}
                yield chunk([choice(i, delta)])
            elif held[i]:
                yield chunk([choice(i, {"content": held[i]})])
            yield chunk([choice(i, {}, _finish(ev, calls))])

    def usage_frame() -> str:
        done = [f for f in finals if f is not None]
        return chunk([], usage(done[0].prompt_tokens, sum(f.completion_tokens for f in done)))

    # aclosing: a client that leaves closes this generator, and with it the inner one (which cancels at once).
    async with contextlib.aclosing(
        _stream_frames(streams, frames(), usage_frame if include_usage else None)
    ) as out:
        async for frame in out:
            yield frame


# -- /v1/completions ----------------------------------------------------------------------------------------------


@router.post("/v1/completions", response_model=None)
async def completions(body: CompletionRequest, request: Request) -> Any:
    """Text completion of one prompt or a list of prompts (each with `n` choices)."""
    state = _state(request)
    engine = state.text_engine(body.model)
    _unsupported_sampling(body)
    if body.logprobs is not None:
        raise APIError.unsupported("logprobs", "this engine does not expose token log-probabilities yet")
    if body.suffix:
        raise APIError.unsupported("suffix", "insertion (suffix) is not supported; leave it unset")
    if body.best_of is not None and body.best_of != body.n:
        raise APIError.unsupported("best_of", "best_of must be unset or equal to n")
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise APIError.unsupported(
            "prompt", "give a string or a list of strings (token arrays are not accepted)"
        )
    ids = [await _in_thread(engine.encode_prompt, p, f"prompt[{i}]" if len(prompts) > 1 else "prompt") for i, p in enumerate(prompts)]  # fmt: skip
    jobs = []
    for p_ids in ids:
        params = _params(body, engine, None, len(p_ids), body.max_tokens or state.default_max_tokens or 16)
        jobs += [(p_ids, p) for p in _seeded(params, body.n)]
    streams = _submit(engine, jobs)
    echoes = [p for p in prompts for _ in range(body.n)] if body.echo else [""] * len(jobs)
    id_, created = new_id("cmpl"), now()
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return _EngineStreamResponse(
            _completion_stream(streams, id_, created, body.model, echoes, include_usage, body.n), streams
        )
    results = await _collect(streams, request)
    choices = [
        {"index": i, "text": echoes[i] + text, "logprobs": None, "finish_reason": _finish(fin, None)}
        for i, (text, fin) in enumerate(results)
    ]
    return {
        "id": id_,
        "object": "text_completion",
        "created": created,
        "model": body.model,
        "system_fingerprint": None,
        "choices": choices,
        "usage": _usage_per_prompt([f for _, f in results], body.n),
    }


def _usage_per_prompt(finals: list[Finished], n: int) -> dict[str, int]:
    """Each prompt's tokens count once however many choices it has."""
    prompt = sum(f.prompt_tokens for f in finals[::n])
    return usage(prompt, sum(f.completion_tokens for f in finals))


async def _completion_stream(
    streams: list[GenerationStream],
    id_: str,
    created: int,
    model: str,
    echoes: list[str],
    include_usage: bool,
    n: int,
) -> AsyncIterator[str]:
    def chunk(choices: list[dict[str, Any]], usage_: dict[str, int] | None = None) -> str:
        body = {
            "id": id_,
            "object": "text_completion",
            "created": created,
            "model": model,
            "choices": choices,
        }
        if include_usage:
            body["usage"] = usage_
        return _sse(body)

    finals: list[Finished | None] = [None] * len(streams)

    async def frames() -> AsyncIterator[str]:
        for i, echo in enumerate(echoes):
            if echo:
                yield chunk([{"index": i, "text": echo, "logprobs": None, "finish_reason": None}])
        async for i, ev in _merge(streams):
            if isinstance(ev, TextDelta):
                if ev.text:
                    yield chunk([{"index": i, "text": ev.text, "logprobs": None, "finish_reason": None}])
            else:
                finals[i] = ev
                yield chunk([{"index": i, "text": "", "logprobs": None, "finish_reason": _finish(ev, None)}])

    def usage_frame() -> str:
        return chunk([], _usage_per_prompt([f for f in finals if f is not None], n))

    # aclosing: a client that leaves closes this generator, and with it the inner one (which cancels at once).
    async with contextlib.aclosing(
        _stream_frames(streams, frames(), usage_frame if include_usage else None)
    ) as out:
        async for frame in out:
            yield frame


# -- /v1/embeddings -----------------------------------------------------------------------------------------------


@router.post("/v1/embeddings")
async def embeddings(body: EmbeddingRequest, request: Request) -> dict[str, Any]:
    """Sentence embeddings; inputs longer than the embedder's window get 400 (never truncated)."""
    engine = _state(request).embedding_engine(body.model)
    texts = [body.input] if isinstance(body.input, str) else body.input
    if not texts or not all(isinstance(t, str) for t in texts):
        raise APIError.unsupported(
            "input",
            "give a string or a list of strings (token arrays are not accepted: the tokenizers differ)",
        )
    for i, t in enumerate(texts):
        if not t:
            raise APIError.bad_request(
                f"input[{i}]", f"input[{i}] is empty; every input must be a non-empty string"
            )
    if body.dimensions is not None:
        raise APIError.unsupported("dimensions", "this embedder has a fixed size; leave dimensions unset")
    counts = await _in_thread(engine.count_tokens, texts)
    for i, c in enumerate(counts):
        if c > engine.max_tokens:
            raise APIError.bad_request(
                f"input[{i}]",
                f"input[{i}] is {c} tokens but the embedder reads at most {engine.max_tokens}; split it",
                "context_length_exceeded",
            )
    try:
        vectors = await engine.embed(texts)
    except Exception as exc:
        raise from_exception(exc) from exc
    data = [
        {"object": "embedding", "index": i, "embedding": _encode_vector(v, body.encoding_format)}
        for i, v in enumerate(vectors)
    ]
    total = sum(counts)
    return {
        "object": "list",
        "data": data,
        "model": body.model,
        "usage": {"prompt_tokens": total, "total_tokens": total},
    }


def _encode_vector(vector: list[float], encoding: str) -> list[float] | str:
    if encoding == "float":
        return vector
    import numpy as np

    # base64 of little-endian float32, which is what the OpenAI SDK decodes.
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
