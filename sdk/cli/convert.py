"""`xpullm convert SRC OUT`: load a model in a low-bit format and save it as a low-bit folder."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `convert` subcommand."""
    p = subparsers.add_parser(
        "convert",
        help="convert a model to a low-bit folder",
        description="Quantize a HF folder / GGUF file / hub id and save it (safetensors) for fast reloads.",
    )
    p.add_argument("source", help="HF folder, .gguf file or hub id ('default' = the packaged SmolLM2)")
    p.add_argument("output", help="folder to write")
    p.add_argument(
        "--low-bit", default="sym_int4", help="target format (see 'xpullm info'; default: sym_int4)"
    )
    p.add_argument("--group-size", type=int, default=None, help="scale group size (default: the format's)")
    p.add_argument("--mixed-precision", action="store_true", help="keep lm_head in sym_int8")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Handler of `xpullm convert` (the loader shows a progress bar while it quantizes)."""
    from xpullm.loading import AutoModelForCausalLM, load_tokenizer

    source = args.source
    if source == "default":
        from xpullm.models import default_llm_gguf

        source = str(default_llm_gguf())
    model = AutoModelForCausalLM.from_pretrained(
        source, load_in_low_bit=args.low_bit, group_size=args.group_size, mixed_precision=args.mixed_precision,
        device="cpu", progress=True,
    )  # fmt: skip
    out = model.save_low_bit(args.output, tokenizer=load_tokenizer(source))
    print(f"saved {args.low_bit} model to {out}")
    return 0
