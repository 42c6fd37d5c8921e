"""The CLI tests share one default model: seeding the CLI's per-process LLM cache loads it once."""

from __future__ import annotations

import pytest

from xpullm.cli import common


@pytest.fixture(scope="session", autouse=True)
def default_llm():
    from xpullm.engine import LLM

    llm = LLM()
    llm.tokenizer  # noqa: B018  (load now)
    common._LLMS[(None, "sym_int4", "auto", None)] = llm
    yield llm
    common._LLMS.clear()
