"""LangChain adapters end to end on the real default model: LCEL streaming, a tool-using agent, async
concurrency, IpexLLM migration, reranking and bad input."""

from __future__ import annotations

import asyncio

import pytest
from langchain_core.messages import ChatMessage, HumanMessage, ToolMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate, PromptTemplate
from langchain_core.tools import tool

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


def test_ipexllm_migration(engine) -> None:
    """Code written for langchain_community's IpexLLM, with only the import changed."""
    from xpullm.integrations.langchain import XPULLM as IpexLLM
    from xpullm.models import default_llm_path

    model_path = str(default_llm_path())
    llm = IpexLLM.from_model_id(
        model_id=model_path,
        model_kwargs={"temperature": 0, "max_length": 64, "trust_remote_code": True},
    )
    prompt = PromptTemplate(template="USER: {question}\nASSISTANT:", input_variables=["question"])
    out = (prompt | llm).invoke({"question": "What is AI?"})
    assert isinstance(out, str) and out.strip() and "USER:" not in out[:5]
    low = IpexLLM.from_model_id_low_bit(model_path, {"max_new_tokens": 8}, tokenizer_id=model_path)
    assert low.max_new_tokens == 8 and low.low_bit is None


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
