"""`xpullm generate PROMPT`: complete one prompt (streamed to stdout by default)."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from xpullm.cli.common import add_generation_args, add_model_args, generation_kwargs, get_llm


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `generate` subcommand."""
    p = subparsers.add_parser(
        "generate", help="complete a prompt", description="Complete a prompt with the model."
    )
    p.add_argument("prompt", help="the prompt text ('-' reads it from stdin)")
    p.add_argument(
        "--chat", action="store_true", help="wrap the prompt as one user message in the chat template"
    )
    p.add_argument("--no-stream", action="store_true", help="print the text once at the end")
    p.add_argument(
        "--json", action="store_true", help="print the whole Completion (text, usage, timings) as JSON"
    )
    add_model_args(p)
    add_generation_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Handler of `xpullm generate`."""
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    llm = get_llm(args)
    kw = generation_kwargs(args)
    messages = [{"role": "user", "content": prompt}]
    if args.json or args.no_stream:
        out = llm.chat(messages, **kw) if args.chat else llm.generate(prompt, **kw)
        print(json.dumps(asdict(out), ensure_ascii=False) if args.json else out.text)
        return 0
    deltas = llm.stream_chat(messages, **kw) if args.chat else llm.stream(prompt, **kw)
    for delta in deltas:
        sys.stdout.write(delta)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0
