"""One real default model for every engine and CLI test: loaded once per test session.

The model lives in the CLI's per-process cache (`xpullm.cli.common.cached_llm`), so tests/cli's fixture gets the
very same `LLM` object and a run of both folders loads the weights once.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from xpullm.cli.common import cached_llm
from xpullm.engine import LLM

# A grounded chat turn and four prompts the speculative-decoding tests share.
DOC = (
    "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. It is named after the "
    "engineer Gustave Eiffel, whose company designed and built the tower from 1887 to 1889."
)
GROUNDED = [{"role": "user", "content": f"Context:\n{DOC}\n\nRepeat the context word for word."}]
PROMPTS = [
    f"{DOC}\n\nSummary: The Eiffel Tower",
    "The capital of France is",
    "def fibonacci(n):",
    "List three colors:",
]


def engine_over(llm: LLM, speculative: Any) -> LLM:
    """Another LLM over the same loaded model with its own engine and speculative setting (weights shared)."""
    from xpullm.engine.core import EngineConfig

    return LLM(llm.model, tokenizer=llm.tokenizer, speculative=speculative, engine=EngineConfig(max_seqs=8))


def shared_default_llm() -> LLM:
    """The packaged default model (sym_int4) through xpullm's loader, loaded now so failures show here."""
    llm = cached_llm()
    llm.tokenizer  # noqa: B018  (load now, so a loader failure shows up in the fixture)
    return llm


@pytest.fixture(scope="session")
def llm() -> LLM:
    return shared_default_llm()


@pytest.fixture(scope="session")
def dense_llm() -> LLM:
    """The default model with dense fp32 weights and activations: decoder arithmetic without kernel rounding."""
    llm = LLM(low_bit="fp32", dtype=torch.float32)
    llm.generate("warm up", max_new_tokens=1)
    return llm
