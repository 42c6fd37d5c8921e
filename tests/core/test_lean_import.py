"""`import xpullm` stays light: no framework imports, no GPU initialisation, until a feature is used."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ["transformers", "langchain_core", "llama_index", "gradio", "triton", "faiss", "pyarrow", "torch"]


def _run(code: str) -> str:
    return subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout.strip()


def test_import_xpullm_pulls_in_nothing_heavy() -> None:
    out = _run(f"import sys, xpullm; print([m for m in {HEAVY!r} if m in sys.modules])")
    assert out == "[]"


def test_kernels_do_not_initialise_a_gpu_or_import_triton() -> None:
    out = _run(
        "import sys, torch, xpullm.kernels, xpullm.formats, xpullm.linear; "
        "print(torch.cuda.is_initialized(), 'triton' in sys.modules, 'transformers' in sys.modules)"
    )
    assert out == "False False False"


def test_lazy_exports_resolve() -> None:
    out = _run(
        "import xpullm; print(xpullm.AutoModelForCausalLM.__name__, xpullm.optimize_model.__name__, len(xpullm.list_formats()))"
    )
    assert out == "AutoModelForCausalLM optimize_model 10"
