"""`ignore_eos` and `min_tokens`: EOS is masked (never sampled) while they hold, on the engine and on the serialized
loop; everything before the point where plain decoding ended is unchanged."""

from __future__ import annotations

import pytest
import torch

from xpullm.engine import LLM
from xpullm.engine.params import GenerationParams, InvalidParameter
from xpullm.engine.serial import run_serial

# The packaged model answers this in two tokens ("Yes.") and then emits EOS.
ASK = [{"role": "user", "content": "Say only the word yes."}]


@pytest.fixture(scope="module")
def prompt(llm: LLM) -> str:
    return llm.render_chat(ASK)


@pytest.fixture(scope="module")
def plain(llm: LLM, prompt: str):
    done = llm.generate(prompt, max_new_tokens=24)
    assert done.finish_reason == "stop" and done.completion_tokens < 6, done
    return done


def test_ignore_eos_runs_to_max_new_tokens(llm: LLM, prompt: str, plain) -> None:
    done = llm.generate(prompt, max_new_tokens=24, ignore_eos=True)
    assert (done.finish_reason, done.completion_tokens) == ("length", 24)
    assert done.text.startswith(plain.text) and len(done.text) > len(plain.text)


def test_min_tokens_holds_eos_back_then_allows_it(llm: LLM, prompt: str, plain) -> None:
    done = llm.generate(prompt, max_new_tokens=64, min_tokens=12)
    assert done.completion_tokens >= 12
    assert done.text.startswith(plain.text)
    # A bound already passed changes nothing.
    same = llm.generate(prompt, max_new_tokens=24, min_tokens=plain.completion_tokens)
    assert (same.text, same.finish_reason) == (plain.text, "stop")


def test_sampled_requests_never_draw_eos_while_banned(llm: LLM, prompt: str) -> None:
    for seed in range(3):
        done = llm.generate(prompt, max_new_tokens=16, ignore_eos=True, temperature=1.0, seed=seed)
        assert (done.finish_reason, done.completion_tokens) == ("length", 16)


def test_the_serialized_loop_masks_eos_too(llm: LLM, prompt: str) -> None:
    ids = [llm.tokenizer(prompt, add_special_tokens=False)["input_ids"]]

    def serial(**kw: object):
        gen = run_serial(
            llm._decoder, llm._lock, llm.tokenizer, llm._eos, llm.context_length, torch.device("cpu"), ids,
            GenerationParams(max_new_tokens=20, **kw),
        )  # fmt: skip
        while True:
            try:
                next(gen)
            except StopIteration as stop:
                return stop.value[0]

    base = serial()
    assert base.finish_reason == "stop"
    forced = serial(ignore_eos=True)
    assert (forced.finish_reason, forced.completion_tokens) == ("length", 20)
    assert forced.text.startswith(base.text)
    assert serial(min_tokens=9).completion_tokens >= 9


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"min_tokens": -1}, "min_tokens"),
        ({"ignore_eos": "yes"}, "ignore_eos"),
        ({"ignore_eos": True, "json_schema": {"type": "object"}}, "ignore_eos"),
        ({"min_tokens": 3, "grammar": 'start: "a"'}, "min_tokens"),
    ],
)
def test_bad_values_name_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(InvalidParameter) as err:
        GenerationParams(**kwargs)
    assert err.value.name == field
