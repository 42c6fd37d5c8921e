"""Shared fixtures: one real embedder per session, and a replayed index of the recorded corpus."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA


@pytest.fixture(scope="session")
def questions() -> dict:
    return json.loads((DATA / "questions.json").read_text())


@pytest.fixture(scope="session")
def embedder():
    """The packaged all-MiniLM-L6-v2 in float32 (bf16 would make similarity ranks machine-dependent)."""
    from xpullm.embeddings import Embedder

    return Embedder(device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def replay_config():
    from xpullm.graphrag import GraphRAGConfig

    return GraphRAGConfig.from_yaml(DATA / "settings.yaml").replace(cache={"mode": "replay"})


@pytest.fixture(scope="session")
def replay_project(embedder, replay_config):
    """Factory: a project at ROOT whose LLM answers only from the recorded transcript (misses are errors)."""
    from xpullm.graphrag import GraphRAG, TranscriptLLM

    transcript = DATA / "transcript.jsonl"

    def make(root: Path):
        return GraphRAG(
            root,
            llm=TranscriptLLM(transcript),
            embedder=embedder,
            config=replay_config,
            transcript=transcript,
        )

    return make


@pytest.fixture(scope="session")
def indexed(tmp_path_factory, replay_project):
    """A project indexed from the 3-document corpus by replaying the recorded transcript."""
    rag = replay_project(tmp_path_factory.mktemp("indexed"))
    result = rag.index(DATA / "corpus")
    return rag, result
