"""Steps queued ahead of the host (`EngineConfig.launch_ahead`, the default on GPUs): on the real default model,
forced on here on the CPU, every request's text, finish reason, token counts and logprobs are those of the engine
that reads each step's tokens before queuing the next - with EOS banned by min_tokens (the row run ahead on EOS is
recomputed), stop strings, arrivals, a sampled request and cancellation mixed in, and through the step graphs'
buffers (EAGER_REPLAY) with the embedding inside or outside the graph. The GPU twin is in test_engine_gpu.py.
"""

from __future__ import annotations

import queue
import threading

import pytest

from tests.engine.test_engine_core import PROMPTS as CORE_PROMPTS
from tests.engine.threads import in_threads
from xpullm.engine import LLM
from xpullm.engine.core import EngineConfig
from xpullm.engine.params import GenerationParams
from xpullm.engine.step_graphs import EAGER_REPLAY, StepGraphs

PROMPTS = CORE_PROMPTS[:5]  # the short ones
# Chat turns the model answers in a few tokens (EOS at 3 and 12 without min_tokens).
QUESTIONS = ["Reply with one word: yes or no?", "What is 2+2?"]


def _engine(llm: LLM, ahead: bool, graphs: str | None = None) -> LLM:
    """A fresh engine over the shared model, without speculative drafts (a step with drafts never runs ahead);
    `graphs`: EAGER_REPLAY step graphs of <= 8 tokens with the embedding "in" or "out" of the recorded step."""
    config = EngineConfig(max_seqs=8, speculative=None, launch_ahead=ahead)
    other = LLM(llm.model, tokenizer=llm.tokenizer, engine=config)
    if graphs is not None:
        core = other.engine
        core.runner.graphs = StepGraphs(
            core.runner, (1, 2, 4, 8), EAGER_REPLAY, core.pool.num_blocks, config.max_seqs, graphs == "in"
        )
    return other


@pytest.fixture(scope="module")
def plain(llm: LLM) -> LLM:
    return _engine(llm, False)


@pytest.fixture(scope="module")
def ahead(llm: LLM) -> LLM:
    return _engine(llm, True)


def _seen(completions: list) -> list[tuple]:
    return [
        (c.text, c.finish_reason, c.completion_tokens, c.timings.tokens, None if c.logprobs is None
         else [(lp.token_id, round(lp.logprob, 4), lp.top) for lp in c.logprobs])
        for c in completions
    ]  # fmt: skip


def _chat(llm: LLM, question: str) -> str:
    messages = [{"role": "user", "content": question}]
    return llm.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def test_the_default_runs_ahead_where_text_overlaps() -> None:
    assert EngineConfig().launch_ahead is None
    assert EngineConfig(launch_ahead=True).launch_ahead


def test_cpu_engines_do_not_run_ahead_unless_told(llm: LLM, plain: LLM, ahead: LLM) -> None:
    assert not llm.engine._launch_ahead and not plain.engine._launch_ahead
    assert ahead.engine._launch_ahead


@pytest.mark.parametrize(
    "kwargs",
    [{"max_new_tokens": 24}, {"max_new_tokens": 12, "logprobs": 2}],
    ids=["plain", "logprobs"],
)
def test_greedy_batches_run_ahead_with_the_same_completions_and_steps(
    plain: LLM, ahead: LLM, kwargs: dict
) -> None:
    before, steps_plain = ahead.engine.stats(), plain.engine.stats().steps
    want = plain.generate(PROMPTS, **kwargs)
    got = ahead.generate(PROMPTS, **kwargs)
    after = ahead.engine.stats()
    assert _seen(got) == _seen(want)
    decode_steps = kwargs["max_new_tokens"] - 1  # the first token comes from the prefill step
    # Every decode step but the first (queued from the host's tokens) runs ahead, and none more than plainly.
    assert after.ahead_steps - before.ahead_steps == decode_steps - 1
    assert after.steps - before.steps == plain.engine.stats().steps - steps_plain
    assert after.kv_used_blocks == 0 and after.running == 0


def test_a_row_run_ahead_on_a_banned_eos_is_recomputed(plain: LLM, ahead: LLM) -> None:
    prompts = [_chat(plain, q) for q in QUESTIONS]
    free = plain.generate(prompts, max_new_tokens=24)
    assert [(c.finish_reason, c.completion_tokens < 14) for c in free] == [("stop", True)] * len(prompts)
    for batch in ([prompts[0]], prompts):  # alone, and beside another request
        stale = ahead.engine._stale_rows
        want = plain.generate(batch, max_new_tokens=24, min_tokens=14)
        got = ahead.generate(batch, max_new_tokens=24, min_tokens=14)
        assert _seen(got) == _seen(want)
        assert ahead.engine._stale_rows > stale  # the host took the next best token: the row was recomputed
    assert ahead.engine.stats().kv_used_blocks == 0


def test_stop_strings_end_requests_whose_next_rows_run_ahead(plain: LLM, ahead: LLM) -> None:
    full = plain.generate(PROMPTS, max_new_tokens=24)
    stops = [c.text.split()[len(c.text.split()) // 2] for c in full]
    for model in (plain, ahead):
        got = in_threads(lambda job, m=model: m.generate(job[0], max_new_tokens=24, stop=[job[1]]),
                         list(zip(PROMPTS, stops, strict=True)))  # fmt: skip
        for c, f, s in zip(got, full, stops, strict=True):
            assert (c.text, c.finish_reason) == (f.text[: f.text.index(s)], "stop")
    assert ahead.engine.stats().kv_used_blocks == 0


def _mixed(model: LLM) -> list[tuple]:
    """Greedy requests, then (once they decode) a seeded sampled one and two more greedy ones arriving, and one
    cancelled after its 6th token; every completion as `_seen` gives it."""
    core = model.engine
    events: queue.Queue = queue.Queue()
    ids = [model.tokenizer(p)["input_ids"] for p in PROMPTS]
    cancel = threading.Event()
    tokens_of_cancelled = [0]

    def submit(key: int, prompt: int, params: GenerationParams):
        return core.submit(ids[prompt], params, lambda kind, value: events.put((key, kind, value)))

    reqs = {i: submit(i, i, GenerationParams(max_new_tokens=30)) for i in (0, 1)}
    reqs[2] = submit(2, 2, GenerationParams(max_new_tokens=30, cancel=cancel, logprobs=0))
    done: set[int] = set()
    while len(done) < 6:
        i, kind, value = events.get(timeout=120)
        assert kind != "error", value
        if kind == "done":
            done.add(i)
        if i == 2 and kind == "token":
            tokens_of_cancelled[0] += 1
            if tokens_of_cancelled[0] == 6:
                cancel.set()
        if i == 0 and kind == "delta" and 3 not in reqs:  # arrivals while the others decode
            reqs[3] = submit(3, 3, GenerationParams(max_new_tokens=20, temperature=0.8, seed=7))
            reqs[4] = submit(4, 4, GenerationParams(max_new_tokens=25))
            reqs[5] = submit(5, 1, GenerationParams(max_new_tokens=18))
    completions = [reqs[i].completion() for i in sorted(reqs)]
    cancelled = completions[2]
    assert cancelled.finish_reason == "cancelled" and 6 <= cancelled.completion_tokens < 30
    return _seen(completions[:2] + completions[3:])


def test_arrivals_sampling_and_cancellation_around_steps_run_ahead(plain: LLM, ahead: LLM) -> None:
    before = ahead.engine.stats().ahead_steps
    assert _mixed(ahead) == _mixed(plain)
    stats = ahead.engine.stats()
    # the sampled request keeps the steps it shares from running ahead; the greedy ones run ahead around it
    assert stats.ahead_steps - before >= 5 and stats.kv_used_blocks == 0 and stats.running == 0


@pytest.mark.parametrize("where", ["in", "out"])
def test_graph_replayed_steps_run_ahead_on_device_token_ids(llm: LLM, plain: LLM, where: str) -> None:
    replayed = _engine(llm, True, graphs=where)
    graphs = replayed.engine.runner.graphs
    want = plain.generate(PROMPTS, max_new_tokens=16)
    got = replayed.generate(PROMPTS, max_new_tokens=16)
    assert _seen(got) == _seen(want)
    assert graphs.replays >= 15 and replayed.engine.stats().ahead_steps == 14


def test_requests_that_speculate_do_not_run_ahead(llm: LLM, plain: LLM) -> None:
    config = EngineConfig(max_seqs=8, launch_ahead=True)  # prompt lookup drafts from the host's tokens
    drafting = LLM(llm.model, tokenizer=llm.tokenizer, engine=config)
    got = drafting.generate(PROMPTS[:3], max_new_tokens=12)
    assert _seen(got) == _seen(plain.generate(PROMPTS[:3], max_new_tokens=12))
    assert drafting.engine.stats().ahead_steps == 0
    mixed = drafting.generate(PROMPTS[:2], max_new_tokens=12, speculative=False)
    assert drafting.engine.stats().ahead_steps == 10
    assert _seen(mixed) == _seen(plain.generate(PROMPTS[:2], max_new_tokens=12))
