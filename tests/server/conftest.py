"""Real `xpullm serve` apps on 127.0.0.1 (uvicorn in a thread), over the packaged models loaded once per session."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import torch
import uvicorn

from xpullm.cli.common import cached_llm
from xpullm.server import LocalEmbeddingEngine, LocalTextEngine, create_app

MODEL = "smollm2"
EMBED_MODEL = "minilm"


def pytest_sessionstart(session: pytest.Session) -> None:
    # Several test processes share two cores; more OpenMP threads than cores makes torch much slower.
    torch.set_num_threads(1)


@dataclass
class Server:
    """A running server: its base URL and its engines (for white-box checks of queue and slots)."""

    url: str
    text: LocalTextEngine
    embedder: LocalEmbeddingEngine | None

    @property
    def v1(self) -> str:
        return self.url + "/v1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(
    text: LocalTextEngine,
    embedder: LocalEmbeddingEngine | None = None,
    wait_ready: bool = True,
    **app_kw: Any,
) -> Iterator[Server]:
    """Serve `create_app(text, embedder)` on a free loopback port until the block ends (then drain and stop)."""
    port = _free_port()
    app = create_app(text, embedder, **app_kw)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while not server.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    while wait_ready and httpx.get(url + "/health").status_code != 200:
        assert time.monotonic() < deadline, "server did not become ready"
        time.sleep(0.05)
    try:
        yield Server(url, text, embedder)
    finally:
        server.should_exit = True
        thread.join(60)


@pytest.fixture(scope="session")
def llm() -> Any:
    """The packaged default LLM (shared with the engine and CLI tests)."""
    model = cached_llm()
    model.tokenizer  # noqa: B018  (load now so a loader failure shows up here)
    return model


@pytest.fixture(scope="session")
def embedder() -> Any:
    """The packaged default embedder."""
    from xpullm.embeddings import Embedder

    return Embedder()


@pytest.fixture(scope="session")
def server(llm: Any, embedder: Any) -> Iterator[Server]:
    """One server for the client tests: chat model `smollm2`, embedder `minilm`."""
    text = LocalTextEngine(llm, model_id=MODEL, max_queue=64)
    with running_server(text, LocalEmbeddingEngine.from_embedder(embedder, EMBED_MODEL)) as s:
        yield s
