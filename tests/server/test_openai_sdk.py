"""The official `openai` SDK against a real `xpullm serve` app: results equal the in-process engine's, exactly."""

from __future__ import annotations

import asyncio
import json
import threading

import httpx
import openai
import pytest

from tests.server.conftest import EMBED_MODEL, MODEL, running_server
from xpullm.server import LocalTextEngine

USER = [{"role": "user", "content": "Name a fruit."}]


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.v1, api_key="unused", max_retries=0)


def _prompt_tokens(llm, messages) -> int:
    return len(llm.tokenizer(llm.render_chat(messages), add_special_tokens=False)["input_ids"])


def test_models_and_health(server, client) -> None:
    assert sorted(m.id for m in client.models.list()) == sorted([MODEL, EMBED_MODEL])
    assert httpx.get(server.url + "/health").json()["status"] == "ok"


def test_chat_equals_the_engine_and_counts_usage_exactly(client, llm) -> None:
    r = client.chat.completions.create(model=MODEL, messages=USER, max_tokens=6, temperature=0)
    want = llm.chat(USER, max_new_tokens=6)
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-")
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == want.text
    assert r.choices[0].finish_reason == want.finish_reason == "length"
    assert r.usage.prompt_tokens == _prompt_tokens(llm, USER) == want.prompt_tokens
    assert r.usage.completion_tokens == 6
    assert r.usage.total_tokens == r.usage.prompt_tokens + 6


def test_stream_role_first_one_id_usage_and_done(client, llm) -> None:
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=USER,
            max_completion_tokens=6,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len({c.id for c in chunks}) == 1
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == llm.chat(USER, max_new_tokens=6).text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 6
    assert chunks[-1].usage.prompt_tokens == _prompt_tokens(llm, USER)
    assert all(c.usage is None for c in chunks[:-1])


def test_raw_sse_ends_with_done(server) -> None:
    body = {"model": MODEL, "messages": USER, "max_tokens": 2, "temperature": 0, "stream": True}
    with httpx.stream("POST", server.v1 + "/chat/completions", json=body) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [x for x in r.iter_lines() if x]
    assert lines[-1] == "data: [DONE]" and all(x.startswith("data: ") for x in lines)


def test_stop_cuts_before_the_stop_string(client, llm) -> None:
    full = llm.chat(USER, max_new_tokens=12).text
    word = full.split()[2]
    r = client.chat.completions.create(model=MODEL, messages=USER, max_tokens=12, temperature=0, stop=[word])
    assert r.choices[0].message.content == full[: full.index(word)]
    assert r.choices[0].finish_reason == "stop"


def test_seed_makes_sampling_reproducible_and_n_gives_n_choices(client) -> None:
    kw = {"model": MODEL, "messages": USER, "max_tokens": 6, "temperature": 1.0, "top_p": 0.9, "seed": 11}
    a = client.chat.completions.create(**kw, n=2)
    b = client.chat.completions.create(**kw, n=2)
    assert [c.index for c in a.choices] == [0, 1]
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]
    assert a.usage.completion_tokens == 12


def test_text_completions_with_prompt_list_and_echo(client, llm) -> None:
    prompts = ["The capital of France is", "One, two, three,"]
    r = client.completions.create(model=MODEL, prompt=prompts, max_tokens=4, temperature=0)
    assert r.object == "text_completion"
    assert [c.text for c in r.choices] == [llm.generate(p, max_new_tokens=4).text for p in prompts]
    assert r.usage.prompt_tokens == sum(llm.count_tokens(p) for p in prompts)
    echoed = client.completions.create(model=MODEL, prompt=prompts[0], max_tokens=2, temperature=0, echo=True)
    assert echoed.choices[0].text.startswith(prompts[0])
    streamed = client.completions.create(
        model=MODEL, prompt=prompts[0], max_tokens=4, temperature=0, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed if c.choices) == r.choices[0].text


def test_json_schema_strict_output_parses_and_fits(client) -> None:
    schema = {
        "type": "object",
        "properties": {
            "fruit": {"type": "string", "pattern": "^[a-z]{1,12}$"},
            "count": {"type": "integer", "maximum": 99},
        },
        "required": ["fruit", "count"],
        "additionalProperties": False,
    }
    r = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Give a fruit and a count as JSON."}],
        max_tokens=40,
        temperature=0,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "fruit", "schema": schema, "strict": True},
        },
    )
    assert r.choices[0].finish_reason == "stop"
    value = json.loads(r.choices[0].message.content)
    assert set(value) == {"fruit", "count"} and isinstance(value["count"], int) and len(value["fruit"]) <= 12
    obj = client.chat.completions.create(
        model=MODEL, messages=USER, max_tokens=30, temperature=0, response_format={"type": "json_object"}
    )
    if obj.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(obj.choices[0].message.content), dict)


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "pattern": "^[A-Za-z ]{1,16}$"}},
                "required": ["city"],
                "additionalProperties": False,
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "add",
            "description": "Add two integers",
            "parameters": {
                "type": "object",
                "properties": {
                    "a": {"type": "integer", "maximum": 999},
                    "b": {"type": "integer", "maximum": 999},
                },
                "required": ["a", "b"],
                "additionalProperties": False,
            },
        },
    },
]
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "add"}}])
def test_forced_tool_calls_have_json_string_arguments(client, choice) -> None:
    r = client.chat.completions.create(
        model=MODEL, messages=ASK, tools=TOOLS, tool_choice=choice, max_tokens=40, temperature=0
    )
    c = r.choices[0]
    assert c.finish_reason == "tool_calls" and c.message.content is None
    call = c.message.tool_calls[0]
    assert call.type == "function" and call.id.startswith("call_")
    args = json.loads(call.function.arguments)
    if isinstance(choice, dict):
        assert call.function.name == "add" and set(args) == {"a", "b"}
    else:
        assert call.function.name in {"get_weather", "add"}


def test_tool_call_streams_and_round_trips(client) -> None:
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=ASK,
            tools=TOOLS,
            tool_choice="required",
            max_tokens=40,
            temperature=0,
            stream=True,
        )
    )
    calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert len(calls) == 1 and json.loads(calls[0].function.arguments) is not None
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        "tool_calls"
    ]
    history = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [calls[0].model_dump(exclude={"index"})]},
        {"role": "tool", "tool_call_id": calls[0].id, "content": '{"temp_c": 21}'},
    ]
    r = client.chat.completions.create(
        model=MODEL, messages=history, tools=TOOLS, max_tokens=4, temperature=0
    )
    assert r.choices[0].finish_reason in {"stop", "length", "tool_calls"}


def test_embeddings_equal_the_embedder(client, embedder, llm) -> None:
    texts = ["a red apple", "graphs of entities"]
    want = embedder.embed(texts)
    got = client.embeddings.create(model=EMBED_MODEL, input=texts)  # the SDK asks for base64 by default
    floats = client.embeddings.create(model=EMBED_MODEL, input=texts, encoding_format="float")
    for w, g, f in zip(want, got.data, floats.data, strict=True):
        assert g.embedding == pytest.approx(w, abs=1e-6) and f.embedding == pytest.approx(w, abs=1e-6)
    assert got.usage.prompt_tokens == sum(len(embedder.tokenizer(t)["input_ids"]) for t in texts)
    # `dimensions` equal to the native size is accepted (LightRAG always sends it); another size is a 400.
    same = client.embeddings.create(model=EMBED_MODEL, input=texts, dimensions=embedder.dim)
    assert same.data[0].embedding == pytest.approx(want[0], abs=1e-6)
    with pytest.raises(openai.BadRequestError, match="fixed size of 384"):
        client.embeddings.create(model=EMBED_MODEL, input=texts, dimensions=128)


def test_async_client_chat_and_stream(server, llm) -> None:
    async def run() -> tuple[str, str]:
        aclient = openai.AsyncOpenAI(base_url=server.v1, api_key="unused", max_retries=0)
        r = await aclient.chat.completions.create(model=MODEL, messages=USER, max_tokens=5, temperature=0)
        stream = await aclient.chat.completions.create(
            model=MODEL, messages=USER, max_tokens=5, temperature=0, stream=True
        )
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        await aclient.close()
        return r.choices[0].message.content, text

    full, streamed = asyncio.run(run())
    assert full == streamed == llm.chat(USER, max_new_tokens=5).text


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"temperature": 5}, "temperature"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"frequency_penalty": 0.5}, "frequency_penalty"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": 7}}}},
            "response_format",
        ),
        ({"tool_choice": {"type": "function", "function": {"name": "nope"}}, "tools": TOOLS}, "tool_choice"),
    ],
)
def test_bad_parameters_are_400_naming_the_field(client, kwargs, param) -> None:
    kw = {"model": MODEL, "messages": USER, "max_tokens": 2, **kwargs}
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(**kw)
    assert err.value.status_code == 400 and err.value.param == param
    assert err.value.type == "invalid_request_error"


def test_unknown_model_is_404_and_long_prompt_400(client, llm) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="gpt-4o", messages=USER)
    assert err.value.code == "model_not_found" and "smollm2" in err.value.message
    long = [{"role": "user", "content": "word " * (llm.context_length + 10)}]
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=MODEL, messages=long, max_tokens=1, stream=True)
    assert err.value.code == "context_length_exceeded" and err.value.param == "messages"
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(
            model=MODEL, prompt=["Hi", "word " * (llm.context_length + 10)], max_tokens=1
        )
    assert err.value.code == "context_length_exceeded" and err.value.param == "prompt[1]"
    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(model=EMBED_MODEL, input=["ok", "word " * 600])
    assert err.value.code == "context_length_exceeded" and err.value.param == "input[1]"


def test_api_key_is_required_when_set(llm) -> None:
    with running_server(LocalTextEngine(llm, model_id=MODEL), api_key="s3cret") as s:
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=s.v1, api_key="wrong", max_retries=0).models.list()
        ok = openai.OpenAI(base_url=s.v1, api_key="s3cret", max_retries=0)
        assert [m.id for m in ok.models.list()] == [MODEL]
        assert httpx.get(s.url + "/health").status_code == 200


class _GatedEngine(LocalTextEngine):
    """A real engine whose loading waits for a signal, so the server can be seen while it loads."""

    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        self.gate = threading.Event()

    def load(self) -> None:
        self.gate.wait(30)
        super().load()


def test_503_while_loading(llm) -> None:
    engine = _GatedEngine(llm, model_id=MODEL)
    with running_server(engine, wait_ready=False) as s:
        assert httpx.get(s.url + "/health").status_code == 503
        with pytest.raises(openai.InternalServerError) as err:
            openai.OpenAI(base_url=s.v1, api_key="x", max_retries=0).chat.completions.create(
                model=MODEL, messages=USER
            )
        assert err.value.status_code == 503
        engine.gate.set()
        for _ in range(200):
            if httpx.get(s.url + "/health").status_code == 200:
                break
            threading.Event().wait(0.05)
        assert httpx.get(s.url + "/health").status_code == 200


def test_sse_events_stay_one_line_for_any_text() -> None:
    from xpullm.server.routes.streams import sse

    text = "a\u2028b\u2029c\x85d\x0be\x0cf\x1cg\u00e9\n"
    event = sse({"choices": [{"delta": {"content": text}}]})
    assert event.endswith("\n\n")
    assert len(event[:-2].splitlines()) == 1  # no character a client could take for a line end
    assert json.loads(event[len("data: ") : -2])["choices"][0]["delta"]["content"] == text
