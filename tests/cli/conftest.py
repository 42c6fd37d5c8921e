"""The CLI tests share one default model with tests/engine: the CLI's per-process cache loads it once."""

from __future__ import annotations

import pytest

from xpullm.cli.common import cached_llm


@pytest.fixture(scope="session", autouse=True)
def default_llm():
    llm = cached_llm()  # the same object `xpullm generate` / `chat` / `bench` / `ppl` get without --model
    llm.tokenizer  # noqa: B018  (load now)
    return llm
