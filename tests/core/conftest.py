from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="session")
def default_path() -> Path:
    from xpullm.models import default_llm_path

    return default_llm_path()


@pytest.fixture(scope="session")
def tokenizer(default_path: Path):
    import transformers

    return transformers.AutoTokenizer.from_pretrained(default_path)


@pytest.fixture(scope="session")
def wiki_ids(tokenizer) -> torch.Tensor:
    """256 tokens of the packaged Wikipedia text (exllamav2's calibration file)."""
    spec = importlib.util.find_spec("exllamav2")
    assert spec is not None and spec.submodule_search_locations, "make test installs exllamav2 (--no-deps)"
    path = (
        Path(next(iter(spec.submodule_search_locations))) / "conversion" / "standard_cal_data" / "wiki.utf8"
    )
    text = path.read_text(encoding="utf-8")[:4000]
    return tokenizer(text, return_tensors="pt").input_ids[:, :256]


@pytest.fixture(scope="session")
def bf16_logits(default_path: Path, wiki_ids: torch.Tensor) -> torch.Tensor:
    import xpullm

    model = xpullm.AutoModelForCausalLM.from_pretrained(
        default_path, load_in_low_bit="bf16", device="cpu", progress=False
    )
    with torch.no_grad():
        return model(wiki_ids).logits.float()[0]
