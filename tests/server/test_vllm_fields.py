"""vLLM's extra sampling fields through the `openai` SDK's `extra_body`: `ignore_eos` runs a request to
`max_tokens`, `min_tokens` holds EOS back, and a grammar-constrained request refuses them with a 400."""

from __future__ import annotations

import openai
import pytest

from tests.server.conftest import MODEL

ASK = [{"role": "user", "content": "Say only the word yes."}]


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.v1, api_key="unused", max_retries=0)


def test_ignore_eos_and_min_tokens(client) -> None:
    def ask(**extra: object):
        return client.chat.completions.create(
            model=MODEL, messages=ASK, max_tokens=20, temperature=0, extra_body=extra or None
        )

    plain = ask()
    assert plain.choices[0].finish_reason == "stop" and plain.usage.completion_tokens < 6
    forced = ask(ignore_eos=True)
    assert (forced.choices[0].finish_reason, forced.usage.completion_tokens) == ("length", 20)
    assert forced.choices[0].message.content.startswith(plain.choices[0].message.content)
    assert ask(min_tokens=10).usage.completion_tokens >= 10


def test_streamed_completion_with_ignore_eos_counts_every_token(client) -> None:
    stream = client.completions.create(
        model=MODEL, prompt="Yes.", max_tokens=12, temperature=0, stream=True,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
    )  # fmt: skip
    chunks = list(stream)
    assert chunks[-1].usage.completion_tokens == 12


def test_grammar_requests_refuse_ignore_eos(client) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model=MODEL, messages=ASK, max_tokens=8, response_format={"type": "json_object"},
            extra_body={"ignore_eos": True},
        )  # fmt: skip
    assert "ignore_eos" in str(err.value)
