"""GraphRAG indexing through the continuous-batching engine: serialized calls vs the default concurrency.

One corpus (tests/graphrag/data/articles, 10 invented articles), the LLM extraction method (the one that makes an
LLM call per text unit, per gleaning round, per merged description and per community report), the packaged model.
Variants, run interleaved (A B C, A B C, ...) on one loaded model so machine noise hits all of them alike:

- serial: `llm.batch_size=1, llm.concurrency=1`: one call in the engine at a time (the old locked engine's way);
- batch8: `llm.batch_size=8, llm.concurrency=1`: one batch of 8 prompts at a time;
- default: `llm.batch_size=8, llm.concurrency=4`: up to 32 calls of a stage in the engine at once.

Each run writes its own LLM cache (read_write, fresh folder), so every call reaches the engine; the cache keys
and answers of the runs are then compared: the same keys mean a cache built one way is hit by the other.

    .venv/bin/python -P bench/graphrag_batching.py --reps 2 --json /tmp/gb.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

ARTICLES = Path(__file__).resolve().parent.parent / "tests" / "graphrag" / "data" / "articles"
VARIANTS = {
    "serial": {"batch_size": 1, "concurrency": 1},
    "batch8": {"batch_size": 8, "concurrency": 1},
    "default": {"batch_size": 8, "concurrency": 4},
}


def one_run(llm, embedder, variant: str, gleanings: int, docs: Path) -> dict:
    """Index the corpus once with `variant`; wall time, per-stage seconds and {cache key: answer}."""
    from xpullm.graphrag import GraphRAG, GraphRAGConfig

    root = Path(tempfile.mkdtemp(prefix=f"graphrag-batching-{variant}-"))
    cfg = GraphRAGConfig().replace(
        llm=VARIANTS[variant], extract_graph={"method": "llm", "max_gleanings": gleanings}
    )
    rag = GraphRAG(root, llm=llm, embedder=embedder, config=cfg)
    t0 = time.perf_counter()
    res = rag.index(docs)
    wall = time.perf_counter() - t0
    answers = {e.key: (e.stage, e.text) for e in rag.cache.entries()}
    rag.close()
    stages = {
        name: {"s": round(s["seconds"], 1), "calls": s["llm_calls"]}
        for name, s in res.stats["stages"].items()
        if s.get("seconds", 0) >= 0.05 or s.get("llm_calls")
    }
    return {
        "variant": variant,
        "wall_s": round(wall, 1),
        "stages": stages,
        "llm_calls": res.stats["totals"]["llm_calls"],
        "completion_tokens": res.stats["totals"]["completion_tokens"],
        "graph": [res.entities, res.relationships, res.communities, res.community_reports],
        "answers": answers,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=2, help="interleaved rounds (each runs every variant once)")
    ap.add_argument("--variants", default="serial,default", help=f"comma list of {', '.join(VARIANTS)}")
    ap.add_argument("--gleanings", type=int, default=1, help="extract_graph.max_gleanings")
    ap.add_argument("--json", type=Path, default=None, help="write the raw runs here")
    args = ap.parse_args()

    from xpullm.embeddings import Embedder
    from xpullm.engine import LLM

    llm, embedder = LLM(), Embedder(device="cpu")
    llm.count_tokens("warm")
    variants = args.variants.split(",")
    runs: list[dict] = []
    for rep in range(args.reps):
        order = variants if rep % 2 == 0 else variants[::-1]  # alternate who goes first
        for v in order:
            r = one_run(llm, embedder, v, args.gleanings, ARTICLES)
            runs.append(r)
            print(
                f"[{rep}] {v}: {r['wall_s']} s, {r['llm_calls']} calls, graph {r['graph']}, {r['stages']}",
                flush=True,
            )

    ref = runs[0]["answers"]
    print(
        f"\nMachine: {platform.processor() or platform.machine()}; model {llm.model_name} ({getattr(llm, '_low_bit', None) or 'checkpoint format'})"
    )
    print(
        "| variant | wall s (median) | range | LLM calls | extract s | summarize s | reports s | same keys | same answers |"
    )
    print("|---|---:|---|---:|---:|---:|---:|---|---|")
    medians = {}
    for v in variants:
        rs = [r for r in runs if r["variant"] == v]
        walls = [r["wall_s"] for r in rs]
        medians[v] = statistics.median(walls)
        st = rs[0]["stages"]
        same_keys = all(set(r["answers"]) == set(ref) for r in rs)
        same_text = all(r["answers"] == ref for r in rs)
        print(
            f"| {v} {VARIANTS[v]} | {medians[v]:.1f} | {min(walls):.1f}-{max(walls):.1f} | {rs[0]['llm_calls']} | "
            f"{st.get('extract_graph', {}).get('s', 0)} | {st.get('summarize_descriptions', {}).get('s', 0)} | "
            f"{st.get('community_reports', {}).get('s', 0)} | {same_keys} | {same_text} |"
        )
    base = medians[variants[0]]
    for v in variants[1:]:
        print(f"speed-up {variants[0]} -> {v}: {base / medians[v]:.2f}x")
    if args.json is not None:
        slim = [{k: v for k, v in r.items() if k != "answers"} | {"keys": sorted(r["answers"])} for r in runs]
        args.json.write_text(json.dumps(slim, indent=1))


if __name__ == "__main__":
    main()
