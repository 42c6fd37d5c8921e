"""Consuming generation streams: merging a request's choices, collecting plain responses, SSE framing, and
cancelling every sequence when the client goes away (streams through Starlette's disconnect listener, plain
requests through `_until_disconnect`)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from fastapi.responses import StreamingResponse

from xpullm.server.engine import Finished, GenerationStream, TextDelta, TokenLogprobs
from xpullm.server.errors import APIError, from_exception

__all__ = ["Collected", "EngineStreamResponse", "collect", "merge", "sse", "stream_frames"]


@dataclass
class Collected:
    """One finished sequence of a plain (non-streamed) response."""

    text: str
    finished: Finished
    tokens: list[TokenLogprobs] = field(default_factory=list)
    """Per-token log-probabilities, when the request asked for them."""


async def merge(streams: list[GenerationStream]) -> AsyncIterator[tuple[int, TextDelta | Finished]]:
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


async def collect(streams: list[GenerationStream], request: Request) -> list[Collected]:
    """Run every stream to its end; a client that disconnects first cancels them all."""
    texts = [""] * len(streams)
    tokens: list[list[TokenLogprobs]] = [[] for _ in streams]
    finals: list[Finished | None] = [None] * len(streams)

    async def consume() -> None:
        async for i, ev in merge(streams):
            if isinstance(ev, TextDelta):
                texts[i] += ev.text
                tokens[i] += ev.logprobs
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
    return [Collected(t, f, lp) for t, f, lp in zip(texts, finals, tokens, strict=True) if f is not None]


async def _until_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


class EngineStreamResponse(StreamingResponse):
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


def sse(obj: dict[str, Any] | str) -> str:
    """One server-sent event carrying `obj` as JSON (or a bare string such as `[DONE]`).

    ASCII-escaped: generated text may hold characters that clients splitting lines with `str.splitlines` take for
    line ends (U+2028, U+2029, U+0085, vertical tab, ...), which would cut the JSON of an event in two."""
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj)}\n\n"


async def stream_frames(
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
        yield sse(from_exception(exc).body())
        return
    finally:
        for s in streams:
            s.cancel()
    if usage_frame is not None:
        yield usage_frame()
    yield sse("[DONE]")
