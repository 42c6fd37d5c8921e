"""The engine's own overhead on CPU: aggregate tok/s at 1 and 8 streams, and the token handoff to the callers.

Each round runs every level (1 and 8 concurrent streams by default) of greedy chat turns through `LLM._run` (what
`LLM.generate/stream` use: one queue per call, read by the calling thread), the packaged model, the engine's
default config, one caller thread per stream, all submitted at once; levels alternate order from round to round.
Per level, over the rounds: median aggregate completion tokens/s (tokens / wall time of the level) and the median
and p90 of the **handoff**: from the engine thread handing a text delta to the request's callback to the caller's
thread receiving it (the callback is wrapped to stamp the hand-over; the k-th stamped delta of a request is the
k-th one its caller reads). Beside it, the same streams submitted to the engine core with callbacks that only
keep the result (no caller threads, no queue): the engine alone, what the callers would get from a free handoff.

It imports only `xpullm`'s public engine API, so the same file measures another checkout too (the before/after
runs in docs/benchmarks-batching.md alternate processes of the two trees: this machine is shared and noisy).

    .venv/bin/python -P bench/engine_overhead.py [--levels 1,8] [--rounds 5] [--max-tokens 64] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import threading
import time

import torch

from xpullm.engine import LLM
from xpullm.engine.core import EngineConfig
from xpullm.engine.params import GenerationParams

# engine_concurrency.py's prompts, copied: this file must run on its own in another checkout (see above).
PROMPTS = [
    "Write a long story about a dragon who learns to bake bread.",
    "Explain in detail how a steam engine works.",
    "Describe a walk through a busy market in the morning.",
    "Write a letter to a friend about your summer holidays.",
    "List everything you would pack for a week of camping, with reasons.",
    "Tell the history of the bicycle.",
    "Describe how to grow tomatoes on a balcony.",
    "Write a detective story set on a train.",
]


def _stamping(llm: LLM, sent: dict[int, list[float]]) -> None:
    """Wrap the core's submit so every `delta` handed to a request's callback is stamped first (per request,
    keyed by the identity of its prompt's token list)."""
    core = llm._core
    submit = core.submit

    def stamped_submit(prompt, params, on_event):
        stamps = sent.setdefault(id(prompt), [])

        def on(kind, value):
            if kind == "delta":
                stamps.append(time.perf_counter())
            on_event(kind, value)

        return submit(prompt, params, on)

    core.submit = stamped_submit


def _ms(values: list[float], q: float) -> float:
    """The q-quantile of sorted seconds, in ms."""
    return 1e3 * values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def level(llm: LLM, n: int, max_tokens: int, sent: dict[int, list[float]]) -> dict:
    """n streams through `LLM._run`, one caller thread each: aggregate tok/s and every delta's handoff (s)."""
    params = GenerationParams(max_new_tokens=max_tokens)
    prompts = [_prompt(llm, i) for i in range(n)]
    got: list[list[float]] = [[] for _ in range(n)]
    tokens = [0] * n
    sent.clear()

    def one(i: int) -> None:
        gen = llm._run([prompts[i]], params)
        while True:
            try:
                next(gen)
                got[i].append(time.perf_counter())
            except StopIteration as stop:
                tokens[i] = stop.value[0].completion_tokens
                return

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    handoff = []
    for i in range(n):
        for a, b in zip(sent[id(prompts[i])], got[i], strict=False):
            handoff.append(b - a)
    return {"tok_s": sum(tokens) / wall, "handoff": handoff}


def level_callbacks(llm: LLM, n: int, max_tokens: int) -> float:
    """n streams submitted to the engine core with callbacks that only keep the Completion (no caller threads,
    no queue): the engine's own throughput, what `level` would reach with a free handoff."""
    params = GenerationParams(max_new_tokens=max_tokens)
    prompts = [_prompt(llm, i) for i in range(n)]
    done: list = []
    finished = threading.Event()

    def on(kind: str, value: object) -> None:
        if kind in ("done", "error"):
            done.append(value)
            if len(done) == n:
                finished.set()

    t0 = time.perf_counter()
    for p in prompts:
        llm._core.submit(p, params, on)
    finished.wait()
    wall = time.perf_counter() - t0
    return sum(c.completion_tokens for c in done) / wall


def _prompt(llm: LLM, i: int) -> list[int]:
    return llm._encode_chat([{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--levels", default="1,8")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", action="store_true", help="print one JSON line of the raw per-round results")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    levels = [int(x) for x in args.levels.split(",")]
    llm = LLM(engine=EngineConfig())
    llm.generate("warm up", max_new_tokens=8)
    sent: dict[int, list[float]] = {}
    _stamping(llm, sent)
    results: dict[int, list[dict]] = {n: [] for n in levels}
    bare: dict[int, list[float]] = {n: [] for n in levels}
    for r in range(args.rounds):
        for n in levels if r % 2 == 0 else levels[::-1]:
            results[n].append(level(llm, n, args.max_tokens, sent))
            bare[n].append(level_callbacks(llm, n, args.max_tokens))
    if args.json:
        raw = {n: {"llm_tok_s": [x["tok_s"] for x in rs], "callbacks_tok_s": bare[n],
                   "handoff_s": [h for x in rs for h in x["handoff"]]} for n, rs in results.items()}  # fmt: skip
        print(json.dumps(raw))
    print(
        f"\n{args.rounds} rounds, {args.threads} threads, {args.max_tokens} tokens per stream; load {os.getloadavg()[0]:.1f}"
    )
    print(
        "\n| streams | aggregate tok/s, median [min-max] | engine alone (callbacks) | handoff p50 (ms) | handoff p90 (ms) |"
        "\n|---|---|---|---|---|"
    )
    for n, rs in results.items():
        rates = [x["tok_s"] for x in rs]
        hand = sorted(h for x in rs for h in x["handoff"])
        print(
            f"| {n} | {statistics.median(rates):.1f} [{min(rates):.1f}-{max(rates):.1f}] | "
            f"{statistics.median(bare[n]):.1f} | {_ms(hand, 0.5):.3f} | {_ms(hand, 0.9):.3f} |"
        )
    os._exit(0)  # the engine's daemon thread: no interpreter shutdown under it


if __name__ == "__main__":
    main()
