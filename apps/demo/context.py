"""`DemoContext`: what every tab shares — the config, the chat model, the embedder, the generation slots, the stored
conversations and per-session stop events."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from xpullm.apps.demo.config import DemoConfig
from xpullm.apps.demo.conversations import ConversationStore
from xpullm.apps.demo.models import ModelManager, ModelSpec
from xpullm.apps.demo.slots import GenerationSlots
from xpullm.protocols import EmbeddingModel

if TYPE_CHECKING:
    from xpullm.engine import LLM

__all__ = ["EXCLUSIVE_QUEUE", "DemoContext"]

# Gradio concurrency group of the jobs that run one at a time (GraphRAG indexing, format measurements): each also
# holds a generation slot while it runs. Chat, knowledge-base and GraphRAG answers start at once and wait for a
# slot in `DemoContext.slots`, where the page can show their place in line.
EXCLUSIVE_QUEUE = "exclusive"


@dataclass
class DemoContext:
    """Shared state of one app instance (one process may build several, e.g. in tests)."""

    config: DemoConfig
    models: ModelManager
    slots: GenerationSlots
    conversations: ConversationStore
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
        return cls(
            config,
            ModelManager(spec, llm=llm),
            GenerationSlots(config.concurrent_answers),
            ConversationStore(config.data_dir / "chats.sqlite"),
            embedder_override=embedder,
        )

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
        """A fresh stop event for this browser session's next generation (it counts as generating until set)."""
        event = threading.Event()
        self._stops[session] = event
        return event

    def current_stop(self, session: str) -> threading.Event:
        """The session's unset stop event (the one its waiting or running generation watches), or a fresh one."""
        event = self._stops.get(session)
        return event if event is not None and not event.is_set() else self.stop_event(session)

    def generating(self, session: str) -> bool:
        """Whether the session has a generation waiting or running."""
        event = self._stops.get(session)
        return event is not None and not event.is_set()

    def stop(self, session: str) -> bool:
        """Ask the session's running generation to stop; False when nothing was running."""
        event = self._stops.get(session)
        if event is None or event.is_set():
            return False
        event.set()
        return True
