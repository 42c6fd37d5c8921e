"""Speculative decoding on a GPU: what a verified row and a draft step cost, and the speed-up they give.

Acceptance needs real text, so it comes from the packaged model (`bench/spec_decode.py`, CPU: accepted / drafted per
workload and method); the costs need the big model on the GPU, so they come from here: a Llama-3-8B-shaped model
with random weights (`engine_gpu.build_model`), in each format, through the engine's `ModelRunner` the way the
engine drives it (paged KV pools, steps replayed from CUDA graphs per token-count bucket):

- `step_ms[n]`: one sequence's step carrying n tokens (the token after the prompt + n - 1 drafts), logits for every
  row - what verifying n - 1 draft tokens costs; n = 1 is a plain decode step;
- `draft_ms`: one self-speculative draft step (the default draft layers: first and last quarter + every other middle
  layer, eager as the drafter runs it, LM head included);
- `low_bit_draft_ms`: one step of the model's sym_int4 copy (`speculative="low_bit_draft"`, IPEX-LLM's recipe: the
  same model in INT4 drafts), on its own 8-bit pools, replayed from its CUDA graph (bf16 / fp8 / int8 models).

The speed-up of k drafts accepted each with probability a: E[tokens] = (1 - a^(k+1)) / (1 - a) per step that costs
step_ms[k+1] + k x draft_ms (prompt lookup: draft_ms = 0), over one plain step; reported for the best k <= 8.

    python bench/spec_gpu.py --formats bf16,sym_int4:128,fp8_e4m3 --out rows.jsonl --md spec_gpu.md
    python bench/spec_gpu.py --shape tiny --device cpu --repeat 3   # a dry run of the code paths on a CPU
    python bench/spec_gpu.py --summarize bench/results/spec_gpu_h100_2026-12-06.jsonl \
        --traces bench/results/spec_traces_xeon_2026-12-06.json   # price recorded traces with the H100's steps
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))  # run with -P: the script's folder is not on sys.path

from engine_gpu import SHAPES, _append, _device_name, _dtype, _label, _sync, build_model, word_tokenizer

# Acceptance of the packaged model (docs/benchmarks-speculative.md, CPU, greedy): accepted / drafted tokens; for
# self-speculative the unthrottled run (`self_speculative_always`: drafting at every step, as a cheap GPU draft would).
ACCEPTANCE = {
    ("prompt_lookup", "kb_answer"): 0.58,
    ("prompt_lookup", "summary"): 0.43,
    ("prompt_lookup", "graphrag"): 0.79,
    ("prompt_lookup", "open_chat"): 0.28,
    ("self_speculative", "kb_answer"): 0.64,
    ("self_speculative", "summary"): 0.52,
    ("self_speculative", "graphrag"): 0.27,
    ("self_speculative", "open_chat"): 0.41,
    # `low_bit_draft_always` over the dense fp32 model (`spec_decode.py --low-bit fp32 --rounds 2 --per-kind 4`,
    # 2026-12-06): its sym_int4 copy with the default sym_int8 head drafting at every step (with an int4 head in
    # the same run: 0.73 / 0.78 / 0.72 / 0.64).
    ("low_bit_draft", "kb_answer"): 0.83,
    ("low_bit_draft", "summary"): 0.73,
    ("low_bit_draft", "graphrag"): 0.74,
    ("low_bit_draft", "open_chat"): 0.66,
}
# The draft step each method pays per drafted token (None: free, prompt lookup): the row key of `measure`.
DRAFT_COST = {"prompt_lookup": None, "self_speculative": "draft_ms", "low_bit_draft": "low_bit_draft_ms"}
MAX_DRAFT = 8
LOW_BIT_DRAFT = "sym_int4"  # the low-bit copy's format (`speculative="low_bit_draft"`)
PROMPT = 512  # context tokens before the timed steps
CATCH_UP = 512  # tokens of the timed catch-up through the low-bit copy (`LowBitDrafter.CHUNK`)


def _timed(fn, repeat: int, device: torch.device) -> float:
    """Median ms of `fn()` over `repeat` runs (after two warm-ups: capture, tuning)."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeat):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def measure(args: argparse.Namespace, spec: str, device: torch.device) -> dict:
    """step_ms[n] for n = 1..MAX_DRAFT + 1 and draft_ms of one format."""
    from xpullm.engine.core import EngineConfig, build_core
    from xpullm.engine.decode import FAMILIES, StaticCacheDecoder
    from xpullm.engine.speculative import SpeculativeConfig, default_draft_layers, make_drafter
    from xpullm.engine.step_cost import measured_row_cost

    shape = SHAPES[args.shape]
    fmt, _, g = spec.partition(":")
    group = int(g) if g else None
    model = build_model(shape, fmt, group, device)
    dec = StaticCacheDecoder(model, FAMILIES["llama"], _dtype(device), device)
    buckets = tuple(range(1, MAX_DRAFT + 2))
    config = EngineConfig(
        max_seqs=1, max_batched_tokens=PROMPT, kv_budget_tokens=PROMPT + 64, prefix_cache=False,
        graph_buckets=buckets, speculative=None,
    )  # fmt: skip
    core = build_core(dec, word_tokenizer(shape.vocab), [], shape.max_len, config)
    runner = core.runner
    blocks = core.pool.allocate(-(-(PROMPT + 32) // config.block_size))
    runner.set_table(0, blocks)
    gen = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, shape.vocab, (PROMPT,), generator=gen).tolist()
    runner.forward(prompt, list(range(PROMPT)), [0] * PROMPT, [PROMPT - 1])  # the context the steps attend

    def step(n: int):
        ids = torch.randint(0, shape.vocab, (n,), generator=gen).tolist()
        pos = list(range(PROMPT, PROMPT + n))
        return lambda: runner.forward(ids, pos, [0] * n, list(range(n)))

    step_ms = {n: _timed(step(n), args.repeat, device) for n in buckets}
    # What the engine times at start for its default `verify_cost` (1 + num_draft tokens, in its spare row).
    timed_row_cost = measured_row_cost(runner, 1 + SpeculativeConfig().num_draft)
    layers = default_draft_layers(len(dec.layers))
    tok = [prompt[-1]]
    draft_ms = _timed(lambda: runner.forward(tok, [PROMPT], [0], [0], layers=layers), args.repeat, device)
    low_bit_ms = low_bit_prefill_ms = None
    if fmt != LOW_BIT_DRAFT:  # the model's sym_int4 copy (graph-replayed steps, KV per `--draft-kv`)
        config = SpeculativeConfig(
            method="low_bit_draft", draft_format=LOW_BIT_DRAFT, draft_kv_cache_dtype=args.draft_kv
        )
        drafter = make_drafter(runner, config)
        draft = drafter.draft  # type: ignore[attr-defined]
        draft.forward(prompt, list(range(PROMPT)), [0] * PROMPT, [PROMPT - 1])
        low_bit_ms = _timed(lambda: draft.forward(tok, [PROMPT], [0], [0]), args.repeat, device)
        # a catch-up of the prompt through the copy (no logits): what `lookup_low_bit` pays where it starts late
        chunk = prompt[:CATCH_UP]
        low_bit_prefill_ms = _timed(
            lambda: draft.forward(chunk, list(range(CATCH_UP)), [0] * CATCH_UP, []),
            max(3, args.repeat // 5),
            device,
        )
        del drafter, draft
    row = {
        "format": _label(fmt, group), "shape": args.shape, "device": _device_name(device),
        "step_ms": step_ms, "draft_ms": draft_ms, "draft_layers": len(layers), "layers": len(dec.layers),
        "low_bit_draft_ms": low_bit_ms, "draft_kv": args.draft_kv, "graphs": runner.graphs is not None,
        "timed_row_cost": timed_row_cost, "low_bit_prefill_ms": low_bit_prefill_ms, "catch_up": CATCH_UP,
    }  # fmt: skip
    _append(args.out, row)
    del core, dec, model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def best_gain(a: float, step_ms: dict, draft_ms: float) -> tuple[int, float]:
    """(k, speed-up) maximizing expected tokens per unit time over plain decoding."""
    base = step_ms[1]
    best = (0, 1.0)
    for k in range(1, MAX_DRAFT + 1):
        tokens = (1.0 - a ** (k + 1)) / (1.0 - a) if a < 1 else k + 1.0
        gain = tokens * base / (step_ms[k + 1] + k * draft_ms)
        if gain > best[1]:
            best = (k, gain)
    return best


def render(rows: list[dict]) -> str:
    if not rows:
        return "no rows\n"
    out = [f"Device: {rows[0]['device']}; shape {rows[0]['shape']}, random weights; one sequence after a "
           f"{PROMPT}-token prompt; medians of the timed repeats.\n"]  # fmt: skip
    out.append(
        "| format | plain step ms | step ms with 2 / 4 / 8 tokens (x plain) | skipped-layer draft step ms (x plain) "
        f"| {LOW_BIT_DRAFT} copy draft step ms (x plain) | row cost the engine times |"
    )
    out.append("|---|---:|---|---:|---:|---:|")
    for r in rows:
        s = {int(k): v for k, v in r["step_ms"].items()}
        many = " / ".join(f"{s[n]:.2f} ({s[n] / s[1]:.2f}x)" for n in (2, 4, 8))
        low = r.get("low_bit_draft_ms")
        copy = f"{low:.2f} ({low / s[1]:.2f}x)" if low else "- (the model is the copy)"
        timed = r.get("timed_row_cost")
        out.append(f"| {r['format']} | {s[1]:.2f} | {many} | {r['draft_ms']:.2f} ({r['draft_ms'] / s[1]:.2f}x, "
                   f"{r['draft_layers']}/{r['layers']} layers) | {copy} | "
                   f"{'-' if timed is None else f'{timed:.3f}'} |")  # fmt: skip
    out.append(
        "\nModelled speed-up over plain decoding (acceptance from the packaged model on CPU; best k):\n"
    )
    workloads = sorted({w for _, w in ACCEPTANCE})
    out.append("| format | method | " + " | ".join(workloads) + " |")
    out.append("|---|---|" + "---:|" * len(workloads))
    for r in rows:
        s = {int(k): v for k, v in r["step_ms"].items()}
        for method, key in DRAFT_COST.items():
            draft = 0.0 if key is None else r.get(key)
            if draft is None:
                continue
            cells = []
            for w in workloads:
                k, gain = best_gain(ACCEPTANCE[(method, w)], s, draft)
                cells.append(f"{gain:.2f}x (k={k})" if k else "1.00x (off)")
            out.append(f"| {r['format']} | {method} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def _decisions(method: str) -> tuple[str, str] | None:
    """(base method, format) of a `spec_decode.py` method that took a GPU's drafting decisions (`*_gpu_bf16`)."""
    base, sep, fmt = method.rpartition("_gpu_")
    return (base, fmt) if sep else None


def priced(row: dict, trace: dict) -> float:
    """Modelled speed-up of one recorded trace (`spec_decode.py --traces`) with this row's GPU step times: the
    plain steps its decode tokens would take, over the recorded verify steps (by tokens in the step) plus the draft
    copy's recorded forwards, each at the copy's one-token step scaled like the model's step for as many tokens
    (catch-ups longer than the timed steps: the timed 512-token catch-up pro rata, where the row has it)."""
    s = {int(k): v for k, v in row["step_ms"].items()}
    top = max(s)
    steps = sum(n * s[min(int(t), top)] for t, n in trace["steps_by_tokens"].items())
    low = row.get("low_bit_draft_ms") or 0.0
    # a catch-up of t > top tokens: the timed 512-token one pro rata where measured, never less than a step
    per_token = (row.get("low_bit_prefill_ms") or 0.0) / row.get("catch_up", 512)

    def call(t: int) -> float:
        return max(low * s[min(t, top)] / s[1], per_token * t if t > top else 0.0)

    copy = sum(n * call(int(t)) for t, n in trace["copy_calls_by_tokens"].items())
    return trace["decode_tokens"] * s[1] / (steps + copy) if steps + copy else 1.0


def render_traces(rows: list[dict], traces: list[dict]) -> str:
    """Per format, the traces recorded with that format's drafting decisions, priced with its step times."""
    kinds = sorted({t["kind"] for t in traces})
    out = [
        "\nPriced traces (`spec_decode.py --traces`: the engine's steps and draft forwards recorded on CPU with the "
        "drafting decisions of this GPU's row and draft costs, priced with the step times above):\n",
        "| format | method | " + " | ".join(kinds) + " |",
        "|---|---|" + "---:|" * len(kinds),
    ]
    for row in rows:
        fmt = row["format"].split("_")[0]
        methods = sorted({t["method"] for t in traces if (_decisions(t["method"]) or ("", ""))[1] == fmt})
        for method in methods:
            cells = []
            for kind in kinds:
                trace = next((t for t in traces if t["method"] == method and t["kind"] == kind), None)
                cells.append("-" if trace is None else f"{priced(row, trace):.2f}x")
            base = (_decisions(method) or (method, ""))[0]
            out.append(f"| {row['format']} | {base} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--formats", default="bf16,sym_int4:128,fp8_e4m3", help="fmt[:group], comma-separated")
    ap.add_argument("--shape", choices=tuple(SHAPES), default="llama3-8b")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument(
        "--draft-kv",
        default="shared",
        help="the low-bit copy's KV (draft_kv_cache_dtype: shared, or its own pools)",
    )
    ap.add_argument("--out", default=None, help="append result rows (JSON lines) here")
    ap.add_argument("--md", default=None, help="write the tables here")
    ap.add_argument("--summarize", default=None, metavar="ROWS", help="render a rows file and exit")
    ap.add_argument(
        "--traces", default=None, help="also price `spec_decode.py --traces` output with the rows"
    )
    args = ap.parse_args()
    if args.summarize:
        rows = [json.loads(line) for line in Path(args.summarize).read_text().splitlines() if line.strip()]
    else:
        device = torch.device(args.device)
        rows = [measure(args, spec, device) for spec in args.formats.split(",") if spec]
    text = render(rows)
    if args.traces:
        text += render_traces(rows, json.loads(Path(args.traces).read_text())["rows"])
    print(text)
    if args.md:
        Path(args.md).write_text(text)


if __name__ == "__main__":
    main()
