"""Resolve the `model=` argument of every adapter class into one shared engine object.

Adapters accept None (the packaged default), a path / hub id, or an already built `xpullm.LLM` / `xpullm.Embedder`.
Engines built from the same (model, low_bit, device) are shared process-wide, so `ChatXPU()` and `XPULLM()` with
no arguments load the default model once. Weights still load lazily: an `LLM` loads on its first generation and
an `Embedder` is built on the first `embed` call.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xpullm.errors import ModelNotFound
from xpullm.hub import is_hub_id
from xpullm.models import DEFAULT_EMBEDDER_NAME

if TYPE_CHECKING:
    from xpullm.embeddings import Embedder
    from xpullm.engine import LLM

__all__ = ["LazyEmbedder", "check_model_spec", "shared_embedder", "shared_llm"]

_LLMS: dict[tuple[Any, ...], LLM] = {}
_EMBEDDERS: dict[tuple[Any, ...], LazyEmbedder] = {}
_GUARD = threading.Lock()


def check_model_spec(model: object, what: str = "model") -> str | None:
    """Validate a path / hub id argument without loading anything; raise `ModelNotFound` for a missing path.

    A string that looks like a hub id (`org/name`) is accepted here and fetched on first use; anything else
    must exist on disk now, so a typo fails at construction instead of deep inside the first call.
    """
    if model is None:
        return None
    if not isinstance(model, (str, os.PathLike)):
        raise ModelNotFound(
            f"{what}={model!r} is not a path or hub id; pass None (packaged default), a folder / .gguf path, "
            "a hub id such as 'org/name', or an already loaded xpullm object"
        )
    text = os.fspath(model)
    if Path(text).expanduser().exists():
        return text
    if is_hub_id(text):
        return text
    raise ModelNotFound(
        f"{what} path {text!r} does not exist; pass an existing folder or .gguf file, a hub id ('org/name'), "
        "or None for the packaged default model"
    )


def shared_llm(
    model: LLM | str | os.PathLike[str] | None,
    low_bit: str | None,
    device: str,
    tokenizer: Any = None,
    tokenizer_spec: Any = None,
) -> LLM:
    """An `xpullm.LLM` for `model`: the object itself when it already is one, else a process-wide shared one.

    `tokenizer_spec` (a folder / .gguf / hub id of the tokenizer) is part of the sharing key, so IpexLLM-style
    `tokenizer_id=` objects built on the same files share one engine; a tokenizer *object* makes the engine
    unique to the caller. `device` is resolved first, so "auto" and the device it picks share too.
    """
    from xpullm.devices import resolve_device
    from xpullm.engine import LLM

    if isinstance(model, LLM):
        return model
    spec = check_model_spec(model)
    if tokenizer is not None:
        return LLM(spec, low_bit=low_bit, device=device, tokenizer=tokenizer)
    tok_spec = check_model_spec(tokenizer_spec, "tokenizer")
    key = (spec, low_bit, str(resolve_device(device)), tok_spec)
    with _GUARD:
        if key not in _LLMS:
            if tok_spec is not None:
                from xpullm.loading import load_tokenizer

                tokenizer = load_tokenizer(tok_spec)
            _LLMS[key] = LLM(spec, low_bit=low_bit, device=device, tokenizer=tokenizer)
        return _LLMS[key]


class LazyEmbedder:
    """Builds an `xpullm.Embedder` on first use (its constructor loads the weights)."""

    def __init__(self, model: str | None, low_bit: str | None, device: str) -> None:
        self.spec = model
        self.low_bit = low_bit
        self.device = device
        self._embedder: Embedder | None = None
        self._lock = threading.Lock()

    def get(self) -> Embedder:
        """The loaded embedder."""
        if self._embedder is None:
            with self._lock:
                if self._embedder is None:
                    from xpullm.embeddings import Embedder

                    self._embedder = Embedder(self.spec, low_bit=self.low_bit, device=self.device)
        return self._embedder

    @property
    def model_name(self) -> str:
        """Name for metadata without forcing a load."""
        if self._embedder is not None:
            return self._embedder.model_name
        return self.spec or DEFAULT_EMBEDDER_NAME


class _Ready(LazyEmbedder):
    """An already loaded embedder behind the lazy interface."""

    def __init__(self, embedder: Embedder) -> None:
        super().__init__(None, embedder.low_bit, str(embedder.device))
        self._embedder = embedder


def shared_embedder(
    model: Embedder | LazyEmbedder | str | os.PathLike[str] | None, low_bit: str | None, device: str
) -> LazyEmbedder:
    """A lazy handle on an `xpullm.Embedder` (the given one, or a process-wide shared one per spec)."""
    from xpullm.embeddings import Embedder

    if isinstance(model, Embedder):
        return _Ready(model)
    if isinstance(model, LazyEmbedder):
        return model
    spec = check_model_spec(model, "embedding model")
    key = (spec, low_bit, device)
    with _GUARD:
        if key not in _EMBEDDERS:
            _EMBEDDERS[key] = LazyEmbedder(spec, low_bit, device)
        return _EMBEDDERS[key]
