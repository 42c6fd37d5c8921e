"""What a verified draft row costs on CPU: the runner's forward over 1 + k tokens of one sequence vs one token.

Speculative decoding verifies k drafts as one chunk of k + 1 consecutive tokens, so its speed-up is tokens per
step over (1 + k x row cost). This times the engine's `ModelRunner.forward` (packaged SmolLM2-135M, the native layer
stack, paged attention) for chunks of 1..9 tokens after a prompt of `--context` tokens, split into the native
layer calls, attention and the rest (embedding, final norm + LM head, Python), with the native attention's token
groups (consecutive tokens of a sequence share every key and value load, `paged_group` in `csrc/cpu_ops.c`) on
and off (`xq_set_paged_group(1)`: one job per token and kv head, the kernel before groups). Sizes and both
settings are interleaved round by round; medians.

    .venv/bin/python -P bench/spec_row_cost.py [--contexts 300,800] [--rounds 15] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict

import torch

SIZES = (1, 2, 3, 5, 7, 9)


def _timed(fn, acc: dict[str, float], name: str):
    def run(*args, **kwargs):
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        acc[name] += time.perf_counter() - t0
        return out

    return run


class _TimedLib:
    """The native library with its layer calls timed (everything else passes through)."""

    def __init__(self, lib: object, acc: dict[str, float]) -> None:
        self._lib, self._acc = lib, acc

    def __getattr__(self, name: str):
        fn = getattr(self._lib, name)
        return _timed(fn, self._acc, "layers") if name.startswith("xq_") else fn


def measure(context: int, rounds: int) -> dict[tuple[int, int], list[dict[str, float]]]:
    """{(group max, tokens): per round {"total", "layers", "attention"} seconds}."""
    from xpullm.engine import LLM
    from xpullm.engine.runner import ModelRunner
    from xpullm.kernels import cpu_native

    llm = LLM()
    dec = llm.engine.runner.dec
    blocks = -(-(context + 16) // 16)
    runner = ModelRunner(dec, num_blocks=blocks, block_size=16, max_seqs=1, max_positions=blocks * 16)
    runner.set_table(0, list(range(blocks)))
    ids = torch.randint(100, 40000, (context,), generator=torch.Generator().manual_seed(0)).tolist()
    runner.forward(ids, list(range(context)), [0] * context, [context - 1])
    acc: dict[str, float] = defaultdict(float)
    lib = cpu_native.library()
    if runner._stack is None:
        raise SystemExit("the native layer stack is off here (XPULLM_FUSED_OPS=0, or no native library)")
    runner._stack._lib = _TimedLib(runner._stack._lib, acc)
    runner._paged = _timed(runner._paged, acc, "attention")
    out: dict[tuple[int, int], list[dict[str, float]]] = defaultdict(list)
    for r in range(rounds + 1):
        for most in (1, 8) if r % 2 else (8, 1):
            lib.xq_set_paged_group(most)
            if r <= 3:  # the prompt's prefill (K/V rewritten with the same values), a few rounds: it is slow
                acc.clear()
                t0 = time.perf_counter()
                runner.forward(ids, list(range(context)), [0] * context, [context - 1])
                out[(most, context)].append({"total": time.perf_counter() - t0, **acc})
            for n in SIZES:
                acc.clear()
                t0 = time.perf_counter()
                runner.forward(ids[:n], list(range(context, context + n)), [0] * n, list(range(n)))
                total = time.perf_counter() - t0
                if r:  # round 0 warms up
                    out[(most, n)].append({"total": total, **acc})
    lib.xq_set_paged_group(8)
    return out


def table(context: int, res: dict[tuple[int, int], list[dict[str, float]]]) -> str:
    lines = [
        "| context | attention | tokens | forward ms | x one token | per extra row "
        "| layers ms | attention ms | rest ms |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for most in (1, 8):
        one = statistics.median(x["total"] for x in res[(most, 1)])
        for n in SIZES:
            runs = res[(most, n)]
            med = {
                k: statistics.median(x.get(k, 0.0) for x in runs) * 1e3
                for k in ("total", "layers", "attention")
            }
            rest = med["total"] - med["layers"] - med["attention"]
            extra = (med["total"] / 1e3 / one - 1) / (n - 1) if n > 1 else 0.0
            name = "per token (before)" if most == 1 else "groups of <= 8"
            lines.append(
                f"| {context} | {name} | {n} | {med['total']:.2f} | {med['total'] / 1e3 / one:.2f}x | "
                f"{extra:.3f} | {med['layers']:.2f} | {med['attention']:.2f} | {rest:.2f} |"
            )
    for most in (1, 8):
        runs = res[(most, context)]
        name = "per token (before)" if most == 1 else "groups of <= 8"
        med = {
            k: statistics.median(x.get(k, 0.0) for x in runs) * 1e3 for k in ("total", "layers", "attention")
        }
        lines.append(
            f"| {context} | {name} | prefill {context} | {med['total']:.1f} | - | - | {med['layers']:.1f} | "
            f"{med['attention']:.1f} | {med['total'] - med['layers'] - med['attention']:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--contexts", default="300,800")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    for context in map(int, args.contexts.split(",")):
        print(table(context, measure(context, args.rounds)), flush=True)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")


if __name__ == "__main__":
    main()
