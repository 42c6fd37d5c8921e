"""The continuous-batching engine on the real default model: concurrent requests give each request's lone
output bit for bit, cancellation frees blocks, a full KV budget queues, prefix-cache hits and evictions."""

from __future__ import annotations

import threading
import time

import pytest

from tests.engine.threads import in_threads
from xpullm.engine import LLM
from xpullm.engine.core import EngineConfig, KVBudgetTooSmall
from xpullm.engine.params import GenerationParams

PROMPTS = [
    "The capital of France is",
    "Hi",
    "List three colors:",
    "def fibonacci(n):",
    "Water boils at a temperature of",
    # 51 tokens: four prefill chunks with the 16-token steps below, interleaved with the others' decodes.
    "Explain why the sky is blue during the day and turns red and orange at sunset. Use simple words, as if you "
    "were talking to a child who has just asked you this question on a long summer evening walk by the sea, "
    "and keep it short:",
]
SYSTEM = (
    "You are a careful assistant for a public library. Answer in one short sentence, name the shelf when you "
    "know it, never invent a book title, and say so when you are not sure. The library opens at nine."
)


def _engine(llm: LLM, **config: object) -> LLM:
    """Another LLM over the same loaded model with its own engine (weights shared, not copied)."""
    return LLM(llm.model, tokenizer=llm.tokenizer, engine=EngineConfig(**config))


@pytest.fixture(scope="module")
def chunked(llm: LLM) -> LLM:
    return _engine(llm, max_batched_tokens=16, max_seqs=8)


def test_concurrent_greedy_equals_each_alone(chunked: LLM) -> None:
    assert len(chunked.tokenizer(PROMPTS[-1])["input_ids"]) > 3 * 16
    alone = [chunked.generate(p, max_new_tokens=12) for p in PROMPTS]
    together = in_threads(lambda p: chunked.generate(p, max_new_tokens=12), PROMPTS)
    assert [c.text for c in together] == [c.text for c in alone]
    assert [c.completion_tokens for c in together] == [c.completion_tokens for c in alone]
    batch = chunked.generate(PROMPTS, max_new_tokens=12)  # one call, all prompts submitted at once
    assert [c.text for c in batch] == [c.text for c in alone]
    assert chunked.engine.stats().kv_used_blocks == 0


def test_cancel_mid_stream_frees_blocks_and_others_continue(chunked: LLM) -> None:
    alone = chunked.generate(PROMPTS[0], max_new_tokens=16).text
    cancel = threading.Event()
    seen: list[str] = []

    def cancelled(_: object) -> str:
        for delta in chunked.stream(PROMPTS[4], max_new_tokens=200, cancel=cancel):
            seen.append(delta)
            if len(seen) == 2:
                cancel.set()
        return "".join(seen)

    def other(_: object) -> str:
        return "".join(chunked.stream(PROMPTS[0], max_new_tokens=16))

    text, kept = in_threads(lambda f: f(None), [cancelled, other])
    assert len(seen) <= 4 and text
    assert kept == alone
    stats = chunked.engine.stats()
    assert stats.running == 0 and stats.kv_used_blocks == 0 and stats.queue_len == 0


def test_full_kv_budget_queues_requests_and_all_finish_correctly(llm: LLM) -> None:
    tight = _engine(llm, kv_budget_tokens=64, block_size=16, max_batched_tokens=64)  # 4 blocks
    prompts = PROMPTS[:5]
    alone = [tight.generate(p, max_new_tokens=12).text for p in prompts]  # each needs 2 of the 4 blocks
    together = in_threads(lambda p: tight.generate(p, max_new_tokens=12).text, prompts)
    assert together == alone
    assert tight.engine.stats().kv_used_blocks == 0
    with pytest.raises(KVBudgetTooSmall, match="kv_budget_tokens"):
        tight.generate(PROMPTS[0], max_new_tokens=100)


def test_prefix_cache_hit_gives_the_output_of_a_miss(llm: LLM) -> None:
    cached = _engine(llm, block_size=16)
    nocache = _engine(llm, block_size=16, prefix_cache=False)
    first = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Where are the atlases?"}]
    second = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Do you open on Sunday?"}]
    cached.chat(first, max_new_tokens=10)
    assert cached.engine.stats().prefix_hit_blocks == 0
    hit = cached.chat(second, max_new_tokens=10)
    shared = cached.engine.stats().prefix_hit_blocks
    assert shared >= 3  # the system prompt's full blocks
    assert hit.text == nocache.chat(second, max_new_tokens=10).text
    assert nocache.engine.stats().prefix_hit_blocks == 0


def test_eviction_under_a_tiny_budget_keeps_outputs_correct(llm: LLM) -> None:
    tiny = _engine(llm, kv_budget_tokens=96, block_size=16)  # 6 blocks
    prompt = PROMPTS[-1]  # 51 tokens: 3 full blocks published to the prefix cache
    first = tiny.generate(prompt, max_new_tokens=8).text
    assert tiny.engine.stats().kv_cached_blocks == 3
    # A request reserving all 6 blocks: 3 never-used ones, then the 3 cached ones are evicted (LRU).
    other = PROMPTS[0]
    tiny.generate(other, max_new_tokens=96 - tiny.count_tokens(other), stop=" ")
    stats = tiny.engine.stats()
    assert stats.evicted_blocks == 3 and stats.kv_used_blocks == 0
    assert tiny.generate(prompt, max_new_tokens=8).text == first  # a miss again, recomputed
    assert tiny.engine.stats().prefix_hit_blocks == 0
    assert tiny.generate(prompt, max_new_tokens=8).text == first  # and now a hit
    assert tiny.engine.stats().prefix_hit_blocks == 3


def test_stop_cancels_running_requests_and_a_later_call_restarts(llm: LLM) -> None:
    engine = _engine(llm)
    first = threading.Event()
    done: list = []

    def long_run() -> None:
        text = ""
        for delta in engine.stream(
            "Tell me a long story about the sea.", max_new_tokens=400, ignore_eos=True
        ):
            text += delta
            first.set()
        done.append(text)

    runner = threading.Thread(target=long_run)
    runner.start()
    assert first.wait(120)
    core = engine._core
    core.stop(30)
    runner.join(30)
    assert not runner.is_alive() and done and len(done[0]) > 0
    assert core._thread is None and core.stats().running == 0 and core.stats().kv_used_blocks == 0
    again = engine.generate("The capital of France is", max_new_tokens=6)
    assert (
        again.finish_reason == "length"
        and again.text == llm.generate("The capital of France is", max_new_tokens=6).text
    )


def test_interpreter_exit_during_a_generation_does_not_abort(tmp_path) -> None:
    import subprocess
    import sys

    script = tmp_path / "exit_mid_generation.py"
    script.write_text(
        "import threading, time\n"
        "from xpullm import LLM\n"
        "llm = LLM()\n"
        "first = threading.Event()\n"
        "def run():\n"
        "    for _ in llm.stream('Tell me a long story.', max_new_tokens=400, ignore_eos=True):\n"
        "        first.set()\n"
        "threading.Thread(target=run, daemon=True).start()\n"
        "assert first.wait(120)\n"
        "time.sleep(0.2)\n"
    )
    done = subprocess.run([sys.executable, "-P", str(script)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "terminate called" not in done.stderr


def test_submit_all_arrives_as_one_step_and_a_refusal_cancels_the_queued(llm: LLM) -> None:
    engine = _engine(llm, kv_budget_tokens=64, block_size=16, max_batched_tokens=64)
    core = engine.engine
    ids = [engine.tokenizer(p)["input_ids"] for p in PROMPTS[:3]]
    params = GenerationParams(max_new_tokens=4, ignore_eos=True, speculative=False)
    # Whatever the engine thread is doing, the three share every step: 1 prefill + 3 decodes.
    for _ in range(3):
        steps = core.stats().steps
        done: list[threading.Event] = [threading.Event() for _ in ids]
        core.submit_all(
            (p, params, lambda k, v, e=e: e.set() if k == "done" else None)
            for p, e in zip(ids, done, strict=True)
        )
        assert all(e.wait(60) for e in done)
        assert core.stats().steps - steps == 4
    finished: list[str] = []
    with pytest.raises(KVBudgetTooSmall, match="kv_budget_tokens"):
        core.submit_all(
            [
                (
                    ids[0],
                    GenerationParams(max_new_tokens=40),
                    lambda k, v: finished.append(v.finish_reason) if k == "done" else None,
                ),
                (ids[1], GenerationParams(max_new_tokens=100), lambda k, v: None),  # > the 4 blocks: refused
            ]
        )
    deadline = time.monotonic() + 60
    while not finished and time.monotonic() < deadline:
        time.sleep(0.01)
    assert finished == ["cancelled"]
    assert core.stats().kv_used_blocks == 0
