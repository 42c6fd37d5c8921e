"""`xpullm bench`: first-token latency, decode tokens/s and peak memory of one model on this machine."""

from __future__ import annotations

import argparse
import json
import resource
import sys

from xpullm.cli.common import add_model_args, get_llm


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `bench` subcommand."""
    p = subparsers.add_parser(
        "bench",
        help="measure first-token latency, decode tok/s, peak memory",
        description="Greedy generation of --new-tokens after a --prompt-tokens prompt, best of --repeat runs.",
    )
    p.add_argument("--prompt-tokens", type=int, default=128, help="prompt length in tokens (default: 128)")
    p.add_argument("--new-tokens", type=int, default=128, help="tokens to generate (default: 128)")
    p.add_argument("--repeat", type=int, default=3, help="runs; the best is reported (default: 3)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    add_model_args(p)
    p.set_defaults(func=run)


def make_prompt(tokenizer, n: int) -> str:
    """A natural-text prompt of exactly `n` tokens (the engine's own count)."""
    base = "The history of science is the study of how people came to understand the natural world. "
    ids = tokenizer(base * (n // 8 + 2), add_special_tokens=False)["input_ids"]
    special = len(tokenizer("x")["input_ids"]) - len(tokenizer("x", add_special_tokens=False)["input_ids"])
    return tokenizer.decode(ids[: n - special])


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def run(args: argparse.Namespace) -> int:
    """Handler of `xpullm bench`."""
    llm = get_llm(args)
    prompt = make_prompt(llm.tokenizer, args.prompt_tokens)
    llm.generate(prompt, max_new_tokens=4)  # warm-up: allocates the cache, first-call kernel setup
    runs = []
    for _ in range(max(1, args.repeat)):
        # A stop set that never matches and no EOS check is not needed: count what was generated.
        runs.append(llm.generate(prompt, max_new_tokens=args.new_tokens))
    best = max(runs, key=lambda c: c.decode_tok_s)
    result = {
        "model": llm.model_name,
        "low_bit": args.low_bit,
        "decoder": llm.decoder_name,
        "prompt_tokens": best.prompt_tokens,
        "new_tokens": best.completion_tokens,
        "first_token_s": round(min(c.first_token_s for c in runs), 4),
        "decode_tok_s": round(best.decode_tok_s, 2),
        "peak_rss_mib": round(peak_rss_mib(), 1),
    }
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:>14}: {v}")
    return 0
