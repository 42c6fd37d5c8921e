"""Which document store and vector index a knowledge base is built from, by name (`KBConfig.store` / `.vector_index`).

A store kind names the file that marks it inside a base's folder (so `KnowledgeBase.open` finds a base without
knowing its config, which the store itself holds) and how to open it; a vector index kind says how to open one.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xpullm.rag.errors import KnowledgeBaseError, KnowledgeBaseNotFound
from xpullm.rag.storage.base import DocumentStore, VectorIndex

__all__ = [
    "STORES",
    "VECTOR_INDEXES",
    "StoreKind",
    "find_store",
    "read_base_meta",
    "register_store",
    "register_vector_index",
    "store_kind",
    "vector_index_kind",
]


@dataclass(frozen=True)
class StoreKind:
    """A registered document store: its marker file in the base's folder and a factory `(folder, dim) -> store`."""

    name: str
    marker: str
    open: Callable[[Path, int], DocumentStore]


STORES: dict[str, StoreKind] = {}
VECTOR_INDEXES: dict[str, Callable[[Path, int], VectorIndex]] = {}


def register_store(name: str, marker: str, factory: Callable[[Path, int], DocumentStore]) -> None:
    """Register a document store under `name`; `marker` is the file it keeps in the base's folder."""
    STORES[name] = StoreKind(name, marker, factory)


def register_vector_index(name: str, factory: Callable[[Path, int], VectorIndex]) -> None:
    """Register a vector index factory `(folder, dim) -> VectorIndex` under `name`."""
    VECTOR_INDEXES[name] = factory


def store_kind(name: str) -> StoreKind:
    """The store registered as `name`."""
    if name not in STORES:
        raise ValueError(f"unknown document store {name!r}; registered: {', '.join(sorted(STORES))}")
    return STORES[name]


def vector_index_kind(name: str) -> Callable[[Path, int], VectorIndex]:
    """The vector index factory registered as `name`."""
    if name not in VECTOR_INDEXES:
        raise ValueError(f"unknown vector index {name!r}; registered: {', '.join(sorted(VECTOR_INDEXES))}")
    return VECTOR_INDEXES[name]


def find_store(folder: Path) -> StoreKind | None:
    """The kind of store a base in `folder` was created with, or None when the folder holds no base."""
    return next((k for k in STORES.values() if (folder / k.marker).exists()), None)


def read_base_meta(folder: Path, create_hint: str) -> tuple[str, int, dict[str, Any]]:
    """(embedder name, vector dimension, stored `KBConfig` fields) of the base in `folder`."""
    kind = find_store(folder)
    if kind is None:
        raise KnowledgeBaseNotFound(f"no knowledge base at {folder}; create one with {create_hint}")
    probe = kind.open(folder, 0)
    try:
        name, dim = probe.get_meta("embedder"), int(probe.get_meta("dim") or 0)
        config = json.loads(probe.get_meta("config") or "{}")
    finally:
        probe.close()
    if name is None:
        raise KnowledgeBaseError(
            f"{folder / kind.marker} has no embedder record; was its creation interrupted? Re-create it"
        )
    return name, dim, config


def _sqlite(folder: Path, dim: int) -> DocumentStore:
    from xpullm.rag.storage.sqlite_store import SQLiteStore

    return SQLiteStore(folder / "kb.sqlite", dim)


def _faiss(folder: Path, dim: int) -> VectorIndex:
    from xpullm.rag.storage.faiss_index import FaissVectorIndex

    return FaissVectorIndex(folder / "vectors.faiss", dim)


register_store("sqlite", "kb.sqlite", _sqlite)
register_vector_index("faiss", _faiss)
