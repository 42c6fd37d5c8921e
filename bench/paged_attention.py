"""Paged attention on CPU: the native kernel against its PyTorch twin and the static-cache decode kernel.

SmolLM2-135M's attention shape (9 heads, 3 kv heads, head_dim 64), fp32, block size 16, one layer:
- decode, batch 1 at several context lengths: native `paged_attention` (fp32, int8 and fp8 e4m3 pools), the twin
  `reference_paged_attention`, and the engine's static-cache `xq_decode_attention` (`cpu_native.decode_attention`);
- decode, 8 sequences in one call (the continuous-batching step);
- prefill, one prompt chunk from position 0: native, the twin, and SDPA with a causal mask (what the eager prefill
  runs; it reads no pool).
Best of interleaved rounds (a shared, noisy machine: the fastest round is the least disturbed one; compare
within one run). With one thread the clock is the calling thread's CPU time (the kernels then run on that
thread), which time-sharing with other processes does not inflate; with more threads it is wall time.
Prints markdown; writes nothing.

    .venv/bin/python -P bench/paged_attention.py [--threads 1] [--rounds 15]
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from xpullm.kernels import cpu_native
from xpullm.kernels.paged import (
    KV_CACHE_DTYPES,
    Kernel,
    PagedBatch,
    PagedLayer,
    kv_bytes_per_token,
    paged_attention,
    reference_paged_attention,
)

H, KV, D, BS = 9, 3, 64, 16
SCALE = D**-0.5


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def _rope(positions: int) -> tuple[torch.Tensor, torch.Tensor]:
    inv = 1.0 / 10000 ** (torch.arange(0, D, 2).float() / D)
    ang = torch.arange(positions).float()[:, None] * inv
    ang = torch.cat((ang, ang), -1)
    sin = ang.sin()
    sin[:, : D // 2] = -sin[:, : D // 2]
    return ang.cos(), sin


class Paged:
    """S sequences of `ctx` tokens already in the pools (shuffled blocks); a call runs `tokens` per sequence,
    at the last positions (decode: 1 token at ctx - 1; prefill: ctx tokens from 0)."""

    def __init__(self, seqs: int, ctx: int, tokens: int, codes: str = "auto") -> None:
        per = -(-ctx // BS)
        self.tables = torch.randperm(seqs * per).int().reshape(seqs, per)
        shape = (seqs * per, KV, BS, D)
        if codes != "auto":
            self.layer = PagedLayer(
                (torch.randn(shape) * 40).to(KV_CACHE_DTYPES[codes]),
                (torch.randn(shape) * 40).to(KV_CACHE_DTYPES[codes]), H, SCALE, kv_cache_dtype=codes,
                k_scale=torch.rand(shape[:3]) * 0.02, v_scale=torch.rand(shape[:3]) * 0.02,
            )  # fmt: skip
        else:
            self.layer = PagedLayer(torch.randn(shape), torch.randn(shape), H, SCALE)
        self.qkv = torch.randn(seqs * tokens, (H + 2 * KV) * D)
        # As in the engine: the step's batch built once, shared by every layer's call (what is timed).
        cos, sin = _rope(ctx)
        positions = torch.arange(ctx - tokens, ctx).repeat(seqs)
        self.batch = PagedBatch(
            positions, torch.arange(seqs).repeat_interleave(tokens), self.tables, cos, sin
        )

    def call(self, fn: Kernel) -> Callable[[], torch.Tensor]:
        return lambda: fn(self.qkv, self.batch, self.layer)


def _static_decode(ctx: int) -> Callable[[], torch.Tensor]:
    """`xq_decode_attention` at batch 1: a [1, KV, cap, D] cache filled to ctx - 1, the new token at ctx - 1."""
    cap = -(-ctx // 256) * 256
    k, v = torch.randn(1, KV, cap, D), torch.randn(1, KV, cap, D)
    qkv = torch.randn(1, 1, (H + 2 * KV) * D)
    cos, sin = _rope(cap)
    pos, first = torch.tensor([ctx - 1]), torch.zeros(1, dtype=torch.long)
    return lambda: cpu_native.decode_attention(qkv, cos, sin, pos, k, v, first, ctx - 1, H, SCALE)


def _sdpa_prefill(ctx: int) -> Callable[[], torch.Tensor]:
    """The eager prefill's attention: RoPE on q and k, then causal SDPA over the chunk (no pool)."""
    qkv = torch.randn(1, ctx, H + 2 * KV, D).transpose(1, 2)
    cos, sin = _rope(ctx)

    def run() -> torch.Tensor:
        qk = torch.addcmul(qkv[:, : H + KV] * cos, qkv[:, : H + KV].roll(D // 2, -1), sin)
        return F.scaled_dot_product_attention(
            qk[:, :H], qk[:, H:], qkv[:, H + KV :], is_causal=True, scale=SCALE, enable_gqa=True
        )

    return run


def _time(
    fns: dict[str, Callable[[], torch.Tensor]], rounds: int, clock: Callable[[], float]
) -> dict[str, float]:
    """Microseconds per call in the fastest round, the candidates interleaved in every round."""
    inner = {}
    for name, fn in fns.items():
        fn()  # warm up (the native library builds on first use)
        t = time.perf_counter()
        fn()
        inner[name] = max(1, int(0.02 / max(time.perf_counter() - t, 1e-7)))
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t = clock()
            for _ in range(inner[name]):
                fn()
            samples[name].append((clock() - t) / inner[name] * 1e6)
    return {name: min(s) for name, s in samples.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if cpu_native.library() is None:
        raise SystemExit("the native CPU library does not build here: nothing to compare")
    clock, clock_name = (
        (time.thread_time, "thread CPU time") if args.threads == 1 else (time.perf_counter, "wall")
    )
    print(
        f"{_cpu_name()}, {args.threads} thread(s), torch {torch.__version__}; H={H} KV={KV} D={D}, block {BS}; "
        f"best of {args.rounds} rounds, {clock_name}"
    )
    print(
        "\n| case | native fp32 | native int8 KV | native fp8 KV | reference (twin) | other | other / native |"
    )
    print("|---|---|---|---|---|---|---|")
    cases = []
    for ctx in (128, 512, 2048):
        cases.append((f"decode, 1 seq, ctx {ctx}", 1, ctx, 1, ("xq_decode_attention", _static_decode(ctx))))
    cases.append(("decode, 8 seqs, ctx 512", 8, 512, 1, None))
    for ctx in (128, 512):
        cases.append((f"prefill {ctx} tokens", 1, ctx, ctx, ("SDPA causal", _sdpa_prefill(ctx))))
    for label, seqs, ctx, tokens, other in cases:
        fp32, int8, fp8 = (Paged(seqs, ctx, tokens, codes) for codes in ("auto", "int8", "fp8_e4m3"))
        fns = {
            "native": fp32.call(paged_attention),
            "int8": int8.call(paged_attention),
            "fp8": fp8.call(paged_attention),
            "reference": fp32.call(reference_paged_attention),
        }
        if other is not None:
            fns["other"] = other[1]
        us = _time(fns, args.rounds, clock)
        tail = f"{us['other']:.0f} us ({other[0]}) | {us['other'] / us['native']:.2f}x" if other else "- | -"
        print(
            f"| {label} | {us['native']:.0f} us | {us['int8']:.0f} us | {us['fp8']:.0f} us | {us['reference']:.0f} us | {tail} |"
        )
    print("\nKV bytes per token, SmolLM2-135M (30 layers, 3 kv heads, head_dim 64): "
          f"fp32 {kv_bytes_per_token(30, KV, D, 'auto', torch.float32)}, "
          f"bf16 {kv_bytes_per_token(30, KV, D, 'auto', torch.bfloat16)}, "
          f"int8 / fp8 {kv_bytes_per_token(30, KV, D, 'int8', torch.float32)}")  # fmt: skip


if __name__ == "__main__":
    main()
