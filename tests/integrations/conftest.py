"""Integration tests share ONE default LLM and ONE default Embedder for the whole session.

The adapters share engines per (model, low_bit, device) process-wide, so every `ChatXPU()` / `XPULLM()` /
`XPUEmbedding()` built with default arguments in these tests reuses the same loaded weights; the fixtures below
just hand out those shared objects.
"""

from __future__ import annotations

import pytest
import torch


def pytest_sessionstart(session: pytest.Session) -> None:
    # Several test processes share two cores; more OpenMP threads than cores makes torch 10-40x slower.
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def engine():
    """The shared default `xpullm.LLM` (the same object `ChatXPU()` uses)."""
    from xpullm.integrations._engines import shared_llm

    llm = shared_llm(None, "sym_int4", "auto")
    llm.tokenizer  # noqa: B018  (load now so a loader failure shows up here)
    return llm


@pytest.fixture(scope="session")
def embedder():
    """The shared default `xpullm.Embedder`."""
    from xpullm.integrations._engines import shared_embedder

    return shared_embedder(None, None, "auto").get()
