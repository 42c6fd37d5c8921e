"""Where a CPU decode step's time goes, in process: the engine's batch-1 step for the packaged model.

1. `LLM.generate` (128 new tokens, speculation off): decode tok/s, the runner's forward per token, and the engine's
   own time per token around it (scheduling, sampling, detokenising, handing the text to the caller).
2. One decode step's forward (`--streams` sequences, one token each) split into the native layer calls (norms, quantising, the four projections of every
   layer), attention, and the rest (embedding, final norm + LM head, Python between the calls).
3. The forward with the native layer stack against `decoder_layers` over the step ops (the path before it), in
   interleaved rounds of 40 steps: medians and ranges.

    .venv/bin/python -P bench/cpu_step_profile.py --threads 1 --format sym_int4
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections import defaultdict


class _Timed:
    """A proxy of the native library that adds up the wall time of every call (for the split in part 2)."""

    def __init__(self, lib: object, acc: dict[str, float]) -> None:
        self._lib, self._acc = lib, acc

    def __getattr__(self, name: str):
        fn = getattr(self._lib, name)

        def run(*args):
            t0 = time.perf_counter()
            out = fn(*args)
            self._acc[name] += time.perf_counter() - t0
            return out

        return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--format", default="sym_int4")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--context", type=int, default=128, help="tokens in the cache before the measured steps")
    ap.add_argument("--streams", type=int, default=1, help="sequences decoding together in parts 2 and 3")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from xpullm.engine import LLM

    llm = LLM(low_bit=args.format)
    tok = llm.tokenizer
    text = "The history of science is the study of how people came to understand the natural world. "
    prompt = tok.decode(
        tok(text * (args.context // 8 + 2), add_special_tokens=False)["input_ids"][: args.context]
    )
    llm.generate("Warm up with another prompt.", max_new_tokens=8, speculative=False)
    runner = llm.engine.runner
    print(f"{args.format}, {args.threads} thread(s), layer stack: {type(runner._stack).__name__}")

    # 1. generate, with the runner's forward timed
    forward, spent = runner.forward, []

    def timed_forward(*a, **k):
        t0 = time.perf_counter()
        out = forward(*a, **k)
        spent.append(time.perf_counter() - t0)
        return out

    runner.forward = timed_forward
    out = llm.generate(prompt, max_new_tokens=128, speculative=False)
    runner.forward = forward
    per_token = 1e3 / out.decode_tok_s
    fwd = statistics.mean(spent[1:]) * 1e3  # the first forward is the prompt's
    print(f"\n1. generate: {out.decode_tok_s:.1f} tok/s = {per_token:.2f} ms/token: forward {fwd:.2f} ms, "
          f"engine around it {per_token - fwd:.2f} ms")  # fmt: skip

    # 2. one decode step, split (the proxy's own overhead lands in the split parts)
    n, streams = args.context, args.streams
    per = -(-(n + 200) // runner.block_size)
    for s in range(streams):  # each stream its own blocks and prompt, prefilled now
        runner.set_table(s, list(range(s * per, (s + 1) * per)))
        runner.forward(list(range(1000 + s, 1000 + s + n)), list(range(n)), [s] * n, [n - 1])

    def decode(i: int) -> None:  # one step: every stream's next token at position n + i
        runner.forward([42] * streams, [n + i] * streams, list(range(streams)), list(range(streams)))

    acc: dict[str, float] = defaultdict(float)
    stack = runner._stack
    paged = runner._paged
    steps = 50
    if stack is not None:
        lib, stack._lib = stack._lib, _Timed(stack._lib, acc)

    def timed_paged(*a, **k):
        t0 = time.perf_counter()
        res = paged(*a, **k)
        acc["attention (paged calls, their Python included)"] += time.perf_counter() - t0
        return res

    runner._paged = timed_paged
    t0 = time.perf_counter()
    for i in range(steps):
        decode(i)
    total = (time.perf_counter() - t0) / steps * 1e3
    runner._paged = paged
    if stack is not None:
        stack._lib = lib
    print(f"\n2. one decode step of {streams} stream(s) at {n} tokens of context: {total:.2f} ms")
    print("\n| part | ms/step | share |\n|---|---:|---:|")
    for name, sec in sorted(acc.items(), key=lambda kv: -kv[1]):
        print(f"| {name} | {sec / steps * 1e3:.3f} | {100 * sec / steps * 1e3 / total:.0f}% |")
    rest = total - sum(acc.values()) / steps * 1e3
    print(f"| rest: embedding, final norm + LM head, Python | {rest:.3f} | {100 * rest / total:.0f}% |")

    # 3. native stack against decoder_layers, interleaved
    if stack is None:
        os._exit(0)  # the engine's daemon thread: no interpreter shutdown under it
    res: dict[str, list[float]] = {"native layer stack": [], "decoder_layers + step ops": []}
    for r in range(args.rounds):
        names = list(res) if r % 2 == 0 else list(res)[::-1]
        for name in names:
            runner._stack = stack if name == "native layer stack" else None
            ts = []
            for i in range(40):
                t0 = time.perf_counter()
                decode(i)
                ts.append(time.perf_counter() - t0)
            res[name].append(statistics.median(ts) * 1e3)
    runner._stack = stack
    print(f"\n3. forward per decode step, median (min-max) of {args.rounds} interleaved rounds of 40 steps")
    print("\n| path | ms/step |\n|---|---:|")
    for name, v in res.items():
        print(f"| {name} | {statistics.median(v):.3f} ({min(v):.3f}-{max(v):.3f}) |")
    a, b = (statistics.median(v) for v in res.values())
    print(f"\nspeed-up {b / a:.2f}x; load average {os.getloadavg()[0]:.1f}")
    os._exit(0)  # the engine's daemon thread: no interpreter shutdown under it


if __name__ == "__main__":
    main()
