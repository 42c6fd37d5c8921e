"""Where a compiled decode step spends its GPU time: xpullm formats vs tinygemm vs bf16, same model, same run.

For each format, builds `gpu_decode.Model` (Llama-3-8B shape, random weights), compiles the decode step the
way `gpu_decode.py` does (CUDA graphs), then reports:
- `step ms`: wall time of one decode step (median over `--tokens` steps), and the host time to issue it
  (Python, guards, CUDA-graph replay checks: hidden behind the GPU only while it is shorter);
- `linears ms`: one CUDA graph that runs only the model's linear layers once each, back to back, on fixed
  inputs - the low-bit kernels' share of a step, free of everything else;
- the kernels a profiled step runs (torch.profiler), grouped by name, with their GPU time per step.
`step ms - linears ms` is what the rest of the model (norms, RoPE, attention, cache writes, launch gaps) costs.

`--engine` profiles `xpullm.engine`'s static-cache decoder instead (CUDA-graph steps): step time and its kernels
per step. `--runner` profiles the continuous-batching engine's `ModelRunner` (paged KV pools, the step graph of its
token bucket) the same way: what a served request's decode step costs.

    python bench/gpu_profile.py [--layers 32] [--formats bf16,tinygemm:128,sym_int4:128] [--engine | --runner]
        [--batch 1,16] [--prompt 512] [--out prof.md]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import gpu_decode as gd


def _linears(model: torch.nn.Module) -> list[torch.nn.Module]:
    """Every leaf projection of the model, in call order."""
    out = []
    for blk in model.blocks:
        out += [blk.wqkv, blk.wo, blk.w13, blk.w2]
    return [*out, model.head]


def _in_features(lin: torch.nn.Module) -> int:
    for name in ("in_features",):
        if hasattr(lin, name):
            return int(getattr(lin, name))
    return int(lin.sz.shape[0] * lin.group)  # TinyGemmLinear


def linears_graph_ms(model: torch.nn.Module, batch: int, reps: int = 20) -> float:
    """Milliseconds for one pass over every linear layer, replayed from one CUDA graph."""
    lins = _linears(model)
    xs = {k: torch.randn(batch, 1, k, device=gd.DEV, dtype=gd.DT) for k in {_in_features(m) for m in lins}}

    def once() -> None:
        for m in lins:
            m(xs[_in_features(m)])

    once()  # tunes / compiles outside the capture
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        once()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        once()
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps


def _per_name(prof, steps: int, device_type, time_attr: str) -> list[tuple[str, float, int]]:
    """[(event name, `time_attr` us per step, calls per step)] of `device_type` events, largest first."""
    per_name: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for evt in prof.events():
        if evt.device_type != device_type:
            continue
        entry = per_name[evt.name[:90]]
        entry[0] += getattr(evt, time_attr)
        entry[1] += 1
    return sorted(((n, us / steps, int(c / steps)) for n, (us, c) in per_name.items()), key=lambda r: -r[1])


def _kernel_table(prof, steps: int, top: int) -> tuple[float, list[tuple[str, float, int]]]:
    """(GPU ms per step over all kernels, [(kernel name, us per step, calls per step)] largest first)."""
    rows = _per_name(prof, steps, torch.autograd.DeviceType.CUDA, "device_time")
    return sum(r[1] for r in rows) / 1e3, rows[:top]


def _grid_table(prof, steps: int, top: int) -> list[tuple[str, float, int]]:
    """[(kernel name @ launch grid, us per step, calls per step)] largest first: one kernel's launches on different
    weight shapes (qkv, o, gate_up, down, LM head) have different grids, so this splits a step's GEMMs by shape."""
    import json
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        prof.export_chrome_trace(f.name)
        events = json.loads(Path(f.name).read_text()).get("traceEvents", [])
    acc: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for e in events:
        if e.get("cat") == "kernel":
            key = f"{e['name'][:48]} @ {e.get('args', {}).get('grid')}"
            acc[key][0] += e.get("dur", 0.0)
            acc[key][1] += 1
    rows = sorted(((k, us / steps, n // steps) for k, (us, n) in acc.items()), key=lambda r: -r[1])
    return rows[:top]


def _host_table(prof, steps: int, top: int) -> list[tuple[str, float, int]]:
    """[(host op / CUDA runtime call, self CPU us per step, calls per step)] largest first."""
    return _per_name(prof, steps, torch.autograd.DeviceType.CPU, "self_cpu_time_total")[:top]


@torch.no_grad()
def profile(fmt: str, group: int | None, layers: int, tokens: int, batch: int, top: int) -> list[str]:
    """Markdown lines for one format."""
    torch.manual_seed(0)
    model = gd.Model(layers, fmt, group, batch)
    prompt = torch.randint(0, gd.V, (batch, 32), device=gd.DEV)
    tok = model(prompt, torch.arange(32, device=gd.DEV)).argmax(-1).view(batch, 1)
    for i in range(2):
        tok = model(tok, torch.tensor([32 + i], device=gd.DEV)).argmax(-1).view(batch, 1)
    step = torch.compile(model.forward, mode="reduce-overhead", fullgraph=True)
    pos = 34
    for _ in range(3):
        tok = step(tok, torch.tensor([pos], device=gd.DEV)).argmax(-1).view(batch, 1).clone()
        pos += 1
    times, host = [], []
    for _ in range(tokens):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        tok = step(tok, torch.tensor([pos], device=gd.DEV)).argmax(-1).view(batch, 1).clone()
        host.append(time.perf_counter() - t0)  # CPU time to issue the step (the GPU runs on)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        pos += 1
    step_ms = sorted(times)[len(times) // 2] * 1e3
    host_ms = sorted(host)[len(host) // 2] * 1e3
    lin_ms = linears_graph_ms(model, batch)
    steps = 5
    acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=acts) as prof:
        for _ in range(steps):
            tok = step(tok, torch.tensor([pos], device=gd.DEV)).argmax(-1).view(batch, 1).clone()
            pos += 1
        torch.cuda.synchronize()
    gpu_ms, rows = _kernel_table(prof, steps, top)
    host_rows = _host_table(prof, steps, top)
    label = fmt if group is None else f"{fmt} g{group}"
    out = [
        f"### {label}, batch {batch}",
        "",
        f"step {step_ms:.3f} ms ({batch * 1e3 / step_ms:.1f} tok/s), host {host_ms:.3f} ms to issue it; linears only (one CUDA graph) {lin_ms:.3f} ms; "
        f"profiled kernels {gpu_ms:.3f} ms/step; rest = step - linears = {step_ms - lin_ms:.3f} ms",
        "",
        "| kernel | us/step | calls/step |",
        "|---|---|---|",
        *(f"| `{n}` | {us:.1f} | {c} |" for n, us, c in rows),
        "",
        "| host op / runtime call | self CPU us/step | calls/step |",
        "|---|---|---|",
        *(f"| `{n}` | {us:.1f} | {c} |" for n, us, c in host_rows),
        "",
    ]
    print("\n".join(out), flush=True)
    del model, step
    torch.cuda.empty_cache()
    torch._dynamo.reset()
    return out


def _step_report(
    step: Callable[[], object], tokens: int, top: int, batch: int, title: str, how: str
) -> list[str]:
    """Markdown lines (also printed) for a decode step: its median wall time over `tokens` synchronised calls (after
    three warm-ups) and the kernels five profiled calls ran, per step."""
    for _ in range(3):
        step()
    times = []
    for _ in range(tokens):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    step_ms = sorted(times)[len(times) // 2] * 1e3
    steps = 5
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    gpu_ms, rows = _kernel_table(prof, steps, top)
    out = [
        f"### {title}",
        "",
        f"step {step_ms:.3f} ms ({batch * 1e3 / step_ms:.1f} tok/s, {how}); profiled kernels {gpu_ms:.3f} ms/step",
        "",
        "| kernel | us/step | calls/step |",
        "|---|---|---|",
        *(f"| `{n}` | {us:.1f} | {c} |" for n, us, c in rows),
        "",
        "| kernel @ grid (one weight shape each) | us/step | calls/step |",
        "|---|---|---|",
        *(f"| `{n}` | {us:.1f} | {c} |" for n, us, c in _grid_table(prof, steps, top)),
        "",
    ]
    print("\n".join(out), flush=True)
    return out


@torch.no_grad()
def profile_engine(fmt: str, group: int | None, layers: int, tokens: int, batch: int, top: int) -> list[str]:
    """Markdown lines for one format decoded by `xpullm.engine` (CUDA-graph steps, `gd.build_engine`)."""
    dec = gd.build_engine(fmt, group, layers)
    prompt = torch.randint(0, gd.V, (batch, 32), device=gd.DEV)
    logits = dec.start(prompt, torch.zeros(batch, dtype=torch.long), 32 + tokens + 16)
    state = [logits]

    def step() -> None:
        state[0] = dec.step(state[0].argmax(-1))

    label = fmt if group is None else f"{fmt} g{group}"
    return _step_report(step, tokens, top, batch, f"xpullm engine, {label}, batch {batch}", "synchronised")


@torch.no_grad()
def profile_runner(
    fmt: str, group: int | None, layers: int, tokens: int, batch: int, top: int, prompt_len: int = 512
) -> list[str]:
    """Markdown lines for one format stepped by the continuous-batching engine's `ModelRunner` (paged KV pools,
    the graph of its `batch`-token bucket): `batch` sequences after `prompt_len`-token prompts, one token each per
    step."""
    import engine_gpu as eg

    from xpullm.engine.core import EngineConfig, build_core
    from xpullm.engine.decode import FAMILIES, StaticCacheDecoder

    dev = torch.device(gd.DEV)
    shape = dataclasses.replace(eg.SHAPES["llama3-8b"], layers=layers)
    model = eg.build_model(shape, fmt, group, dev)
    dec = StaticCacheDecoder(model, FAMILIES["llama"], gd.DT, dev)
    config = EngineConfig(max_seqs=batch, max_batched_tokens=max(prompt_len, 256),
                          kv_budget_tokens=batch * (prompt_len + tokens + 64), prefix_cache=False,
                          graph_buckets=(batch,), speculative=None)  # fmt: skip
    core = build_core(dec, eg.word_tokenizer(shape.vocab), [], shape.max_len, config)
    runner = core.runner
    gen = torch.Generator().manual_seed(0)
    for row in range(batch):
        runner.set_table(row, core.pool.allocate(-(-(prompt_len + tokens + 32) // config.block_size)))
        ids = torch.randint(0, shape.vocab, (prompt_len,), generator=gen).tolist()
        runner.forward(ids, list(range(prompt_len)), [row] * prompt_len, [prompt_len - 1])
    pos = prompt_len

    def step() -> torch.Tensor:
        nonlocal pos
        out = runner.forward([7] * batch, [pos] * batch, list(range(batch)), list(range(batch)))
        pos += 1
        return out

    label = fmt if group is None else f"{fmt} g{group}"
    title = f"engine ModelRunner (paged, graph bucket {batch}), {label}, {batch} sequences, {prompt_len}-token prompts"
    return _step_report(step, tokens, top, batch, title, "synchronised, logits read back")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--formats", default="bf16,tinygemm:128,sym_int4:128")
    ap.add_argument("--batch", default="1", help="batch sizes, e.g. 1,16,32 (each profiled in turn)")
    ap.add_argument("--prompt", type=int, default=512, help="--runner: prompt tokens per sequence")
    ap.add_argument("--top", type=int, default=14)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--engine", action="store_true", help="profile xpullm.engine's graphed steps instead")
    ap.add_argument(
        "--runner",
        action="store_true",
        help="profile the continuous-batching engine's paged ModelRunner steps",
    )
    args = ap.parse_args()
    lines = [f"# Decode-step profile ({torch.__version__}, {torch.cuda.get_device_name(0)})", ""]
    for spec in args.formats.split(","):
        fmt, _, group = spec.partition(":")
        for batch in (int(b) for b in args.batch.split(",")):
            g = int(group) if group else None
            if args.runner:
                lines += profile_runner(fmt, g, args.layers, args.tokens, batch, args.top, args.prompt)
            else:
                fn = profile_engine if args.engine else profile
                lines += fn(fmt, g, args.layers, args.tokens, batch, args.top)
            torch.cuda.empty_cache()  # the format's model went with its profile function's frame
        if args.out:
            args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
