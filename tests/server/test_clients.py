"""LangChain `ChatOpenAI` / `OpenAIEmbeddings` and LlamaIndex `OpenAILike` pointed at a real server, offline."""

from __future__ import annotations

import pytest

from tests.server.conftest import EMBED_MODEL, MODEL

QUESTION = "Name a fruit."


def test_langchain_chat_openai_invoke_and_stream(server, llm) -> None:
    from langchain_openai import ChatOpenAI

    chat = ChatOpenAI(
        model=MODEL, base_url=server.v1, api_key="unused", temperature=0, max_tokens=6, max_retries=0
    )
    want = llm.chat([{"role": "user", "content": QUESTION}], max_new_tokens=6)
    msg = chat.invoke(QUESTION)
    assert msg.content == want.text
    assert msg.usage_metadata["input_tokens"] == want.prompt_tokens
    assert msg.usage_metadata["output_tokens"] == 6
    assert "".join(chunk.content for chunk in chat.stream(QUESTION)) == want.text


def test_langchain_chat_openai_logprobs(server) -> None:
    from langchain_openai import ChatOpenAI

    chat = ChatOpenAI(
        model=MODEL,
        base_url=server.v1,
        api_key="unused",
        temperature=0,
        max_tokens=5,
        max_retries=0,
        logprobs=True,
        top_logprobs=2,
    )
    msg = chat.invoke(QUESTION)
    tokens = msg.response_metadata["logprobs"]["content"]
    assert len(tokens) == msg.usage_metadata["output_tokens"] == 5
    assert "".join(t["token"] for t in tokens) == msg.content
    assert all(t["logprob"] <= 0 and len(t["top_logprobs"]) == 2 for t in tokens)


def test_langchain_structured_output_through_json_schema(server) -> None:
    from langchain_openai import ChatOpenAI

    schema = {
        "title": "Fruit",
        "type": "object",
        "properties": {"name": {"type": "string", "pattern": "^[a-z]{1,10}$"}},
        "required": ["name"],
        "additionalProperties": False,
    }
    chat = ChatOpenAI(
        model=MODEL, base_url=server.v1, api_key="unused", temperature=0, max_tokens=30, max_retries=0
    )
    out = chat.with_structured_output(schema, method="json_schema", strict=True).invoke(QUESTION)
    assert set(out) == {"name"} and out["name"].isalpha()


def test_langchain_openai_embeddings_without_tiktoken(server, embedder) -> None:
    from langchain_openai import OpenAIEmbeddings

    emb = OpenAIEmbeddings(
        model=EMBED_MODEL,
        base_url=server.v1,
        api_key="unused",
        check_embedding_ctx_length=False,
        max_retries=0,
    )
    docs = ["a red apple", "a knowledge graph"]
    assert emb.embed_documents(docs) == [pytest.approx(v, abs=1e-6) for v in embedder.embed(docs)]
    assert emb.embed_query("apple") == pytest.approx(embedder.embed(["apple"])[0], abs=1e-6)


def test_llamaindex_openai_like_complete_chat_and_stream(server, llm) -> None:
    from llama_index.core.llms import ChatMessage
    from llama_index.llms.openai_like import OpenAILike

    li = OpenAILike(
        model=MODEL,
        api_base=server.v1,
        api_key="unused",
        is_chat_model=True,
        context_window=llm.context_length,
        max_tokens=6,
        temperature=0,
        max_retries=0,
    )
    want = llm.chat([{"role": "user", "content": QUESTION}], max_new_tokens=6).text
    assert li.complete(QUESTION).text == want
    assert li.chat([ChatMessage(role="user", content=QUESTION)]).message.content == want
    assert "".join(r.delta for r in li.stream_complete(QUESTION)) == want
    text = OpenAILike(
        model=MODEL, api_base=server.v1, api_key="unused", is_chat_model=False, max_tokens=4, temperature=0
    )
    assert (
        text.complete("The capital of France is").text
        == llm.generate("The capital of France is", max_new_tokens=4).text
    )
