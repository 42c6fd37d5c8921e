"""`create_app`: the FastAPI application (lifespan loading, API-key check, error objects, /health, /metrics)."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from xpullm.server.engine import EmbeddingEngine, TextEngine
from xpullm.server.errors import APIError, error_body
from xpullm.server.metrics import Metrics
from xpullm.server.routes import router
from xpullm.server.state import ServerState

__all__ = ["create_app"]

log = logging.getLogger("xpullm.server")


def create_app(
    text: TextEngine | None,
    embedder: EmbeddingEngine | None = None,
    *,
    api_key: str | None = None,
    metrics: Metrics | None = None,
    default_max_tokens: int | None = None,
    graceful_timeout_s: float = 30.0,
) -> FastAPI:
    """The ASGI app serving `text` (chat/completions) and `embedder` (/v1/embeddings).

    Models load in a background thread when the app starts; until then /health and the /v1 endpoints answer 503.
    On shutdown (after the server has drained open requests) a load still running gets `graceful_timeout_s` to
    finish (so a model cache being written is completed rather than cut off), then the engines are closed.
    """
    if text is None and embedder is None:
        raise ValueError("create_app needs a text engine, an embedding engine, or both")
    state = ServerState(text=text, embedder=embedder, default_max_tokens=default_max_tokens)
    metrics = metrics or getattr(text, "metrics", None) or Metrics()
    engines = [e for e in (text, embedder) if e is not None]

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async def load() -> None:
            for engine in engines:
                try:
                    await asyncio.to_thread(engine.load)
                except Exception as exc:  # /health reports it; the server stays up to say why
                    state.load_error = f"{type(exc).__name__}: {exc}"
                    log.exception("loading %s failed", engine.model_id)
                    return
            log.info("ready: %s", ", ".join(state.model_ids()))

        loader = asyncio.create_task(load())
        try:
            yield
        finally:
            if not loader.done():
                log.warning(
                    "shutting down while loading: waiting up to %.0f s for it to finish", graceful_timeout_s
                )
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(asyncio.shield(loader), graceful_timeout_s)
            loader.cancel()
            for engine in engines:
                await asyncio.to_thread(engine.close)

    app = FastAPI(title="xpullm", summary="OpenAI-compatible server for xpullm models", lifespan=lifespan)
    app.state.xpullm = state

    # A dependency, not an HTTP middleware: Starlette's BaseHTTPMiddleware reports a disconnect to streaming
    # responses as soon as the request body is read, which would cancel every stream at once.
    async def check_api_key(request: Request) -> None:
        if api_key is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip(), api_key):
            raise APIError(
                401,
                "missing or wrong API key: send 'Authorization: Bearer <key>' with the server's --api-key",
                "invalid_request_error",
                None,
                "invalid_api_key",
            )

    @app.exception_handler(APIError)
    async def api_error(_: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        param = _param_name(first.get("loc", ()))
        message = f"{param or 'body'}: {first.get('msg', 'invalid value')}"
        return JSONResponse(error_body(message, "invalid_request_error", param), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return JSONResponse(error_body(str(exc.detail), kind), status_code=exc.status_code)

    @app.get("/health")
    async def health() -> JSONResponse:
        if state.load_error:
            return JSONResponse({"status": "error", "error": state.load_error}, status_code=503)
        if not all(e.ready for e in engines):
            return JSONResponse({"status": "loading"}, status_code=503)
        return JSONResponse({"status": "ok", "models": state.model_ids()})

    @app.get("/metrics")
    async def prometheus() -> PlainTextResponse:
        stats = text.stats() if text is not None and text.ready else None
        return PlainTextResponse(metrics.render(stats), media_type="text/plain; version=0.0.4")

    app.include_router(router, dependencies=[Depends(check_api_key)])
    return app


def _param_name(loc: tuple[Any, ...] | list[Any]) -> str | None:
    """('body', 'messages', 0, 'role') -> 'messages[0].role'."""
    parts = list(loc)[1:] if loc and loc[0] == "body" else list(loc)
    # pydantic appends the union member it tried (e.g. 'str', 'list[str]'); it is not a field
    name = ""
    for p in parts:
        if isinstance(p, int):
            name += f"[{p}]"
        elif isinstance(p, str) and ("[" in p or p in {"str", "int", "float", "bool"}):
            continue
        else:
            name += f".{p}" if name else str(p)
    return name or None
