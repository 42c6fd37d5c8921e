"""LightRAG (PyPI `lightrag-hku`) with its OpenAI-compatible LLM and embedding functions pointed at `xpullm serve`:
insert a document, then a naive (vector) query. Everything runs live on the packaged models: the graph extraction
of a 135M model is poor, but the pipeline must run through, the retrieval must find the document, and the answer
must be the server's greedy answer."""

from __future__ import annotations

import asyncio
import functools
from pathlib import Path

import pytest

from tests.server.conftest import EMBED_MODEL, MODEL

lightrag = pytest.importorskip("lightrag", reason="lightrag-hku is in the dev extra")

DOC = (
    "The Corven Lighthouse stands on Gull Point at the mouth of the Arlen Estuary. Keeper Mara Voss has tended its "
    "lamp since 2011, and in 2019 the Arlen Harbour Trust paid for a solar beacon."
)


@pytest.fixture(autouse=True)
def _offline_tiktoken(monkeypatch):
    # LightRAG counts tokens with tiktoken, which downloads its tables; litellm (a graphrag dependency) ships them.
    import litellm.litellm_core_utils.default_encoding as bundled

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(Path(bundled.__file__).parent / "tokenizers"))


def test_lightrag_insert_and_query_against_the_server(server, llm, embedder, tmp_path) -> None:
    from lightrag import LightRAG, QueryParam
    from lightrag.kg.shared_storage import initialize_pipeline_status
    from lightrag.llm.openai import openai_complete_if_cache, openai_embed
    from lightrag.prompt import PROMPTS
    from lightrag.utils import EmbeddingFunc

    async def complete(prompt, system_prompt=None, history_messages=None, **kwargs):
        kwargs.pop("keyword_extraction", None)
        return await openai_complete_if_cache(
            MODEL,
            prompt,
            system_prompt=system_prompt,
            history_messages=history_messages or [],
            base_url=server.v1,
            api_key="unused",
            temperature=0,
            max_tokens=48,
            **kwargs,
        )

    embed = EmbeddingFunc(
        embedding_dim=int(embedder.dim),
        max_token_size=256,
        func=functools.partial(openai_embed.func, model=EMBED_MODEL, base_url=server.v1, api_key="unused"),
    )

    async def run() -> tuple[dict[str, int], str, str]:
        rag = LightRAG(
            working_dir=str(tmp_path / "lightrag"),
            llm_model_func=complete,
            embedding_func=embed,
            entity_extract_max_gleaning=0,
            enable_llm_cache=False,
        )
        await rag.initialize_storages()
        await initialize_pipeline_status()
        try:
            await rag.ainsert(DOC)
            counts = await rag.doc_status.get_status_counts()
            param = QueryParam(mode="naive", top_k=1, only_need_context=True)
            context = await rag.aquery("Who keeps the Corven Lighthouse?", param=param)
            answer = await rag.aquery(
                "Who keeps the Corven Lighthouse?", param=QueryParam(mode="naive", top_k=1)
            )
        finally:
            await rag.finalize_storages()
        return counts, context, answer

    counts, context, answer = asyncio.run(run())
    assert (
        counts["processed"] == 1 and counts["failed"] == 0
    )  # extraction through the server's chat endpoint finished without error
    assert "Keeper Mara Voss" in context  # the chunk came back through the server's embeddings
    assert answer.strip() and answer != PROMPTS["fail_response"]
