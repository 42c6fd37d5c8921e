"""`xpullm serve`: the OpenAI-compatible HTTP server (needs the `server` extra: pip install 'xpullm[server]')."""

from __future__ import annotations

import argparse
from dataclasses import fields

from xpullm.cli.common import add_model_args


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `serve` subcommand."""
    p = subparsers.add_parser(
        "serve",
        help="serve the model over the OpenAI API",
        description="Serve chat/completions and embeddings over an OpenAI-compatible HTTP API (docs/serve.md).",
    )
    add_model_args(p)
    p.set_defaults(low_bit=None, device=None)  # None = take it from --config or the ServerConfig default
    p.add_argument(
        "--config", default=None, help="a .toml or .json file of these options (options given here win)"
    )
    p.add_argument(
        "--model-name", default=None, help="the `model` id clients send (default: the model's name)"
    )
    p.add_argument("--embedder", default=None, help="sentence-transformers folder (default: packaged MiniLM)")
    p.add_argument("--embedder-name", default=None, help="the `model` id for /v1/embeddings")
    p.add_argument("--no-embedder", action="store_true", default=None, help="serve no /v1/embeddings")
    p.add_argument("--host", default=None, help="interface to bind (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=None, help="port (default: 8000)")
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on /v1/* (else 401)")
    p.add_argument("--max-running", type=int, default=None, help="requests generating at once (default: 8)")
    p.add_argument(
        "--max-queue", type=int, default=None, help="requests that may wait; more get 429 (default: 64)"
    )
    p.add_argument(
        "--default-max-tokens",
        type=int,
        default=None,
        help="cap when a request sends no max_tokens (default: the rest of the context)",
    )
    p.add_argument(
        "--graceful-timeout-s", type=float, default=None, help="drain time on SIGTERM/SIGINT (default: 30)"
    )
    p.add_argument("--log-level", default=None, help="uvicorn log level (default: info)")
    p.add_argument(
        "--tensor-parallel", type=int, default=None, metavar="N",
        help="split the LLM over N ranks: N GPUs, or N gloo ranks on CPU (default: 1; docs/parallel.md)",
    )  # fmt: skip
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Handler of `xpullm serve`."""
    try:
        from xpullm.server import ServerConfig, serve
    except ModuleNotFoundError as exc:
        raise SystemExit(
            f"xpullm serve needs the server extra ({exc.name} is missing): pip install 'xpullm[server]'"
        ) from exc
    given = {f.name: getattr(args, f.name, None) for f in fields(ServerConfig)}
    given = {k: v for k, v in given.items() if v is not None}
    config = ServerConfig.from_file(args.config, **given) if args.config else ServerConfig(**given)
    return serve(config)
