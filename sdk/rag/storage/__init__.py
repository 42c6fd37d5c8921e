"""Storage behind a knowledge base: interfaces plus the embedded SQLite/FTS5 and FAISS implementations."""

from xpullm.rag.storage.base import ChunkRecord, DocumentRecord, DocumentStore, FullTextIndex, VectorIndex

__all__ = ["ChunkRecord", "DocumentRecord", "DocumentStore", "FullTextIndex", "VectorIndex"]
