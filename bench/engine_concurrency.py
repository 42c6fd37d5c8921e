"""Continuous batching on CPU: xpullm's engine vs llama.cpp's server (same GGUF, same parallel slots), plus TTFT
with a shared ~1000-token prefix (prefix-cache hit vs miss) and the old serialized decoder at one stream.

For each level (concurrent streams) and round, xpullm runs `level` streams at once in-process (one thread per
stream, `LLM.stream`), then llama.cpp's server (xllamacpp, `n_parallel = level`) gets the same prompts over HTTP,
streamed from as many client threads; rounds interleave so machine noise hits both. Per level: aggregate
completion tokens/s over the level's wall time, and p50/p99 of the gaps between streamed chunks (inter-token
latency). Greedy, `max_tokens` each, EOS ignored on llama.cpp (xpullm counts the tokens it really made).

python -P bench/engine_concurrency.py [--levels 1,2,4,8,16] [--max-tokens 32] [--rounds 2]   # prints a table
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import os
import statistics
import threading
import time
from pathlib import Path

import httpx
import torch

from xpullm.engine import LLM
from xpullm.engine.core import EngineConfig
from xpullm.engine.params import GenerationParams
from xpullm.engine.serial import run_serial

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


def _gaps(stamps: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(stamps)]


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def _threads(n: int, fn) -> list:
    out: list = [None] * n
    threads = [threading.Thread(target=lambda i=i: out.__setitem__(i, fn(i))) for i in range(n)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [time.perf_counter() - t0, out]


def prompt_ids(llm: LLM, i: int) -> list[int]:
    """The i-th prompt as a chat turn (token ids, template applied): both engines get exactly these tokens."""
    return llm._encode_chat([{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}])


def xpullm_level(llm: LLM, n: int, max_tokens: int) -> dict:
    def one(i: int) -> tuple[int, list[float]]:
        stamps: list[float] = []
        gen = llm._run([prompt_ids(llm, i)], GenerationParams(max_new_tokens=max_tokens))
        while True:
            try:
                next(gen)
                stamps.append(time.perf_counter())
            except StopIteration as stop:
                return stop.value[0].completion_tokens, stamps

    wall, res = _threads(n, one)
    gaps = [g for _, s in res for g in _gaps(s)]
    return {"tok_s": sum(t for t, _ in res) / wall, "p50": _pct(gaps, 0.5), "p99": _pct(gaps, 0.99)}


def old_decoder_level(llm: LLM, max_tokens: int) -> dict:
    """One stream through the pre-engine path (StaticCacheDecoder + native decode attention, serialized)."""
    ids = [prompt_ids(llm, 0)]
    stamps: list[float] = []
    gen = run_serial(llm._decoder, llm._lock, llm.tokenizer, llm._eos, llm.context_length, torch.device("cpu"),
                     ids, GenerationParams(max_new_tokens=max_tokens))  # fmt: skip
    t0 = time.perf_counter()
    while True:
        try:
            next(gen)
            stamps.append(time.perf_counter())
        except StopIteration as stop:
            tokens = stop.value[0].completion_tokens
            break
    gaps = _gaps(stamps)
    return {"tok_s": tokens / (time.perf_counter() - t0), "p50": _pct(gaps, 0.5), "p99": _pct(gaps, 0.99)}


def llamacpp_server(threads: int, parallel: int):
    import xllamacpp as xlc

    from xpullm.models import default_llm_gguf

    params = xlc.CommonParams()
    params.model.path = str(default_llm_gguf())
    params.n_ctx = 2048 * parallel
    params.n_parallel = parallel
    params.cpuparams.n_threads = threads
    params.cpuparams_batch.n_threads = threads
    params.verbosity = -1
    server = xlc.Server(params)
    return server, server.listening_address


def llamacpp_level(llm: LLM, url: str, n: int, max_tokens: int) -> dict:
    def one(i: int) -> tuple[int, list[float]]:
        body = {"prompt": prompt_ids(llm, i), "n_predict": max_tokens, "temperature": 0,
                "ignore_eos": True, "stream": True, "cache_prompt": False}  # fmt: skip
        stamps: list[float] = []
        tokens = 0
        with (
            httpx.Client(base_url=url, timeout=600) as http,
            http.stream("POST", "/completion", json=body) as r,
        ):
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    chunk = json.loads(line[6:])
                    if chunk.get("content"):
                        stamps.append(time.perf_counter())
                    tokens = chunk.get("tokens_predicted", tokens) if chunk.get("stop") else tokens + 1
        return tokens, stamps

    wall, res = _threads(n, one)
    gaps = [g for _, s in res for g in _gaps(s)]
    return {"tok_s": sum(t for t, _ in res) / wall, "p50": _pct(gaps, 0.5), "p99": _pct(gaps, 0.99)}


def long_prefix(llm: LLM, tokens: int, tag: int) -> str:
    """~`tokens` tokens of Wikipedia text (exllamav2's calibration data), led by a unique tag per call."""
    root = Path(importlib.util.find_spec("exllamav2").submodule_search_locations[0])
    text = (root / "conversion" / "standard_cal_data" / "wiki.utf8").read_text()[:20000]
    ids = llm.tokenizer(text, add_special_tokens=False)["input_ids"][:tokens]
    return f"Document {tag}:\n" + llm.tokenizer.decode(ids)


def ttft(llm: LLM, rounds: int) -> dict:
    suffix = (
        " Question: in fifty words or so, what is the main subject of the document above, who is mentioned "
    )
    suffix += "first, and which dates or places appear in it? Answer in one plain sentence without lists:"
    miss, hit, old = [], [], []
    one = GenerationParams(max_new_tokens=1)
    for r in range(rounds):
        prompt = long_prefix(llm, 1000, r)
        miss.append(llm.generate(prompt + suffix, max_new_tokens=1).first_token_s)
        hit.append(llm.generate(prompt + suffix.replace("fifty", "forty"), max_new_tokens=1).first_token_s)
        ids = [llm._encode(prompt + suffix)]
        gen = run_serial(llm._decoder, llm._lock, llm.tokenizer, llm._eos, llm.context_length, torch.device("cpu"),
                         ids, one)  # fmt: skip
        old.append(_finish(gen).first_token_s)
    n = llm.count_tokens(long_prefix(llm, 1000, 0) + suffix)
    med = statistics.median
    return {"miss": med(miss), "hit": med(hit), "old": med(old), "tokens": n}


def _finish(gen):
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--levels", default="1,2,4,8,16")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    levels = [int(x) for x in args.levels.split(",")]
    llm = LLM(engine=EngineConfig())
    llm.generate("warm up", max_new_tokens=4)
    print("attention:", llm.engine.runner.attention_name, flush=True)
    rows: dict[tuple[int, str], list[dict]] = {}
    old = []
    for n in levels:
        server, url = llamacpp_server(args.threads, n)
        llamacpp_level(llm, url, 1, 4)  # warm-up
        for _ in range(args.rounds):
            if n == 1:  # the pre-engine path, in the same rounds as the engine's single stream
                old.append(old_decoder_level(llm, args.max_tokens))
            rows.setdefault((n, "xpullm engine"), []).append(xpullm_level(llm, n, args.max_tokens))
            rows.setdefault((n, "llama.cpp server"), []).append(llamacpp_level(llm, url, n, args.max_tokens))
        del server
        for name in ("xpullm engine", "llama.cpp server"):
            print(n, name, rows[(n, name)], flush=True)
    prefix = ttft(llm, args.rounds + 1)
    best = lambda rs: max(rs, key=lambda r: r["tok_s"])  # noqa: E731
    print("\n| streams | engine | aggregate tok/s | ITL p50 (ms) | ITL p99 (ms) |")
    print("| --- | --- | --- | --- | --- |")
    o = best(old)
    print(
        f"| 1 | xpullm old serialized decoder | {o['tok_s']:.1f} | {1e3 * o['p50']:.1f} | {1e3 * o['p99']:.1f} |"
    )
    for (n, name), rs in rows.items():
        r = best(rs)
        print(f"| {n} | {name} | {r['tok_s']:.1f} | {1e3 * r['p50']:.1f} | {1e3 * r['p99']:.1f} |")
    print(f"\nTTFT, {prefix['tokens']}-token prompt sharing a ~1000-token prefix: miss {prefix['miss']:.3f} s, "
          f"hit {prefix['hit']:.3f} s ({prefix['miss'] / prefix['hit']:.1f}x); old serialized decoder "
          f"{prefix['old']:.3f} s")  # fmt: skip


if __name__ == "__main__":
    main()
