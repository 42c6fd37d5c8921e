"""Continuous batching on a GPU: S concurrent streams through `EngineCore`, beside the peer at the same batch.

A Llama-3-8B-shaped transformers model with random weights (32 layers, d 4096, ffn 14336, 32/8 heads, vocab
128256), quantized by `optimize_model` (e.g. sym_int4 g128) or kept in bf16, served by the engine the way `LLM`
builds it (`build_core`: paged KV pools, Triton paged attention, steps of <= 64 tokens replayed from CUDA graphs).
Each level submits S greedy requests at once (`--prompt` random prompt ids each, 32 by default; `--tokens` new
tokens, EOS off); the engine's token budget admits them all in one prefill step, so every decode step carries
exactly S tokens (graph bucket S). Reported per level: decode tok/s aggregate (S x (tokens - 1) over the time from the last first token to
the last token), step ms, and end-to-end tok/s (prefill included). A warm-up round at the same S (`--warmup-rounds`)
captures the graph and tunes the kernels first; the engine runs without speculative decoding, so no verify step
of more tokens lands on another graph bucket inside the timed steps.

Beside it:
- on the same model, after the engine's levels: the serialized static decoder (`GraphedDecoder`, what `LLM` runs on
  CUDA with `EngineConfig(on_accelerators=False)`) at batch 1 (`--static-batches`) - what the engine's single stream
  is compared with (`ENGINE_ON_ACCELERATOR["cuda"]` is on since the H100 run of 2026-12-05: 0.96x);
- on the same model, one stream through the public `LLM.generate` both ways (serialized static decoder vs the
  engine): the like-for-like comparison for the flip, detokenization and per-token host work included;
- `--stage peer` (its own invocation): `gpu_peer_decode.py` (its model code, loaded from `--peer PATH`: torch.compile "reduce-overhead", static
  KV cache) with its KV caches resized to S rows, int4 = tinygemm g128, bf16 = cuBLAS.

    python bench/engine_gpu.py --formats sym_int4:128 --streams 1,8,32,64 --out rows.jsonl [--tuned-out t.json]
    python bench/engine_gpu.py --stage peer --peer bench/out/gpu_peer_decode.py --peer-modes int4 --out rows.jsonl
    python bench/engine_gpu.py --summarize rows.jsonl --md table.md
    python bench/engine_gpu.py --shape tiny --device cpu ...   # a dry run of the code paths on a CPU

Rows are appended to `--out` as JSON lines after every measurement, so a stage cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import json
import os
import queue
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class Shape:
    layers: int
    d: int
    ff: int
    heads: int
    kv: int
    vocab: int
    max_len: int


SHAPES = {
    "llama3-8b": Shape(32, 4096, 14336, 32, 8, 128256, 1024),
    "llama3.2-1b": Shape(16, 2048, 8192, 32, 8, 128256, 1024),  # untied here (the real one ties its head)
    "tiny": Shape(2, 256, 512, 4, 2, 512, 1024),  # CPU dry runs
}
PROMPT = 32
PEER_FORMAT = {"int4": "sym_int4", "bf16": "bf16"}  # peer mode -> the engine format it stands beside


def _dtype(device: torch.device) -> torch.dtype:
    return torch.bfloat16 if device.type != "cpu" else torch.float32


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def _append(out: str | None, row: dict) -> None:
    print(json.dumps(row), flush=True)
    if out:
        with open(out, "a") as f:
            f.write(json.dumps(row) + "\n")


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype):
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(prev)


def build_model(shape: Shape, fmt: str, group: int | None, device: torch.device) -> torch.nn.Module:
    """A transformers Llama of `shape` with seeded random weights, in `fmt` (bf16: unquantized)."""
    import transformers

    from xpullm import optimize_model

    cfg = transformers.LlamaConfig(
        hidden_size=shape.d, intermediate_size=shape.ff, num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv, num_hidden_layers=shape.layers, vocab_size=shape.vocab,
        max_position_embeddings=shape.max_len, tie_word_embeddings=False,
    )  # fmt: skip
    torch.manual_seed(0)
    with _default_dtype(_dtype(device)), torch.device(device):
        model = transformers.LlamaForCausalLM(cfg).eval()
    if fmt != "bf16":
        optimize_model(model, fmt, group_size=group, device=device)
    return model


def word_tokenizer(vocab: int):
    """A word-level tokenizer over ids 0..vocab-1 (`t<id>`): the engine detokenizes every stream's text with it."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab)}, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok)


def _label(fmt: str, group: int | None) -> str:
    return fmt if group is None else f"{fmt} g{group}"


def _run_round(core, prompts: list[list[int]], tokens: int) -> dict:
    """Submit every prompt at once; wait for all; timings from the engine's own per-request clocks."""
    from xpullm.engine.params import GenerationParams

    events: queue.Queue = queue.Queue()
    params = GenerationParams(max_new_tokens=tokens)
    start = time.perf_counter()
    reqs = [core.submit(p, params, lambda kind, value: events.put((kind, value))) for p in prompts]
    done = 0
    while done < len(reqs):
        kind, value = events.get(timeout=600)
        if kind == "error":
            raise value
        done += kind == "done"
    end = time.perf_counter()
    first = max(r.first_t for r in reqs)
    last = max(r.last_t for r in reqs)
    n = sum(len(r.assembler.ids) for r in reqs)
    return {"wall_s": end - start, "decode_s": last - first, "tokens": n, "ttft_s": first - start}


def engine_stage(args: argparse.Namespace, shape: Shape, device: torch.device) -> None:
    from xpullm.engine.core import EngineConfig, build_core
    from xpullm.engine.decode import FAMILIES, StaticCacheDecoder
    from xpullm.settings import runtime_settings

    streams = [int(s) for s in args.streams.split(",") if s]
    top = max(streams)
    for spec in (s for s in args.formats.split(",") if s):
        fmt, _, g = spec.partition(":")
        group = int(g) if g else None
        t0 = time.perf_counter()
        model = build_model(shape, fmt, group, device)
        dec = StaticCacheDecoder(model, FAMILIES["llama"], _dtype(device), device)
        config = EngineConfig(
            max_seqs=top,
            max_batched_tokens=max(top * args.prompt, 256),  # every level's prompts in one prefill step
            kv_budget_tokens=top * (args.prompt + args.tokens + 16) + 64,
            prefix_cache=False,  # fresh random prompts each round anyway; no lookups
            # plain decoding: every decode step carries exactly S tokens (graph bucket S). With prompt lookup on
            # (the engine's default), a random model's repetitive text drew drafts now and then: verify steps of
            # more tokens, which captured another bucket's graph or tuned a new row count inside the timed steps
            # (session 15). Speculative decoding is measured by spec_gpu.py.
            speculative=None,
            kv_cache_dtype=args.kv_cache_dtype,
            graph_buckets=tuple(sorted(set(streams) | {PROMPT})) if not args.no_graphs else (),
            launch_ahead=None if args.launch_ahead == "auto" else args.launch_ahead == "on",
        )
        core = build_core(dec, word_tokenizer(shape.vocab), [], shape.max_len, config)
        if args.eager_replay and not args.no_graphs:  # CPU dry runs: the graph path's bookkeeping, no graphs
            from xpullm.engine.step_graphs import EAGER_REPLAY, attach_step_graphs

            attach_step_graphs(core.runner, config.graph_buckets, core.pool.num_blocks, top, EAGER_REPLAY)
        graphs = core.runner.graphs
        print(f"# {spec}: model + engine built in {time.perf_counter() - t0:.1f} s; attention "
              f"{core.runner.attention_name}; graphs {graphs.backend.name if graphs else None}", flush=True)  # fmt: skip
        gen = torch.Generator().manual_seed(1)
        for s in streams:

            def prompts(s: int = s, gen: torch.Generator = gen) -> list[list[int]]:
                return torch.randint(0, shape.vocab, (s, args.prompt), generator=gen).tolist()

            t0 = time.perf_counter()
            for _ in range(args.warmup_rounds):  # captures bucket s, tunes kernels for these shapes
                _run_round(core, prompts(), min(args.tokens, 8))
            warm = time.perf_counter() - t0
            replays = graphs.replays if graphs else 0
            captures = graphs.captures if graphs else 0
            steps, ahead = core.stats().steps, core.stats().ahead_steps
            r = _run_round(core, prompts(), args.tokens)
            decode_tokens = s * (args.tokens - 1)
            _append(args.out, {
                "stage": "engine", "engine": "xpullm engine (continuous batching)", "format": _label(fmt, group),
                "streams": s, "tok_s": decode_tokens / r["decode_s"], "step_ms": r["decode_s"] / (args.tokens - 1) * 1e3,
                "e2e_tok_s": r["tokens"] / r["wall_s"], "ttft_s": r["ttft_s"], "tokens": args.tokens,
                "steps": core.stats().steps - steps, "graph_replays": (graphs.replays if graphs else 0) - replays,
                "new_captures": (graphs.captures if graphs else 0) - captures, "warmup_s": warm,
                "device": _device_name(device), "prompt": args.prompt,
                "paged_splits": runtime_settings().paged_splits, "kv_cache_dtype": args.kv_cache_dtype,
                "ahead_steps": core.stats().ahead_steps - ahead, "launch_ahead": core._launch_ahead,
            })  # fmt: skip
        del core, dec
        static_rows(args, shape, device, model, fmt, group)
        if not args.no_llm:
            llm_rows(args, shape, device, model, fmt, group)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
        _export_tuned(args.tuned_out)


def _export_tuned(path: str | None) -> None:
    """Write the Triton matmul configurations this process tuned (later stages load them: no re-tuning)."""
    if not path:
        return
    try:
        from xpullm.kernels.triton.launch import export_tuned
    except ImportError:  # no Triton here (CPU dry run)
        return
    Path(path).write_text(json.dumps(export_tuned(), indent=1))


def static_rows(
    args: argparse.Namespace,
    shape: Shape,
    device: torch.device,
    model: torch.nn.Module,
    fmt: str,
    group: int | None,
) -> None:
    """The serialized static decoder (CUDA graphs per batch size) on the same model, at `--static-batches`."""
    from xpullm.engine.decode import build_decoder

    dec = build_decoder(model, _dtype(device), device)
    for b in [int(b) for b in args.static_batches.split(",") if b]:
        prompt = torch.randint(0, shape.vocab, (b, args.prompt), device=device)
        logits = dec.start(prompt, torch.zeros(b, dtype=torch.long), args.prompt + args.tokens + 8)
        for _ in range(3):  # tunes kernels and records the graph
            logits = dec.step(logits.argmax(-1))
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(args.tokens):
            logits = dec.step(logits.argmax(-1))
        _sync(device)
        secs = time.perf_counter() - t0
        _append(args.out, {
            "stage": "static", "engine": f"xpullm static decoder ({type(dec).__name__}, serialized)",
            "format": _label(fmt, group), "streams": b, "tok_s": b * args.tokens / secs,
            "step_ms": secs / args.tokens * 1e3, "tokens": args.tokens, "device": _device_name(device),
        })  # fmt: skip
    del dec


def llm_rows(
    args: argparse.Namespace,
    shape: Shape,
    device: torch.device,
    model: torch.nn.Module,
    fmt: str,
    group: int | None,
) -> None:
    """One stream through the public `LLM` API both ways - the serialized static decoder (`on_accelerators=False`)
    and the engine (`on_accelerators=True`, the CUDA default) - with detokenization, stop checks and the
    per-token host sync each path really has."""
    from xpullm.engine import LLM
    from xpullm.engine.core import EngineConfig

    tok = word_tokenizer(shape.vocab)
    prompt = " ".join(f"t{i}" for i in torch.randint(0, shape.vocab, (PROMPT,)).tolist())
    for on in (False, True):
        llm = LLM(model, tokenizer=tok, engine=EngineConfig(on_accelerators=on, kv_budget_tokens=4096))
        path = "engine" if llm.engine is not None else "serialized static decoder"
        llm.generate(prompt, max_new_tokens=8)  # tunes kernels, records graphs
        best = max(llm.generate(prompt, max_new_tokens=args.tokens).decode_tok_s for _ in range(2))
        _append(args.out, {
            "stage": "llm", "engine": f"LLM.generate, one stream ({path})", "format": _label(fmt, group),
            "streams": 1, "tok_s": best, "step_ms": 1e3 / best if best else 0.0, "tokens": args.tokens,
            "on_accelerators": on, "device": _device_name(device),
        })  # fmt: skip
        del llm


def load_peer(path: str, layers: int, group: int) -> dict:
    """The peer script's definitions (model, linear layers, int4 packing), without running its own benchmark:
    its module-level loop and prints are left out; `args` is parsed from the given layers and group."""
    source = Path(path).read_text()
    tree = ast.parse(source, filename=path)

    def kept(node: ast.stmt) -> bool:
        if isinstance(node, (ast.For, ast.While)):
            return False
        call = node.value if isinstance(node, ast.Expr) else None
        return not (isinstance(call, ast.Call) and getattr(call.func, "id", "") == "print")

    module = ast.Module(body=[n for n in tree.body if kept(n)], type_ignores=[])
    namespace: dict = {"__name__": "gpu_peer_decode", "__file__": path}
    argv = sys.argv
    sys.argv = [path, "--layers", str(layers), "--group", str(group)]
    try:
        exec(compile(module, path, "exec"), namespace)  # the peer benchmark, by path, on purpose
    finally:
        sys.argv = argv
    for name in ("Model", "args", "D", "FF", "H", "KV", "V", "MAXLEN", "HD", "dev"):
        if name not in namespace:
            raise ValueError(f"{path} does not define {name!r}: is it gpu_peer_decode.py?")
    return namespace


@torch.no_grad()
@contextlib.contextmanager
def _timing_turn(sync: str | None):
    """`--peer-sync DIR:N`: N peer processes (one per batch size) compile at the same time - the peer's
    torch.compile takes ~50 s per batch size, most of a call's time when run one after another - then wait until
    all N have compiled and time one at a time (a lock in DIR), so no compile or other timing shares the machine
    with a measured loop. A sibling that dies does not hang the rest: the wait gives up after 15 minutes."""
    if not sync:
        yield
        return
    import fcntl

    folder, _, count = sync.rpartition(":")
    Path(folder).mkdir(parents=True, exist_ok=True)
    Path(folder, f"ready.{os.getpid()}").touch()
    deadline = time.monotonic() + 900
    while len(list(Path(folder).glob("ready.*"))) < int(count) and time.monotonic() < deadline:
        time.sleep(0.5)
    with open(Path(folder, "gpu.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def peer_stage(args: argparse.Namespace, shape: Shape, device: torch.device) -> None:
    peer = load_peer(args.peer, shape.layers, 128)
    own = (peer["D"], peer["FF"], peer["H"], peer["KV"], peer["V"])
    if own != (shape.d, shape.ff, shape.heads, shape.kv, shape.vocab):
        if args.shape == "llama3-8b":
            raise SystemExit(f"{args.peer} builds {own}, not the Llama-3-8B shape this benchmark compares")
        # Dry runs only: the peer's classes read these module globals when they build and run.
        peer.update(
            D=shape.d, FF=shape.ff, H=shape.heads, KV=shape.kv, V=shape.vocab, HD=shape.d // shape.heads
        )
    peer["dev"] = device.type  # "cuda" as the peer has it; "cpu" for a dry run (bf16 mode only)
    streams = [int(s) for s in args.streams.split(",") if s]
    v, max_len, kv, hd = peer["V"], peer["MAXLEN"], peer["KV"], peer["HD"]
    for mode in (m for m in args.peer_modes.split(",") if m):
        torch.manual_seed(0)
        t0 = time.perf_counter()
        model = peer["Model"](mode)
        # One compiled step per batch size (dynamo recompiles on the new batch; dynamic shapes did not save a
        # compile, something in the step specializes the batch). The KV buffers are resized in place to S rows,
        # so the module keeps its tensors (a replaced buffer costs a second compile per size).
        step = torch.compile(model.forward, mode="reduce-overhead", fullgraph=True)
        for s in streams:
            for blk in model.blocks:
                blk.k.resize_(s, kv, max_len, hd).zero_()
                blk.v.resize_(s, kv, max_len, hd).zero_()
            prompt = torch.randint(0, v, (s, PROMPT), device=device)
            # A copy, not a view: the step's input is then the same kind of tensor every call (one compile).
            tok = model(prompt, torch.arange(PROMPT, device=device)).argmax(-1).view(s, 1).clone()
            for i in range(3):  # compile + capture
                tok = step(tok, torch.tensor([PROMPT + i], device=device)).argmax(-1).view(s, 1).clone()
            _sync(device)
            with _timing_turn(args.peer_sync):
                t1 = time.perf_counter()
                for i in range(args.tokens):
                    tok = step(tok, torch.tensor([40 + i], device=device)).argmax(-1).view(s, 1).clone()
                _sync(device)
                secs = time.perf_counter() - t1
            _append(args.out, {
                "stage": "peer", "engine": "peer gpu_peer_decode.py (torch.compile, static batch)",
                "format": "int4 tinygemm g128" if mode == "int4" else mode, "peer_of": PEER_FORMAT.get(mode, mode),
                "streams": s, "tok_s": s * args.tokens / secs, "step_ms": secs / args.tokens * 1e3,
                "tokens": args.tokens, "setup_s": t1 - t0, "device": _device_name(device),
            })  # fmt: skip
        del step, model
        torch._dynamo.reset()
        if device.type == "cuda":
            torch.cuda.empty_cache()


def _variant(r: dict) -> str:
    """An engine row's variant: its KV pools, paged-attention split count and (where recorded) launch-ahead."""
    ahead = f", ahead {'on' if r['launch_ahead'] else 'off'}" if "launch_ahead" in r else ""
    return f"kv {r.get('kv_cache_dtype', 'auto')}, splits {r.get('paged_splits')}{ahead}"


def _splits_table(rows: list[dict], md_path: str | None) -> str:
    """Engine rows of several prompt lengths / KV pools / paged-attention split counts (`device_session.sh` stages
    `splits` and `kv`): tok/s per (format, prompt, streams), one column per variant (in the rows' order), and the
    first variant's gain over the last."""
    engine = [r for r in rows if r["stage"] == "engine"]
    variants = list(dict.fromkeys(_variant(r) for r in engine))
    cell = {(r["format"], r.get("prompt"), r["streams"], _variant(r)): r["tok_s"] for r in engine}
    device = next((r["device"] for r in engine), "?")
    lines = [
        f"Device: {device}. Engine decode tok/s aggregate over all streams, by KV pools and `XPULLM_PAGED_SPLITS`.",
        "",
        "| format | prompt | streams | " + " | ".join(variants) + " | first / last |",
        "|---|---:|---:|" + "---:|" * (len(variants) + 1),
    ]
    for fmt, prompt, streams in sorted({k[:3] for k in cell}, key=lambda k: (k[0], k[1] or 0, k[2])):
        values = [cell.get((fmt, prompt, streams, v)) for v in variants]
        gain = f"{values[0] / values[-1]:.2f}x" if values[0] and values[-1] else "-"
        shown = " | ".join(f"{v:.1f}" if v else "-" for v in values)
        lines.append(f"| {fmt} | {prompt} | {streams} | {shown} | {gain} |")
    text = "\n".join(lines) + "\n"
    if md_path:
        Path(md_path).write_text(text)
    return text


def summarize(rows_path: str, md_path: str | None) -> str:
    """A markdown table: per format and streams, engine vs peer tok/s, scaling over one stream, and the engine's
    single stream vs the static decoder's."""
    rows = [json.loads(line) for line in Path(rows_path).read_text().splitlines() if line.strip()]
    if len({(r.get("prompt"), _variant(r)) for r in rows if r["stage"] == "engine"}) > 1:
        return _splits_table(rows, md_path)
    engine = {(r["format"], r["streams"]): r for r in rows if r["stage"] == "engine"}
    static = {(r["format"], r["streams"]): r for r in rows if r["stage"] == "static"}
    peer = {(r["peer_of"], r["streams"]): r for r in rows if r["stage"] == "peer"}
    device = next((r["device"] for r in rows), "?")
    lines = [
        f"Device: {device}. Decode tok/s aggregate over all streams (engine: from the last first token to the "
        "last token; peer: fixed batch, compiled step).",
        "",
        "| format | streams | engine tok/s | step ms | x engine 1 stream | peer tok/s (same batch) | engine / peer |"
        " static decoder tok/s | engine e2e tok/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (fmt, s), r in sorted(engine.items()):
        one, st = engine.get((fmt, 1)), static.get((fmt, s))
        p = peer.get((fmt.split(" ")[0], s))
        cells = [
            fmt, str(s), f"{r['tok_s']:.1f}", f"{r['step_ms']:.2f}",
            f"{r['tok_s'] / one['tok_s']:.2f}" if one else "-",
            f"{p['tok_s']:.1f} ({p['format']})" if p else "-",
            f"{r['tok_s'] / p['tok_s']:.2f}" if p else "-",
            f"{st['tok_s']:.1f}" if st else "-",
            f"{r['e2e_tok_s']:.1f}",
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    for (fmt, s), st in sorted(static.items()):
        if (fmt, s) not in engine:
            lines.append(f"| {fmt} | {s} | - | - | - | - | - | {st['tok_s']:.1f} | - |")
    llm = {(r["format"], r["on_accelerators"]): r for r in rows if r["stage"] == "llm"}
    for fmt in sorted({f for f, _ in llm}):
        serial, eng = llm.get((fmt, False)), llm.get((fmt, True))
        if serial and eng:
            lines.append(
                f"\nOne stream through `LLM.generate`, {fmt}: {serial['engine']} {serial['tok_s']:.1f} tok/s, "
                f"{eng['engine']} {eng['tok_s']:.1f} tok/s ({eng['tok_s'] / serial['tok_s']:.2f}x)."
            )
    text = "\n".join(lines) + "\n"
    if md_path:
        Path(md_path).write_text(text)
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stage", choices=("engine", "peer"), default="engine")
    ap.add_argument("--formats", default="sym_int4:128,bf16", help="engine / static formats, fmt[:group]")
    ap.add_argument("--streams", default="1,8,32,64", help="concurrent streams (engine, peer)")
    ap.add_argument(
        "--static-batches", default="1", help="engine stage: static decoder batch sizes ('': none)"
    )
    ap.add_argument(
        "--no-llm", action="store_true", help="engine stage: skip the one-stream LLM.generate rows"
    )
    ap.add_argument("--tuned-out", default=None, help="engine stage: write the tuned Triton configs here")
    ap.add_argument("--tokens", type=int, default=128, help="new tokens per stream")
    ap.add_argument(
        "--warmup-rounds",
        type=int,
        default=1,
        help="engine stage: 8-token rounds at each level before the timed one (a row's new_captures / "
        "graph_replays say whether a capture or eager steps fell inside the timed ones)",
    )
    ap.add_argument(
        "--prompt", type=int, default=PROMPT, help="prompt tokens per stream (engine and static stages)"
    )
    ap.add_argument(
        "--kv-cache-dtype", default="auto", help="engine stage: the KV pools (auto = bf16, int8, fp8_e4m3)"
    )
    ap.add_argument("--peer", default=None, help="path to gpu_peer_decode.py (stage peer)")
    ap.add_argument("--peer-modes", default="int4,bf16")
    ap.add_argument(
        "--peer-sync", default=None, metavar="DIR:N",
        help="stage peer: N such processes compile at once, then time one at a time (a lock in DIR)",
    )  # fmt: skip
    ap.add_argument("--no-graphs", action="store_true", help="engine steps all eager")
    ap.add_argument(
        "--launch-ahead", choices=("auto", "on", "off"), default="auto",
        help="engine stage: queue each decode step before reading the last one's tokens (auto: on for GPUs)",
    )  # fmt: skip
    ap.add_argument(
        "--eager-replay", action="store_true", help="dry runs: step graphs re-run eagerly (any device)"
    )
    ap.add_argument("--shape", choices=tuple(SHAPES), default="llama3-8b")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", default=None, help="append result rows (JSON lines) here")
    ap.add_argument("--summarize", default=None, metavar="ROWS", help="print a table of a rows file and exit")
    ap.add_argument("--md", default=None, help="with --summarize: also write the table here")
    args = ap.parse_args()
    if args.summarize:
        print(summarize(args.summarize, args.md))
        return
    device = torch.device(args.device)
    shape = SHAPES[args.shape]
    # long prompts: the model's position table and the engine's context grow to hold prompt + new tokens
    shape = dataclasses.replace(shape, max_len=max(shape.max_len, args.prompt + args.tokens + 16))
    print(
        f"# torch {torch.__version__}, {_device_name(device)}, shape {args.shape}, stage {args.stage}",
        flush=True,
    )
    {"engine": engine_stage, "peer": peer_stage}[args.stage](args, shape, device)
    # Idle engine threads (daemons, waiting for work) must not meet interpreter teardown: the rows are written.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
