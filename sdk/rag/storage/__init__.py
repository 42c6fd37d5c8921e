"""Storage behind a knowledge base: interfaces, the registries of store / index kinds, and the embedded SQLite/FTS5
and FAISS implementations (registered as `sqlite` and `faiss`, the defaults)."""

from xpullm.rag.storage.base import ChunkRecord, DocumentRecord, DocumentStore, FullTextIndex, VectorIndex
from xpullm.rag.storage.registry import (
    STORES,
    VECTOR_INDEXES,
    StoreKind,
    find_store,
    register_store,
    register_vector_index,
    store_kind,
    vector_index_kind,
)

__all__ = [
    "STORES",
    "VECTOR_INDEXES",
    "ChunkRecord",
    "DocumentRecord",
    "DocumentStore",
    "FullTextIndex",
    "StoreKind",
    "VectorIndex",
    "find_store",
    "register_store",
    "register_vector_index",
    "store_kind",
    "vector_index_kind",
]
