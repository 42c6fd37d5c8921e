"""Knowledge bases: a RAGFlow-style pipeline in one folder (SQLite + FTS5 + FAISS), no servers.

```python
from xpullm.rag import KnowledgeBase
kb = KnowledgeBase.create("my_kb")
kb.add(["docs/"])
kb.search("how do I install it?")
kb.ask("how do I install it?").text
```
"""

from xpullm.answers import AnswerStream
from xpullm.documents import (
    Block,
    Chunk,
    ChunkingConfig,
    ParsedDocument,
    chunk_document,
    parse_file,
    register_parser,
    register_template,
    supported_extensions,
    template_names,
)
from xpullm.rag.answer import Citation, CitedAnswer
from xpullm.rag.errors import (
    EmbedderMismatch,
    KnowledgeBaseError,
    KnowledgeBaseExists,
    KnowledgeBaseLocked,
    KnowledgeBaseNotFound,
    ParseError,
    UnknownTemplate,
    UnsupportedFileType,
)
from xpullm.rag.ingest import IngestProgress, IngestReport
from xpullm.rag.kb import DocumentNotFound, KBConfig, KnowledgeBase
from xpullm.rag.rerank import EmbeddingReranker, LLMReranker, Reranker
from xpullm.rag.retrieval import Hit
from xpullm.rag.support import SupportConfig

Answer = CitedAnswer  # the knowledge base's answer (an `xpullm.answers.Answer` with citations)

__all__ = [
    "Answer",
    "AnswerStream",
    "Block",
    "Chunk",
    "ChunkingConfig",
    "Citation",
    "CitedAnswer",
    "DocumentNotFound",
    "EmbedderMismatch",
    "EmbeddingReranker",
    "Hit",
    "IngestProgress",
    "IngestReport",
    "KBConfig",
    "KnowledgeBase",
    "KnowledgeBaseError",
    "KnowledgeBaseExists",
    "KnowledgeBaseLocked",
    "KnowledgeBaseNotFound",
    "LLMReranker",
    "ParseError",
    "ParsedDocument",
    "Reranker",
    "SupportConfig",
    "UnknownTemplate",
    "UnsupportedFileType",
    "chunk_document",
    "parse_file",
    "register_parser",
    "register_template",
    "supported_extensions",
    "template_names",
]
