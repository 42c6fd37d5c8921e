"""The `--ray [ADDRESS]` options shared by `xpullm graphrag index|update` and `xpullm kb add|resume`."""

from __future__ import annotations

import argparse

from xpullm.scaleout.base import Executor, make_executor

__all__ = ["add_executor_arguments", "executor_from_args"]


def add_executor_arguments(parser: argparse.ArgumentParser) -> None:
    """Add --ray, --ray-workers, --ray-cpus, --ray-gpus to a subcommand."""
    group = parser.add_argument_group("scale-out (docs/scale-out.md)")
    group.add_argument(
        "--ray",
        nargs="?",
        const="auto",
        default=None,
        metavar="ADDRESS",
        help="run parsing, chunking, embedding and LLM calls on a Ray cluster: no ADDRESS = the cluster `ray start` "
        "runs here (or RAY_ADDRESS), HOST:PORT, ray://HOST:10001, or 'local' for a private one; put it after the "
        "positional arguments (or write --ray=ADDRESS). Needs pip install 'xpullm[ray]'",
    )
    group.add_argument(
        "--ray-workers",
        type=int,
        default=None,
        help="model-holding workers to start (default: as resources allow)",
    )
    group.add_argument("--ray-cpus", type=float, default=1.0, help="CPUs each worker reserves (default: 1)")
    group.add_argument("--ray-gpus", type=float, default=0.0, help="GPUs each worker reserves (default: 0)")


def executor_from_args(args: argparse.Namespace) -> Executor | None:
    """The executor the options ask for; None (this process) without --ray."""
    address = getattr(args, "ray", None)
    if address is None:
        return None
    return make_executor(
        f"ray:{address}", workers=args.ray_workers, num_cpus=args.ray_cpus, num_gpus=args.ray_gpus
    )
