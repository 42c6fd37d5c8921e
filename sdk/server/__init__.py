"""`xpullm serve`: an OpenAI-compatible HTTP server (FastAPI + uvicorn, the `server` extra).

`app` (lifespan, API key, error handlers, /health, /metrics), `routes` (one module per /v1 endpoint), `state`
(the served engines), `protocol` (wire schemas), `errors` (error objects), `metrics` (Prometheus text), `config`
(`ServerConfig`), `engine` (the seam the routes call) and `local_engine` (the backend on `xpullm.LLM`).
"""

from __future__ import annotations

from xpullm.server.app import create_app
from xpullm.server.config import ServerConfig
from xpullm.server.engine import EmbeddingEngine, GenerationStream, QueueFull, TextEngine
from xpullm.server.local_engine import LocalEmbeddingEngine, LocalTextEngine
from xpullm.server.run import build_engines, serve

__all__ = [
    "EmbeddingEngine",
    "GenerationStream",
    "LocalEmbeddingEngine",
    "LocalTextEngine",
    "QueueFull",
    "ServerConfig",
    "TextEngine",
    "build_engines",
    "create_app",
    "serve",
]
