"""One real default embedder per session, plus an fp32 twin for the guarantees that hold only in fp32."""

from __future__ import annotations

import pytest

from xpullm.embeddings import Embedder


@pytest.fixture(scope="session")
def embedder() -> Embedder:
    return Embedder(device="cpu")


@pytest.fixture(scope="session")
def embedder_fp32() -> Embedder:
    return Embedder(device="cpu", dtype="float32")


@pytest.fixture(params=["embedder", "embedder_fp32"], ids=["auto", "float32"])
def each_dtype_embedder(request: pytest.FixtureRequest) -> Embedder:
    """The default (`dtype="auto"`: bf16 on CPUs with native bf16) and the fp32 embedder, in turn."""
    return request.getfixturevalue(request.param)
