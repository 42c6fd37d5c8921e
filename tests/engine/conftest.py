"""One real default model for every engine test (loading it once keeps the suite fast)."""

from __future__ import annotations

import os

import pytest

from xpullm.engine import LLM


def load_test_llm() -> LLM:
    """The packaged default model through xpullm's loader.

    XPULLM_TEST_LLM_DIR (a HF folder) is a developer override for working before/without the loader.
    """
    folder = os.environ.get("XPULLM_TEST_LLM_DIR")
    if folder:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from xpullm.optimize import optimize_model

        model = AutoModelForCausalLM.from_pretrained(folder)
        optimize_model(model, low_bit="sym_int4")
        llm = LLM(model, tokenizer=AutoTokenizer.from_pretrained(folder))
    else:
        llm = LLM()
    llm.tokenizer  # noqa: B018  (load now, so a loader failure shows up in the fixture)
    return llm


@pytest.fixture(scope="session")
def llm() -> LLM:
    return load_test_llm()
