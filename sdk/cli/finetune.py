"""`xpullm finetune DATA OUT`: train a LoRA adapter over a low-bit model (resumes from OUT's checkpoint)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `finetune` subcommand."""
    from xpullm.finetune.config import DEFAULT_TARGETS, FinetuneConfig

    d = FinetuneConfig()
    p = subparsers.add_parser(
        "finetune",
        help="train a LoRA adapter on your data over a low-bit model (QLoRA)",
        description="Fine-tune a LoRA adapter on a JSONL file (text / messages / prompt+completion records) or a "
        "folder of documents, over frozen low-bit weights. Re-running with the same OUT resumes from its "
        "last checkpoint. Serve the result with LLM(..., adapter=OUT/adapter) or merge it with "
        "'xpullm convert --merge-adapter'. Needs: pip install 'xpullm[finetune]'.",
    )
    p.add_argument("data", help=".jsonl file, a document, or a folder of documents")
    p.add_argument("output", help="folder for checkpoints and the adapter (OUT/adapter)")
    p.add_argument(
        "--model",
        "-m",
        default=None,
        help="HF folder, .gguf, low-bit folder or hub id (default: packaged SmolLM2-135M)",
    )
    p.add_argument(
        "--low-bit", default=None, help="base format (default: a low-bit folder's own, else sym_int4)"
    )
    p.add_argument("--device", default=d.device, help=f"cpu, cuda or xpu (default: {d.device})")
    p.add_argument("--rank", "-r", type=int, default=d.r, help=f"LoRA rank (default: {d.r})")
    p.add_argument(
        "--alpha", type=int, default=d.alpha, help=f"LoRA alpha; scaling = alpha / rank (default: {d.alpha})"
    )
    p.add_argument("--dropout", type=float, default=d.dropout, help=f"LoRA dropout (default: {d.dropout})")
    p.add_argument(
        "--targets", default=",".join(DEFAULT_TARGETS), help="comma-separated module names to adapt"
    )
    p.add_argument("--epochs", type=int, default=d.epochs, help=f"passes over the data (default: {d.epochs})")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many optimizer steps")
    p.add_argument(
        "--batch-size", "-b", type=int, default=d.batch_size, help=f"rows per step (default: {d.batch_size})"
    )
    p.add_argument("--seq-len", type=int, default=d.seq_len, help=f"tokens per row (default: {d.seq_len})")
    p.add_argument("--lr", type=float, default=d.lr, help=f"AdamW learning rate (default: {d.lr})")
    p.add_argument(
        "--save-every",
        type=int,
        default=d.save_every,
        help=f"steps between checkpoints (default: {d.save_every})",
    )
    p.add_argument(
        "--no-gradient-checkpointing", action="store_true", help="keep activations (faster, more memory)"
    )
    p.add_argument("--seed", type=int, default=d.seed, help=f"shuffling / dropout seed (default: {d.seed})")
    p.add_argument(
        "--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)"
    )
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Handler of `xpullm finetune`."""
    import torch

    from xpullm.finetune import FinetuneConfig, finetune

    if args.threads:
        torch.set_num_threads(args.threads)
    config = FinetuneConfig(
        low_bit=args.low_bit, device=args.device, r=args.rank, alpha=args.alpha, dropout=args.dropout,
        targets=tuple(t.strip() for t in args.targets.split(",") if t.strip()), seq_len=args.seq_len,
        epochs=args.epochs, max_steps=args.max_steps, batch_size=args.batch_size, lr=args.lr,
        gradient_checkpointing=not args.no_gradient_checkpointing, seed=args.seed, save_every=args.save_every,
    )  # fmt: skip
    result = finetune(args.model, args.data, args.output, config, progress=not args.quiet)
    resumed = f" (resumed at step {result.resumed_from})" if result.resumed_from else ""
    last = f"{result.losses[-1]:.4f}" if result.losses else "n/a"
    print(
        f"trained {result.steps} steps{resumed}: last loss {last}, {result.tokens_per_s:.1f} target tokens/s"
    )
    print(f"adapter saved to {result.adapter_path}")
    return 0
