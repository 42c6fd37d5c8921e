"""Builds of the CUDA low-bit kernel side by side on the Llama-3-8B shapes (issue 29): one source edit against another.

Each `--variant NAME=PATH` is one build of `kernels/cuda/lowbit_mma.cu` (a `.so`, or the `.so.gz` that
`bench/cuda_mma_session.sh`'s `builds` step carries), made on the dev machine from another revision of the source or
with other nvcc flags (kernels/cuda/README.md, Building, has the command). Per format, shape and row count, every
pool tile (`CONFIG_TABLES["cuda"]["cuda_mma"]`) of every build is timed once; each build's `--keep` fastest then run
in alternating rounds (median of 30 L2-flushed calls each) beside bf16 cuBLAS. Each build's winner is checked against
the first build's output. One JSON line per cell, then a table of microseconds per build and their ratio to the
first. Session 22 compared the previous source with pipelined ones and with the paired activation staging
(`bench/results/cuda_builds_*_h100_2026-12-07.jsonl`).

    bash bench/gpu_run.sh py bench/gpu_cuda_builds.py --variant old=v/old.so.gz --variant new=v/new.so.gz \
        [--formats sym_int4:128,nf4:32] [--rows 8,16,32,64] [--shapes 4096x4096,...]
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import gzip
import json
import statistics
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))  # run with -P: the script's folder is not on sys.path

from gpu_layer_cases import layer_cases

SHAPES = "6144x4096,4096x4096,28672x4096,4096x14336,128256x4096"


def load_build(path: Path, scratch: Path) -> ctypes.CDLL:
    """A build of lowbit_mma.cu (`.so`, or `.so.gz` unpacked into `scratch`), loaded and bound; make the kernels
    use it with `cuda._library = lambda arch: lib` (lowbit_mma looks its library up at each call)."""
    from xpullm.kernels import cuda

    if path.suffix == ".gz":
        plain = scratch / path.stem
        plain.write_bytes(gzip.decompress(path.read_bytes()))
        path = plain
    return cuda.bind(ctypes.CDLL(str(path)))


def _table(rows: list[dict], names: list[str]) -> str:
    head = "| format | shape | rows | bf16 us | " + " | ".join(f"{n} us" for n in names)
    head += " | " + " | ".join(f"{n} / {names[0]}" for n in names[1:]) + " |"
    lines = [head, "|" + "---|" * (4 + 2 * len(names) - 1)]
    for r in rows:
        us = [r["us"][n] for n in names]
        cells = [r["fmt"], r["shape"], str(r["m"]), f"{r['bf16_us']:.1f}", *(f"{u:.1f}" for u in us)]
        cells += [f"{u / us[0]:.2f}" for u in us[1:]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", action="append", required=True, help="NAME=PATH of a build (.so or .so.gz)")
    ap.add_argument("--formats", default="sym_int4:128,nf4:32,asym_int4:128,fp8_e4m3")
    ap.add_argument("--rows", default="8,16,32,64")
    ap.add_argument("--shapes", default=SHAPES, help="NxK weight shapes")
    ap.add_argument("--keep", type=int, default=2, help="tiles per variant kept after the first round")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds of the kept tiles")
    ap.add_argument("--out", default=None, help="append the JSON lines here")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("gpu_cuda_builds.py needs a CUDA GPU", file=sys.stderr)
        return 2
    from xpullm.kernels import cuda
    from xpullm.kernels.triton import run, time_cold
    from xpullm.kernels.triton.configs import CONFIG_TABLES, m_bucket, valid

    dev = torch.device("cuda")
    scratch = Path(tempfile.mkdtemp())
    names = [v.partition("=")[0] for v in args.variant]
    libs = {
        n: load_build(Path(v.partition("=")[2]), scratch) for n, v in zip(names, args.variant, strict=True)
    }
    use = {n: (lambda arch, lib=lib: lib) for n, lib in libs.items()}
    cuda._library = use[names[0]]
    timed = functools.partial(time_cold, device=dev)
    print(torch.cuda.get_device_name(dev), "variants:", names, flush=True)

    failed: dict[tuple[str, str], str] = {}

    def time(name: str, fn) -> float:
        cuda._library = use[name]  # lowbit_mma looks its library up at each call
        try:
            return 1e3 * timed(fn)
        except RuntimeError as exc:  # a tile a build cannot launch: reported once, never kept
            key = (name, f"tiles={fn.args[2].tiles} warps={fn.args[2].num_warps}")
            if key not in failed:
                failed[key] = str(exc)
                print(f"{name} {key[1]}: {exc}", flush=True)
            return float("inf")

    rows = []
    for item, n, k, m, tw, dense, x, out in layer_cases(args.formats, args.shapes, args.rows, dev):
        pool = [replace(c, block_m=m_bucket(m)) for c in CONFIG_TABLES["cuda"]["cuda_mma"]]
        pool = [c for c in pool if valid(c, tw, torch.bfloat16)]
        kept = {}
        for v in names:
            first = {c: time(v, functools.partial(run, x, tw, c, out)) for c in pool}
            kept[v] = sorted(pool, key=first.__getitem__)[: args.keep]
        times = {(v, c): [] for v in names for c in kept[v]}
        for r in range(args.rounds):
            order = list(times) if r % 2 == 0 else list(times)[::-1]
            for v, c in order:
                times[v, c].append(time(v, functools.partial(run, x, tw, c, out)))
        med = {key: statistics.median(t) for key, t in times.items()}
        best = {v: min(kept[v], key=lambda c, v=v: med[v, c]) for v in names}
        outs = {}
        for v in names:
            cuda._library = use[v]
            outs[v] = run(x, tw, best[v]).float()
        ref = outs[names[0]]
        scale = ref.abs().max().clamp_min(1e-30)
        bf16 = 1e3 * timed(functools.partial(F.linear, x[:, :k], dense))
        rec = {
            "fmt": item,
            "shape": f"{n}x{k}",
            "m": m,
            "bf16_us": bf16,
            "us": {v: med[v, best[v]] for v in names},
            "range": {v: [min(times[v, best[v]]), max(times[v, best[v]])] for v in names},
            "cfg": {
                v: f"tiles={best[v].tiles} warps={best[v].num_warps} split={best[v].split_k}" for v in names
            },
            "rel_diff": {v: ((outs[v] - ref).abs().max() / scale).item() for v in names[1:]},
        }
        print(json.dumps(rec), flush=True)
        rows.append(rec)
        if args.out:
            with open(args.out, "a") as fh:
                fh.write(json.dumps(rec) + "\n")
    print(_table(rows, names))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
