"""The one place the server reaches past `xpullm.LLM`'s public API.

The server needs three things the public `generate/stream/chat` calls do not give it: (1) the prompt's token ids
before generation, to answer 400 for a prompt that does not fit and to count `usage.prompt_tokens` exactly;
(2) a stream of text deltas that also returns the finished `Completion` (exact `completion_tokens` and the finish
reason), started from those ids, with each token's log-probabilities when asked for (the engine core's `token`
events); (3) compiling a `json_schema` once before the response starts, so a bad schema is
a 400 and not an error inside a 200 stream. Each function below names the engine API it stands in for; when
`LLM` offers them publicly, only this module changes.
"""

from __future__ import annotations

import queue
from collections.abc import Generator
from typing import TYPE_CHECKING, Any

from xpullm.engine.params import Completion, GenerationParams, InvalidParameter, TokenLogprob

if TYPE_CHECKING:
    from xpullm.engine import LLM

__all__ = ["check_constraint", "check_logprobs", "encode_chat", "encode_prompt", "stream_ids"]


def encode_chat(llm: LLM, messages: list[dict[str, Any]]) -> list[int]:
    """Token ids of `messages` with the chat template applied; ContextOverflow when they leave no room."""
    return llm._encode_chat(messages)


def encode_prompt(llm: LLM, prompt: str, field: str) -> list[int]:
    """Token ids of a raw prompt; InvalidParameter / ContextOverflow naming `field`."""
    return llm._encode_prompt(prompt, field)


def check_constraint(llm: LLM, params: GenerationParams) -> None:
    """Compile the grammar `params` asks for (if any); raises on a schema the grammar engine rejects."""
    if params.json_schema is None and params.grammar is None:
        return
    from xpullm.engine.constrained import GrammarConstraint

    vocab = int(llm.model.config.vocab_size)
    GrammarConstraint.from_params(params, llm.tokenizer, 1, vocab, llm._eos or [0])


def check_logprobs(llm: LLM, params: GenerationParams) -> None:
    """Raise InvalidParameter when `params` asks for log-probabilities that this model's engine cannot report."""
    if params.logprobs is not None and llm.engine is None:
        raise InvalidParameter(
            "logprobs",
            params.logprobs,
            "unset: this model generates through the serialized loop, which does not report log-probabilities",
        )


def stream_ids(
    llm: LLM, prompt_ids: list[int], params: GenerationParams
) -> Generator[str | TokenLogprob, None, Completion]:
    """Generate from token ids: yields text deltas (as `LLM.stream`) and returns the `Completion`; with
    `params.logprobs` set, each token's `TokenLogprob` comes before the delta that holds its text.

    Safe to call from several threads at once: the engine either serializes the calls or batches them.
    `params.cancel` stops it after the current token.
    """
    if params.logprobs is not None:
        return (yield from _stream_core(llm, prompt_ids, params))
    gen = llm._run([prompt_ids], params)
    while True:
        try:
            _, delta = next(gen)
        except StopIteration as stop:
            return stop.value[0]
        yield delta


def _stream_core(
    llm: LLM, prompt_ids: list[int], params: GenerationParams
) -> Generator[str | TokenLogprob, None, Completion]:
    """`LLM._run` for one prompt on the engine core, passing its `token` events on (stands in for a public
    streaming call with log-probabilities on `LLM`)."""
    check_logprobs(llm, params)
    events: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
    request = llm.engine.submit(prompt_ids, params, lambda kind, value: events.put((kind, value)))
    try:
        while True:
            kind, value = events.get()
            if kind == "done":
                return value
            if kind == "error":
                raise value
            yield value
    finally:
        request.cancel()
