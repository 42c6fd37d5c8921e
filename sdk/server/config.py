"""`ServerConfig`: every knob of `xpullm serve`, from command-line options or a TOML/JSON file."""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

__all__ = ["ServerConfig"]


@dataclass(frozen=True)
class ServerConfig:
    """What the server serves and how it listens."""

    model: str | None = None
    """LLM: HF folder, .gguf, low-bit folder or hub id; None = packaged SmolLM2-135M-Instruct (offline)."""
    low_bit: str | None = None
    """Low-bit format the LLM is loaded in."""
    device: str = "auto"
    """auto, cpu, cuda or xpu."""
    max_context: int | None = None
    """Cap on prompt + generated tokens; prompts that do not fit get 400 (never truncated)."""
    kv_cache_dtype: str | None = None
    """KV cache element: "auto" (activation dtype), "bf16", "int8" or "fp8_e4m3"; None: the engine default (auto)."""
    streaming: bool | None = None
    """Keep attention sinks + a recent window per request: chats run past the context length (docs/engine.md)."""
    tensor_parallel: int = 1
    """Split the LLM over this many ranks (one device each; gloo ranks on CPU), docs/parallel.md."""
    model_name: str | None = None
    """The `model` id clients send for chat/completions (default: the model's folder/file name)."""
    embedder: str | None = None
    """Sentence-transformers folder or hub id; None = packaged all-MiniLM-L6-v2."""
    embedder_name: str | None = None
    """The `model` id clients send to /v1/embeddings (default: the embedder's name)."""
    no_embedder: bool = False
    """Serve no /v1/embeddings (saves the embedder's memory)."""
    host: str = "127.0.0.1"
    """Interface to bind; loopback unless you mean to expose the server."""
    port: int = 8000
    api_key: str | None = None
    """When set, /v1/* requests must send `Authorization: Bearer <key>` (else 401)."""
    max_running: int = 8
    """Requests generating at once (each from its own thread; a batching engine shares its steps between them)."""
    max_queue: int = 64
    """Requests allowed to wait for a running slot; one more gets 429 (a bounded queue keeps latency bounded)."""
    default_max_tokens: int | None = None
    """Generation cap when a request sends no max_tokens (None: the rest of the context, as OpenAI does).
    Tools such as GraphRAG send none; a small model can then ramble to the end of a long context."""
    graceful_timeout_s: float = 30.0
    """On SIGTERM/SIGINT, how long running requests may take to finish before the server stops anyway."""
    log_level: str = "info"

    @classmethod
    def from_file(cls, path: str | Path, **overrides: Any) -> ServerConfig:
        """Read a `.toml` (keys at top level or under `[serve]`) or `.json` file; `overrides` win."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"config file {str(path)!r} does not exist; pass an existing .toml or .json"
            )
        if path.suffix == ".toml":
            import tomllib

            data = tomllib.loads(path.read_text())
        elif path.suffix == ".json":
            data = json.loads(path.read_text())
        else:
            raise ValueError(f"config file {str(path)!r}: expected a .toml or .json file")
        data = {k.replace("-", "_"): v for k, v in data.get("serve", data).items()}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"config file {str(path)!r}: unknown key {unknown[0]!r}; known keys: {sorted(known)}"
            )
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**data)
