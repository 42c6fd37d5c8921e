"""KV cache on CPU: fp32 vs bf16 vs fp8 (e4m3) vs int8 KV pools in the engine, and streaming (sinks + window) on vs off.

    python -P bench/kv_cache.py [--ppl-tokens 8192] [--contexts 512,2048,8192] [--out docs/benchmarks-kvcache.md]

1. Perplexity of the packaged model (its checkpoint's asym_int4 weights, fp32 activations) on the first
   max(context, `--ppl-tokens`) tokens of exllamav2's `wiki.utf8`, cut into windows of each context length; every window is
   prefilled through the engine's `ModelRunner` in chunks of `--chunk` tokens (as the engine prefills a long prompt),
   so each chunk attends the earlier chunks' keys and values from the 8-bit pools. Same tokens for every KV dtype.
2. KV bytes per token, and the 4k-token streams a fixed byte budget holds (the engine's own pool arithmetic: the
   blocks `kv_budget_bytes` buys, over the blocks a 4096-token sequence reserves).
3. Decode tok/s after a long prompt (`--decode-context` tokens), greedy, per KV dtype, interleaved rounds.
4. A chat of `--chat-tokens` tokens (a long conversation as the prompt + `--chat-new` generated tokens) with
   streaming on (4 sinks + `--window` recent tokens) vs off: off, a prompt past the context is refused, so off runs
   the longest chat that fits; peak KV blocks held (polled) and speed for both.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import threading
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from xpullm.engine import LLM
from xpullm.engine.core import EngineConfig

DTYPES = ["auto", "bf16", "fp8_e4m3", "int8"]
NAMES = {
    "auto": "fp32 (activation dtype)",
    "bf16": "bf16",
    "fp8_e4m3": "fp8 e4m3 (Hadamard basis)",
    "int8": "int8",
}


def wiki_text() -> str:
    spec = importlib.util.find_spec("exllamav2")
    root = Path(next(iter(spec.submodule_search_locations)))
    return (root / "conversion" / "standard_cal_data" / "wiki.utf8").read_text(encoding="utf-8")


def engine_llm(base: LLM, kv: str, **config: object) -> LLM:
    """Another LLM over the same loaded weights with its own engine (built now, outside inference mode)."""
    llm = LLM(base.model, tokenizer=base.tokenizer, engine=EngineConfig(kv_cache_dtype=kv, **config))
    llm.engine  # noqa: B018
    return llm


@torch.no_grad()
def perplexity(llm: LLM, ids: list[int], context: int, chunk: int) -> float:
    """exp(mean NLL) over windows of `context` tokens, each prefilled in chunks through the runner."""
    runner = llm.engine.runner
    bs = runner.block_size
    runner.set_table(0, list(range(-(-context // bs))))
    nll, count = 0.0, 0
    for start in range(0, len(ids) - 1, context):
        window = ids[start : start + context + 1]
        if len(window) < 2:
            break
        inputs, targets = window[:-1], torch.tensor(window[1:])
        for c0 in range(0, len(inputs), chunk):
            part = inputs[c0 : c0 + chunk]
            pos = list(range(c0, c0 + len(part)))
            logits = runner.forward(part, pos, [0] * len(part), list(range(len(part))))
            nll += F.cross_entropy(logits.float(), targets[c0 : c0 + len(part)], reduction="sum").item()
            count += len(part)
    return math.exp(nll / count)


def decode_speed(llm: LLM, prompt: str, new: int) -> float:
    c = llm.generate(prompt, max_new_tokens=new)
    return c.decode_tok_s


class PeakBlocks:
    """Polls the engine's used KV blocks while a generation runs."""

    def __init__(self, llm: LLM) -> None:
        self.llm, self.peak, self._stop = llm, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.llm.engine.stats().kv_used_blocks)
            time.sleep(0.005)

    def __enter__(self) -> PeakBlocks:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def chat_run(llm: LLM, prompt: str, new: int) -> dict:
    t0 = time.perf_counter()
    with PeakBlocks(llm) as peak:
        c = llm.generate(prompt, max_new_tokens=new)
    wall = time.perf_counter() - t0
    runner = llm.engine.runner
    kv_mb = peak.peak * runner.block_size * runner.kv_bytes_per_token / 2**20
    return {
        "prompt": c.prompt_tokens,
        "new": c.completion_tokens,
        "ttft": c.first_token_s,
        "decode": c.decode_tok_s,
        "wall": wall,
        "blocks": peak.peak,
        "kv_mb": kv_mb,
    }


def _save(path: Path, results: dict) -> None:
    path.write_text(json.dumps(results, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--parts", default="ppl,memory,decode,chat", help="which measurements to run (comma list)"
    )
    ap.add_argument("--ppl-tokens", type=int, default=2048)
    ap.add_argument("--contexts", default="512,2048,8192")
    ap.add_argument(
        "--dtypes", default=",".join(DTYPES), help="KV dtypes for the perplexity and decode parts"
    )
    ap.add_argument("--chunk", type=int, default=512)
    ap.add_argument("--decode-context", type=int, default=4096)
    ap.add_argument("--decode-new", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--budget-mib", type=int, default=1024)
    ap.add_argument("--chat-tokens", type=int, default=10240)
    ap.add_argument("--chat-new", type=int, default=64)
    ap.add_argument("--window", type=int, default=2048)
    ap.add_argument(
        "--chat-context", type=int, default=None, help="max_context of the chat runs (default: model's)"
    )
    ap.add_argument(
        "--json", default="bench/results/kv_cache.json", help="results, kept across runs per part"
    )
    ap.add_argument("--out", default="docs/benchmarks-kvcache.md")
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    contexts = [int(x) for x in args.contexts.split(",")]
    store = Path(args.json)
    store.parent.mkdir(parents=True, exist_ok=True)
    results = json.loads(store.read_text()) if store.exists() else {}
    results.setdefault("ppl", {})
    cpu = Path("/proc/cpuinfo").read_text().split("model name")[1].split("\n")[0].strip(": \t")
    results["machine"] = f"{cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}"

    base = LLM()
    tok = base.tokenizer
    text = wiki_text()
    top = max(max(contexts), args.decode_context + args.decode_new + 16)
    built: dict[str, LLM] = {}

    def llms(kv: str) -> LLM:  # engines built on first use: a run of one part or dtype builds only its own
        if kv not in built:
            built[kv] = engine_llm(base, kv, kv_budget_tokens=top + 64, max_batched_tokens=args.chunk)
        return built[kv]

    if "ppl" in parts:
        ids = tok(text[: max(max(contexts), args.ppl_tokens) * 8])["input_ids"]
        results["ppl_setup"] = {"tokens": args.ppl_tokens, "chunk": args.chunk}
        for context in contexts:
            for kv in args.dtypes.split(","):
                t = time.perf_counter()
                value = perplexity(llms(kv), ids[: max(context, args.ppl_tokens)], context, args.chunk)
                results["ppl"][f"{kv}@{context}"] = value
                results.setdefault("ppl_tokens", {})[str(context)] = max(context, args.ppl_tokens)
                _save(store, results)
                print(f"ppl {kv} ctx {context}: {value:.4f} ({time.perf_counter() - t:.0f} s)", flush=True)

    if "memory" in parts:  # bytes per token, streams per budget (the engine's own pool arithmetic)
        fits = {}
        for kv in DTYPES:
            core = engine_llm(base, kv, kv_budget_bytes=args.budget_mib * 2**20).engine
            blocks = core.pool.num_blocks
            fits[kv] = [core.runner.kv_bytes_per_token, blocks, blocks // core.scheduler.blocks_for(4096)]
        results["memory"] = {"budget_mib": args.budget_mib, "fits": fits}
        _save(store, results)
        print("memory", fits, flush=True)

    if "decode" in parts:  # decode speed after a long prompt (interleaved rounds)
        long_prompt = tok.decode(tok(text[200000:])["input_ids"][: args.decode_context])
        speed: dict[str, list[float]] = {kv: [] for kv in args.dtypes.split(",")}
        for _ in range(args.rounds):
            for kv in speed:
                speed[kv].append(decode_speed(llms(kv), long_prompt, args.decode_new))
                print(f"decode {kv}: {speed[kv][-1]:.1f} tok/s", flush=True)
        results["decode"] = {"context": args.decode_context, "new": args.decode_new, "rounds": args.rounds,
                             "tok_s": speed}  # fmt: skip
        _save(store, results)

    if "chat" in parts:  # a long chat, streaming on vs off
        context = args.chat_context or base.context_length
        messages: list[dict] = []
        chat_ids = tok(text[400000:])["input_ids"]
        at = 0
        while (
            True
        ):  # alternate user / assistant turns of ~400 tokens of wiki text until the chat is long enough
            role = "user" if len(messages) % 2 == 0 else "assistant"
            messages.append({"role": role, "content": tok.decode(chat_ids[at : at + 400])})
            at += 400
            ask = [*messages, {"role": "user", "content": "Summarize."}]
            rendered = tok.apply_chat_template(ask, tokenize=False, add_generation_prompt=True)
            if len(tok(rendered)["input_ids"]) >= args.chat_tokens - args.chat_new:
                break

        def chat_llm(**config: object) -> LLM:
            cfg = EngineConfig(max_batched_tokens=args.chunk, kv_budget_tokens=top + 64, **config)
            llm = LLM(base.model, tokenizer=tok, max_context=context, engine=cfg)
            llm.engine  # noqa: B018
            return llm

        on = chat_llm(streaming=True, streaming_window=args.window)
        off = chat_llm()
        chat = {"on": chat_run(on, rendered, args.chat_new)}
        print("streaming on", chat["on"], flush=True)
        try:
            off.generate(rendered, max_new_tokens=args.chat_new)
            refused = "ran"
        except Exception as exc:  # the point: without streaming a chat past the context is refused
            refused = f"{type(exc).__name__}: {str(exc)[:100]}"
        fitting = tok.decode(tok(rendered)["input_ids"][-(context - args.chat_new - 8) :])
        chat["off"] = chat_run(off, fitting, args.chat_new)
        print("streaming off (longest that fits)", chat["off"], refused, flush=True)
        results["chat"] = {"window": args.window, "context": context, "refused": refused, **chat}
        _save(store, results)

    Path(args.out).write_text(render(results, contexts))
    print(render(results, contexts))


def render(r: dict, contexts: list[int]) -> str:
    """The markdown section from whatever parts the results hold."""
    lines = [
        "## KV cache: 8-bit KV pools and streaming (CPU)",
        "",
        f"Machine: {r['machine']} - a 2-vCPU AMD EPYC Zen 5 VM shared with several other jobs while this ran "
        "(load average 5-22 on 2 cores during the runs): absolute times are inflated and noisy, read the ratios. "
        "Written by "
        "`bench/kv_cache.py` (results kept per part in `bench/results/kv_cache.json`). Model: the packaged "
        "SmolLM2-135M-Instruct (checkpoint asym_int4 weights, fp32 activations on CPU; 30 layers, 3 kv heads of 64).",
    ]
    ppl, setup, tokens = r.get("ppl", {}), r.get("ppl_setup", {}), r.get("ppl_tokens", {})
    if ppl:
        lines += [
            "",
            "### Perplexity (exllamav2 `wiki.utf8`: its first N tokens (N per column) in windows of the context "
            f"length, prefilled in {setup.get('chunk')}-token chunks through the engine's runner, so later chunks "
            "attend the cached 8-bit keys and values)",
            "",
            "| KV cache | "
            + " | ".join(
                f"ctx {c}, N = {tokens.get(str(c), max(c, setup.get('tokens', 0)))}" for c in contexts
            )
            + " |",
            "|---" * (len(contexts) + 1) + "|",
        ]
        for kv in DTYPES:
            cells = []
            for c in contexts:
                value = ppl.get(f"{kv}@{c}")
                if value is None:
                    cells.append("not measured (time)")
                    continue
                rel = [
                    f"{(value / ppl[f'{base}@{c}'] - 1) * 100:+.2f}% vs {NAMES[base].split()[0]}"
                    for base in ("auto", "bf16")
                    if base != kv and f"{base}@{c}" in ppl
                ]
                cells.append(f"{value:.4f}" + (f" ({', '.join(rel)})" if rel else ""))
            lines.append(f"| {NAMES[kv]} | " + " | ".join(cells) + " |")
    mem = r.get("memory")
    if mem:
        fits = mem["fits"]
        per32 = fits["auto"][0]
        lines += [
            "",
            f"### Memory: KV bytes per token and 4096-token streams in a {mem['budget_mib']} MiB KV budget",
            "",
            "| KV cache | bytes/token | x fp32 | blocks of 16 in budget | 4096-token streams | x fp32 | x bf16 |",
            "|---|---|---|---|---|---|---|",
        ]
        bf16_streams = fits["bf16"][2] if "bf16" in fits else mem["budget_mib"] * 2**20 // (4096 * per32 // 2)
        if "bf16" not in fits:
            lines.append(
                f"| bf16 (computed: half of fp32) | {per32 // 2} | 0.50 | - | {bf16_streams} | "
                f"{bf16_streams / max(1, fits['auto'][2]):.1f} | 1.0 |"
            )
        for kv in (kv for kv in DTYPES if kv in fits):
            per, blocks, streams = fits[kv]
            lines.append(
                f"| {NAMES[kv]} | {per} | {per / per32:.2f} | {blocks} | {streams} | "
                f"{streams / max(1, fits['auto'][2]):.1f} | {streams / max(1, bf16_streams):.1f} |"
            )
    dec = r.get("decode")
    if dec:
        best = {kv: max(v) for kv, v in dec["tok_s"].items()}
        lines += [
            "",
            f"### Decode speed after a {dec['context']}-token prompt ({dec['new']} new tokens, greedy, best of "
            f"{dec['rounds']} interleaved round(s))",
            "",
            "| KV cache | decode tok/s | x fp32 |",
            "|---|---|---|",
        ]
        for kv in (kv for kv in DTYPES if kv in best):
            lines.append(f"| {NAMES[kv]} | {best[kv]:.1f} | {best[kv] / best['auto']:.2f} |")
    chat = r.get("chat")
    if chat:
        on = chat["on"]
        lines += [
            "",
            f"### A {on['prompt'] + on['new']}-token chat: streaming on (4 sinks + {chat['window']}-token window) "
            "vs off",
            "",
            f"Context length {chat['context']}. Off, the whole chat is refused ({chat['refused'].split(' (')[0]}); the off row "
            "runs the longest tail of it that fits the context.",
            "",
            "| streaming | prompt tokens | new tokens | first token s | decode tok/s | wall s | peak KV blocks | "
            "peak KV MiB |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name in ("on", "off"):
            x = chat[name]
            lines.append(
                f"| {name} | {x['prompt']} | {x['new']} | {x['ttft']:.1f} | {x['decode']:.1f} | {x['wall']:.1f} | "
                f"{x['blocks']} | {x['kv_mb']:.0f} |"
            )
    lines += ["", "### Reading these numbers", "", *NOTES]
    return "\n".join(lines) + "\n"


NOTES = [
    "- Runs (2026-12-05): the fp32 / int8 8k cells and the chat part earlier the same day (default flags); after "
    "the fp8 change every bf16 / fp8 cell and the 512 and 2k columns again, each context on 8192 tokens "
    "(`--parts ppl --contexts C --ppl-tokens 8192 --dtypes ...`, one process per dtype group, two at a time, load "
    "average 7-10 on the 2 cores), then `--parts memory`, then `--parts decode --dtypes auto,fp8_e4m3,int8 "
    "--rounds 2` (bf16 pools run the PyTorch twin on CPU: no decode row). Results are merged per cell in the JSON.",
    "- Targets from the issue (perplexity increase vs bf16 KV, the issue's baseline, and vs fp32): fp8 <= 0.5% "
    "and int8 <= 1% are met at 512, 2k and 8k (table). bf16 pools run the PyTorch twin on CPU (the native kernel "
    "reads fp32 and 8-bit pools), so their times are not comparable; their perplexity is fp32's within noise.",
    "- Before this change fp8 e4m3 pools stored k and v as they are: +0.10% / +0.71% / +0.62% vs fp32 at "
    "512 / 2k / 8k (first max(context, 2048) tokens; at 2k this run's fp8 gives +0.25% on those same 2048 "
    "tokens, at 8k +0.24% on the same 8192).",
    "- Where fp8's error came from (a diagnostic on the twin: fp32 pools holding fake-quantized k / v, one 2048-token "
    "window, mean KL of the next-token distribution against fp32 KV, which is far less noisy than perplexity): fp8 "
    "keys alone 8.8e-3, values alone 3.7e-3, both 9.4e-3 (int8 both: 3.9e-3). The keys dominate: q and k share a "
    "few large channels, which carry most of q . k, and e4m3's 3-bit mantissa errs in proportion to each element. "
    "Subtracting a per-(layer, kv head, channel) mean from the keys after RoPE and from the values (exact smoothing, "
    "calibrated on other text) did not help (10.1e-3; with the first token's k / v as the offsets 10.0e-3): the "
    "large channels are not a constant offset across keys - RoPE turns them with position - and e4m3's error is "
    "relative, so an offset does not shrink the elements that matter. A pre-RoPE offset added back per key "
    "position (exact, but per-model calibration and extra work in the score loop) gave 7.6e-3. Turning q, k and "
    "v by the orthonormal Walsh-Hadamard matrix gave 6.7e-3 (-29%; 512-token windows: 8.0e-3 vs 10.5e-3): exact "
    "(q R . k R = q . k, the output turned back by R), stateless (R depends on D alone: no calibration, so "
    "concurrent and prefix-cached outputs stay bitwise those of a request alone), cheap (butterflies). Shipped "
    "that for fp8 pools with a power-of-two head dim; int8 keeps the plain basis.",
    "- Perplexity noise: this model turns last-bit differences into visible perplexity changes (the twin and the "
    "native kernel, both fp32, differ by 0.16% at 512 on 2048 tokens; bf16 pools land within +-0.05% of fp32, "
    "either side), and one "
    "2048-token sample at 512 put the same fp8 scheme at +0.4% (twin) and +0.8% (native kernel). Hence 8192 "
    "tokens per context here; the fp8 margin to the 0.5% target (about 0.2-0.3 points) is real but not large.",
    "- Perplexity falls with the context (each window sees more of its article before predicting); SmolLM2 is "
    "trained to 8192 tokens.",
    "- Memory: 8-bit pools take D + 4 bytes per head vector (the fp32 scale costs 6% at D = 64): 3.76x the tokens "
    "of fp32 pools (the CPU default, fp32 activations) and 1.88x those of bf16 pools in one byte budget; in whole "
    "4096-token streams that is 4.2x fp32 and ~1.9x bf16 (the issue's 2x target, less the scale).",
    "- Decode speed (re-measured after the fp8 change, on a quieter machine: load average ~1.7; the "
    "tok/s counts decode steps only): at 4096 tokens of context the KV reads are a visible "
    "share of a step even at 135M parameters, so int8 (a quarter of fp32's KV bytes) decodes 1.24x and fp8 1.14x "
    "fp32; fp8 trails int8 by its code conversion and the Hadamard transforms. (The earlier run under load 5-22 "
    "had all three within 4%.)",
    "- Streaming: the on row's KV stays at its ring (sink block + window + one step's tokens, in blocks of 16) "
    "however long the chat grows, and its decode attends only window + sinks, so it is also faster per token "
    "than full attention at the end of a long context; the text it conditions on is only that window.",
    "- On GPUs (H100, 2026-12-06, docs/benchmarks-gpu.md, 'Paged attention, session 14'): the engine over a "
    "random Llama-3-8B in sym_int4 with 4096-token prompts decodes 16 streams at 2,047 tok/s with int8 pools "
    "and 1,988 with fp8 e4m3 pools, against 1,453 with bf16 pools (1.41x / 1.37x); at one stream 1.03x / "
    "0.97x. Per layer call, 8-bit pools take 1.1-1.5x the bf16 pools' time (the kernel is latency-bound, not "
    "bandwidth-bound); the 16-stream gain is larger than the attention kernels explain and is not yet "
    "profiled.",
]


if __name__ == "__main__":
    main()
