"""`xpullm` command line: a registry of subcommand modules, each imported only when the CLI runs.

A module plugs in by defining `register(subparsers) -> None`, which adds its parser and sets
`func=handler(args) -> int`. Plug-ins from other packages are listed here too and skipped only while the module
does not exist yet; any other import error is shown, never hidden.

A user's mistake (an `XPULLMError`: a missing path, an unknown format, an empty prompt, a missing index, ...)
prints one `error:` line and a hint and exits with status 1; `--debug` (anywhere on the line) or
`XPULLM_DEBUG=1` shows the traceback instead. Ctrl-C exits with 130 without a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from xpullm.settings import runtime_settings

__all__ = ["SUBCOMMAND_MODULES", "build_parser", "main"]

SUBCOMMAND_MODULES: tuple[str, ...] = (
    "xpullm.cli.generate",
    "xpullm.cli.chat",
    "xpullm.cli.convert",
    "xpullm.cli.bench",
    "xpullm.cli.ppl",
    "xpullm.cli.info",
    "xpullm.cli.serve",
    "xpullm.cli.finetune",
    "xpullm.rag.cli",
    "xpullm.graphrag.cli",
    "xpullm.apps.cli",
)


def _import_plugin(name: str):
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        # Only "this module (or its package) does not exist" is skipped; a missing dependency inside it is a bug.
        if exc.name is not None and (exc.name == name or name.startswith(exc.name + ".")):
            return None
        raise


def build_parser(modules: Sequence[str] = SUBCOMMAND_MODULES) -> argparse.ArgumentParser:
    """The top-level parser with every available subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="xpullm",
        description="Run low-bit LLMs fast on CPU / NVIDIA / Intel GPU: generate, chat, convert, benchmark.",
        epilog="Run 'xpullm <command> --help' for a command's options. Without --model, the packaged "
        "SmolLM2-135M-Instruct is used (works offline).",
    )
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    for name in modules:
        module = _import_plugin(name)
        if module is not None:
            module.register(sub)
    return parser


def _split_debug(argv: Sequence[str]) -> tuple[list[str], bool]:
    """`--debug` may stand anywhere on the line (before or after the subcommand); it is taken out before parsing."""
    rest = [a for a in argv if a != "--debug"]
    return rest, len(rest) != len(argv) or runtime_settings().debug


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `xpullm` script; returns the process exit code."""
    from xpullm.errors import XPULLMError

    argv, debug = _split_debug(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except XPULLMError as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        print(f"hint: see 'xpullm {args.command} --help'; add --debug for the traceback", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
