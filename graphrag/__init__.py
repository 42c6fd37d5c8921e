"""GraphRAG on a local low-bit model: index documents into a knowledge graph with community reports, then query it.

    from xpullm.graphrag import GraphRAG
    rag = GraphRAG("my_project")             # packaged default LLM and embedder
    rag.index(["notes/", "a.txt"])
    print(rag.query("Who founded X?", method="local").text)

Heavy dependencies (pyarrow, pandas, graspologic-native, networkx) are imported only by the stages that use them.
"""

from __future__ import annotations

from xpullm.answers import AnswerStream
from xpullm.graphrag.cache import LLMCache
from xpullm.graphrag.config import (
    CacheConfig,
    ChunkingConfig,
    ClusterConfig,
    EmbeddingConfig,
    ExtractionConfig,
    GraphRAGConfig,
    LLMConfig,
    QueryConfig,
    ReportConfig,
    SummarizeConfig,
)
from xpullm.graphrag.errors import (
    CacheMiss,
    ConfigError,
    EmbedderMismatch,
    EmbeddingMismatch,
    GraphRAGError,
    IndexNotFound,
    PromptTooLong,
)
from xpullm.graphrag.index import IndexResult
from xpullm.graphrag.project import GraphRAG, init_project
from xpullm.graphrag.query import METHODS, ContextRecord, GraphAnswer
from xpullm.graphrag.stats import STAGES
from xpullm.graphrag.tables import COLUMNS
from xpullm.graphrag.transcript import TranscriptLLM

Answer = GraphAnswer  # GraphRAG's answer (an `xpullm.answers.Answer` with context records)

__all__ = [
    "COLUMNS",
    "METHODS",
    "STAGES",
    "Answer",
    "AnswerStream",
    "CacheConfig",
    "CacheMiss",
    "ChunkingConfig",
    "ClusterConfig",
    "ConfigError",
    "ContextRecord",
    "EmbedderMismatch",
    "EmbeddingConfig",
    "EmbeddingMismatch",
    "ExtractionConfig",
    "GraphAnswer",
    "GraphRAG",
    "GraphRAGConfig",
    "GraphRAGError",
    "IndexNotFound",
    "IndexResult",
    "LLMCache",
    "LLMConfig",
    "PromptTooLong",
    "QueryConfig",
    "ReportConfig",
    "SummarizeConfig",
    "TranscriptLLM",
    "init_project",
]
