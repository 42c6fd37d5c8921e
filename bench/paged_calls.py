"""What one layer's paged-attention call costs the engine: 30 calls (SmolLM2-135M's layers) sharing one step's
`PagedBatch`, decode at 128 tokens of context, 1 and 8 sequences; the batch is built once per step, as the
runner does. Microseconds per call: median and fastest of the rounds (a hot loop: the pools stay in cache, unlike
a real step, where the weights stream through between calls - `cpu_step_profile.py` measures that).

    .venv/bin/python -P bench/paged_calls.py [--threads 1] [--rounds 15]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from xpullm.kernels.paged import PagedBatch, PagedLayer, paged_attention

H, KV, D, BS, LAYERS, CONTEXT = 9, 3, 64, 16, 30, 128


def per_call(seqs: int, rounds: int) -> tuple[float, float]:
    """(median, fastest) microseconds per layer call over `rounds` rounds of 20 steps."""
    gen = torch.Generator().manual_seed(0)
    per = -(-CONTEXT // BS) + 1
    tables = torch.randperm(seqs * per, generator=gen).int().reshape(seqs, per)
    shape = (seqs * per, KV, BS, D)
    layer = PagedLayer(torch.randn(shape, generator=gen), torch.randn(shape, generator=gen), H, D**-0.5)
    qkv = torch.randn(seqs, (H + 2 * KV) * D, generator=gen)
    angle = torch.randn(2048, D // 2, generator=gen)
    cos = torch.cat([angle.cos(), angle.cos()], -1)
    sin = torch.cat([-angle.sin(), angle.sin()], -1)
    positions, rows = torch.full((seqs,), CONTEXT - 1), torch.arange(seqs)

    def step() -> None:
        batch = PagedBatch(positions, rows, tables, cos, sin)
        for _ in range(LAYERS):
            paged_attention(qkv, batch, layer)

    step()
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(20):
            step()
        times.append((time.perf_counter() - t0) / 20 / LAYERS * 1e6)
    return statistics.median(times), min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{args.threads} thread(s), {args.rounds} rounds; us per layer call, median (fastest)")
    for seqs in (1, 8):
        med, low = per_call(seqs, args.rounds)
        print(f"| {seqs} sequence(s), ctx {CONTEXT} | {med:.1f} ({low:.1f}) |")


if __name__ == "__main__":
    main()
