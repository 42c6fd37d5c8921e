"""Speculative decoding on CPU: plain decoding vs prompt lookup vs self-speculative (layer skipping), packaged model.

Workloads (chat turns, greedy), built from installed text (exllamav2's Wikipedia sample):
- `kb_answer`: the knowledge base's grounded-answer prompt (`xpullm.rag.answer.SYSTEM`, numbered sources) over three
  retrieved chunks, asking about one of them;
- `summary`: summarize one article;
- `graphrag`: GraphRAG's entity/relationship extraction prompt on one article, decoded under its tuple grammar as
  `xpullm graphrag index` does (`graphrag/extraction.py`);
- `open_chat`: open questions with nothing to copy.
Each speculative method is its own engine over the same loaded weights; plain decoding is the prompt-lookup engine
with `speculative=False` per request. Rounds run every request once per method back to back (order rotated per
round), so machine noise hits all of them; a run's speed is `Completion.decode_tok_s` (tokens after the first over
the time from the first token to the last: prefill excluded) and its speed-up is the ratio to the plain run of the
same request in the same round. Reported: medians over all runs with [min-max], acceptance (accepted / drafted)
and decode tokens per step. Greedy outputs are checked equal across methods.

python -P bench/spec_decode.py [--rounds 3] [--max-tokens 96] [--per-kind 2] [--methods a,b] [--kinds a,b]
    [--threads N] [--write docs/benchmarks-speculative.md]  (--write replaces the file: keep its hand-written reading below)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

from xpullm.engine import LLM
from xpullm.engine.core import EngineConfig
from xpullm.engine.params import Completion
from xpullm.engine.speculative import SpeculativeConfig
from xpullm.kernels import cpu_native

METHODS: dict[str, SpeculativeConfig | None] = {
    "plain": None,
    # The default: prompt lookup with the row cost timed on the engine's runner when it starts (`step_cost`).
    "prompt_lookup": SpeculativeConfig(method="prompt_lookup"),
    # The default before the row cost was timed: fixed at 0.15 (measured on the AMD EPYC VM), with a drafted token
    # paying while its chance exceeds 1.7 x that cost.
    "prompt_lookup_fixed_cost": SpeculativeConfig(
        method="prompt_lookup", verify_cost=0.15, expected_speedup=1.7
    ),
    # The timed row cost with a factor of 1.0: a drafted token pays while its chance exceeds its row's cost.
    "prompt_lookup_timed_1_0": SpeculativeConfig(method="prompt_lookup", expected_speedup=1.0),
    # The timed row cost with the old factor of 1.7 (the default's first version).
    "prompt_lookup_timed_1_7": SpeculativeConfig(method="prompt_lookup", expected_speedup=1.7),
    # The rule it replaced (latest occurrence of the longest 5..2-gram, draft length from one acceptance estimate),
    # with its old cap of 8: the before / after of the drafting, interleaved in the same run.
    "prompt_lookup_latest": SpeculativeConfig(method="prompt_lookup_latest", num_draft=8),
    "self_speculative": SpeculativeConfig(method="self_speculative"),
    # The same drafter with its cost declared 0: it drafts whenever its confidence allows, which shows the raw
    # acceptance of skipped-layer drafts (what a GPU, where a partial step is cheap, would see).
    "self_speculative_always": SpeculativeConfig(method="self_speculative", draft_cost=0.0),
    # The default drafter with the native attention computing each verified token on its own (one job per token and
    # kv head, as before token groups; `bench/spec_row_cost.py`): the before / after of the kernel, interleaved.
    "prompt_lookup_pertoken": SpeculativeConfig(method="prompt_lookup"),
    # The default drafter told that a verified row costs 0.06 of a step (`bench/spec_row_cost.py` on the Xeon with
    # AMX, 300-800 tokens of context, up to 7 rows) instead of the 0.15 measured on the 2-vCPU AMD EPYC VM.
    "prompt_lookup_cheap_rows": SpeculativeConfig(method="prompt_lookup", verify_cost=0.06),
    # A sym_int4 copy of the model drafts (IPEX-LLM's self-speculative decoding); run it over a dense model
    # (`--low-bit fp32`) for the acceptance an int4 draft of a bf16 model sees. `_always`: cost declared 0, so it
    # drafts at every step (the raw acceptance, what a GPU where the int4 step is cheap would see).
    "low_bit_draft": SpeculativeConfig(method="low_bit_draft"),
    # Prompt lookup where it finds a continuation that pays, the int4 copy for the rest.
    "lookup_low_bit": SpeculativeConfig(method="lookup_low_bit"),
    "low_bit_draft_always": SpeculativeConfig(method="low_bit_draft", draft_cost=0.0),
    # The same with the copy's LM head in int4 too (the default keeps it in int8): what the head's bits cost in
    # acceptance, in the same run.
    "low_bit_draft_int4_head_always": SpeculativeConfig(
        method="low_bit_draft", draft_cost=0.0, draft_head_format="sym_int4"
    ),
}
# The drafting decisions an H100 makes (`bench/spec_gpu.py`, 2026-12-06: a verified row 0.003 / 0.028 of a bf16 / fp8
# step, the int4 copy's step 0.46x / 0.60x of theirs), taken on this CPU over the dense model (`--low-bit fp32`) and
# recorded per step (`--traces`), for `spec_gpu.py --traces` to price with the GPU's measured step times.
GPU_DECISIONS = {"bf16": (0.003, 0.46), "fp8": (0.028, 0.60)}
for _fmt, (_row, _copy) in GPU_DECISIONS.items():
    METHODS[f"prompt_lookup_gpu_{_fmt}"] = SpeculativeConfig(method="prompt_lookup", verify_cost=_row)
    for _m in ("low_bit_draft", "lookup_low_bit"):
        # the copy over the model's own pools (the default), and with 8-bit pools of its own (the default before)
        METHODS[f"{_m}_gpu_{_fmt}"] = SpeculativeConfig(method=_m, verify_cost=_row, draft_cost=_copy)
        METHODS[f"{_m}_own_kv_gpu_{_fmt}"] = SpeculativeConfig(
            method=_m, verify_cost=_row, draft_cost=_copy, draft_kv_cache_dtype="int8"
        )
# Most tokens of one sequence the native paged attention attends together, per method (default 8).
PAGED_GROUP = {"prompt_lookup_pertoken": 1}
# Methods that run on another method's engine (same drafter, same weights and pools).
SHARED_ENGINE = {"plain": "prompt_lookup", "prompt_lookup_pertoken": "prompt_lookup"}
CHAT = [
    "Tell me a short story about a dragon who learns to bake bread.",
    "What are some good habits for learning a new language?",
    "Write a friendly letter to a neighbour inviting them to dinner.",
]


def wiki_articles(n: int, min_chars: int = 1200) -> list[tuple[str, str]]:
    """(title, body) of the first `n` long articles of exllamav2's wiki.utf8 (installed, never imported)."""
    spec = importlib.util.find_spec("exllamav2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("exllamav2 is not installed: pip install --no-deps exllamav2==0.3.2")
    path = (
        Path(next(iter(spec.submodule_search_locations))) / "conversion" / "standard_cal_data" / "wiki.utf8"
    )
    out: list[tuple[str, str]] = []
    for doc in path.read_text().split("</doc>"):
        if 'title="' not in doc:
            continue
        title = doc.split('title="', 1)[1].split('"', 1)[0]
        body = doc.split(">", 1)[1].strip()
        if body.startswith(title):
            body = body[len(title) :].strip()
        if len(body) >= min_chars:
            out.append((title, body))
        if len(out) == n:
            break
    return out


def workloads(llm: LLM, per_kind: int) -> dict[str, list[dict]]:
    """Per kind, `per_kind` requests: {"messages": [...], "grammar": str | None}."""
    from xpullm.graphrag.config import ExtractionConfig
    from xpullm.graphrag.extraction import extraction_prompt
    from xpullm.graphrag.grammar import tuple_grammar
    from xpullm.rag.answer import SYSTEM

    arts = wiki_articles(5 * per_kind)
    cut = 900  # characters per chunk / article: prompts of ~250-700 tokens
    kinds: dict[str, list[dict]] = {"kb_answer": [], "summary": [], "graphrag": [], "open_chat": []}
    config = ExtractionConfig()
    grammar = tuple_grammar(config, require_record=True)
    for i in range(per_kind):
        chunks = arts[3 * i : 3 * i + 3]
        sources = "\n\n".join(f"[{n}] ({t})\n{b[:cut]}" for n, (t, b) in enumerate(chunks, start=1))
        question = f"What do the sources say about {chunks[1][0]}?"
        kinds["kb_answer"].append(
            {
                "messages": [
                    {"role": "system", "content": SYSTEM},
                    {"role": "user", "content": f"Sources:\n\n{sources}\n\nQuestion: {question}"},
                ],
                "grammar": None,
            }
        )
        title, body = arts[3 * per_kind + i]
        kinds["summary"].append(
            {
                "messages": [
                    {"role": "user", "content": f"Summarize this article about {title}:\n\n{body[:cut]}"}
                ],
                "grammar": None,
            }
        )
        text = arts[3 * per_kind + per_kind + i][1][:cut]
        kinds["graphrag"].append(
            {
                "messages": [{"role": "user", "content": extraction_prompt(text, config)}],
                "grammar": grammar,
            }
        )
        kinds["open_chat"].append(
            {"messages": [{"role": "user", "content": CHAT[i % len(CHAT)]}], "grammar": None}
        )
    return kinds


def decode_seconds(c: Completion) -> float:
    return (c.completion_tokens - 1) / c.decode_tok_s if c.decode_tok_s > 0 else 0.0


def run(
    rounds: int,
    max_tokens: int,
    per_kind: int,
    methods: list[str],
    only: list[str] | None = None,
    threads: int | None = None,
    low_bit: str | None = None,
) -> tuple[list[dict], dict]:
    torch.set_num_threads(threads or os.cpu_count() or 1)
    base = LLM(low_bit=low_bit, dtype=torch.float32 if low_bit == "fp32" else None)
    engines = {
        name: LLM(base.model, tokenizer=base.tokenizer, speculative=spec, engine=EngineConfig())
        for name, spec in METHODS.items()
        if spec is not None and name not in SHARED_ENGINE and (name in methods or name == "prompt_lookup")
    }
    # Plain decoding runs on the prompt-lookup engine with the request's `speculative=False`: the same engine thread,
    # pools and thread pool as the speculative runs beside it (another engine's idle threads skew a 2-core machine).
    for name, owner in SHARED_ENGINE.items():
        engines[name] = engines[owner]
    lib = cpu_native.library()
    traces: dict[tuple[str, str], Trace] = {}
    current: list[tuple[str, str] | None] = [None]
    for name, llm in engines.items():
        if name not in SHARED_ENGINE:
            _record_steps(llm, current, traces)
    kinds = {k: v for k, v in workloads(base, per_kind).items() if only is None or k in only}
    names = [n for n in METHODS if n in methods]
    warm = next(iter(kinds.values()))[0]
    for llm in engines.values():  # warm-up (kernels, grammar tokenizer)
        llm.chat(warm["messages"], max_new_tokens=4, grammar=warm["grammar"])
    core = engines["prompt_lookup"].engine
    if core is not None:
        print(f"row cost timed by the default engine: {core.verify_cost:.3f} of a step", file=sys.stderr)
    rows = []
    mismatches = 0
    prompt_tokens: dict[str, list[int]] = {}
    for kind, reqs in kinds.items():
        speeds: dict[str, list[float]] = {n: [] for n in names}
        ratios: dict[str, list[float]] = {n: [] for n in names}
        drafted = dict.fromkeys(names, 0)
        accepted = dict.fromkeys(names, 0)
        steps = dict.fromkeys(names, 0)
        produced = dict.fromkeys(names, 0)
        for r in range(rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            for req in reqs:
                outs = {}
                for name in order:
                    if lib is not None:
                        lib.xq_set_paged_group(PAGED_GROUP.get(name, 8))
                    current[0] = (name, kind)
                    c = engines[name].chat(
                        req["messages"],
                        max_new_tokens=max_tokens,
                        grammar=req["grammar"],
                        speculative=name != "plain",
                    )
                    outs[name] = c
                    speeds[name].append(c.decode_tok_s)
                    drafted[name] += c.timings.draft_tokens
                    accepted[name] += c.timings.accepted_tokens
                    # The prefill step's token is not a decode step: count decode steps and tokens only.
                    steps[name] += c.timings.steps - 1
                    produced[name] += c.timings.tokens - 1
                    prompt_tokens.setdefault(kind, []).append(c.prompt_tokens)
                mismatches += sum(outs[n].text != outs["plain"].text for n in names)
                for n in names:
                    ratios[n].append(speeds[n][-1] / speeds["plain"][-1] if speeds["plain"][-1] else 0.0)
            print(kind, r, {n: round(statistics.median(speeds[n]), 1) for n in names}, flush=True)
        for n in names:
            rows.append(
                {
                    "kind": kind,
                    "method": n,
                    "tok_s": speeds[n],
                    "speedup": ratios[n],
                    "acceptance": accepted[n] / drafted[n] if drafted[n] else None,
                    "tokens_per_step": produced[n] / steps[n] if steps[n] else 0.0,
                    "decode_tokens": produced[n],
                    **traces.get((n, kind), Trace()).as_row(),
                }
            )
    info = {
        "mismatches": mismatches,
        "prompt_tokens": {k: (min(v), max(v)) for k, v in prompt_tokens.items()},
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    return rows, info


@dataclass
class Trace:
    """One (method, workload)'s decode steps by tokens in the step, and its draft model's forward calls."""

    steps: Counter = field(default_factory=Counter)
    copy_calls: Counter = field(default_factory=Counter)

    def as_row(self) -> dict:
        return {"steps_by_tokens": dict(self.steps), "copy_calls_by_tokens": dict(self.copy_calls)}


def _record_steps(llm: LLM, current: list, traces: dict) -> None:
    """Count the engine's one-sequence decode / verify forwards (a logits row per token) by token count, and its
    draft copy's forwards (`low_bit_draft`, `lookup_low_bit`), under the (method, workload) in `current[0]`."""
    core = llm.engine
    drafter = getattr(core, "_drafter", None)
    copy = getattr(drafter, "draft", None) or getattr(getattr(drafter, "copy", None), "draft", None)

    def wrap(runner, decode_only: bool) -> None:
        forward = runner.forward

        def counted(ids, positions, rows, last, layers=None):
            key = current[0]
            if key is not None and (not decode_only or (len(last) == len(ids) and len(set(rows)) == 1)):
                trace = traces.setdefault(key, Trace())
                (trace.copy_calls if runner is copy else trace.steps)[len(ids)] += 1
            return forward(ids, positions, rows, last, layers)

        runner.forward = counted

    wrap(core.runner, True)
    if copy is not None:
        wrap(copy, False)


def _med(values: list[float], digits: int = 1, suffix: str = "") -> str:
    med = statistics.median(values)
    return f"{med:.{digits}f}{suffix} [{min(values):.{digits}f}-{max(values):.{digits}f}]"


VERIFY_COST = 0.15  # a verified draft row's cost relative to a one-token step (AMD EPYC VM; `--verify-cost`)


def step_model(tokens_per_step: float, acceptance: float | None, verify_cost: float = VERIFY_COST) -> float:
    """Noise-free speed-up from step counts: tokens per step over the step cost 1 + VERIFY_COST x drafted per step
    (each decode step gives 1 + accepted tokens, so drafted / step = (tokens / step - 1) / acceptance). Drafting
    costs of self-speculative drafts are not in it."""
    if not acceptance:
        return 1.0
    return tokens_per_step / (1.0 + verify_cost * (tokens_per_step - 1.0) / acceptance)


def table(rows: list[dict], verify_cost: float = VERIFY_COST) -> str:
    lines = [
        "| workload | method | decode tok/s | speed-up vs plain | acceptance | tokens / step | step model |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        acc = f"{row['acceptance']:.0%}" if row["acceptance"] is not None else "-"
        model = step_model(row["tokens_per_step"], row["acceptance"], verify_cost)
        lines.append(
            f"| {row['kind']} | {row['method']} | {_med(row['tok_s'])} | {_med(row['speedup'], 2, 'x')} | {acc} | "
            f"{row['tokens_per_step']:.2f} | {model:.2f}x |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--per-kind", type=int, default=2, help="requests per workload and round")
    ap.add_argument("--write", type=Path, default=None, help="also write this markdown fragment")
    ap.add_argument(
        "--methods",
        default=",".join(METHODS),
        help=f"comma-separated subset of {list(METHODS)} (plain is always run)",
    )
    ap.add_argument("--kinds", default=None, help="comma-separated workloads to run (default: all four)")
    ap.add_argument(
        "--verify-cost",
        type=float,
        default=VERIFY_COST,
        help="a verified row's cost in one-token steps, for the step-model column (bench/spec_row_cost.py)",
    )
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: every core)")
    ap.add_argument(
        "--traces",
        type=Path,
        default=None,
        help="write the result rows (steps by token count included) as JSON",
    )
    ap.add_argument(
        "--low-bit",
        default=None,
        help="the model's format (default: the checkpoint's own; fp32: dense weights)",
    )
    args = ap.parse_args()
    methods = ["plain", *(m for m in args.methods.split(",") if m != "plain")]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise SystemExit(f"--methods: unknown {unknown}; choose from {list(METHODS)}")
    t0 = time.perf_counter()
    only = args.kinds.split(",") if args.kinds else None
    rows, info = run(args.rounds, args.max_tokens, args.per_kind, methods, only, args.threads, args.low_bit)
    out = table(rows, args.verify_cost)
    print(out)
    if args.traces:
        args.traces.write_text(json.dumps({"rows": rows, "info": info}, indent=1))
    print(info, f"{time.perf_counter() - t0:.0f} s")
    if args.write:
        args.write.write_text(
            FRAGMENT.format(
                table=out,
                rounds=args.rounds,
                max_tokens=args.max_tokens,
                per_kind=args.per_kind,
                runs=args.rounds * args.per_kind,
                mismatches=info["mismatches"],
                prompts=", ".join(f"{k} {a}-{b}" for k, (a, b) in info["prompt_tokens"].items()),
                threads=info["threads"],
                torch=info["torch"],
            )
        )
        print(f"wrote {args.write}")


FRAGMENT = """## Speculative decoding (CPU, packaged model)

`bench/spec_decode.py --rounds {rounds} --max-tokens {max_tokens} --per-kind {per_kind}`: the packaged SmolLM2-135M-Instruct (Q4_1 GGUF
as asym_int4, fp32 activations), continuous-batching engine, one request at a time, greedy, {per_kind} requests per workload
and round, up to {max_tokens} new tokens each; methods interleaved prompt by prompt (order rotated per round).
Decode tok/s = tokens after the first / time from the first token to the last (prefill excluded); medians over the
{runs} runs per cell with [min-max]; the speed-up is each run's ratio to the plain run of the same request in the same
round (plain = the same engine with `speculative=False`). Acceptance = accepted / drafted tokens;
tokens / step = decode tokens per decode step (1.00 for plain decoding). Prompt tokens: {prompts}.
Greedy outputs of the methods differed from plain decoding in {mismatches} of the runs (the engine verifies drafts with the model's own
logits, which are bitwise those of plain decoding on CPU).
Machine (2026-12-05): AMD EPYC Zen 5 (family 26), 2 vCPU, AVX-512, {threads} torch threads, torch {torch}; shared with other
jobs while measured (noisy: read the ratios, not the absolute speeds).

{table}

Workloads: `kb_answer` is the knowledge base's grounded prompt (system rule + three numbered chunks from
exllamav2's Wikipedia sample + a question about one); `summary` summarizes one article; `graphrag` is GraphRAG's
extraction prompt on one article, decoded under its tuple grammar as `xpullm graphrag index` does; `open_chat`
asks open questions with nothing in the prompt to copy.
"""


if __name__ == "__main__":
    main()
