"""Build the engines a `ServerConfig` asks for and run the app under uvicorn (graceful on SIGTERM/SIGINT)."""

from __future__ import annotations

from xpullm.server.app import create_app
from xpullm.server.config import ServerConfig
from xpullm.server.local_engine import LocalEmbeddingEngine, LocalTextEngine

__all__ = ["build_engines", "serve"]


def build_engines(config: ServerConfig) -> tuple[LocalTextEngine, LocalEmbeddingEngine | None]:
    """The text engine (and embedder, unless `no_embedder`) for `config`; nothing is loaded yet."""
    from xpullm.engine import LLM

    llm = LLM(
        model=config.model, low_bit=config.low_bit, device=config.device, max_context=config.max_context,
        kv_cache_dtype=config.kv_cache_dtype, streaming=config.streaming,
        tensor_parallel=config.tensor_parallel,
    )  # fmt: skip
    text = LocalTextEngine(
        llm, model_id=config.model_name, max_queue=config.max_queue, max_running=config.max_running
    )
    embedder = None
    if not config.no_embedder:
        embedder = LocalEmbeddingEngine(
            config.embedder,
            device=config.device,
            model_id=config.embedder_name or _default_embedder_id(config),
        )
    return text, embedder


def _default_embedder_id(config: ServerConfig) -> str:
    from pathlib import Path

    from xpullm.server.local_engine import DEFAULT_EMBEDDER_ID

    return Path(config.embedder).name if config.embedder else DEFAULT_EMBEDDER_ID


def serve(config: ServerConfig) -> int:
    """Serve until SIGTERM/SIGINT; running requests get `graceful_timeout_s` to finish. Returns the exit code."""
    import uvicorn

    text, embedder = build_engines(config)
    llm = text.llm
    app = create_app(
        text,
        embedder,
        api_key=config.api_key,
        default_max_tokens=config.default_max_tokens,
        graceful_timeout_s=config.graceful_timeout_s,
    )
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=config.host,
            port=config.port,
            log_level=config.log_level,
            timeout_graceful_shutdown=config.graceful_timeout_s,
        )
    )
    try:
        server.run()
    finally:
        llm.close()  # tensor-parallel workers stop with the server
    return 0
