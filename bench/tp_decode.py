"""Tensor-parallel decode speed: tok/s at TP = 1/2/4/8 on random-weight Llama shapes, int4 and bf16, batch 1 and 32.

Every rank builds its own shard straight from random numbers (no checkpoint, nothing materialized whole), the
ranks are real processes (`xpullm.parallel.RankSet`, one device each; gloo ranks on CPU), and rank 0 times the
decoder's steps as the engine runs them (`StaticCacheDecoder`; on CUDA its CUDA-graph wrapper, whose captured step
holds the NCCL all-reduces and the vocabulary all-gather). TP=1 is the single-device peer of the same code.

    python -P bench/tp_decode.py --device cuda --shapes llama3-8b,llama3-70b --formats sym_int4:128,bf16 \
        --batches 1,32 --tp 1,2,4,8 --out tp.jsonl
    python -P bench/tp_decode.py --device cpu --shapes smollm2-135m --formats asym_int4:32 --tp 1,2

Speedup = tok/s(TP=n) / tok/s(TP=1); scaling efficiency = speedup / n. Configurations whose weights do not fit one
device's memory at that TP are listed as skipped (e.g. 70B bf16 at TP<=2 on 80 GB cards).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import torch

SHAPES = {  # hidden, ffn, heads, kv heads, vocab, layers, tied embeddings
    "llama3-8b": (4096, 14336, 32, 8, 128256, 32, False),
    "llama3-70b": (8192, 28672, 64, 8, 128256, 80, False),
    "smollm2-135m": (576, 1536, 9, 3, 49152, 30, True),
}
PROMPT = 32  # prefill length before the timed steps


def _config(shape: str, layers: int | None):
    import transformers

    d, ff, h, kv, v, n, tied = SHAPES[shape]
    return transformers.LlamaConfig(hidden_size=d, intermediate_size=ff, num_attention_heads=h,
                                    num_key_value_heads=kv, vocab_size=v, num_hidden_layers=layers or n,
                                    max_position_embeddings=4096, tie_word_embeddings=tied, head_dim=d // h)  # fmt: skip


def _fmt(spec: str) -> tuple[str, int | None]:
    name, _, group = spec.partition(":")
    return name, int(group) if group else None


def _random_shard(
    cfg, plan, rank: int, fmt: str, group: int | None, device: torch.device, dtype: torch.dtype
):
    """(name, tensor or QuantizedWeight) of rank `rank`'s shard, generated in shard shape on `device`."""
    from xpullm.formats import get_format

    s = plan.shards[rank]
    d, hd = cfg.hidden_size, plan.shape.head_dim
    q, kvr, f, vr = s.n_heads * hd, len(s.kv_heads) * hd, s.ffn[1] - s.ffn[0], s.vocab[1] - s.vocab[0]
    gen = torch.Generator(device=device).manual_seed(1234 + rank)

    def weight(n: int, k: int):
        w = torch.randn(n, k, generator=gen, device=device, dtype=torch.bfloat16) / math.sqrt(k)
        return get_format(fmt).quantize(w, group)

    yield "model.embed_tokens.weight", torch.randn(vr, d, generator=gen, device=device, dtype=dtype) * 0.02
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        for name, shape in (("self_attn.q_proj", (q, d)), ("self_attn.k_proj", (kvr, d)),
                            ("self_attn.v_proj", (kvr, d)), ("self_attn.o_proj", (d, q)),
                            ("mlp.gate_proj", (f, d)), ("mlp.up_proj", (f, d)), ("mlp.down_proj", (d, f))):  # fmt: skip
            yield p + name + ".weight", weight(*shape)
        yield p + "input_layernorm.weight", torch.ones(d, device=device, dtype=dtype)
        yield p + "post_attention_layernorm.weight", torch.ones(d, device=device, dtype=dtype)
    yield "model.norm.weight", torch.ones(d, device=device, dtype=dtype)
    if not cfg.tie_word_embeddings:
        yield "lm_head.weight", weight(vr, d)


def build_random(ctx):
    """Rank builder (`RankSet`): this rank's random shard, wrapped in its collectives, as a `RankProgram`."""
    from xpullm.engine.tensor_parallel import RankProgram
    from xpullm.loading.build import BuildOptions, build_model
    from xpullm.parallel import ModelShape, parallelize, plan_split, shard_config

    shape, layers, spec, dtype = ctx.payload
    fmt, group = _fmt(spec)
    cfg = _config(shape, layers)
    plan = plan_split(ModelShape.from_config(cfg), ctx.world, group or 1)
    opts = BuildOptions(low_bit=fmt, group_size=group, device=ctx.device, dtype=dtype, progress=False,
                        stored_formats=True)  # fmt: skip
    model = build_model(shard_config(cfg, plan, ctx.rank),
                        _random_shard(cfg, plan, ctx.rank, fmt, group, ctx.device, dtype), opts)  # fmt: skip
    parallelize(model, plan, ctx.group)
    return RankProgram(model, dtype, ctx.device)


def _fits(shape: str, layers: int | None, spec: str, world: int, device: torch.device) -> bool:
    if device.type == "cpu":
        return True
    d, ff, h, kv, v, n, _ = SHAPES[shape]
    hd = d // h
    params = (layers or n) * (d * (h * hd + 2 * kv * hd) + h * hd * d + 3 * d * ff) + 2 * v * d
    fmt, group = _fmt(spec)
    bytes_per = 2.0 if fmt == "bf16" else 0.5 + 4.0 / (group or 32)
    total = getattr(torch, device.type).get_device_properties(0).total_memory
    return params * bytes_per / world < 0.8 * total


def measure(shape: str, layers: int | None, spec: str, world: int, batch: int, tokens: int,
            device: torch.device, threads: int | None = None) -> dict:  # fmt: skip
    """Decode tok/s of one configuration on a fresh world of `world` ranks."""
    from xpullm.devices import default_dtype
    from xpullm.parallel import Mirrored, RankSet

    row = {"shape": shape, "layers": layers or SHAPES[shape][5], "format": spec, "tp": world, "batch": batch,
           "device": device.type, "threads_per_rank": threads or max(1, (os.cpu_count() or 1) // world)}  # fmt: skip
    if not _fits(shape, layers, spec, world, device):
        return {**row, "skipped": "weights do not fit one device at this TP"}
    dtype = default_dtype(device)
    ranks = RankSet(world, device, f"{Path(__file__).resolve()}:build_random", (shape, layers, spec, dtype),
                    threads_per_rank=threads)  # fmt: skip
    t0 = time.perf_counter()
    program = ranks.start()
    row["start_s"] = round(time.perf_counter() - t0, 1)
    try:
        dec = Mirrored(program.decoder, "decoder", ("start", "step"), ranks)
        dev0 = program.static.device
        ids = torch.randint(0, SHAPES[shape][4], (batch, PROMPT), generator=torch.Generator().manual_seed(0))
        pad = torch.zeros(batch, dtype=torch.long)
        logits = dec.start(ids.to(dev0), pad.to(dev0), PROMPT + tokens + 16)
        nxt = logits.argmax(-1)
        for _ in range(8):  # warm-up: kernels tuned, CUDA graphs captured (collectives included)
            nxt = dec.step(nxt).argmax(-1)
        _sync(dev0)
        t = time.perf_counter()
        for _ in range(tokens):
            nxt = dec.step(nxt).argmax(-1)
        _sync(dev0)
        dt = time.perf_counter() - t
    finally:
        ranks.close()
    return {**row, "tok_s": round(batch * tokens / dt, 1), "step_ms": round(1000 * dt / tokens, 2)}


def _sync(device: torch.device) -> None:
    if device.type != "cpu":
        getattr(torch, device.type).synchronize(device)


def table(rows: list[dict]) -> str:
    """Markdown: tok/s per TP with speedup and scaling efficiency against TP=1 of the same row."""
    base = {(r["shape"], r["format"], r["batch"]): r.get("tok_s") for r in rows if r["tp"] == 1}
    lines = ["| shape | format | batch | TP | tok/s | speedup | efficiency | step ms |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        if "skipped" in r:
            lines.append(
                f"| {r['shape']} | {r['format']} | {r['batch']} | {r['tp']} | {r['skipped']} | | | |"
            )
            continue
        b = base.get((r["shape"], r["format"], r["batch"]))
        speed = f"{r['tok_s'] / b:.2f}x" if b else ""
        eff = f"{r['tok_s'] / b / r['tp']:.0%}" if b else ""
        lines.append(f"| {r['shape']} | {r['format']} | {r['batch']} | {r['tp']} | {r['tok_s']} | {speed} | {eff} "
                     f"| {r['step_ms']} |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--shapes", default="llama3-8b,llama3-70b")
    ap.add_argument("--formats", default="sym_int4:128,bf16")
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--tp", default="1,2,4,8")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--layers", type=int, default=None, help="override the layer count (quick runs)")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads per rank (default: cores / TP)")
    ap.add_argument("--out", default=None, help="append one JSON row per configuration")
    args = ap.parse_args()
    device = torch.device(args.device)
    rows = []
    for shape in args.shapes.split(","):
        for spec in args.formats.split(","):
            for batch in map(int, args.batches.split(",")):
                for world in map(int, args.tp.split(",")):
                    row = measure(shape, args.layers, spec, world, batch, args.tokens, device, args.threads)
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                    if args.out:
                        with open(args.out, "a") as fh:
                            fh.write(json.dumps(row) + "\n")
    print(table(rows))


if __name__ == "__main__":
    main()
