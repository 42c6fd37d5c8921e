"""LangChain adapters end to end on the real default model: LCEL streaming, a tool-using agent, async
concurrency, reranking, schemas, token counts and bad input (the IpexLLM migration runs in test_migration.py)."""

from __future__ import annotations

import asyncio

import pytest
from langchain_core.messages import ChatMessage, HumanMessage, ToolMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.tools import tool
from pydantic import BaseModel

from xpullm.errors import ModelNotFound
from xpullm.integrations._toolcall import ChatTemplateError, InvalidToolChoice, InvalidToolSchema
from xpullm.integrations.langchain import XPULLM, ChatXPU, XPUEmbeddings, XPUReranker


@tool
def get_weather(location: str) -> str:
    """Get the current weather at a location."""
    return f"It's sunny in {location}."


def test_lcel_chain_streams(engine) -> None:
    chain = (
        ChatPromptTemplate.from_messages([("user", "Say something about {topic}.")])
        | ChatXPU(model=engine, max_tokens=12)
        | StrOutputParser()
    )
    chunks = list(chain.stream({"topic": "cats"}))
    assert len(chunks) > 1  # real token streaming, not one final blob
    assert "".join(chunks) == chain.invoke({"topic": "cats"})  # greedy: streaming and invoke agree


def test_agent_calls_tool_and_uses_result(engine) -> None:
    chat = ChatXPU(model=engine, max_tokens=24, max_tool_rounds=1)
    messages = [HumanMessage("What is the weather in Paris?")]
    calls = []
    for step in range(3):  # a plain ReAct-style loop: model -> tools -> model
        choice = "get_weather" if step == 0 else None  # the 135M model needs the first call forced
        ai = chat.bind_tools([get_weather], tool_choice=choice).invoke(messages)
        messages.append(ai)
        if not ai.tool_calls:
            break
        for call in ai.tool_calls:
            calls.append(call)
            result = get_weather.invoke(call)
            assert isinstance(result, ToolMessage) and result.tool_call_id == call["id"]
            messages.append(result)
    assert calls[0]["name"] == "get_weather" and "paris" in calls[0]["args"]["location"].lower()
    assert "sunny" in messages[-1].content.lower()  # the final answer uses the tool's result


def test_forced_tool_call_is_schema_valid(engine) -> None:
    @tool
    def multiply(a: int, b: int) -> int:
        """Multiply two integers."""
        return a * b

    ai = ChatXPU(model=engine).bind_tools([multiply], tool_choice="any").invoke("What is 6 times 7?")
    (call,) = ai.tool_calls
    assert call["name"] == "multiply"
    assert set(call["args"]) == {"a", "b"} and all(isinstance(v, int) for v in call["args"].values())
    assert ai.usage_metadata["output_tokens"] > 0 and ai.response_metadata["model_name"]


@pytest.mark.asyncio
async def test_concurrent_ainvoke_keeps_loop_free(engine) -> None:
    chat = ChatXPU(model=engine, max_tokens=16)
    ticks = 0
    done = asyncio.Event()

    async def heartbeat() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            await asyncio.sleep(0.005)

    beat = asyncio.create_task(heartbeat())
    results = await asyncio.gather(chat.ainvoke("Hello"), chat.ainvoke("Name a fruit."))
    done.set()
    await beat
    assert all(r.content for r in results)
    assert ticks >= 10  # the loop kept running while both generations ran in worker threads


@pytest.mark.asyncio
async def test_xpullm_astream_and_callbacks(engine) -> None:
    from langchain_core.callbacks import BaseCallbackHandler

    class Collect(BaseCallbackHandler):
        def __init__(self) -> None:
            self.tokens: list[str] = []

        def on_llm_new_token(self, token: str, **kwargs: object) -> None:
            self.tokens.append(token)

    llm = XPULLM(model=engine, max_new_tokens=10, streaming=True)
    handler = Collect()
    text = llm.invoke("The capital of France is", config={"callbacks": [handler]})
    assert len(handler.tokens) > 1 and "".join(handler.tokens) == text
    assert not text.startswith("The capital of France is")  # completion only, no echoed prompt
    parts = [p async for p in llm.astream("The capital of France is")]
    assert "".join(parts) == text
    assert llm.invoke("Count: 1, 2, 3,", stop=[","], max_new_tokens=10).count(",") == 0


@pytest.mark.asyncio
async def test_batch_and_abatch_run_every_prompt_and_match_one_by_one(engine) -> None:
    # batch / abatch submit every prompt at once (one engine request each); greedy results equal single calls.
    prompts = ["The capital of France is", "Two plus two equals", "My favourite colour is"]
    llm = XPULLM(model=engine, max_new_tokens=6)
    alone = [llm.invoke(p) for p in prompts]
    assert llm.batch(prompts) == alone
    assert await llm.abatch(prompts) == alone
    chat = ChatXPU(model=engine, max_tokens=6)
    chat_alone = [chat.invoke(p).content for p in prompts[:2]]
    assert [m.content for m in chat.batch(prompts[:2])] == chat_alone
    assert [m.content for m in await chat.abatch(prompts[:2])] == chat_alone


def test_reranker_orders_by_relevance(engine) -> None:
    from langchain_core.documents import Document

    docs = [
        Document(page_content="Bananas are yellow fruit rich in potassium."),
        Document(page_content="Paris is the capital and largest city of France."),
        Document(page_content="The stock market fell on Tuesday."),
    ]
    top = XPUReranker(model=engine, top_n=2).compress_documents(docs, "What is the capital of France?")
    assert top[0].page_content.startswith("Paris")
    assert 0.0 <= top[1].metadata["relevance_score"] <= top[0].metadata["relevance_score"] <= 1.0


def test_embeddings_share_loaded_embedder(embedder) -> None:
    emb = XPUEmbeddings(model=embedder)
    vecs = emb.embed_documents(["a cat", "a kitten", "tax law"])
    assert len(vecs) == 3 and len(vecs[0]) == embedder.dim
    dot = lambda a, b: sum(x * y for x, y in zip(a, b, strict=True))  # noqa: E731
    assert dot(vecs[0], vecs[1]) > dot(vecs[0], vecs[2])


# -- bad input -------------------------------------------------------------------------------------------------


def test_invalid_tool_schema(engine) -> None:
    bad = {
        "type": "function",
        "function": {"name": "f", "parameters": {"type": "object", "properties": {"a": {"type": "bogus"}}}},
    }
    with pytest.raises(InvalidToolSchema, match="bogus"):
        ChatXPU(model=engine).bind_tools([bad])
    with pytest.raises(InvalidToolSchema, match="object"):
        ChatXPU(model=engine).bind_tools(
            [{"type": "function", "function": {"name": "g", "parameters": {"type": "string"}}}]
        )


def test_unknown_tool_choice(engine) -> None:
    with pytest.raises(InvalidToolChoice, match="divide"):
        ChatXPU(model=engine).bind_tools([get_weather], tool_choice="divide")


def test_messages_the_template_cannot_render(engine) -> None:
    chat = ChatXPU(model=engine)
    image = HumanMessage(content=[{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}])
    with pytest.raises(ChatTemplateError, match="image_url"):
        chat.invoke([image])
    with pytest.raises(ChatTemplateError, match="function"):
        chat.invoke([ChatMessage(role="function", content="x")])


def test_missing_model_path() -> None:
    with pytest.raises(ModelNotFound, match="does not exist"):
        ChatXPU(model="/no/such/model")
    with pytest.raises(ModelNotFound, match="does not exist"):
        XPULLM.from_model_id(model_id="./no-such-folder")
    with pytest.raises(ModelNotFound, match="does not exist"):
        XPUEmbeddings(model="/no/such/embedder")


def test_import_is_lazy() -> None:
    import subprocess
    import sys

    code = (
        "import sys, xpullm.integrations.langchain, xpullm.integrations.llamaindex;"
        "bad=[m for m in ('langchain_core','llama_index','torch') if m in sys.modules]; print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# -- schemas, counting and arguments (issue 25) ----------------------------------------------------------------


class Address(BaseModel):
    city: str
    country: str


class Person(BaseModel):
    """Save a person and where they live."""

    name: str
    home: Address


def test_dict_tool_with_defs_is_called_with_valid_nested_arguments(engine) -> None:
    tool = {
        "type": "function",
        "function": {
            "name": "save_person",
            "description": "Save a person",
            "parameters": Person.model_json_schema(),
        },
    }
    chat = ChatXPU(model=engine, json_max_string_length=16)
    ai = chat.bind_tools([tool], tool_choice="any").invoke("Ada lives in London, UK.")
    (call,) = ai.tool_calls
    person = Person.model_validate(call["args"])  # nested object through the rebased $ref
    assert not any(v.startswith("<") for v in (person.name, person.home.city, person.home.country))


def test_bind_tools_rejects_unresolvable_refs(engine) -> None:
    params = {"type": "object", "properties": {"a": {"$ref": "#/$defs/Missing"}}}
    with pytest.raises(InvalidToolSchema, match="Missing"):
        ChatXPU(model=engine).bind_tools(
            [{"type": "function", "function": {"name": "f", "parameters": params}}]
        )


def test_untitled_schema_with_enum_array_ends(engine) -> None:
    schema = {  # no top-level "title"; the array has no maxItems (minItems: the model may not answer with none)
        "type": "object",
        "properties": {
            "genres": {
                "type": "array",
                "minItems": 1,
                "items": {"type": "string", "enum": ["drama", "comedy", "horror"]},
            }
        },
        "required": ["genres"],
    }
    out = ChatXPU(model=engine).with_structured_output(schema).invoke("Which genres fit Hamlet?")
    assert 1 <= len(out["genres"]) <= 3 and set(out["genres"]) <= {"drama", "comedy", "horror"}
    capped = {**schema, "properties": {"genres": {**schema["properties"]["genres"], "maxItems": 1}}}
    assert (
        len(ChatXPU(model=engine).with_structured_output(capped).invoke("Genres of Hamlet?")["genres"]) == 1
    )


def test_token_counts_use_the_models_tokenizer(engine) -> None:
    chat = ChatXPU(model=engine, max_tokens=4)
    assert chat.get_num_tokens("hello world") == len(
        engine.tokenizer("hello world", add_special_tokens=False)["input_ids"]
    )
    messages = [HumanMessage("Name a colour.")]
    assert chat.get_num_tokens_from_messages(messages) == chat.invoke(messages).usage_metadata["input_tokens"]
    with_tools = chat.get_num_tokens_from_messages(messages, tools=[get_weather])
    assert with_tools > chat.get_num_tokens_from_messages(messages)  # the tool listing is part of the prompt
    prompts = ["The capital of France is", "Hello"]
    direct = [engine.generate(p, max_new_tokens=4) for p in prompts]
    for streaming in (False, True):
        llm = XPULLM(model=engine, max_new_tokens=4, streaming=streaming)
        result = llm.generate(prompts)
        assert [g[0].text for g in result.generations] == [c.text for c in direct]
        usage = result.llm_output["token_usage"]
        assert usage["prompt_tokens"] == sum(c.prompt_tokens for c in direct)
        assert usage["completion_tokens"] == sum(c.completion_tokens for c in direct)
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert llm.get_num_tokens("Hello") == engine.count_tokens("Hello")


@pytest.mark.parametrize(
    ("cls", "kwargs", "message"),
    [
        (ChatXPU, {"max_token": 5}, "'max_token' \\(did you mean 'max_tokens'\\?\\)"),
        (ChatXPU, {"base_url": "http://x"}, "unknown argument\\(s\\) 'base_url'; accepted"),
        (XPULLM, {"max_tokens": 5}, "did you mean 'max_new_tokens'"),
        (XPUEmbeddings, {"batchsize": 8}, "did you mean 'batch_size'"),
        (XPUReranker, {"topn": 2}, "did you mean 'top_n'"),
    ],
)
def test_unknown_constructor_arguments_name_the_close_match(engine, cls, kwargs, message) -> None:
    model = engine if cls is not XPUEmbeddings else None
    with pytest.raises(ValueError, match=message):
        cls(model=model, **kwargs)
