"""Text one step behind (`EngineConfig.overlap_text`, the default on GPUs): on the real default model, forced on here
on the CPU, every request's text, finish reason, token counts and logprobs are those of the engine that turns each
step's tokens into text at once - stop strings that end a request while its next token is being computed included.
"""

from __future__ import annotations

import pytest

from tests.engine.threads import in_threads
from xpullm.engine import LLM
from xpullm.engine.core import EngineConfig

PROMPTS = [
    "The capital of France is",
    "Hi",
    "List three colors:",
    "def fibonacci(n):",
    "Water boils at a temperature of",
]
SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}


def _engine(llm: LLM, overlap: bool) -> LLM:
    return LLM(llm.model, tokenizer=llm.tokenizer, engine=EngineConfig(max_seqs=8, overlap_text=overlap))


@pytest.fixture(scope="module")
def pair(llm: LLM) -> tuple[LLM, LLM]:
    return _engine(llm, False), _engine(llm, True)


def _runs(model: LLM) -> list[tuple]:
    """Plain, stop-string, logprob and length-bound requests of every prompt, all submitted at once. Each
    stop-string request must end with the text its plain twin has before the stop string's first occurrence."""
    jobs = []
    cut: dict[int, str] = {}
    for i, prompt in enumerate(PROMPTS):
        plain = model.generate(prompt, max_new_tokens=24)
        words = plain.text.split()
        # a stop string in the middle of the text: the request ends while its next token is in flight
        stop = words[len(words) // 2] if len(words) > 2 else "\n"
        if stop in plain.text:
            cut[len(jobs) + 1] = plain.text[: plain.text.index(stop)]
        jobs += [
            (prompt, {"max_new_tokens": 24}),
            (prompt, {"max_new_tokens": 24, "stop": [stop]}),
            (prompt, {"max_new_tokens": 6, "logprobs": 2}),
            (prompt, {"max_new_tokens": 3 + i, "speculative": False}),
        ]
    out = in_threads(lambda job: model.generate(job[0], **job[1]), jobs)
    assert len(cut) >= 3
    for j, text in cut.items():
        assert (out[j].text, out[j].finish_reason) == (text, "stop")
    return [
        (
            c.text,
            c.finish_reason,
            c.completion_tokens,
            None
            if c.logprobs is None
            else [(lp.token_id, round(lp.logprob, 4), lp.top) for lp in c.logprobs],
        )
        for c in out
    ]


def test_text_one_step_behind_gives_the_same_completions(pair: tuple[LLM, LLM]) -> None:
    plain, overlapped = pair
    assert overlapped.engine._overlap and not plain.engine._overlap
    want, got = _runs(plain), _runs(overlapped)
    assert got == want
    assert overlapped.engine.stats().kv_used_blocks == 0


def test_streams_and_grammar_one_step_behind(pair: tuple[LLM, LLM]) -> None:
    plain, overlapped = pair
    for model in pair:
        pieces = list(model.stream(PROMPTS[2], max_new_tokens=20, stop=["\n\n"]))
        done = model.generate(PROMPTS[2], max_new_tokens=20, stop=["\n\n"])
        assert "".join(pieces) == done.text
    a = plain.generate("A person:", max_new_tokens=40, json_schema=SCHEMA)
    b = overlapped.generate("A person:", max_new_tokens=40, json_schema=SCHEMA)
    assert (b.text, b.finish_reason) == (a.text, a.finish_reason)
    assert b.text.startswith("{")
    assert (
        list(overlapped.stream(PROMPTS[0], max_new_tokens=8))
        and overlapped.engine.stats().kv_used_blocks == 0
    )
