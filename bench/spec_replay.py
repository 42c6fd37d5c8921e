"""Speculative drafting replayed on recorded greedy outputs: exact step counts, free of machine noise.

Greedy decoding emits the same tokens whatever is drafted (`tests/engine/test_speculative.py`), so a drafter's steps
can be counted without the model: every request of `spec_decode.py`'s workloads is decoded once plainly, then each
prompt-lookup drafter is replayed over the recorded tokens the way the engine verifies one sequence
(`EngineCore._draft` / `_verify`: drafts are accepted while they equal the recorded tokens, then the step's own token
follows). Per workload: decode tokens per decode step, acceptance, drafted rows per decode token and the step model
(tokens per step over 1 + VERIFY_COST x rows per step, `spec_decode.step_model`). `length_bound` drafts the
default drafter's candidate exactly as far as it will be accepted and nothing where it fails at once: the best any
rule that only sets draft lengths could do with that candidate (same cap). `any_match_bound` is the ceiling of
drafting by lookup at all: at each step, of every earlier occurrence of the last token (in the prompt or the text
so far), the one whose continuation the output follows longest, drafted exactly that far (same cap).

python -P bench/spec_replay.py [--per-kind 6] [--max-tokens 96] [--write PATH]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))  # run with -P: the script's folder is not on sys.path

from spec_decode import VERIFY_COST, workloads

from xpullm.engine import LLM
from xpullm.engine.speculative import DraftSlot, SpecState, SpeculativeConfig, make_drafter
from xpullm.engine.step_cost import DEFAULT_ROW_COST

DRAFTERS = {
    "prompt_lookup_latest": SpeculativeConfig(method="prompt_lookup_latest", num_draft=8),
    "prompt_lookup": SpeculativeConfig(method="prompt_lookup"),
}


@dataclass
class Trace:
    kind: str
    prompt: list[int]
    output: list[int]
    """Generated tokens, EOS included when the request stopped on it."""
    max_new: int


@dataclass
class Counts:
    steps: int = 0
    tokens: int = 0
    drafted: int = 0
    accepted: int = 0

    def add(self, other: Counts) -> None:
        self.steps += other.steps
        self.tokens += other.tokens
        self.drafted += other.drafted
        self.accepted += other.accepted


def record(llm: LLM, per_kind: int, max_tokens: int) -> list[Trace]:
    """Plain greedy decoding of every workload request; token ids come from the completion's logprobs."""
    eos = llm._eos[0] if llm._eos else None  # the ids that end a request
    traces = []
    for kind, reqs in workloads(llm, per_kind).items():
        for req in reqs:
            prompt = llm._encode_chat(req["messages"])
            c = llm.chat(
                req["messages"],
                max_new_tokens=max_tokens,
                grammar=req["grammar"],
                logprobs=1,
                speculative=False,
            )
            output = [lp.token_id for lp in c.logprobs or ()]
            if c.finish_reason == "stop" and eos is not None and len(output) < max_tokens:
                output.append(eos)  # EOS ends the request but is not a completion token
            traces.append(Trace(kind, prompt, output, max_tokens))
    return traces


def replay(trace: Trace, config: SpeculativeConfig, bound: bool = False) -> Counts:
    """The engine's draft / verify loop for one sequence over recorded tokens (decode steps only)."""
    drafter = make_drafter(None, config)  # type: ignore[arg-type]  # prompt lookup needs no runner
    cost = DEFAULT_ROW_COST if config.verify_cost is None else config.verify_cost  # no runner to time here
    state = SpecState(config, drafter.start(trace.prompt), cost, drafter.cost, drafter.sizes_drafts)
    out, tokens = trace.output, [*trace.prompt, trace.output[0]]  # the prefill step gave the first token
    n, counts = 1, Counts()
    while n < len(out):
        left = len(trace.prompt) + trace.max_new - len(tokens)
        k = min(state.want(1), left - 1)
        draft: list[int] = []
        if k > 0:
            slot = DraftSlot(tokens, k, 0, state.drafter_state, state.cost(1))
            if bound:
                slot.row_cost = 0.0  # the candidate as far as the cap allows, cut below at its first miss
            draft = list(drafter.propose([slot])[0][:k])
            if bound:
                hit = next(
                    (j for j, (d, t) in enumerate(zip(draft, out[n:], strict=False)) if d != t), len(draft)
                )
                draft = draft[: min(hit, len(out) - n - 1)]
        accepted = 0
        for i in range(len(draft) + 1):
            tid = out[n]
            n += 1
            tokens.append(tid)
            if n == len(out) or i == len(draft) or tid != draft[i]:
                break
            accepted += 1
        if draft:
            state.update(len(draft), accepted)
        counts.add(Counts(1, 1 + accepted, len(draft), accepted))
    return counts


def any_match(trace: Trace, cap: int) -> Counts:
    """The lookup ceiling: each step drafts, from whichever earlier occurrence of the last token the output
    follows longest, exactly the tokens that will be accepted (at most `cap`)."""
    out, tokens = trace.output, [*trace.prompt, trace.output[0]]
    n, counts = 1, Counts()
    while n < len(out):
        room = min(cap, len(out) - n - 1, len(trace.prompt) + trace.max_new - len(tokens) - 1)
        best = 0
        for at in range(1, len(tokens)):
            if best >= room:
                break
            if tokens[at - 1] != tokens[-1]:
                continue
            j = 0
            while j < room and at + j < len(tokens) and tokens[at + j] == out[n + j]:
                j += 1
            best = max(best, j)
        tokens.extend(out[n : n + best + 1])
        n += best + 1
        counts.add(Counts(1, 1 + best, best, best))
    return counts


def row(kind: str, method: str, c: Counts) -> dict:
    tps = c.tokens / c.steps
    return {
        "kind": kind,
        "method": method,
        "tokens_per_step": tps,
        "acceptance": c.accepted / c.drafted if c.drafted else None,
        "rows_per_token": c.drafted / c.tokens,
        "step_model": tps / (1.0 + VERIFY_COST * c.drafted / c.steps),
    }


def table(rows: list[dict]) -> str:
    lines = [
        "| workload | drafter | tokens / step | acceptance | drafted rows / token | step model |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        acc = f"{r['acceptance']:.0%}" if r["acceptance"] is not None else "-"
        lines.append(
            f"| {r['kind']} | {r['method']} | {r['tokens_per_step']:.2f} | {acc} | {r['rows_per_token']:.2f} | "
            f"{r['step_model']:.2f}x |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-kind", type=int, default=6, help="requests per workload")
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--write", type=Path, default=None, help="also write the table to this file")
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    t0 = time.perf_counter()
    llm = LLM(speculative=None)
    traces = record(llm, args.per_kind, args.max_tokens)
    print(f"recorded {len(traces)} requests in {time.perf_counter() - t0:.0f} s", flush=True)
    rows = []
    for kind in dict.fromkeys(t.kind for t in traces):
        mine = [t for t in traces if t.kind == kind]
        for name, config in [*DRAFTERS.items(), ("length_bound", DRAFTERS["prompt_lookup"])]:
            total = Counts()
            for t in mine:
                total.add(replay(t, config, bound=name == "length_bound"))
            rows.append(row(kind, name, total))
        total = Counts()
        for t in mine:
            total.add(any_match(t, DRAFTERS["prompt_lookup"].num_draft))
        rows.append(row(kind, "any_match_bound", total))
    out = table(rows)
    print(out)
    if args.write:
        args.write.write_text(out + "\n")
        print(f"wrote {args.write}")


if __name__ == "__main__":
    main()
