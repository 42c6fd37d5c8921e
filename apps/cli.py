"""`xpullm demo`: serve the Gradio demo app (plug-in of the `xpullm` CLI; Gradio is imported only when it runs)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

__all__ = ["has_display", "register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `demo` subcommand."""
    from xpullm.apps.demo.config import DEMO_LOW_BIT

    p = subparsers.add_parser(
        "demo",
        help="serve the Gradio demo app (chat, knowledge base, GraphRAG, speed)",
        description="Serve the demo in the browser. The page is up at once; the model loads in the background.",
    )
    p.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)"
    )
    p.add_argument("--port", type=int, default=None, help="port (default: 7860, or the next free one)")
    p.add_argument(
        "--share", action="store_true", help="also create a public gradio.live link (needs internet)"
    )
    p.add_argument(
        "--model",
        "-m",
        default=None,
        help="HF folder, .gguf file, low-bit folder or hub id (default: packaged SmolLM2-135M-Instruct)",
    )
    p.add_argument(
        "--low-bit", default=DEMO_LOW_BIT, help=f"low-bit format of the chat model (default: {DEMO_LOW_BIT})"
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or xpu (default: auto)")
    p.add_argument(
        "--data-dir", type=Path, default=None, help="where bases and projects live (default: cache)"
    )
    p.add_argument("--max-upload-mb", type=int, default=20, help="per-file upload limit in MB (default: 20)")
    p.add_argument(
        "--models-dir",
        action="append",
        type=Path,
        default=[],
        metavar="DIR",
        help="where the model picker looks for .gguf files and model folders (repeatable; DATA_DIR/models and "
        "the Hugging Face cache are always searched)",
    )
    p.add_argument(
        "--concurrent-answers",
        type=int,
        default=4,
        metavar="N",
        help="answers generated at once; more requests wait in line and see their position (default: 4)",
    )
    p.add_argument("--no-browser", action="store_true", help="do not open a browser tab")
    p.add_argument("--no-preload", action="store_true", help="load the model on the first request instead")
    p.add_argument(
        "--graphrag-transcript", type=Path, default=None, help="replay this recorded GraphRAG job (JSONL)"
    )
    p.add_argument("--graphrag-settings", type=Path, default=None, help="settings.yaml for GraphRAG projects")
    p.set_defaults(func=run)


def has_display() -> bool:
    """Whether a browser window could open here (no DISPLAY on a Linux server or container)."""
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def _config(args: argparse.Namespace) -> Any:
    from xpullm.apps.demo import DemoConfig

    kwargs = {} if args.data_dir is None else {"data_dir": args.data_dir}
    return DemoConfig(
        model=args.model,
        low_bit=args.low_bit,
        device=args.device,
        max_upload_mb=args.max_upload_mb,
        model_dirs=tuple(args.models_dir),
        concurrent_answers=args.concurrent_answers,
        preload=not args.no_preload,
        graphrag_transcript=args.graphrag_transcript,
        graphrag_settings=args.graphrag_settings,
        **kwargs,
    )


def run(args: argparse.Namespace) -> int:
    """Handler of `xpullm demo`: serve until Ctrl-C."""
    from xpullm.apps.demo import launch

    try:
        config = _config(args)
    except ValueError as exc:  # a bad option value: one line, like every other CLI mistake
        print(f"error: {exc}\nhint: see 'xpullm demo --help'", file=sys.stderr)
        return 1
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: binding {args.host}: anyone who can reach this machine can use the demo", flush=True)
    print("starting the xpullm demo (the model loads in the background)…", flush=True)
    try:
        launch(
            config,
            host=args.host,
            port=args.port,
            share=args.share,
            open_browser=not args.no_browser and has_display(),
        )
    except KeyboardInterrupt:
        print("\nstopped", flush=True)
    return 0
