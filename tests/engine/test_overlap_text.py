"""Text one step behind (`EngineConfig.overlap_text`, the default on GPUs): on the real default model, forced on here
on the CPU, every request's text, finish reason, token counts and logprobs are those of the engine that turns each
step's tokens into text at once - stop strings that end a request while its next token is being computed included.
"""

from __future__ import annotations

import pytest

from tests.engine.test_engine_core import PROMPTS as CORE_PROMPTS
from tests.engine.threads import in_threads
from xpullm.engine import LLM
from xpullm.engine.core import EngineConfig

PROMPTS = CORE_PROMPTS[:5]  # the short ones
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


def test_each_requests_events_stay_in_order_one_step_behind(pair: tuple[LLM, LLM]) -> None:
    """Per request, with text one step behind: a logprob event for every kept token, the deltas joining to the
    final text, `done` once and last; a stop string ends its request with the text before it."""
    import queue

    from xpullm.engine.params import GenerationParams

    plain, overlapped = pair
    core = overlapped.engine
    events: queue.Queue = queue.Queue()
    prompts = [overlapped.tokenizer(p)["input_ids"] for p in PROMPTS]
    # Every other request stops at three characters from the middle of its own text (which text a machine's
    # kernels lead the model to is not fixed: a fixed stop word may never come, a short text may have no middle word).
    texts = [c.text for c in plain.generate(PROMPTS, max_new_tokens=16)]
    stops = [
        (t[len(t) // 2 : len(t) // 2 + 3],) if i % 2 and len(t) >= 6 else () for i, t in enumerate(texts)
    ]
    params = [GenerationParams(max_new_tokens=16, logprobs=1, stop=stops[i]) for i in range(5)]
    reqs = [
        core.submit(p, q, lambda kind, value, i=i: events.put((i, kind, value)))
        for i, (p, q) in enumerate(zip(prompts, params, strict=True))
    ]
    seen: dict[int, list[tuple[str, object]]] = {i: [] for i in range(len(reqs))}
    done = 0
    while done < len(reqs):
        i, kind, value = events.get(timeout=120)
        assert kind != "error", value
        assert not seen[i] or seen[i][-1][0] != "done", "an event after done"
        seen[i].append((kind, value))
        done += kind == "done"
    for i, log in seen.items():
        final = log[-1][1]
        assert log[-1][0] == "done" and [k for k, _ in log].count("done") == 1
        assert "".join(v for k, v in log if k == "delta") == final.text
        assert [v for k, v in log if k == "token"] == list(final.logprobs)
        assert len(final.logprobs) >= final.completion_tokens
        if params[i].stop:
            stop = params[i].stop[0]
            assert (final.text, final.finish_reason) == (texts[i][: texts[i].index(stop)], "stop")
    assert sum(bool(p.stop) for p in params) == 2
