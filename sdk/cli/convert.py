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
        "--low-bit",
        default=None,
        help="target format (see 'xpullm info'; default: sym_int4, or a low-bit folder's own with --merge-adapter)",
    )
    p.add_argument("--group-size", type=int, default=None, help="scale group size (default: the format's)")
    p.add_argument("--mixed-precision", action="store_true", help="keep lm_head in sym_int8")
    p.add_argument(
        "--merge-adapter",
        default=None,
        metavar="ADAPTER",
        help="fold a LoRA adapter folder (xpullm finetune) into the weights, re-quantized in their formats",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Handler of `xpullm convert` (the loader shows a progress bar while it quantizes)."""
    from xpullm.loading import AutoModelForCausalLM, load_tokenizer

    source = args.source
    if args.merge_adapter is not None:
        return _merge(args, source)
    if source == "default":
        from xpullm.models import default_llm_gguf

        source = str(default_llm_gguf())
    model = AutoModelForCausalLM.from_pretrained(
        source, load_in_low_bit=args.low_bit or "sym_int4", group_size=args.group_size, mixed_precision=args.mixed_precision,
        device="cpu", progress=True,
    )  # fmt: skip
    out = model.save_low_bit(args.output, tokenizer=load_tokenizer(source))
    print(f"saved {args.low_bit or 'sym_int4'} model to {out}")
    return 0


def _merge(args: argparse.Namespace, source: str) -> int:
    """Load `source` (a low-bit folder keeps its formats), merge the adapter, save a plain low-bit folder."""
    from xpullm.finetune import FinetuneConfig, load_base, merge_adapter
    from xpullm.loading.lowbit_io import save_low_bit
    from xpullm.models import default_llm_path

    source = str(default_llm_path()) if source == "default" else source
    model, tokenizer = load_base(source, FinetuneConfig(low_bit=args.low_bit))
    merged = merge_adapter(model, args.merge_adapter)
    out = save_low_bit(merged, args.output, tokenizer=tokenizer)
    print(f"merged {args.merge_adapter} into {source} and saved the re-quantized model to {out}")
    return 0
