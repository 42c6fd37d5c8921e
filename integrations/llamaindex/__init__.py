"""LlamaIndex adapters over xpullm. Classes load on first use, so importing this package does not import LlamaIndex."""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["XPULLM", "XPUEmbedding", "XPULlamaIndexRetriever", "XPURerank"]

# public name -> module defining it
_EXPORTS = {
    "XPULlamaIndexRetriever": "xpullm.integrations.llamaindex.retrievers",
    "XPULLM": "xpullm.integrations.llamaindex.llms",
    "XPUEmbedding": "xpullm.integrations.llamaindex.embeddings",
    "XPURerank": "xpullm.integrations.llamaindex.postprocessors",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
