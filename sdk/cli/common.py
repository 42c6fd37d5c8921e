"""Options and helpers shared by the subcommands (model selection, generation parameters)."""

from __future__ import annotations

import argparse
from typing import Any

from xpullm.units import human_duration

__all__ = [
    "add_generation_args",
    "add_model_args",
    "cached_llm",
    "generation_kwargs",
    "get_llm",
    "human_duration",
]

_LLMS: dict[tuple[Any, ...], Any] = {}


def add_model_args(p: argparse.ArgumentParser) -> None:
    """--model / --low-bit / --device / --max-context."""
    g = p.add_argument_group("model")
    g.add_argument(
        "--model",
        "-m",
        default=None,
        help="HF folder, .gguf file, low-bit folder or hub id (default: packaged SmolLM2-135M-Instruct)",
    )
    g.add_argument(
        "--low-bit",
        default=None,
        help="low-bit format when loading (default: the checkpoint's own, see 'xpullm info')",
    )
    g.add_argument("--device", default="auto", help="auto, cpu, cuda or xpu (default: auto)")
    g.add_argument("--max-context", type=int, default=None, help="cap on prompt + generated tokens")
    g.add_argument(
        "--kv-cache-dtype",
        default=None,
        choices=["auto", "bf16", "int8", "fp8_e4m3"],
        help="KV cache element: auto (activation dtype), bf16, int8 or fp8_e4m3 (8-bit: about half of bf16's KV memory)",
    )
    g.add_argument(
        "--streaming",
        action="store_true",
        default=None,
        help="keep attention-sink tokens + a recent window: run past the context length (docs/engine.md)",
    )


def add_generation_args(p: argparse.ArgumentParser) -> None:
    """Sampling and stopping options (names match LLM.generate's keyword arguments)."""
    g = p.add_argument_group("generation")
    g.add_argument(
        "--max-new-tokens", "-n", type=int, default=256, help="maximum tokens to generate (default: 256)"
    )
    g.add_argument("--temperature", "-t", type=float, default=0.0, help="0 = greedy (default)")
    g.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default: 1.0 = off)")
    g.add_argument("--top-k", type=int, default=0, help="sample among the k best tokens (default: 0 = off)")
    g.add_argument(
        "--repetition-penalty", type=float, default=1.0, help="> 1 discourages repeats (default: 1.0)"
    )
    g.add_argument("--seed", type=int, default=None, help="seed for reproducible sampling")
    g.add_argument(
        "--stop", action="append", default=None, help="stop string (repeatable; not included in output)"
    )


def generation_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The LLM.generate keyword arguments from parsed options."""
    return {
        "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "top_k": args.top_k,
        "repetition_penalty": args.repetition_penalty,
        "seed": args.seed,
        "stop": args.stop,
    }


def cached_llm(
    model: str | None = None,
    low_bit: str | None = None,
    device: str = "auto",
    max_context: int | None = None,
    kv_cache_dtype: str | None = None,
    streaming: bool | None = None,
) -> Any:
    """One `LLM` per distinct (model, low_bit, device, max_context, KV options) in this process (loaded lazily).

    Subcommands run in-process share it, and so can tests and REPL sessions that want the CLI's model.
    """
    from xpullm.engine import LLM

    key = (model, low_bit, device, max_context, kv_cache_dtype, streaming)
    if key not in _LLMS:
        _LLMS[key] = LLM(
            model=model, low_bit=low_bit, device=device, max_context=max_context, kv_cache_dtype=kv_cache_dtype,
            streaming=streaming,
        )  # fmt: skip
    return _LLMS[key]


def get_llm(args: argparse.Namespace) -> Any:
    """The `LLM` for the parsed --model/--low-bit/--device/--max-context options (see `cached_llm`)."""
    kv = getattr(args, "kv_cache_dtype", None)
    return cached_llm(
        args.model, args.low_bit, args.device, args.max_context, kv, getattr(args, "streaming", None)
    )
