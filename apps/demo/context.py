"""`DemoContext`: what every tab shares — the config, the chat model, the embedder and per-session stop events."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from xpullm.apps.demo.config import DemoConfig
from xpullm.apps.demo.models import ModelManager, ModelSpec
from xpullm.protocols import EmbeddingModel

if TYPE_CHECKING:
    from xpullm.engine import LLM

__all__ = ["LLM_QUEUE", "DemoContext"]

# Gradio concurrency group of every event that runs the chat model: one generation at a time, the rest queue.
LLM_QUEUE = "llm"


@dataclass
class DemoContext:
    """Shared state of one app instance (one process may build several, e.g. in tests)."""

    config: DemoConfig
    models: ModelManager
    embedder_override: EmbeddingModel | None = None
    _embedder: EmbeddingModel | None = None
    _embedder_lock: threading.Lock = field(default_factory=threading.Lock)
    _stops: dict[str, threading.Event] = field(default_factory=dict)

    @classmethod
    def create(
        cls, config: DemoConfig, llm: LLM | None = None, embedder: EmbeddingModel | None = None
    ) -> DemoContext:
        """A context for `config`; `llm` / `embedder` inject already loaded engines (tests)."""
        spec = ModelSpec(config.model, config.low_bit, config.device)
        config.data_dir.mkdir(parents=True, exist_ok=True)
        return cls(config, ModelManager(spec, llm=llm), embedder_override=embedder)

    @property
    def embedder(self) -> EmbeddingModel:
        """The embedding model (packaged all-MiniLM-L6-v2 unless injected), loaded on first use."""
        if self.embedder_override is not None:
            return self.embedder_override
        with self._embedder_lock:
            if self._embedder is None:
                from xpullm.embeddings import Embedder

                self._embedder = Embedder(device=self.config.device)
            return self._embedder

    def stop_event(self, session: str) -> threading.Event:
        """A fresh stop event for this browser session's next generation."""
        event = threading.Event()
        self._stops[session] = event
        return event

    def stop(self, session: str) -> bool:
        """Ask the session's running generation to stop; False when nothing was running."""
        event = self._stops.get(session)
        if event is None or event.is_set():
            return False
        event.set()
        return True
