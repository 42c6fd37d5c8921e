"""The engine contracts in `xpullm.protocols` hold for the real engine, the real embedder and the transcript replayer."""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest

from xpullm.protocols import (
    ChatEngine,
    EmbeddingModel,
    StreamingEngine,
    TextEngine,
    TokenCounter,
)

TRANSCRIPT = Path(__file__).parents[1] / "graphrag" / "data" / "transcript.jsonl"


def _members(protocol: type) -> list[str]:
    names: set[str] = set()
    for base in protocol.__mro__:
        if base.__dict__.get("_is_protocol"):
            names |= {n for n in base.__dict__ if not n.startswith("_")}
    return sorted(names)


def _assert_follows(obj: object, protocol: type) -> None:
    """`isinstance` only checks names; also check every protocol parameter is accepted by the implementation."""
    assert isinstance(obj, protocol), f"{type(obj).__name__} is not a {protocol.__name__}"
    for name in _members(protocol):
        spec = inspect.getattr_static(protocol, name)
        if isinstance(spec, property):
            continue
        have = inspect.signature(getattr(obj, name)).parameters
        takes_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in have.values())
        for pname, param in inspect.signature(spec).parameters.items():
            if pname == "self" or param.kind is inspect.Parameter.VAR_KEYWORD:
                continue
            assert pname in have or takes_kwargs, f"{type(obj).__name__}.{name} lacks parameter {pname!r}"


def test_llm_is_every_engine_protocol(llm) -> None:
    for protocol in (TokenCounter, TextEngine, StreamingEngine, ChatEngine):
        _assert_follows(llm, protocol)
    assert llm.count_tokens("hello world") > 0 and llm.context_length > 0


@pytest.fixture(scope="module")
def embedder():
    from xpullm.embeddings import Embedder

    return Embedder(device="cpu", dtype="float32")


def test_embedder_is_an_embedding_model(embedder) -> None:
    _assert_follows(embedder, EmbeddingModel)
    mat = embedder.embed_matrix(["a cat", "a dog"], batch_size=1)
    assert mat.dtype == np.float32 and mat.shape == (2, embedder.dim)
    assert np.array_equal(mat, np.asarray(embedder.embed(["a cat", "a dog"], batch_size=1), dtype=np.float32))
    assert embedder.count_tokens("a cat") == 2


def test_transcript_replayer_is_a_text_engine() -> None:
    from xpullm.graphrag import TranscriptLLM

    replayer = TranscriptLLM(TRANSCRIPT)
    _assert_follows(replayer, TextEngine)
    assert not isinstance(replayer, StreamingEngine)  # GraphRAG then asks for whole answers
    assert not isinstance(replayer, EmbeddingModel)
