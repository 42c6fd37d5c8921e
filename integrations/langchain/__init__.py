"""LangChain adapters over xpullm. Classes load on first use, so importing this package does not import LangChain."""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["XPULLM", "ChatXPU", "XPUBgeEmbeddings", "XPUEmbeddings", "XPUReranker", "XPURetriever"]

# public name -> module defining it
_EXPORTS = {
    "XPURetriever": "xpullm.integrations.langchain.retrievers",
    "ChatXPU": "xpullm.integrations.langchain.chat_models",
    "XPULLM": "xpullm.integrations.langchain.llms",
    "XPUEmbeddings": "xpullm.integrations.langchain.embeddings",
    "XPUBgeEmbeddings": "xpullm.integrations.langchain.embeddings",
    "XPUReranker": "xpullm.integrations.langchain.rerankers",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
