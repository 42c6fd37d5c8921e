"""Paged attention on a GPU: the Triton kernels per pool kind, tile and batch, beside a dense-cache peer.

Llama-3-8B's attention (32 query heads, 8 kv heads of 128), bf16 activations, blocks of 16 shuffled over the pool,
one decode token per sequence. Each case captures one `paged_attention` call (the write kernel, the attention and,
split, the merge) in a CUDA graph and times replays: median of `--rounds` rounds of 50 replays, the rounds of every
variant interleaved so clock drift hits all of them. Beside it, in the same run:
- the read floor: the step's KV bytes (and 8-bit scales) at the bandwidth a device-to-device copy reaches here;
- PyTorch's `scaled_dot_product_attention` (its flash / efficient kernels) over a dense bf16 cache of the same
  context, one query token per sequence: what a framework without paged kernels runs (no write, no block table).
Tiles (`--tiles`, columns x warps x prefetch (0 / 1) x shortest split in columns [x Triton's num_stages (0: its
default) [x the longest context run unsplit]]: `paged_attention.Tile`)
replace the kernel's own choice (`paged_attention._tile`) for a variant; each variant's output is checked against
the default tile's (within bf16 rounding) before it is timed. `--splits 1` adds the unsplit kernel
(`XPULLM_PAGED_SPLITS=1`).

    python bench/paged_gpu.py [--batches 1,16,64] [--contexts 512,4096] [--pools auto,int8,fp8_e4m3]
        [--tiles 64x4x0x0,64x4x1x0] [--rounds 7] [--out results.jsonl]
    python bench/paged_gpu.py --summarize rows.jsonl [rows2.jsonl ...]   # one pivot table per pool kind
(on the device: `bash bench/gpu_run.sh py bench/paged_gpu.py ...`)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))  # run with -P: the script's folder is not on sys.path
from gpu_gemv_sweep import capture

from xpullm.kernels.paged import PagedBatch, PagedLayer, kv_bytes_per_token
from xpullm.kernels.triton import paged_attention as kernel

H, KV, D, BS = 32, 8, 128, 16
SCALE = D**-0.5


def _world(
    batch: int, context: int, pool: str, seed: int = 0, table_columns: int = 0
) -> tuple[torch.Tensor, PagedBatch, PagedLayer]:
    """`batch` sequences whose first `context` - 1 positions are in the pools (random codes / values, blocks
    shuffled), and one decode token each at position `context` - 1. The block table holds at least
    `table_columns` columns (an engine's table is as wide as the model's context, which sets the split count)."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    blocks_per_seq = -(-context // BS)
    n_blocks = batch * blocks_per_seq + 1
    shape = (n_blocks, KV, BS, D)
    if pool in ("int8", "fp8_e4m3"):
        codes = torch.randint(-100, 100, shape, device="cuda", dtype=torch.int8, generator=g)
        k_pool = codes if pool == "int8" else (codes.float() / 25).to(torch.float8_e4m3fn)
        v_pool = k_pool.clone()
        k_scale = torch.rand(shape[:3], device="cuda", generator=g) * 0.02
        v_scale = torch.rand(shape[:3], device="cuda", generator=g) * 0.02
    else:
        k_pool = torch.randn(shape, device="cuda", dtype=torch.bfloat16, generator=g)
        v_pool = torch.randn(shape, device="cuda", dtype=torch.bfloat16, generator=g)
        k_scale = v_scale = None
    perm = torch.randperm(n_blocks - 1, device="cuda", generator=g).to(torch.int32)
    tables = perm.view(batch, blocks_per_seq)
    extra = max(0, -(-table_columns // BS) - blocks_per_seq)  # columns past the context: never read
    tables = torch.cat((tables, tables.new_zeros(batch, extra)), 1).contiguous()
    positions = torch.full((batch,), context - 1, dtype=torch.int64, device="cuda")
    seq_index = torch.arange(batch, dtype=torch.int64, device="cuda")
    inv = 1.0 / 500000 ** (torch.arange(0, D, 2, device="cuda").float() / D)
    ang = torch.arange(context, device="cuda").float()[:, None] * inv
    ang = torch.cat((ang, ang), -1)
    sin = ang.sin()
    sin[:, : D // 2] = -sin[:, : D // 2]
    pb = PagedBatch(positions, seq_index, tables, ang.cos().bfloat16(), sin.bfloat16())
    layer = PagedLayer(
        k_pool, v_pool, H, SCALE, kv_cache_dtype=pool, k_scale=k_scale, v_scale=v_scale
    )  # fmt: skip
    qkv = torch.randn(batch, (H + 2 * KV) * D, device="cuda", dtype=torch.bfloat16, generator=g)
    return qkv, pb, layer


@contextmanager
def _variant(tile: kernel.Tile | None, splits: int | None) -> Iterator[None]:
    """The kernel with its tile and / or split count replaced, for one variant."""
    saved = kernel._tile, kernel._splits
    if tile is not None:
        kernel._tile = lambda d, itemsize, codes: tile
    if splits is not None:
        kernel._splits = lambda columns, block_c: splits
    try:
        yield
    finally:
        kernel._tile, kernel._splits = saved


def _graph(fn: Callable[[], torch.Tensor]) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
    """A CUDA graph of one call of `fn` (`gpu_gemv_sweep.capture`), and the output tensor the graph writes."""
    box: dict[str, torch.Tensor] = {}
    graph, _ = capture([lambda: box.__setitem__("out", fn())], reps=1)
    return graph, box["out"]  # the last call's: the one captured


def _time(graph: torch.cuda.CUDAGraph, reps: int = 50) -> float:
    """us per replay, one round of `reps` replays."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        graph.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) * 1000 / reps


def _copy_bandwidth() -> float:
    """DRAM bytes per second of a device-to-device copy of 1 GiB, read and written (median of 5): what a kernel
    that only reads could stream."""
    a = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    times = []
    for _ in range(6):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        b.copy_(a)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    return 2 * a.numel() / statistics.median(times[1:])


def _name(tile: kernel.Tile) -> str:
    stages = "" if tile.stages is None else f", {tile.stages} stages"
    unsplit = f", unsplit <= {tile.unsplit}" if tile.unsplit else ""
    return f"{tile.cols}x{tile.warps}{' prefetch' if tile.prefetch else ''}, splits >= {tile.min_split}{stages}{unsplit}"


def _case(batch: int, context: int, pool: str, tiles: list[kernel.Tile], splits: list[int],
          rounds: int, bandwidth: float, table_columns: int = 0) -> list[dict]:  # fmt: skip
    qkv, pb, layer = _world(batch, context, pool, table_columns=table_columns)
    default = kernel._tile(D, 2, kernel._CODES[pool])
    variants: dict[str, tuple[kernel.Tile | None, int | None]] = {f"default {_name(default)}": (None, None)}
    for tile in tiles:
        if tile != default:
            variants[f"tile {_name(tile)}"] = (tile, None)
    for s in splits:
        variants[f"splits {s}"] = (None, s)
    graphs: dict[str, torch.cuda.CUDAGraph] = {}
    want = None
    for name, (tile, split) in variants.items():
        with _variant(tile, split):
            graph, out = _graph(lambda: kernel.paged_attention(qkv, pb, layer))
        graph.replay()
        torch.cuda.synchronize()
        if want is None:
            want = out.float().clone()
        else:
            err = ((out.float() - want).norm() / want.norm()).item()
            if not err < 2e-2:  # bf16 output, different summation orders
                print(f"  {name}: output differs from the default tile's (relative {err:.2e}); not timed",
                      file=sys.stderr)  # fmt: skip
                continue
        graphs[name] = graph
    # the dense-cache peer: SDPA over [B, KV, C, D] bf16, one query token per sequence
    q = torch.randn(batch, H, 1, D, device="cuda", dtype=torch.bfloat16)
    kd = torch.randn(batch, KV, context, D, device="cuda", dtype=torch.bfloat16)
    vd = torch.randn_like(kd)
    graphs["peer: SDPA, dense bf16 cache"], _ = _graph(
        lambda: F.scaled_dot_product_attention(q, kd, vd, scale=SCALE, enable_gqa=True)
    )
    times: dict[str, list[float]] = {name: [] for name in graphs}
    for _ in range(rounds):
        for name, graph in graphs.items():
            times[name].append(_time(graph))
    kv_bytes = batch * context * kv_bytes_per_token(1, KV, D, pool, torch.bfloat16)
    floor_us = kv_bytes / bandwidth * 1e6
    rows = []
    for name, ts in times.items():
        med = statistics.median(ts)
        rows.append({
            "batch": batch, "context": context, "pool": pool, "variant": name, "us": med,
            "min": min(ts), "max": max(ts), "floor_us": floor_us,
            "read_tb_s": kv_bytes / (med * 1e-6) / 1e12 if not name.startswith("peer") else
            batch * context * KV * D * 2 * 2 / (med * 1e-6) / 1e12,
        })  # fmt: skip
    return rows


def summarize(paths: list[str]) -> str:
    """Per pool kind, a table of us per call: one row per (batch, context), one column per variant (first seen
    first), the shipped tile's column first; the rows of several files are kept apart by their file."""
    lines = []
    for path in paths:
        rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
        for pool in dict.fromkeys(r["pool"] for r in rows):
            mine = [r for r in rows if r["pool"] == pool]
            names = list(dict.fromkeys(r["variant"] for r in mine))
            cell = {(r["batch"], r["context"], r["variant"]): r for r in mine}
            lines += [
                f"`{path}`, {mine[0]['device']}, {pool} pools, us per call (median of the rounds):",
                "",
                "| batch x context | " + " | ".join(names) + " |",
                "|---|" + "---:|" * len(names),
            ]
            for b, c in dict.fromkeys((r["batch"], r["context"]) for r in mine):
                shown = [f"{cell[(b, c, n)]['us']:.1f}" if (b, c, n) in cell else "-" for n in names]
                lines.append(f"| {b} x {c} | " + " | ".join(shown) + " |")
            lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", default="1,16,64")
    ap.add_argument("--contexts", default="512,4096")
    ap.add_argument("--pools", default="auto,int8,fp8_e4m3")
    ap.add_argument(
        "--tiles",
        default="64x4x1x0,64x4x0x128,32x4x1x0",
        help="columns x warps x prefetch (0 / 1) x shortest split [x num_stages]: variants beside the default",
    )
    ap.add_argument("--splits", default="1", help="split counts to time beside the default ('' for none)")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument(
        "--table-columns",
        type=int,
        default=0,
        help="block-table width in columns (e.g. 8192, as an engine's: 16 splits at any context); 0: the context",
    )
    ap.add_argument("--out", default=None, help="also append the rows as JSON lines here")
    ap.add_argument("--summarize", nargs="+", default=None, metavar="ROWS", help="print tables of row files")
    args = ap.parse_args()
    if args.summarize:
        print(summarize(args.summarize))
        return
    if not torch.cuda.is_available():
        raise SystemExit("paged_gpu.py times the Triton kernels on a CUDA GPU; none is visible here")
    tiles = []
    for spec in (t for t in args.tiles.split(",") if t):
        cols, warps, prefetch, min_split, stages, unsplit = [*(int(v) for v in spec.split("x")), 0, 0][:6]
        tiles.append(kernel.Tile(cols, warps, bool(prefetch), min_split, stages or None, unsplit))
    splits = [int(s) for s in args.splits.split(",") if s]
    bandwidth = _copy_bandwidth()
    name = torch.cuda.get_device_name()
    print(f"# Paged attention, {name}: Llama-3-8B heads (32 q, 8 kv of {D}), bf16 activations, one decode token "
          f"per sequence\n\ncopy bandwidth (bytes read + written / s): {bandwidth / 1e12:.2f} TB/s\n")  # fmt: skip
    print("| pool | batch | context | variant | us (median [min-max]) | KV read TB/s | x read floor |")
    print("|---|---:|---:|---|---:|---:|---:|")
    for pool in args.pools.split(","):
        for context in (int(c) for c in args.contexts.split(",")):
            for batch in (int(b) for b in args.batches.split(",")):
                rows = _case(batch, context, pool, tiles, splits, args.rounds, bandwidth, args.table_columns)
                torch.cuda.empty_cache()
                for r in rows:
                    r["device"] = name
                    print(f"| {pool} | {batch} | {context} | {r['variant']} | {r['us']:.1f} [{r['min']:.1f}-"
                          f"{r['max']:.1f}] | {r['read_tb_s']:.2f} | {r['us'] / r['floor_us']:.2f}x |",
                          flush=True)  # fmt: skip
                if args.out:
                    with open(args.out, "a") as f:
                        for r in rows:
                            f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
