"""Typed `model=` arguments of the adapter classes.

Every adapter takes None (the packaged default), a path / hub id, or an already built engine object. pydantic
cannot build a schema for `xpullm.LLM` / `xpullm.Embedder` (and must not coerce a `Path` into a string or copy an
engine), so the value passes through as given (`AsGiven`) and `_engines.shared_llm` / `shared_embedder` check it.
"""

from __future__ import annotations

import os
from typing import Annotated, Any

from pydantic_core import core_schema

from xpullm.embeddings import Embedder
from xpullm.engine import LLM

__all__ = ["AsGiven", "EmbedderArg", "LLMArg"]


class AsGiven:
    """pydantic marker: accept the value unchanged; its JSON schema says "a path / id string or null"."""

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> core_schema.CoreSchema:
        return core_schema.any_schema()

    @classmethod
    def __get_pydantic_json_schema__(cls, schema: Any, handler: Any) -> dict[str, Any]:
        return {"type": ["string", "null"]}


LLMArg = Annotated[LLM | str | os.PathLike[str] | None, AsGiven]
"""None (packaged default), a folder / .gguf path / hub id, or an `xpullm.LLM` to share a loaded model."""

EmbedderArg = Annotated[Embedder | str | os.PathLike[str] | None, AsGiven]
"""None (packaged default), a sentence-transformers folder / hub id, or an `xpullm.Embedder` to share."""
