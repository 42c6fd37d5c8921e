"""`XPURerank`: a LlamaIndex node postprocessor that reorders nodes by the LLM's relevance judgement."""

from __future__ import annotations

from typing import Any, ClassVar

from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle

from xpullm.engine import LLM
from xpullm.integrations._args import LLMArg
from xpullm.integrations._engines import shared_llm
from xpullm.integrations._fields import StrictArguments
from xpullm.integrations._relevance import relevance_scores

__all__ = ["XPURerank"]


class XPURerank(StrictArguments, BaseNodePostprocessor):
    """Keep the `top_n` nodes the LLM rates most relevant; each node's score becomes P("yes") in [0, 1]."""

    model: LLMArg = Field(
        default=None, description="None (packaged default LLM), a path / hub id, or an xpullm.LLM."
    )
    low_bit: str | None = Field(
        default="sym_int4", description="Low-bit format when this object loads weights."
    )
    device: str = Field(default="auto", description="auto, cpu, cuda or xpu.")
    top_n: int = Field(default=3, ge=1, description="How many nodes to keep.")

    _engine: LLM = PrivateAttr(default=None)

    also_accepted: ClassVar[tuple[str, ...]] = ("callback_manager",)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._engine = shared_llm(self.model, self.low_bit, self.device)

    @classmethod
    def class_name(cls) -> str:
        return "XPURerank"

    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        if query_bundle is None:
            raise ValueError("XPURerank needs the query: call postprocess_nodes(nodes, query_str=...)")
        if not nodes:
            return []
        texts = [n.node.get_content(metadata_mode=MetadataMode.NONE) for n in nodes]
        scores = relevance_scores(self._engine, query_bundle.query_str, texts)
        ranked = sorted(zip(scores, range(len(nodes)), nodes, strict=True), key=lambda x: (-x[0], x[1]))
        return [NodeWithScore(node=n.node, score=s) for s, _, n in ranked[: self.top_n]]
