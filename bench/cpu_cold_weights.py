"""Native CPU kernels on weights that are not in cache: a decode step's pass over every layer's projections.

`bench/cpu_kernels.py` calls one weight again and again, so after the first call it sits in L2 / L3 and the
timing is the kernel's arithmetic. A decode step reads each layer's weights once, from memory: the access pattern
counts. This builds `--layers` distinct copies of the packaged model's layer shapes (qkv 960x576, o 576x576,
gate_up 3072x576, down 576x1536; ~55 MB of asym_int4 for 30 layers, more than the VM's L3) and its LM head
(49152x576, sym_int8), and times one pass over all of them per call size M on the best SIMD path (`--paths`:
others, forced in turn, interleaved repeat by repeat; on the EPYC VM an avx2 pass between avx512 passes slowed
the avx512 ones by ~40%, so compare paths in separate runs). Medians of the repeats.

    .venv/bin/python -P bench/cpu_cold_weights.py [--rows 1,4] [--repeat 15] [--threads 2] [--paths avx512_vnni]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from xpullm.formats import get_format
from xpullm.kernels import cpu_native, select_kernel

LAYER_SHAPES = ((960, 576), (576, 576), (3072, 576), (576, 1536))
HEAD = (49152, 576)


def _prepared(fmt: str, n: int, k: int, gen: torch.Generator):
    qw = get_format(fmt).quantize(torch.randn(n, k, generator=gen) * 0.05)
    kernel = select_kernel(qw, "cpu")
    return kernel, kernel.prepare(qw, torch.device("cpu")), k


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=30)
    ap.add_argument("--format", default="asym_int4", help="the layers' format (the head stays sym_int8)")
    ap.add_argument("--rows", default="1,4")
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--paths", default="", help="SIMD paths to force in turn (default: every one this CPU runs)"
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    layers = [_prepared(args.format, n, k, gen) for _ in range(args.layers) for n, k in LAYER_SHAPES]
    head = _prepared("sym_int8", *HEAD, gen)
    paths = args.paths.split(",") if args.paths else cpu_native.isa_paths()[-1:]
    print(f"{args.layers} layers of {args.format} + a sym_int8 head, {args.threads} threads, median of "
          f"{args.repeat} interleaved repeats\n")  # fmt: skip
    print("| M | path | layer calls ms | head ms |\n|---:|---|---:|---:|")
    for m in (int(r) for r in args.rows.split(",")):
        xs = {k: torch.randn(m, k, generator=gen) for k in {k for _, _, k in layers}}
        times: dict[str, tuple[list[float], list[float]]] = {p: ([], []) for p in paths}
        for _ in range(args.repeat):
            for path in paths:
                with cpu_native.forced_isa(path):
                    t = time.perf_counter()
                    for kernel, state, k in layers:
                        kernel.matmul(xs[k], state)
                    times[path][0].append(time.perf_counter() - t)
                    kernel, state, k = head
                    t = time.perf_counter()
                    kernel.matmul(xs[k], state)
                    times[path][1].append(time.perf_counter() - t)
        for path, (lt, ht) in times.items():
            print(f"| {m} | {path} | {statistics.median(lt) * 1e3:.2f} | {statistics.median(ht) * 1e3:.3f} |")


if __name__ == "__main__":
    main()
