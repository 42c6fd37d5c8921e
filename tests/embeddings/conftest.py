"""One real default embedder per session."""

from __future__ import annotations

import pytest

from xpullm.embeddings import Embedder


@pytest.fixture(scope="session")
def embedder() -> Embedder:
    return Embedder(device="cpu")
