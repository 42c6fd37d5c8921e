"""`ModelManager`: the one chat model of the app, loaded in the background, switchable from the UI.

The page comes up before the model: the first load runs in a thread and the UI shows its status. Switching model
or format loads the new one while the old one keeps answering, then swaps them.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from xpullm.apps.demo.errors import UserFacingError, friendly

if TYPE_CHECKING:
    from xpullm.engine import LLM

__all__ = ["LoadedModel", "ModelManager", "ModelSpec", "model_name"]

log = logging.getLogger("xpullm.apps.demo")


@dataclass(frozen=True)
class ModelSpec:
    """What to load: model (None = packaged default), low-bit format and device."""

    model: str | None
    low_bit: str
    device: str = "auto"

    @property
    def label(self) -> str:
        """How the UI names this model."""
        return f"{model_name(self.model)} ({self.low_bit})"


def model_name(model: str | None) -> str:
    """How the UI names a model: the packaged model's name, a hub id (also for a snapshot in the HF cache), or a
    file / folder name (never the whole server path)."""
    from pathlib import PurePath

    from xpullm.models import DEFAULT_LLM_NAME

    if model is None:
        return DEFAULT_LLM_NAME
    if not _looks_like_path(model):
        return model
    parts = PurePath(model).parts
    repo = next((p for p in parts if p.startswith("models--")), None)
    if repo is not None and "snapshots" in parts:
        return repo.removeprefix("models--").replace("--", "/")
    return parts[-1] if parts else model


@dataclass(frozen=True)
class LoadedModel:
    """A ready engine with the facts the Models tab shows."""

    spec: ModelSpec
    llm: LLM
    load_s: float | None  # wall time of the load, seconds (None: loaded before the app got it)
    nbytes: int  # weight bytes, low-bit kernel state included
    device: str
    decoder: str


def check_spec(model: str | None, low_bit: str, device: str = "auto") -> ModelSpec:
    """Validate the UI's model fields before any loading starts (readable errors, no stack traces)."""
    import xpullm

    model = (model or "").strip() or None
    if low_bit not in xpullm.list_formats():
        raise UserFacingError(
            f"unknown low-bit format {low_bit!r}; choose one of: {', '.join(xpullm.list_formats())}"
        )
    if model is not None and _looks_like_path(model):
        from pathlib import Path

        if not Path(model).expanduser().exists():
            raise UserFacingError(
                f"model path {model!r} does not exist; enter a local model folder, a .gguf file, a hub id "
                "like 'org/name', or leave it empty for the packaged SmolLM2-135M-Instruct"
            )
    return ModelSpec(model, low_bit, device)


def _looks_like_path(text: str) -> bool:
    return text.startswith(("/", "./", "../", "~")) or text.endswith(".gguf") or "\\" in text


def load(spec: ModelSpec) -> LoadedModel:
    """Load `spec` now (blocking) and measure it."""
    from xpullm.engine import LLM
    from xpullm.memory import model_nbytes

    t0 = time.perf_counter()
    llm = LLM(model=spec.model, low_bit=spec.low_bit, device=spec.device)
    model = llm.model  # the engine loads lazily; touching the model loads weights and tokenizer
    load_s = time.perf_counter() - t0
    device = str(next(model.parameters()).device)
    return LoadedModel(spec, llm, load_s, model_nbytes(model), device, llm.decoder_name)


class ModelManager:
    """Holds the current chat model; loading happens in a background thread or under a UI progress bar."""

    def __init__(self, spec: ModelSpec, llm: LLM | None = None) -> None:
        """`llm`: an already loaded engine to use for `spec` (tests share one across app instances)."""
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._current: LoadedModel | None = None
        self._error: str | None = None
        self._loading: ModelSpec | None = None
        self._spec = spec
        if llm is not None:
            from xpullm.memory import model_nbytes

            model = llm.model
            self._current = LoadedModel(
                spec, llm, None, model_nbytes(model), str(next(model.parameters()).device), llm.decoder_name
            )
            self._ready.set()

    # -- state ------------------------------------------------------------------------------------------------
    @property
    def current(self) -> LoadedModel | None:
        """The loaded model, or None while the first load runs."""
        return self._current

    def status(self) -> str:
        """One markdown line: what is loaded, what is loading, or why the last load failed."""
        parts = []
        if self._current is not None:
            c = self._current
            loaded = "" if c.load_s is None else f" · loaded in {c.load_s:.1f} s"
            parts.append(f"Ready: **{c.spec.label}** on {c.device} · {c.nbytes / 2**20:.0f} MiB{loaded}")
        if self._loading is not None:
            parts.append(f"Loading **{self._loading.label}** …")
        elif self._error is not None:
            parts.append(f"Error: {self._error}")
        if not parts:
            parts.append("The model has not been loaded yet")
        return " · ".join(parts)

    # -- loading ----------------------------------------------------------------------------------------------
    def start_background_load(self) -> None:
        """Load the configured model in a daemon thread (the page is usable meanwhile)."""
        if self._current is not None:
            return
        thread = threading.Thread(target=self._background, name="xpullm-demo-load", daemon=True)
        thread.start()

    def _background(self) -> None:
        try:
            self.switch(self._spec)
        except Exception as exc:  # the status line shows it; the chat answers with the same message
            log.warning("background model load failed: %s", exc)

    def switch(self, spec: ModelSpec) -> LoadedModel:
        """Load `spec` (blocking) and make it current; on failure the previous model stays in use."""
        with self._lock:  # two switches at once would load twice and keep only one
            if self._current is not None and self._current.spec == spec:
                self._error = None  # a failed attempt at another model no longer matters
                return self._current
            self._loading, self._error = spec, None
            try:
                loaded = load(spec)
            except Exception as exc:
                self._error = f"could not load {spec.label}: {friendly(exc)}"
                raise UserFacingError(self._error) from exc
            finally:
                self._loading = None
            self._current = loaded
            self._spec = spec
            self._ready.set()
            return loaded

    def get(self, timeout: float = 600.0) -> LoadedModel:
        """The current model, waiting for the first load; a failed first load raises its readable message."""
        deadline = time.monotonic() + timeout
        while self._current is None:
            if self._error and self._loading is None:
                raise UserFacingError(self._error)
            if time.monotonic() > deadline:
                raise UserFacingError("the model is still loading; try again in a moment")
            self._ready.wait(0.2)
        return self._current
