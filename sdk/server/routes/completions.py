"""POST /v1/completions: text completion of one prompt or a list of prompts (each with `n` choices)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request

from xpullm.server.engine import Finished, GenerationStream, TextDelta
from xpullm.server.errors import APIError
from xpullm.server.protocol import CompletionRequest, completion_logprobs, new_id, now, usage
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

__all__ = ["router"]

router = APIRouter()


@router.post("/v1/completions", response_model=None)
async def completions(body: CompletionRequest, request: Request) -> Any:
    """Text completion of one prompt or a list of prompts (each with `n` choices)."""
    state = state_of(request)
    engine = state.text_engine(body.model)
    reject_unsupported_sampling(body)
    if body.logprobs is not None and body.echo:
        raise APIError.unsupported(
            "logprobs", "log-probabilities of echoed prompt tokens are not computed; use echo or logprobs"
        )
    if body.suffix:
        raise APIError.unsupported("suffix", "insertion (suffix) is not supported; leave it unset")
    if body.best_of is not None and body.best_of != body.n:
        raise APIError.unsupported("best_of", "best_of must be unset or equal to n")
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise APIError.unsupported(
            "prompt", "give a string or a list of strings (token arrays are not accepted)"
        )
    ids = [await in_thread(engine.encode_prompt, p, f"prompt[{i}]" if len(prompts) > 1 else "prompt") for i, p in enumerate(prompts)]  # fmt: skip
    jobs = []
    for p_ids in ids:
        max_tokens = body.max_tokens or state.default_max_tokens or 16
        params = generation_params(body, engine, None, len(p_ids), max_tokens, None, body.logprobs)
        jobs += [(p_ids, p) for p in seeded(params, body.n)]
    streams = submit(engine, jobs)
    echoes = [p for p in prompts for _ in range(body.n)] if body.echo else [""] * len(jobs)
    id_, created = new_id("cmpl"), now()
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return EngineStreamResponse(
            _completion_stream(
                streams, id_, created, body.model, echoes, include_usage, body.n, body.logprobs is not None
            ),
            streams,
        )
    results = await collect(streams, request)
    choices = [
        {
            "index": i,
            "text": echoes[i] + r.text,
            "logprobs": completion_logprobs(r.tokens, 0) if body.logprobs is not None else None,
            "finish_reason": finish_reason(r.finished, None),
        }
        for i, r in enumerate(results)
    ]
    return {
        "id": id_,
        "object": "text_completion",
        "created": created,
        "model": body.model,
        "system_fingerprint": None,
        "choices": choices,
        "usage": _usage_per_prompt([r.finished for r in results], body.n),
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
    with_logprobs: bool,
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
        return sse(body)

    finals: list[Finished | None] = [None] * len(streams)
    offsets = [0] * len(streams)  # characters of each choice's token texts sent so far (text_offset)

    async def frames() -> AsyncIterator[str]:
        for i, echo in enumerate(echoes):
            if echo:
                yield chunk([{"index": i, "text": echo, "logprobs": None, "finish_reason": None}])
        async for i, ev in merge(streams):
            if isinstance(ev, TextDelta):
                if ev.text or ev.logprobs:
                    lp = completion_logprobs(ev.logprobs, offsets[i]) if with_logprobs else None
                    offsets[i] += sum(len(t.token) for t in ev.logprobs)
                    yield chunk([{"index": i, "text": ev.text, "logprobs": lp, "finish_reason": None}])
            else:
                finals[i] = ev
                end = finish_reason(ev, None)
                yield chunk([{"index": i, "text": "", "logprobs": None, "finish_reason": end}])

    def usage_frame() -> str:
        return chunk([], _usage_per_prompt([f for f in finals if f is not None], n))

    # aclosing: a client that leaves closes this generator, and with it the inner one (which cancels at once).
    async with contextlib.aclosing(
        stream_frames(streams, frames(), usage_frame if include_usage else None)
    ) as out:
        async for frame in out:
            yield frame
