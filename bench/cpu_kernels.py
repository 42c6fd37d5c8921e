"""Native CPU kernels per format and SIMD path: time per call, and weight GB/s against the machine's read bandwidth.

Every format's native kernel (`xpullm.kernels.cpu_native`) on every path this CPU runs (`isa_paths()`, each
forced in turn: avx2, avx512_vnni, and amx on CPUs with AMX tiles), decode (M=1: weight bytes read per second) and
prompt chunks (M>1: multiply-adds per second), on the default model's layer shapes and a 4096 square. The `amx`
column is the amx path as it dispatches (tiles from 16 rows, VNNI with the tiles' arithmetic below); `amx_tiles`
(only where M < 16) forces the tiles, which finds the crossover. `--amx-fp8` times fp8 on its AMX-BF16 tiles (an
opt-in in the library: `cpu_native.amx_fp8`). `--kernels ipex_woq,cpu_int4pack,reference` adds the other
kernels the registry holds for a format (IPEX's where `intel_extension_for_pytorch` imports, PyTorch's int4/int8
ops, the reference) as columns, timed in the same interleaved loop: the table their priorities come from.
Medians of interleaved repeats (a shared machine: ratios within one run are what counts). The read bandwidth is a
PyTorch sum over a 512 MiB tensor on the same threads. Prints markdown; writes nothing.

    .venv/bin/python -P bench/cpu_kernels.py --threads 1 [--repeat 15]
    .venv/bin/python -P bench/cpu_kernels.py --threads 1 --rows 1,8,16,64,256 --amx-fp8 \
        --formats sym_int4,asym_int4,nf4,sym_int8,fp8_e4m3 --shapes 4096x4096,3072x576,576x1536   # AMX prefill table
    .venv-ipex/bin/python -P bench/cpu_kernels.py --threads 1 --kernels ipex_woq,cpu_int4pack,cpu_int8pack,reference
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from xpullm.formats import get_format
from xpullm.kernels import candidates, cpu_native, select_kernel

FORMATS = ["sym_int4", "asym_int4", "nf4", "fp4", "sym_int8", "fp8_e4m3", "fp8_e5m2"]
SHAPES = [(576, 576), (1536, 576), (49152, 576), (4096, 4096)]  # (N, K)


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def read_bandwidth(repeat: int) -> tuple[float, float]:
    """(median, best) GB/s of a streaming read: a sum over 512 MiB of fp32 (far past the L3), on the set threads.
    On a shared machine the best sample is the closest to the uncontended rate."""
    big = torch.ones(128 * 1024 * 1024)
    samples = []
    for _ in range(repeat):
        t = time.perf_counter()
        big.sum()
        samples.append(time.perf_counter() - t)
    gbs = big.numel() * 4 / 1e9
    return gbs / statistics.median(samples), gbs / min(samples)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--formats", default=",".join(FORMATS))
    ap.add_argument("--shapes", default=",".join(f"{n}x{k}" for n, k in SHAPES), help="NxK,NxK,...")
    ap.add_argument(
        "--kernels", default="", help="other kernels by registry name, each a column where it runs"
    )
    ap.add_argument("--rows", default="1,128", help="activation rows M per call, M,M,...")
    ap.add_argument(
        "--paths",
        default="",
        help="paths to time (default: every one this CPU runs; amx_emulated checks the script)",
    )
    ap.add_argument("--amx-fp8", action="store_true", help="fp8 on its AMX-BF16 tiles (amx columns)")
    args = ap.parse_args()
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    others = [k for k in args.kernels.split(",") if k]
    rows = [int(r) for r in args.rows.split(",")]
    torch.set_num_threads(args.threads)
    paths = args.paths.split(",") if args.paths else cpu_native.isa_paths()
    bw, bw_best = read_bandwidth(max(args.repeat, 9))
    print(f"{_cpu_name()}, {args.threads} thread(s), SIMD paths {paths} ({cpu_native.amx_status()}); "
          f"read bandwidth {bw:.1f} GB/s median, {bw_best:.1f} GB/s best (sum over 512 MiB); "
          f"amx fp8 tiles {'on' if args.amx_fp8 else 'off'}; median of {args.repeat} interleaved repeats; "
          f"load average {os.getloadavg()[0]:.1f}\n")  # fmt: skip
    # (column, path, amx min rows): the paths as they dispatch, plus the amx tiles forced at every M
    timed = [(p, p, cpu_native.AMX_MIN_ROWS) for p in paths]
    timed += [
        (f"{p}_tiles", p, 1) for p in paths if p.startswith("amx") and min(rows) < cpu_native.AMX_MIN_ROWS
    ]
    cols = [c for c, _, _ in timed] + others
    head = " | ".join(f"{c} ms (M=1: weight GB/s; M>1: GMAC/s)" for c in cols)
    print(f"| format | N x K | M | kernel | {head} |")
    print("|---|---|---:|---|" + "---:|" * len(cols))
    gen = torch.Generator().manual_seed(0)
    for fmt in args.formats.split(","):
        for n, k in shapes:
            qw = get_format(fmt).quantize(torch.randn(n, k, generator=gen) * 0.05)
            kernel = select_kernel(qw, "cpu")
            state = kernel.prepare(qw, torch.device("cpu"))
            extra = {c.name: (c, c.prepare(qw, torch.device("cpu")))
                     for c in candidates(fmt, "cpu") if c.name in others and c.supports(qw)}  # fmt: skip
            for m in rows:
                x = torch.randn(m, k)
                live = [(c, p, r) for c, p, r in timed if r > 1 or m < cpu_native.AMX_MIN_ROWS]
                samples: dict[str, list[float]] = {c: [] for c in [*(c for c, _, _ in live), *extra]}
                for _ in range(args.repeat):
                    for col, p, least in live:
                        with (
                            cpu_native.forced_isa(p),
                            cpu_native.amx_min_rows(least),
                            cpu_native.amx_fp8(args.amx_fp8),
                        ):
                            t = time.perf_counter()
                            kernel.matmul(x, state)
                            samples[col].append(time.perf_counter() - t)
                    for name, (other, other_state) in extra.items():
                        t = time.perf_counter()
                        other.matmul(x, other_state)
                        samples[name].append(time.perf_counter() - t)
                cells = []
                for p in cols:
                    if not samples.get(p):
                        cells.append("-")
                        continue
                    sec = statistics.median(samples[p])
                    rate = qw.nbytes / sec / 1e9 if m == 1 else n * k * m / sec / 1e9
                    cells.append(f"{sec * 1e3:.3f} ({rate:.1f})")
                print(f"| {fmt} | {n}x{k} | {m} | {kernel.name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
