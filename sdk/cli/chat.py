"""`xpullm chat`: an interactive, streamed conversation (type /exit or send EOF to leave, /reset to forget)."""

from __future__ import annotations

import argparse
import sys

from xpullm.cli.common import add_generation_args, add_model_args, generation_kwargs, get_llm


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `chat` subcommand."""
    p = subparsers.add_parser(
        "chat",
        help="interactive streamed chat",
        description="Chat with the model; answers stream as they are generated. Commands: /reset, /exit.",
    )
    p.add_argument("--system", default=None, help="system message")
    add_model_args(p)
    add_generation_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Handler of `xpullm chat`: reads user turns from stdin until EOF or /exit."""
    llm = get_llm(args)
    kw = generation_kwargs(args)
    start = [{"role": "system", "content": args.system}] if args.system else []
    history = list(start)
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            sys.stdout.write("you> ")
            sys.stdout.flush()
        line = sys.stdin.readline()
        if not line:
            break
        text = line.strip()
        if not text:
            continue
        if text == "/exit":
            break
        if text == "/reset":
            history = list(start)
            continue
        history.append({"role": "user", "content": text})
        sys.stdout.write("assistant> ")
        parts = []
        for delta in llm.stream_chat(history, **kw):
            parts.append(delta)
            sys.stdout.write(delta)
            sys.stdout.flush()
        sys.stdout.write("\n")
        history.append({"role": "assistant", "content": "".join(parts)})
    return 0
