"""Shared fixtures: one real embedder per test session, fresh knowledge bases per test."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from xpullm.embeddings import Embedder


@pytest.fixture(scope="session")
def embedder() -> Embedder:
    return Embedder(device="cpu")


@pytest.fixture
def make_kb(tmp_path: Path, embedder: Embedder):
    from xpullm.rag import KBConfig, KnowledgeBase

    opened = []

    def make(name: str = "kb", **config) -> KnowledgeBase:
        kb = KnowledgeBase.create(tmp_path / name, embedder=embedder, config=KBConfig(**config))
        opened.append(kb)
        return kb

    yield make
    for kb in opened:
        with contextlib.suppress(Exception):
            kb.close()
