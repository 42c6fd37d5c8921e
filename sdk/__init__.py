"""xpullm: low-bit LLMs and embedding models, fast on the hardware you have.

`import xpullm` stays light: heavy pieces (transformers, the engine, integrations) load on first attribute use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it (imported on first use)
_EXPORTS = {
    "AutoModelForCausalLM": "xpullm.loading",
    "load_tokenizer": "xpullm.loading",
    "LowBitLinear": "xpullm.linear",
    "LowBitEmbedding": "xpullm.linear",
    "optimize_model": "xpullm.optimize",
    "QuantizedWeight": "xpullm.formats",
    "get_format": "xpullm.formats",
    "list_formats": "xpullm.formats",
    "resolve_device": "xpullm.devices",
    "available_devices": "xpullm.devices",
    "model_nbytes": "xpullm.memory",
    "LLM": "xpullm.engine",
    "Completion": "xpullm.engine",
    "GenerationParams": "xpullm.engine",
    "Embedder": "xpullm.embeddings",
}
_SUBMODULES = {
    "errors",
    "formats",
    "kernels",
    "models",
    "devices",
    "loading",
    "engine",
    "rag",
    "graphrag",
    "integrations",
}

__all__ = [  # noqa: RUF022 - grouped by layer
    "AutoModelForCausalLM", "load_tokenizer", "optimize_model", "LowBitLinear", "LowBitEmbedding",
    "QuantizedWeight", "get_format", "list_formats", "resolve_device", "available_devices", "model_nbytes",
    "LLM", "Completion", "GenerationParams", "Embedder", "__version__",
]  # fmt: skip

if TYPE_CHECKING:  # pragma: no cover
    from xpullm.devices import available_devices, resolve_device
    from xpullm.embeddings import Embedder
    from xpullm.engine import LLM, Completion, GenerationParams
    from xpullm.formats import QuantizedWeight, get_format, list_formats
    from xpullm.linear import LowBitEmbedding, LowBitLinear
    from xpullm.loading import AutoModelForCausalLM, load_tokenizer
    from xpullm.memory import model_nbytes
    from xpullm.optimize import optimize_model


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f"xpullm.{name}")
    raise AttributeError(f"module 'xpullm' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS) | _SUBMODULES)
