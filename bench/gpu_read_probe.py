"""How fast can a batch-1 GEMV's weight be *read* at all? The ceiling our int4 GEMV is measured against.

Times, the way `gpu_gemv_sweep.py` does (one CUDA graph of back-to-back calls rotating over weight copies that
cover > 2x the L2, so every call streams from HBM):
- `read_rows_kernel`: a Triton kernel that only reads a packed int4 weight (int32 words [N, K / 8]) row tile by
  row tile, XOR-folds it and writes one word per row - the GEMV's access pattern with no arithmetic, no
  activations and no scales, under a few launch shapes;
- the same weight shape's gemv_q8 product (the tuned configuration, or each of `--configs`) and cuBLAS bf16
  `F.linear`, timed in turn `--reps` times, with the median, min and max of their ratio (single measurements
  drift by 3-4% over a run).
The gap between the first two is what the product's own work costs; the read kernel's time over the bytes is the
bandwidth a GEMV of this shape can reach with plain loads.

`--profile CFG` instead runs that gemv_q8 configuration (sweep syntax, e.g. bn1.kb64.w1.pf1.t4), the read
kernel and cuBLAS a few times each, for a profiler to wrap (`ncu --clock-control none ...`).

    python bench/gpu_read_probe.py [--shapes 14336x4096,4096x14336] [--configs bn1.kb128.w1.t4,...]
    python bench/gpu_read_probe.py --profile bn1.kb64.w1.pf1.t4
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).parent))
from gpu_gemv_sweep import alternate, capture, cublas_graph, graph_us, parse_configs, weight_copies

# (rows per tile, words per K step, tiles per program, warps)
READ_SHAPES = [(1, 256, 4, 1), (1, 256, 2, 2), (1, 512, 4, 1), (1, 128, 4, 1), (2, 256, 2, 2), (1, 256, 1, 2)]


@triton.jit
def read_rows_kernel(
    w_ptr, y_ptr, N, KW, stride_wn, ROWS: tl.constexpr, STEP: tl.constexpr, TILES: tl.constexpr
):  # fmt: skip
    """y[n] = XOR of row n's words: every word read once, in the GEMV's order, with nothing else to do."""
    pid = tl.program_id(0)
    for t in tl.static_range(TILES):
        n = (pid * TILES + t) * ROWS + tl.arange(0, ROWS)
        acc = tl.zeros([ROWS, STEP], dtype=tl.int32)
        for k0 in range(0, KW, STEP):
            k = k0 + tl.arange(0, STEP)[None, :]
            acc ^= tl.load(w_ptr + n[:, None] * stride_wn + k, mask=(n[:, None] < N) & (k < KW), other=0)
        tl.store(y_ptr + n, tl.xor_sum(acc, axis=1), mask=n < N)


def read_fn(w: torch.Tensor, y: torch.Tensor, rows: int, step: int, tiles: int, warps: int):
    n, kw = w.shape
    grid = (triton.cdiv(n, rows * tiles),)
    return lambda: read_rows_kernel[grid](w, y, n, kw, w.stride(0), rows, step, tiles, num_warps=warps)


def _setup(n: int, k: int):
    from xpullm.formats import get_format
    from xpullm.kernels.triton import quantize_activations
    from xpullm.kernels.triton.launch import select_q8_config

    dev = torch.device("cuda")
    tws = weight_copies(get_format("sym_int4").quantize(torch.randn(n, k) * 0.02, 128), dev)
    x = torch.randn(1, k, device=dev, dtype=torch.bfloat16)
    act = quantize_activations(x)
    return tws, x, act, select_q8_config(tws[0], 1)


def probe(n: int, k: int, reps: int = 15, configs: list | None = None, read: bool = True) -> None:
    """Print the read ceiling of an N x K weight (unless not `read`) and gemv_q8 vs cuBLAS in alternation, for
    the tuned configuration or each of `configs`."""
    from xpullm.kernels.triton import run_q8

    tws, x, act, tuned = _setup(n, k)
    mb = tws[0].nbytes / 1e6
    words_mb = tws[0].words.numel() * 4 / 1e6
    print(f"## {n}x{k}: {mb:.1f} MB per call ({words_mb:.1f} MB of codes), {len(tws)} copies")
    ys = [torch.empty(n, device=x.device, dtype=torch.int32) for _ in tws]
    for rows, step, tiles, warps in READ_SHAPES if read else ():
        us = graph_us([read_fn(t.words, y, rows, step, tiles, warps) for t, y in zip(tws, ys, strict=True)])
        print(
            f"  read codes   rows{rows} step{step} t{tiles} w{warps}: {us:6.1f} us  {words_mb / us:.2f} TB/s"
        )
    outs = [torch.empty(1, n, device=x.device, dtype=x.dtype) for _ in tws]
    cublas, _weights = cublas_graph(n, k, x)
    for cfg in configs or [tuned]:
        ours = capture(
            [lambda t=t, o=o, c=cfg: run_q8(act, t, c, out=o) for t, o in zip(tws, outs, strict=True)]
        )
        a_us, b_us, ratios = alternate(ours, cublas, reps)
        print(
            f"  gemv_q8 {cfg}: {a_us:6.1f} us  {mb / a_us:.2f} TB/s (median of {reps}); cuBLAS bf16 "
            f"{b_us:6.1f} us  {n * k * 2 / 1e6 / b_us:.2f} TB/s; ratio median {ratios[reps // 2]:.2f}x, "
            f"min {ratios[0]:.2f}x, max {ratios[-1]:.2f}x"
        )


def profile(n: int, k: int, spec: str) -> None:
    """A few calls of each kernel, for a profiler to time one of them."""
    import torch.nn.functional as F

    from xpullm.kernels.triton import run_q8

    tws, x, act, _ = _setup(n, k)
    cfg = parse_configs(spec)[0]
    out = torch.empty(1, n, device=x.device, dtype=x.dtype)
    y = torch.empty(n, device=x.device, dtype=torch.int32)
    w = torch.randn(n, k, device=x.device, dtype=torch.bfloat16)
    for _ in range(3):
        for t in tws[:2]:
            run_q8(act, t, cfg, out=out)
            read_fn(t.words, y, 1, 256, 4, 1)()
        F.linear(x, w)
    torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="14336x4096,4096x14336")
    ap.add_argument("--reps", type=int, default=15, help="alternations of gemv_q8 and cuBLAS timings")
    ap.add_argument("--profile", default=None, help="run this gemv_q8 config a few times (for a profiler)")
    ap.add_argument(
        "--configs", default=None, help="time these gemv_q8 configs (sweep syntax) instead of the tuned"
    )
    ap.add_argument("--no-read", action="store_true", help="skip the read-ceiling kernels")
    args = ap.parse_args()
    for spec in args.shapes.split(","):
        n, k = (int(v) for v in spec.split("x"))
        if args.profile:
            profile(n, k, args.profile)
        else:
            probe(n, k, args.reps, parse_configs(args.configs) if args.configs else None, not args.no_read)


if __name__ == "__main__":
    main()
