"""The engine's host work per step, with the device's part taken out: what a GPU step waits on the CPU for.

On a GPU a decode step is a graph replay (device) plus the engine thread's Python: scheduling, the step's index
buffer, the argmax's copy back, each request's token bookkeeping, detokenization and events. At 32 streams on an
H100 that host part was ~0.5 ms of a 4.7 ms step (docs/benchmarks-gpu.md, session 27). This benchmark runs
`EngineCore` exactly as `bench/engine_gpu.py` builds it (word tokenizer, no speculation, graph buckets per stream
count, `overlap_text` on as on GPUs) over a tiny model whose graph replay is replaced by a no-op that leaves
preset logits (a rotating set, so tokens and texts change): every step's time is then host time. Reported per
stream count: microseconds per decode step (median and range over rounds), split into the text work (`_drain`:
detokenization, stop strings, events - on a GPU it overlaps the device's step), the launch (`ModelRunner.forward`:
the step's input buffers and the no-op replay) and the rest (each request's token, the next plan); with
`--profile`, the functions the engine thread spends it in. Launch-ahead is off here (`--launch-ahead on` to time
its bookkeeping): on a GPU it moves everything but the launch off the step's critical path.

    python -P bench/engine_host.py --streams 1,8,16,32,64 --tokens 128 --rounds 5 [--profile 32]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from engine_gpu import SHAPES, _run_round, build_model, word_tokenizer

PRESETS = 8  # distinct logits sets the no-op replay cycles through


def _noop_backend(vocab: int):
    """A graph backend whose replay leaves one of `PRESETS` preset logits tensors in its output (no model)."""
    from xpullm.engine.step_graphs import GraphBackend

    def capture(fn, device, pool):
        rows = fn().shape[0]  # the recorded step once, for its output shape
        gen = torch.Generator().manual_seed(rows)
        presets = [torch.randn(rows, vocab, generator=gen) for _ in range(PRESETS)]
        out = presets[0].clone()
        turn = [0]

        def replay() -> None:
            turn[0] = (turn[0] + 1) % PRESETS
            out.copy_(presets[turn[0]])

        return replay, out

    return GraphBackend("noop", capture, lambda: None)


def build(shape_name: str, streams: list[int], prompt: int, tokens: int, launch_ahead: bool = False):
    from xpullm.engine.core import EngineConfig, build_core
    from xpullm.engine.decode import FAMILIES, StaticCacheDecoder
    from xpullm.engine.step_graphs import attach_step_graphs

    shape = SHAPES[shape_name]
    device = torch.device("cpu")
    model = build_model(shape, "bf16", None, device)
    dec = StaticCacheDecoder(model, FAMILIES["llama"], torch.float32, device)
    top = max(streams)
    config = EngineConfig(
        max_seqs=top,
        max_batched_tokens=max(top * prompt, 256),
        kv_budget_tokens=top * (prompt + tokens + 16) + 64,
        prefix_cache=False,
        speculative=None,
        graph_buckets=tuple(sorted(set(streams) | {prompt})),
        overlap_text=True,  # as on a GPU
        launch_ahead=launch_ahead,
    )
    core = build_core(dec, word_tokenizer(shape.vocab), [], max(shape.max_len, prompt + tokens + 16), config)
    attach_step_graphs(
        core.runner, config.graph_buckets, core.pool.num_blocks, top, _noop_backend(shape.vocab)
    )
    return core, shape


class _Clock:
    """Time spent in the core's `_drain` and in its runner's small (decode) forwards, wrapped in place."""

    def __init__(self, core, max_decode_tokens: int) -> None:
        self.text = self.launch = 0.0
        drain, forward = core._drain, core.runner.forward

        def timed_drain() -> None:
            t = time.perf_counter()
            drain()
            self.text += time.perf_counter() - t

        def timed_forward(ids, *rest, **kw):
            t = time.perf_counter()
            out = forward(ids, *rest, **kw)
            if len(ids) <= max_decode_tokens:  # prefill chunks run the tiny model eagerly: not host work
                self.launch += time.perf_counter() - t
            return out

        core._drain, core.runner.forward = timed_drain, timed_forward


def _profile_engine_thread(core, prompts, tokens: int, top: int) -> str:
    """One round with cProfile on inside the engine thread (threading.setprofile reaches only new threads)."""
    prof = cProfile.Profile()
    loop = core._loop

    def profiled() -> None:
        prof.enable()
        try:
            loop()
        finally:
            prof.disable()

    core._loop = profiled
    core.stop(5)  # the next submit starts a fresh, profiled thread
    _run_round(core, prompts, tokens)
    core.stop(5)
    core._loop = loop
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(top)
    return buf.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--streams", default="1,8,16,32,64")
    ap.add_argument("--tokens", type=int, default=128, help="new tokens per stream")
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--shape", default="tiny", choices=tuple(SHAPES))
    ap.add_argument("--profile", type=int, default=0, metavar="S", help="profile one round at S streams")
    ap.add_argument("--top", type=int, default=30, help="profile rows printed")
    ap.add_argument("--out", default=None, help="append rows (JSON lines) here")
    ap.add_argument("--launch-ahead", choices=("on", "off"), default="off")
    args = ap.parse_args()
    streams = [int(s) for s in args.streams.split(",") if s]
    ahead = args.launch_ahead == "on"
    levels = streams + ([args.profile] if args.profile else [])
    core, shape = build(args.shape, levels, args.prompt, args.tokens, ahead)
    clock = _Clock(core, max(levels))
    gen = torch.Generator().manual_seed(1)

    def prompts(s: int) -> list[list[int]]:
        return torch.randint(0, shape.vocab, (s, args.prompt), generator=gen).tolist()

    for s in streams:  # warm-up: captures every bucket
        _run_round(core, prompts(s), 8)
    per_step: dict[int, list[tuple[float, float, float]]] = {s: [] for s in streams}
    for _ in range(args.rounds):  # interleaved: every stream count once per round
        for s in streams:
            steps = core.stats().steps
            clock.text = clock.launch = 0.0
            r = _run_round(core, prompts(s), args.tokens)
            us = 1e6 / max(1, core.stats().steps - steps - 1)  # per decode step: the prefill step excluded
            per_step[s].append((r["decode_s"] * us, clock.text * us, clock.launch * us))
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, launch-ahead {args.launch_ahead}, "
          f"host us per decode step (median [min-max] over {args.rounds} rounds)")  # fmt: skip
    print("| streams | step | of which text | launch | rest |\n|---:|---:|---:|---:|---:|")
    for s in streams:
        step, text, launch = ([v[i] for v in per_step[s]] for i in range(3))
        med = [statistics.median(x) for x in (step, text, launch)]
        print(f"| {s} | {med[0]:.0f} [{min(step):.0f}-{max(step):.0f}] | {med[1]:.0f} | {med[2]:.0f} | "
              f"{med[0] - med[1] - med[2]:.0f} |")  # fmt: skip
        row = {"streams": s, "host_us_per_step": med[0], "min": min(step), "max": max(step), "text_us": med[1],
               "launch_us": med[2], "rounds": len(step), "tokens": args.tokens, "launch_ahead": ahead}  # fmt: skip
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")
    if args.profile:
        print(_profile_engine_thread(core, prompts(args.profile), args.tokens, args.top))
    core.stop(5)
    assert not any(t.name == "xpullm-engine" for t in threading.enumerate())


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"# done in {time.perf_counter() - t0:.1f} s")
