"""`ServerState`: the engines the routes serve (on `app.state.xpullm`) and the lookup of a request's `model`."""

from __future__ import annotations

from dataclasses import dataclass, field

from fastapi import Request

from xpullm.server.engine import EmbeddingEngine, TextEngine
from xpullm.server.errors import APIError
from xpullm.server.protocol import now

__all__ = ["ServerState", "state_of"]


@dataclass
class ServerState:
    """What the routes serve; lives on `app.state.xpullm`."""

    text: TextEngine | None
    embedder: EmbeddingEngine | None
    load_error: str | None = None
    default_max_tokens: int | None = None
    created: int = field(default_factory=now)

    def text_engine(self, model: str) -> TextEngine:
        """The text engine if `model` names it (404 otherwise, 503 while loading)."""
        if self.text is None or model != self.text.model_id:
            raise _unknown_model(model, self)
        _require_ready(self.text, self)
        return self.text

    def embedding_engine(self, model: str) -> EmbeddingEngine:
        """The embedder if `model` names it (404 otherwise, 503 while loading)."""
        if self.embedder is None or model != self.embedder.model_id:
            raise _unknown_model(model, self)
        _require_ready(self.embedder, self)
        return self.embedder

    def model_ids(self) -> list[str]:
        """Every id clients may pass as `model`."""
        return [e.model_id for e in (self.text, self.embedder) if e is not None]


def state_of(request: Request) -> ServerState:
    """The `ServerState` of the app serving `request`."""
    return request.app.state.xpullm


def _unknown_model(model: str, state: ServerState) -> APIError:
    return APIError(
        404,
        f"the model {model!r} does not exist here; served models: {state.model_ids()} (GET /v1/models)",
        "invalid_request_error",
        "model",
        "model_not_found",
    )


def _require_ready(engine: TextEngine | EmbeddingEngine, state: ServerState) -> None:
    if not engine.ready:
        reason = (
            f"loading failed: {state.load_error}" if state.load_error else "retry when GET /health is 200"
        )
        raise APIError(
            503, f"the model {engine.model_id!r} is still loading; {reason}", "service_unavailable"
        )
