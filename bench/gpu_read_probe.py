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
    python bench/gpu_read_probe.py --shapes 28672x4096 --patterns 1x256x4x1,16x16x1x4,16x16x1x4t --products 8,32
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
    w_ptr, y_ptr, N, KW, stride_wn, ROWS: tl.constexpr, STEP: tl.constexpr, TILES: tl.constexpr,
    TILED: tl.constexpr,
):  # fmt: skip
    """y[n] = XOR of row n's words: every word read once, in the GEMV's order, with nothing else to do. TILED reads
    the same words as if stored tile by tile (each ROWS x STEP tile of a K step contiguous, the K steps of a row
    tile one after the other): what a tile-major layout would give a batched kernel's loads."""
    pid = tl.program_id(0)
    for t in tl.static_range(TILES):
        n = (pid * TILES + t) * ROWS + tl.arange(0, ROWS)
        acc = tl.zeros([ROWS, STEP], dtype=tl.int32)
        for k0 in range(0, KW, STEP):
            k = k0 + tl.arange(0, STEP)[None, :]
            if TILED:
                tile = ((pid * TILES + t) * (KW // STEP) + k0 // STEP) * (ROWS * STEP)
                at = tile + tl.arange(0, ROWS)[:, None] * STEP + tl.arange(0, STEP)[None, :]
            else:
                at = n[:, None] * stride_wn + k
            acc ^= tl.load(w_ptr + at, mask=(n[:, None] < N) & (k < KW), other=0)
        tl.store(y_ptr + n, tl.xor_sum(acc, axis=1), mask=n < N)


def read_fn(
    w: torch.Tensor, y: torch.Tensor, rows: int, step: int, tiles: int, warps: int, tiled: bool = False
):
    n, kw = w.shape
    if tiled and (n % (rows * tiles) or kw % step):
        raise ValueError(
            f"a tiled read needs N a multiple of {rows * tiles} and K words of {step}; got {n} x {kw}"
        )
    grid = (triton.cdiv(n, rows * tiles),)
    return lambda: read_rows_kernel[grid](w, y, n, kw, w.stride(0), rows, step, tiles, tiled, num_warps=warps)


def parse_patterns(spec: str) -> list[tuple[int, int, int, int, bool]]:
    """ "ROWSxSTEPxTILESxWARPS[t],..." -> read shapes; a trailing t reads the tile-major order (read_rows_kernel)."""
    out = []
    for item in spec.split(","):
        tiled = item.endswith("t")
        rows, step, tiles, warps = (int(v) for v in item.rstrip("t").split("x"))
        out.append((rows, step, tiles, warps, tiled))
    return out


def _copies(n: int, k: int, fmt: str = "sym_int4:128") -> list:
    """A random n x k weight in `fmt` (format[:group]), packed on the GPU in enough copies to stream from HBM."""
    from xpullm.formats import get_format

    name, _, group = fmt.partition(":")
    return weight_copies(
        get_format(name).quantize(torch.randn(n, k) * 0.02, int(group or 128)), torch.device("cuda")
    )


def _setup(n: int, k: int):
    from xpullm.kernels.triton import quantize_activations
    from xpullm.kernels.triton.launch import select_q8_config

    dev = torch.device("cuda")
    tws = _copies(n, k)
    x = torch.randn(1, k, device=dev, dtype=torch.bfloat16)
    act = quantize_activations(x)
    return tws, x, act, select_q8_config(tws[0], 1)


def probe(
    n: int,
    k: int,
    reps: int = 15,
    configs: list | None = None,
    read: bool = True,
    patterns: list | None = None,
) -> None:
    """Print the read ceiling of an N x K weight (unless not `read`) and gemv_q8 vs cuBLAS in alternation, for
    the tuned configuration or each of `configs`."""
    from xpullm.kernels.triton import run_q8

    tws, x, act, tuned = _setup(n, k)
    mb = tws[0].nbytes / 1e6
    words_mb = tws[0].words.numel() * 4 / 1e6
    print(f"## {n}x{k}: {mb:.1f} MB per call ({words_mb:.1f} MB of codes), {len(tws)} copies")
    ys = [torch.empty(n, device=x.device, dtype=torch.int32) for _ in tws]
    shapes = patterns or [(*shape, False) for shape in READ_SHAPES]
    for rows, step, tiles, warps, tiled in shapes if read else ():
        fns = [read_fn(t.words, y, rows, step, tiles, warps, tiled) for t, y in zip(tws, ys, strict=True)]
        us = graph_us(fns)
        order = " tile-major" if tiled else ""
        print(
            f"  read codes   rows{rows} step{step} t{tiles} w{warps}{order}: {us:6.1f} us  {words_mb / us:.2f} TB/s"
        )
    if patterns:
        return
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


def products(n: int, k: int, rows: list[int], fmt: str = "sym_int4:128") -> None:
    """The shipped product (`matmul`, tuned tables, no tuning) for each row count, back to back in a CUDA graph
    over weight copies - how the engine's graph runs it - beside cuBLAS bf16 and the bytes a call streams."""
    from xpullm.kernels.triton import matmul, select_config

    dev = torch.device("cuda")
    tws = _copies(n, k, fmt)
    mb = tws[0].nbytes / 1e6
    for m in rows:
        x = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
        cfg = select_config(tws[0], m, x.dtype)
        outs = [torch.empty(m, n, device=dev, dtype=x.dtype) for _ in tws]
        ours = capture([lambda t=t, o=o, x=x: matmul(x, t, out=o) for t, o in zip(tws, outs, strict=True)])
        cublas, _inputs = cublas_graph(n, k, x)
        a_us, b_us, ratios = alternate(ours, cublas, 7)
        print(
            f"  {fmt} {n}x{k} rows {m}: {a_us:6.1f} us {mb / a_us:.2f} TB/s ({cfg}); cuBLAS bf16 {b_us:6.1f} us; "
            f"x bf16 median {ratios[len(ratios) // 2]:.2f} ({ratios[0]:.2f}-{ratios[-1]:.2f})"
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
    ap.add_argument(
        "--patterns",
        default=None,
        help="read shapes ROWSxSTEPxTILESxWARPS[t],... instead of the GEMV's (t: tile-major order); reads only",
    )
    ap.add_argument(
        "--products", default=None, help="also time the shipped product at these row counts (8,16,32)"
    )
    ap.add_argument("--format", default="sym_int4:128", help="the --products weight format[:group]")
    args = ap.parse_args()
    for spec in args.shapes.split(","):
        n, k = (int(v) for v in spec.split("x"))
        if args.profile:
            profile(n, k, args.profile)
        else:
            configs = parse_configs(args.configs) if args.configs else None
            patterns = parse_patterns(args.patterns) if args.patterns else None
            probe(n, k, args.reps, configs, not args.no_read, patterns)
            if args.products:
                products(n, k, [int(v) for v in args.products.split(",")], args.format)


if __name__ == "__main__":
    main()
