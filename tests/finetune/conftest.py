from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

pytest.importorskip("peft", reason="the finetune extra (peft, trl) is part of make venv's lock")


@pytest.fixture(autouse=True, scope="package")
def one_thread():
    """Training steps are many small ops: on a shared 2-vCPU machine one thread avoids OpenMP spin-waits
    against other processes (measured 12x faster under load); restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="package")
def base_path() -> Path:
    from xpullm.models import default_llm_path

    return default_llm_path()


@pytest.fixture(scope="package")
def tokenizer(base_path: Path):
    from xpullm.loading import load_tokenizer

    return load_tokenizer(str(base_path))


def load_base(base_path: Path):
    """A fresh packaged SmolLM2-135M (asym_int4 g32 + sym_int8), fp32 activations: what finetune trains."""
    from xpullm.finetune import FinetuneConfig
    from xpullm.finetune import load_base as load

    model, _ = load(base_path, FinetuneConfig())
    return model


@pytest.fixture(scope="package")
def wiki_paragraphs() -> list[str]:
    spec = importlib.util.find_spec("exllamav2")
    assert spec is not None and spec.submodule_search_locations, "make venv installs exllamav2 (--no-deps)"
    path = (
        Path(next(iter(spec.submodule_search_locations))) / "conversion" / "standard_cal_data" / "wiki.utf8"
    )
    paras = [p.strip() for p in path.read_text(encoding="utf-8").split("\n") if len(p.strip()) > 200]
    return paras[:40]
