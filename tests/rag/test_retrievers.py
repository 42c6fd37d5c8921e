"""LangChain's standard retriever tests for XPURetriever, plus the LlamaIndex retriever, over a real base."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_tests.integration_tests import RetrieversIntegrationTests

from xpullm.integrations.langchain import XPURetriever
from xpullm.integrations.llamaindex import XPULlamaIndexRetriever
from xpullm.rag import KnowledgeBase

TEXTS = [
    "The Eiffel Tower is in Paris and was finished in 1889.",
    "The Colosseum in Rome held gladiator games.",
    "Big Ben is the nickname of the bell in London's clock tower.",
    "The Sagrada Familia in Barcelona is still being built.",
    "Paris has more than twenty bridges over the Seine.",
]


@pytest.fixture(scope="module")
def landmarks_kb(tmp_path_factory, embedder) -> KnowledgeBase:
    kb = KnowledgeBase.create(tmp_path_factory.mktemp("lm") / "kb", embedder=embedder)
    kb.add(texts=TEXTS, names=[f"landmark{i}" for i in range(len(TEXTS))], metadata={"kind": "landmark"})
    yield kb
    kb.close()


@pytest.mark.filterwarnings("ignore:The test <Function:pytest.PytestWarning")
@pytest.mark.asyncio  # the standard suite has async tests; this runs them without repo-wide asyncio auto mode
class TestXPURetrieverStandard(RetrieversIntegrationTests):
    _kb: KnowledgeBase | None = None

    @pytest.fixture(autouse=True)
    def _bind_kb(self, landmarks_kb: KnowledgeBase) -> None:
        type(self)._kb = landmarks_kb

    @property
    def retriever_constructor(self) -> type[XPURetriever]:
        return XPURetriever

    @property
    def retriever_constructor_params(self) -> dict[str, Any]:
        return {"knowledge_base": self._kb, "k": 2}

    @property
    def retriever_query_example(self) -> str:
        return "Which monument is in Paris?"


def test_langchain_documents_carry_chunk_metadata(landmarks_kb: KnowledgeBase) -> None:
    docs = XPURetriever(knowledge_base=landmarks_kb, k=2).invoke("When was the Eiffel Tower finished?")
    top = docs[0]
    assert top.page_content == TEXTS[0]
    assert top.metadata["title"] == "landmark0" and top.metadata["kind"] == "landmark"
    assert top.id == str(top.metadata["chunk_id"]) and top.metadata["score"] >= docs[1].metadata["score"]
    by_path = XPURetriever(path=str(landmarks_kb.path), k=1, vector_weight=0.0).invoke("gladiator")
    assert [d.page_content for d in by_path] == [TEXTS[1]]
    with pytest.raises(ValueError, match="knowledge_base"):
        XPURetriever(k=2)


def test_llamaindex_retriever(landmarks_kb: KnowledgeBase) -> None:
    from llama_index.core.schema import NodeWithScore

    nodes = XPULlamaIndexRetriever(landmarks_kb, similarity_top_k=3).retrieve("bell in a clock tower")
    assert len(nodes) == 3 and all(isinstance(n, NodeWithScore) for n in nodes)
    assert nodes[0].node.get_content() == TEXTS[2]
    assert nodes[0].node.metadata["title"] == "landmark2"
    assert nodes[0].score >= nodes[1].score >= nodes[2].score
