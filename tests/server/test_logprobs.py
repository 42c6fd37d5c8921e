"""`logprobs` / `top_logprobs` through the official `openai` SDK: parsed by its types, consistent, streamed equal to
plain, and equal (within the kernels' precision) to a direct forward of the model over prompt + answer."""

from __future__ import annotations

import math

import openai
import pytest
import torch

from tests.server.conftest import MODEL

USER = [{"role": "user", "content": "Name a fruit."}]
TOP = 4


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.v1, api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def answer(client):
    return client.chat.completions.create(
        model=MODEL, messages=USER, max_tokens=6, temperature=0, logprobs=True, top_logprobs=TOP
    )


def test_chat_logprobs_are_consistent_per_token(answer) -> None:
    choice = answer.choices[0]
    tokens = choice.logprobs.content
    assert len(tokens) == answer.usage.completion_tokens == 6
    assert b"".join(bytes(t.bytes) for t in tokens).decode() == choice.message.content
    for t in tokens:
        assert t.logprob <= 0 and len(t.top_logprobs) == TOP
        values = [a.logprob for a in t.top_logprobs]
        assert values == sorted(values, reverse=True) and all(v <= 0 for v in values)
        assert sum(math.exp(v) for v in values) <= 1 + 1e-5
        # Greedy: the chosen token is the most likely one (compared by value: bf16/fp32 ties may reorder ids).
        assert t.logprob == pytest.approx(values[0], abs=1e-6)
        assert bytes(t.bytes).decode(errors="backslashreplace") == t.token


def test_logprobs_match_a_direct_forward_of_prompt_and_answer(answer, llm) -> None:
    prompt = llm.tokenizer(llm.render_chat(USER), add_special_tokens=False)["input_ids"]
    answer_ids = llm.tokenizer(answer.choices[0].message.content, add_special_tokens=False)["input_ids"]
    assert len(answer_ids) == 6
    with torch.no_grad():
        logits = llm.model(torch.tensor([prompt + answer_ids])).logits[0].float()
    direct = torch.log_softmax(logits[len(prompt) - 1 : -1], dim=-1)
    for j, (tid, got) in enumerate(zip(answer_ids, answer.choices[0].logprobs.content, strict=True)):
        assert int(direct[j].argmax()) == tid
        # The engine decodes with the native int4 kernels, the forward prefills through dequantized GEMMs.
        assert got.logprob == pytest.approx(float(direct[j, tid]), abs=0.25)


def test_streamed_logprobs_equal_the_plain_ones(client, answer) -> None:
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=USER,
            max_tokens=6,
            temperature=0,
            logprobs=True,
            top_logprobs=TOP,
            stream=True,
        )
    )
    streamed = [
        t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content
    ]
    plain = answer.choices[0].logprobs.content
    assert [t.token for t in streamed] == [t.token for t in plain]
    assert [t.logprob for t in streamed] == pytest.approx([t.logprob for t in plain], abs=1e-5)
    # Each chunk carries the tokens of its own text.
    for c in chunks:
        if c.choices and c.choices[0].logprobs:
            assert "".join(t.token for t in c.choices[0].logprobs.content) == c.choices[0].delta.content


def test_logprobs_without_top_and_sampled(client) -> None:
    r = client.chat.completions.create(
        model=MODEL, messages=USER, max_tokens=5, temperature=1.0, seed=3, logprobs=True
    )
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    assert all(t.top_logprobs == [] and t.logprob <= 0 for t in content)
    plain = client.chat.completions.create(model=MODEL, messages=USER, max_tokens=5)
    assert plain.choices[0].logprobs is None


def test_text_completion_logprobs_plain_and_streamed(client, llm) -> None:
    kw = {
        "model": MODEL,
        "prompt": "The capital of France is",
        "max_tokens": 4,
        "temperature": 0,
        "logprobs": 2,
    }
    r = client.completions.create(**kw)
    lp = r.choices[0].logprobs
    assert r.choices[0].text == llm.generate(kw["prompt"], max_new_tokens=4).text
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 4
    assert "".join(lp.tokens) == r.choices[0].text
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(4)]
    for tok, value, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True):
        assert value <= 0 and top[tok] == value and max(top.values()) == pytest.approx(value, abs=1e-6)
        assert len(top) <= 3  # the 2 most likely plus the chosen one (here one of them)
    streamed = [c.choices[0].logprobs for c in client.completions.create(**kw, stream=True) if c.choices]
    tokens = [t for s in streamed if s for t in s.tokens]
    offsets = [o for s in streamed if s for o in s.text_offset]
    assert tokens == lp.tokens and offsets == lp.text_offset


@pytest.mark.parametrize(
    ("endpoint", "kwargs", "param"),
    [
        ("chat", {"top_logprobs": 2}, "top_logprobs"),
        ("chat", {"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ("completions", {"logprobs": 2, "echo": True}, "logprobs"),
        ("completions", {"logprobs": 21}, "logprobs"),
    ],
)
def test_bad_logprobs_requests_are_400_naming_the_field(client, endpoint, kwargs, param) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        if endpoint == "chat":
            client.chat.completions.create(model=MODEL, messages=USER, max_tokens=2, **kwargs)
        else:
            client.completions.create(model=MODEL, prompt="Hi", max_tokens=2, **kwargs)
    assert err.value.status_code == 400 and err.value.param == param


def test_engine_completion_carries_the_logprobs(llm) -> None:
    c = llm.generate("One, two, three,", max_new_tokens=3, logprobs=1)
    assert c.logprobs is not None and len(c.logprobs) == c.completion_tokens == 3
    assert all(lp.top[0][1] == pytest.approx(lp.logprob, abs=1e-6) for lp in c.logprobs)
    assert llm.generate("One, two, three,", max_new_tokens=3).logprobs is None


def test_token_bytes_rebuild_text_split_inside_characters(llm) -> None:
    from xpullm.server.token_text import TokenTexts

    text = " héllo 日本, naïve"
    ids = llm.tokenizer(text, add_special_tokens=False)["input_ids"]
    pieces = [TokenTexts(llm.tokenizer)(i) for i in ids]
    assert b"".join(bytes(p.bytes) for p in pieces) == text.encode()
    assert any("\\x" in p.token for p in pieces)  # a token holding part of a character shows its bytes
