"""LlamaIndex adapters on the real default models: a RAG query engine that streams, a tool-calling agent,
async chat, reranking and bad input."""

from __future__ import annotations

import asyncio

import pytest
from llama_index.core import Document, PromptTemplate, VectorStoreIndex
from llama_index.core.base.llms.types import ChatMessage
from llama_index.core.schema import NodeWithScore, TextNode
from llama_index.core.tools import FunctionTool
from pydantic import BaseModel

from xpullm.errors import ModelNotFound
from xpullm.integrations._toolcall import InvalidToolChoice
from xpullm.integrations.llamaindex import XPULLM, XPUEmbedding, XPURerank

DOCS = [
    "The Zorblat is a purple fruit that grows only on the island of Quenda.",
    "The city library opens at nine in the morning and closes at six in the evening.",
    "Mount Pelor is the highest mountain in the Varn range, at 4,210 metres.",
]


def get_weather(city: str) -> str:
    """Get the current weather in a city."""
    return f"It's sunny in {city}."


def test_query_engine_streams_answer_from_documents(engine, embedder) -> None:
    index = VectorStoreIndex.from_documents(
        [Document(text=t) for t in DOCS], embed_model=XPUEmbedding(model=embedder)
    )
    qe = index.as_query_engine(
        llm=XPULLM(model=engine, max_new_tokens=24), streaming=True, similarity_top_k=1
    )
    response = qe.query("What colour is the Zorblat fruit?")
    parts = list(response.response_gen)
    assert len(parts) > 1  # streamed token by token
    assert "Zorblat" in response.source_nodes[0].node.get_content()
    assert "purple" in "".join(parts).lower()


def test_function_agent_calls_tool(engine) -> None:
    from llama_index.core.agent.workflow import FunctionAgent, ToolCallResult

    agent = FunctionAgent(
        tools=[FunctionTool.from_defaults(fn=get_weather)],
        llm=XPULLM(model=engine, max_new_tokens=24, max_tool_rounds=1),
        initial_tool_choice="get_weather",  # the 135M model needs the first call forced
    )

    async def run() -> tuple[list[ToolCallResult], str]:
        handler = agent.run("What is the weather in Paris?")
        results = [ev async for ev in handler.stream_events() if isinstance(ev, ToolCallResult)]
        return results, str(await handler)

    results, answer = asyncio.run(run())
    assert results[0].tool_name == "get_weather" and "paris" in results[0].tool_kwargs["city"].lower()
    assert "sunny" in results[0].tool_output.content
    assert "sunny" in answer.lower()


def test_chat_stream_and_async(engine) -> None:
    llm = XPULLM(model=engine, max_new_tokens=10)
    msgs = [ChatMessage(role="user", content="Name a colour.")]
    streamed = list(llm.stream_chat(msgs))
    assert len(streamed) > 1 and streamed[-1].message.content == llm.chat(msgs).message.content
    assert streamed[-1].raw["usage"]["completion_tokens"] > 0

    async def both() -> list[str]:
        a, b = await asyncio.gather(llm.achat(msgs), llm.acomplete("The sky is"))
        return [a.message.content, b.text]

    assert all(asyncio.run(both()))


def test_forced_tool_call_and_unknown_choice(engine) -> None:
    llm = XPULLM(model=engine)
    tool = FunctionTool.from_defaults(fn=get_weather)
    resp = llm.chat_with_tools([tool], user_msg="Weather in Rome?", tool_required=True)
    (sel,) = llm.get_tool_calls_from_response(resp)
    assert sel.tool_name == "get_weather" and isinstance(sel.tool_kwargs["city"], str)
    with pytest.raises(InvalidToolChoice, match="nope"):
        llm.chat_with_tools([tool], user_msg="hi", tool_choice="nope")


def test_embedding_batches_and_rerank(engine, embedder) -> None:
    emb = XPUEmbedding(model=embedder, embed_batch_size=2)
    vecs = emb.get_text_embedding_batch(DOCS)
    assert len(vecs) == 3 and len(vecs[0]) == embedder.dim
    nodes = [
        NodeWithScore(node=TextNode(text=t), score=0.0)
        for t in ["Bananas are yellow.", "Paris is the capital of France."]
    ]
    top = XPURerank(model=engine, top_n=1).postprocess_nodes(
        nodes, query_str="What is the capital of France?"
    )
    assert top[0].node.get_content().startswith("Paris")


def test_missing_model_path() -> None:
    with pytest.raises(ModelNotFound):
        XPULLM(model="/no/such/model.gguf")
    with pytest.raises(ModelNotFound):
        XPUEmbedding(model="/no/such/folder")


# -- nested structured output, usage, arguments, migration (issue 25) ---------------------------------------


class Address(BaseModel):
    city: str
    country: str


class Person(BaseModel):
    """A person and where they live."""

    name: str
    home: Address


def test_structured_predict_on_nested_model(engine) -> None:
    llm = XPULLM(model=engine, json_max_string_length=16)
    prompt = PromptTemplate("Extract the person: {text}")
    person = llm.structured_predict(Person, prompt, text="Ada lives in London, UK.")
    assert isinstance(person, Person) and isinstance(person.home, Address)
    response = llm.as_structured_llm(Person).complete("Extract the person: Alan lives in Paris, France.")
    assert isinstance(response.raw, Person) and isinstance(response.raw.home, Address)


def test_complete_and_acomplete_report_usage(engine) -> None:
    llm = XPULLM(model=engine, max_new_tokens=4)
    direct = engine.generate("The sky is", max_new_tokens=4)
    sync = llm.complete("The sky is")
    async_ = asyncio.run(llm.acomplete("The sky is"))
    for response in (sync, async_):
        assert response.text == direct.text
        assert response.raw["usage"] == {
            "prompt_tokens": direct.prompt_tokens,
            "completion_tokens": direct.completion_tokens,
            "total_tokens": direct.prompt_tokens + direct.completion_tokens,
        }


def test_unknown_arguments_name_the_close_match(engine) -> None:
    with pytest.raises(ValueError, match="did you mean 'max_new_tokens'"):
        XPULLM(model=engine, max_tokens=5)
    with pytest.raises(ValueError, match="did you mean 'embed_batch_size'"):
        XPUEmbedding(embed_batchsize=4)
