"""Batch-1 GEMV launch sweep on a GPU: every configuration of a wide grid, timed the way a decode step runs it.

The tuner (`kernels/triton/launch.py:tune`) times a short candidate list with L2 flushed before each call.
This sweep tries a wider grid (rows per program, K step, split-K, warps, register prefetch) and times each
configuration as a decode step sees it: one CUDA graph of back-to-back calls that rotate over enough weight
copies (> 2x the L2 size) that every call streams its weight from HBM, with no flush writes in between.
Winners are written as tuned-table records (`--json`) to merge into `kernels/triton/tuned_<device>.json`.

    python bench/gpu_gemv_sweep.py [--formats sym_int4:128] [--shapes 4096x4096,...] [--json out.json]
    python bench/gpu_gemv_sweep.py --paths gemv_q8 --configs bn1.kb64.w1.t4,bn1.kb128.w1.t4 --shapes 14336x4096
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import warnings
from dataclasses import asdict
from pathlib import Path

import torch

SHAPES = [(6144, 4096), (4096, 4096), (28672, 4096), (14336, 4096), (4096, 14336), (128256, 4096)]
_L2_MULTIPLE = 2.5  # weight copies cover this many L2 sizes, so no call finds its weight cached
WARM_MS = 100.0  # busy time before each measurement


def copies_for(nbytes: int, device: torch.device) -> int:
    """How many copies of an `nbytes` weight to rotate over so that every call streams it from HBM."""
    return max(1, int(_L2_MULTIPLE * torch.cuda.get_device_properties(device).L2_cache_size / nbytes) + 1)


def weight_copies(qw, device: torch.device) -> list:
    """`qw` packed for the Triton kernels `copies_for` times: rotated over, no call finds its weight in L2."""
    from xpullm.kernels.triton import pack_weight

    tw = pack_weight(qw, device)
    return [tw] + [pack_weight(qw, device) for _ in range(copies_for(tw.nbytes, device) - 1)]


def grid(
    paths: tuple[str, ...] = ("gemv", "gemv_q8"), wide: bool = False, tiles: tuple[int, ...] = (1,)
) -> list:
    """The configurations to try (block_m is 1: one activation row per program).

    `wide` is the gemv_q8 grid of narrow tiles (1-8 weight rows), long K steps (up to a whole 4096-wide row)
    and 1-4 warps: small programs at 32 registers fill every SM to full occupancy (the 2026-12-01 sweep).
    Triton's own software pipelining (num_stages 3) lost to the register double buffer on every shape there.
    `tiles` > 1 adds programs that walk that many weight-row tiles in turn (narrow tiles of <= 2 warps only).
    """
    from xpullm.kernels.triton import LaunchConfig

    out = []
    if "gemv_q8" in paths:  # int8 activations x int4 weights: few ALU ops per weight, so taller tiles fit
        bns, kbs, warpss = (
            ((1, 2, 4, 8), (16, 32, 64, 128), (1, 2, 4)) if wide else ((4, 8, 16, 32), (8, 16, 32), (2, 4, 8))
        )
        lo, hi = (4, 64) if wide else (2, 32)  # int32 weight words per thread per K step
        for bn, kb, warps, split, prefetch in itertools.product(bns, kbs, warpss, (1, 2), (False, True)):
            if lo <= bn * kb * 4 // (32 * warps) <= hi:
                walks = [t for t in tiles if t == 1 or (bn <= 2 and warps <= 2)]
                out += [LaunchConfig("gemv_q8", 1, bn, kb, split, warps, 1, prefetch, t) for t in walks]
    if "gemv" not in paths:
        return out
    # Triton's own pipelining (num_stages 2) never won the previous sweep; register prefetch replaces it.
    for bn, kb, warps, prefetch, split in itertools.product(
        (4, 8, 16, 32), (8, 16, 32, 64), (1, 2, 4, 8), (False, True), (1, 2)
    ):
        per_thread = bn * kb * 4 // (32 * warps)  # int32 words each thread holds per K step
        if not 4 <= per_thread <= 32:
            continue
        out.append(LaunchConfig("gemv", 1, bn, kb, split, warps, 1, prefetch))
    return out


def parse_configs(text: str) -> list:
    """gemv_q8 configurations written `bn1.kb64.w1.pf1.t4[.s2]` (rows, K step, warps, prefetch, tiles, split-K),
    comma-separated: a short list to time or profile instead of the grid."""
    from xpullm.kernels.triton import LaunchConfig

    out = []
    for spec in text.split(","):
        f = {"s": 1, "pf": 0, "t": 1, "w": 1}
        for part in spec.strip().split("."):
            key = part.rstrip("0123456789")
            if key not in ("bn", "kb", "w", "pf", "t", "s") or key == part:
                raise SystemExit(f"bad config part {part!r} in {spec!r}: write e.g. bn1.kb64.w1.pf1.t4")
            f[key] = int(part[len(key) :])
        out.append(LaunchConfig("gemv_q8", 1, f["bn"], f["kb"], f["s"], f["w"], 1, bool(f["pf"]), f["t"]))
    return out


def capture(fn_list, reps: int = 5) -> tuple[torch.cuda.CUDAGraph, int]:
    """One CUDA graph of `reps` rounds of back-to-back calls of `fn_list` (each called once beforehand), and the
    number of calls it holds: the arguments of `replay_us`."""
    for fn in fn_list:
        fn()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for fn in fn_list:
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(reps):
            for fn in fn_list:
                fn()
    g.replay()
    torch.cuda.synchronize()
    return g, reps * len(fn_list)


def replay_us(g: torch.cuda.CUDAGraph, calls: int, warm_ms: float | None = None) -> float:
    """Microseconds per call of graph `g` holding `calls` calls: median of 5 timed replays.

    Replays for >= `warm_ms` (default WARM_MS) first: an idle GPU's SM clock ramps up over milliseconds, and a
    GEMV that is partly issue-bound would otherwise be timed at whatever clock the previous work left.
    """
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    while True:
        g.replay()
        end.record()
        end.synchronize()
        if start.elapsed_time(end) >= (WARM_MS if warm_ms is None else warm_ms):
            break
    times = []
    for _ in range(5):
        start.record()
        g.replay()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / calls)
    return sorted(times)[len(times) // 2]


def graph_us(fn_list, reps: int = 5) -> float:
    """Microseconds per call of back-to-back calls captured in one CUDA graph."""
    return replay_us(*capture(fn_list, reps))


def alternate(first: tuple, second: tuple, reps: int = 15) -> tuple[float, float, list[float]]:
    """Time two captured graphs, each `(graph, calls in it)`, in turn `reps` times.

    Returns the median microseconds per call of each and the sorted ratios second / first. Drift in clocks or
    memory state over a run lands on both sides of every ratio, and no minimum is taken over several noisy
    timings (a best-of-many reads a few percent low).
    """
    pairs = [(replay_us(*first, warm_ms=20.0), replay_us(*second, warm_ms=20.0)) for _ in range(reps)]
    mid = reps // 2
    return sorted(a for a, _ in pairs)[mid], sorted(b for _, b in pairs)[mid], sorted(b / a for a, b in pairs)


def cublas_graph(n: int, k: int, x: torch.Tensor) -> tuple[tuple, list[torch.Tensor]]:
    """cuBLAS bf16 `F.linear` over enough weight copies to stream from HBM, captured: `((graph, calls), inputs)`;
    keep the inputs (weights and activation) alive as long as the graph is replayed."""
    import torch.nn.functional as F

    xb = x[:, :k].contiguous()
    ws = [
        torch.randn(n, k, device=x.device, dtype=torch.bfloat16) * 0.02
        for _ in range(copies_for(n * k * 2, x.device))
    ]
    return capture([lambda w=w: F.linear(xb, w) for w in ws]), [*ws, xb]


def tinygemm_us(n: int, k: int, x: torch.Tensor) -> float | None:
    """tinygemm int4 g128 (`_weight_int4pack_mm`) timed like the sweep, or None where this PyTorch lacks it."""
    from gpu_kernels import TINYGEMM_GROUP, _tinygemm

    xb = x[:, :k].contiguous()
    w = torch.randn(n, k, device=x.device, dtype=torch.bfloat16) * 0.02
    packs = [_tinygemm(w) for _ in range(copies_for(n * k // 2, x.device))]
    del w
    if not all(isinstance(p, tuple) for p in packs):
        return None
    return graph_us(
        [lambda p=p: torch.ops.aten._weight_int4pack_mm(xb, p[0], TINYGEMM_GROUP, p[1]) for p in packs]
    )


_REGS: dict = {}  # LaunchConfig -> (registers per thread, spilled bytes) of its compiled kernel


def _newest_kernel_regs(fn) -> tuple[int, int] | None:
    """(n_regs, n_spills) of the kernel `fn` compiles on first launch, when it compiles one (else None).

    Reads Triton's per-device kernel cache (an internal structure: any surprise gives None, never an error).
    """
    from xpullm.kernels.triton import jit

    try:
        caches = [c[0] for k in (jit.gemv_q8_kernel, jit.gemv_kernel) for c in k.device_caches.values()]
        before = [len(c) for c in caches]
        fn()
        for cache, n in zip(caches, before, strict=True):
            if len(cache) > n:
                kernel = list(cache.values())[-1]
                kernel._init_handles()
                return kernel.n_regs, kernel.n_spills
    except Exception:  # diagnostics only: a Triton internal that moved gives no register count
        return None
    return None


def sweep_shape(
    fmt: str,
    gs: int,
    n: int,
    k: int,
    top: int,
    paths: tuple[str, ...],
    wide: bool = False,
    tiles: tuple[int, ...] = (1,),
    configs: list | None = None,
) -> tuple[list[dict], list[dict]]:
    """(rows sorted by graph time, tuned-table records: the winner for bf16 input and for int8 input)."""
    import triton

    from xpullm.formats import get_format
    from xpullm.kernels.triton import quantize_activations, run, run_q8, select_config, time_cold
    from xpullm.kernels.triton.configs import valid
    from xpullm.kernels.triton.launch import Q8_KEY_DTYPE, _device_name, _prepare_x

    dev = torch.device("cuda")
    w = torch.randn(n, k, device=dev, dtype=torch.bfloat16) * 0.02
    qw = get_format(fmt).quantize(w.float(), gs or None)
    tws = weight_copies(qw, dev)
    tw = tws[0]
    x = _prepare_x(torch.randn(1, k, device=dev, dtype=torch.bfloat16), tw)
    ref = (x[:, :k].float() @ qw.dequantize(torch.float32).to(dev).t()).squeeze(0)
    tuned = select_config(tw, 1, x.dtype)
    # gemv_q8 rows time the GEMV on activations quantized beforehand, as the engine's fused producers hand
    # them over; for `matmul` on bf16 input the quantizer's own in-graph time (`quant_us`) is added.
    act = quantize_activations(x[:, :k])
    quant_us = graph_us([lambda: quantize_activations(x[:, :k])] * 8)

    def calls(cfg) -> tuple[list, list[torch.Tensor]]:
        """One call of `cfg` per weight copy, and the outputs they write."""
        outs = [torch.empty(1, n, device=dev, dtype=x.dtype) for _ in tws]
        ws = None
        if cfg.split_k > 1:
            ws = [torch.empty(cfg.split_k, 1, n, device=dev, dtype=torch.float32) for _ in tws]
        call, inp = (run_q8, act) if cfg.path == "gemv_q8" else (run, x)
        fns = [
            (lambda t=t, o=o, s=(ws[i] if ws else None), c=cfg, f=call, a=inp: f(a, t, c, out=o, workspace=s))
            for i, (t, o) in enumerate(zip(tws, outs, strict=True))
        ]
        return fns, outs

    rows = []
    for cfg in [tuned, *(configs if configs is not None else grid(paths, wide, tiles))]:
        if not valid(cfg, tw, x.dtype):
            continue
        fns, outs = calls(cfg)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                regs = _newest_kernel_regs(fns[0])
                if regs is not None:
                    _REGS[cfg] = regs
                err = ((outs[0].float().squeeze(0) - ref).norm() / ref.norm()).item()
                us = graph_us(fns)
                cold = time_cold(fns[0], dev, reps=20) * 1e3
        except (triton.runtime.errors.OutOfResources, RuntimeError) as exc:
            rows.append({"cfg": cfg, "error": str(exc).splitlines()[0][:80]})
            continue
        # What `matmul` on bf16 input costs: gemv_q8 quantizes first.
        unfused = us + quant_us if cfg.path == "gemv_q8" else us
        rows.append({"cfg": cfg, "graph_us": us, "unfused_us": unfused, "cold_us": cold, "err": err,
                     "tuned": cfg == tuned})  # fmt: skip
    ok = sorted((r for r in rows if "graph_us" in r and r["err"] < 1e-2), key=lambda r: r["graph_us"])
    best = ok[0]
    best_unfused = min(ok, key=lambda r: r["unfused_us"])
    gb = tw.nbytes / 1e9
    print(f"## {fmt} g{gs} {n}x{k}: {tw.nbytes / 1e6:.1f} MB, {len(tws)} copies; tuned {tuned}; "
          f"activation quantizer {quant_us:.1f} us in graph")  # fmt: skip
    for r in ok[:top] + [r for r in ok if r["tuned"]]:
        c = r["cfg"]
        print(
            f"  {r['graph_us']:7.1f} us graph ({gb / r['graph_us'] * 1e3:.2f} TB/s)  {r['cold_us']:7.1f} us cold  "
            f"{c.path} bn{c.block_n} kb{c.block_kb} s{c.split_k} w{c.num_warps} st{c.num_stages} pf{int(c.prefetch)}"
            f" t{c.tiles}"
            f"  err {r['err']:.1e}  regs/spills {_REGS.get(c, '?')}"
            + ("  <- tuner's pick" if r["tuned"] else "")
        )
    for label, pick in (("gemv", lambda c: c.path == "gemv" and not c.prefetch),
                        ("gemv + prefetch", lambda c: c.path == "gemv" and c.prefetch),
                        ("gemv_q8", lambda c: c.path == "gemv_q8")):  # fmt: skip
        mine = [r for r in ok if pick(r["cfg"])]
        if mine:
            r = mine[0]
            print(f"  best {label}: {r['graph_us']:.1f} us graph, {r['cold_us']:.1f} us cold, {r['cfg']}")
    # The winner against cuBLAS, timed in turn (`alternate`), not the minimum over configurations above.
    fns, _outs = calls(best["cfg"])
    cublas, _weights = cublas_graph(n, k, x)
    ours, cublas_us, ratios = alternate(capture(fns), cublas)
    del cublas, _weights
    tiny = tinygemm_us(n, k, x)
    # The same winner launched plainly: what programmatic dependent launch (Hopper+) adds between calls.
    os.environ["XPULLM_PDL"] = "0"
    try:
        plain = graph_us(calls(best["cfg"])[0])
    finally:
        os.environ.pop("XPULLM_PDL")
    print(
        f"  in-graph, {len(ratios)} alternations: xpullm {ours:.1f} us ({gb / ours * 1e3:.2f} TB/s; {plain:.1f} us"
        f" without PDL), cuBLAS bf16 {cublas_us:.1f} us -> {ratios[len(ratios) // 2]:.2f}x"
        f" ({ratios[0]:.2f}-{ratios[-1]:.2f}x)"
        + (f", tinygemm {tiny:.1f} us -> {tiny / ours:.2f}x" if tiny is not None else "")
    )
    torch.cuda.empty_cache()
    print(
        f"  unfused (bf16 in, quantizer included): {best_unfused['unfused_us']:.1f} us, {best_unfused['cfg']}"
    )
    key = {"device": _device_name(dev), "format": fmt, "group_words": tw.group_words, "n": n, "kw": tw.kw,
           "m_bucket": 1}  # fmt: skip
    records = [{**key, "dtype": str(x.dtype), "config": asdict(best_unfused["cfg"])}]
    q8 = [r for r in ok if r["cfg"].path == "gemv_q8"]
    if q8:
        records.append({**key, "dtype": Q8_KEY_DTYPE, "config": asdict(q8[0]["cfg"])})
    return ok, records


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--formats", default="sym_int4:128")
    ap.add_argument("--shapes", default=None)
    ap.add_argument("--top", type=int, default=5)
    ap.add_argument("--paths", default="gemv,gemv_q8", help="kernel paths to sweep (gemv, gemv_q8)")
    ap.add_argument("--wide", action="store_true", help="the wider gemv_q8 grid (narrow tiles, long K steps)")
    ap.add_argument("--tiles", default="1", help="weight-row tiles per gemv_q8 program to try, e.g. 1,2,4")
    ap.add_argument("--configs", default=None, help="only these gemv_q8 configs, e.g. bn1.kb64.w1.pf1.t4,...")
    ap.add_argument("--json", type=Path, default=None, help="write the winners as tuned-table records")
    ap.add_argument(
        "--merge-into", type=Path, default=None, help="replace/add the winners in this tuned table"
    )
    args = ap.parse_args()
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")] if args.shapes else SHAPES
    records = []
    for spec in args.formats.split(","):
        fmt, _, gs = spec.partition(":")
        for n, k in shapes:
            _, recs = sweep_shape(
                fmt,
                int(gs) if gs else 0,
                n,
                k,
                args.top,
                tuple(args.paths.split(",")),
                args.wide,
                tuple(int(t) for t in args.tiles.split(",")),
                parse_configs(args.configs) if args.configs else None,
            )
            torch.cuda.empty_cache()  # the shape's weight copies are gone with its frame
            records += recs
            if args.json:
                args.json.write_text(json.dumps(records, indent=1))
    if args.merge_into:
        merge(args.merge_into, records)


def merge(table: Path, records: list[dict]) -> None:
    """Replace the entries of `table` that have the same key as a record, append the others."""
    fields = ("device", "format", "group_words", "n", "kw", "m_bucket", "dtype")
    new = {tuple(r[f] for f in fields): r for r in records}
    old = json.loads(table.read_text()) if table.is_file() else []
    kept = [r for r in old if tuple(r[f] for f in fields) not in new]
    table.write_text(json.dumps(kept + list(new.values()), indent=1) + "\n")
    print(f"merged {len(new)} records into {table}")


if __name__ == "__main__":
    main()
