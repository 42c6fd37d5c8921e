"""GraphRAG graph size, index speed and answer quality on the fictional Kestrel Falls articles.

The corpus is tests/graphrag/data/articles (10 short invented articles, so no model can answer from memory) with the
questions in tests/graphrag/data/articles_questions.json: cross-document questions (an answer is correct when it
holds every expected phrase), in-topic questions the articles do not answer and off-topic ones (both should be
refused). For each extraction method: entities, relationships, communities, reports, index seconds and seconds per
1k input tokens; for each query method: correct / cited / refused counts.

    .venv/bin/python -P bench/graphrag_quality.py                       # nlp and llm methods, packaged model
    .venv/bin/python -P bench/graphrag_quality.py --methods nlp --queries local,global,drift
    .venv/bin/python -P bench/graphrag_quality.py --graphrag-src /tmp/before/graphrag   # another checkout's code

`--graphrag-src` loads `xpullm.graphrag` from another checkout's graphrag/ folder (e.g. main before this work, via
`git worktree add /tmp/before aba0b28`), so before/after run on the same installed engine. Speed is not asserted
anywhere; write the printed table into docs/graphrag.md with the machine named.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import sys
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parent.parent / "tests" / "graphrag" / "data"
ARTICLES = DATA / "articles"
QUESTIONS = DATA / "articles_questions.json"
_REFUSAL = re.compile(
    r"no information|no community report held|not (?:contain|mention|provide|include)|(?:do not|don't|cannot) know",
    re.IGNORECASE,
)


def _load_graphrag_from(src: Path) -> None:
    """Make `import xpullm.graphrag` load the package in `src` (before anything imported it)."""
    import xpullm

    spec = importlib.util.spec_from_file_location(
        "xpullm.graphrag", src / "__init__.py", submodule_search_locations=[str(src)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["xpullm.graphrag"] = module
    xpullm.graphrag = module  # type: ignore[attr-defined]
    spec.loader.exec_module(module)


def _config(method: str, progress: bool):
    from xpullm.graphrag import GraphRAGConfig

    cfg = GraphRAGConfig().replace(progress=progress, cache={"mode": "off"})
    if method != "default":
        cfg = cfg.replace(extract_graph={"method": method})
    return cfg


def _grade(answer, expect: list[str]) -> tuple[bool, bool, bool]:
    text = answer.text
    refused = bool(getattr(answer, "details", {}).get("refused")) or bool(_REFUSAL.search(text))
    correct = all(e.lower() in text.lower() for e in expect) and not refused
    cited = bool(re.search(r"\[Data:[^\]]*\(\s*\d", text))
    return correct, cited, refused


def run(methods: list[str], queries: list[str], progress: bool) -> dict:
    from xpullm.embeddings import Embedder
    from xpullm.engine import LLM
    from xpullm.graphrag import GraphRAG

    qs = json.loads(QUESTIONS.read_text())
    llm, embedder = LLM(), Embedder(device="cpu")
    t0 = time.perf_counter()
    llm.count_tokens("load")
    load_s = time.perf_counter() - t0
    texts = [p.read_text() for p in sorted(ARTICLES.glob("*.txt"))]
    n_tokens = sum(llm.count_tokens(t) for t in texts)
    out: dict = {"model_load_s": round(load_s, 1), "input_tokens": n_tokens, "methods": {}}
    for method in methods:
        root = Path(tempfile.mkdtemp(prefix=f"graphrag-bench-{method}-"))
        rag = GraphRAG(root, llm=llm, embedder=embedder, config=_config(method, progress))
        t0 = time.perf_counter()
        res = rag.index(ARTICLES)
        seconds = time.perf_counter() - t0
        row: dict = {
            "entities": res.entities,
            "relationships": res.relationships,
            "communities": res.communities,
            "reports": res.community_reports,
            "index_s": round(seconds, 1),
            "s_per_1k_tokens": round(seconds / n_tokens * 1000, 1),
            "llm_calls": res.stats["totals"]["llm_calls"],
            "method_used": res.stats.get("info", {}).get("extraction_method", "llm"),
            "queries": {},
        }
        print(
            f"[{method}] indexed: {json.dumps({k: v for k, v in row.items() if k != 'queries'})}", flush=True
        )
        for qm in queries:
            score = {
                "correct": 0,
                "cited": 0,
                "refused_answerable": 0,
                "refused_unanswerable": 0,
                "seconds": 0.0,
            }
            items = [(q["question"], q["expect"], True) for q in qs["answerable"]]
            items += [(q, [], False) for q in qs["unanswerable"]]
            for question, expect, answerable in items:
                t0 = time.perf_counter()
                answer = rag.query(question, method=qm)
                score["seconds"] += time.perf_counter() - t0
                correct, cited, refused = _grade(answer, expect)
                if answerable:
                    score["correct"] += correct
                    score["cited"] += cited
                    score["refused_answerable"] += refused
                else:
                    score["refused_unanswerable"] += refused
                print(f"  [{method}/{qm}] {question!r} -> {answer.text[:160]!r}", flush=True)
            score["seconds"] = round(score["seconds"], 1)
            score["answerable"], score["unanswerable"] = len(qs["answerable"]), len(qs["unanswerable"])
            row["queries"][qm] = score
        out["methods"][method] = row
        rag.close()
    return out


def table(result: dict) -> str:
    """Markdown tables of one run."""
    lines = [
        "| method | entities | relationships | communities | reports | index s | s / 1k tokens | LLM calls |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in result["methods"].items():
        lines.append(
            f"| {name} ({r['method_used']}) | {r['entities']} | {r['relationships']} | {r['communities']} | "
            f"{r['reports']} | {r['index_s']} | {r['s_per_1k_tokens']} | {r['llm_calls']} |"
        )
    lines += [
        "",
        "| method | query | correct | cited | refused (answerable) | refused (unanswerable) | query s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in result["methods"].items():
        for qm, s in r["queries"].items():
            lines.append(
                f"| {name} | {qm} | {s['correct']}/{s['answerable']} | {s['cited']}/{s['answerable']} | "
                f"{s['refused_answerable']}/{s['answerable']} | {s['refused_unanswerable']}/{s['unanswerable']} | "
                f"{s['seconds']} |"
            )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--methods", default="nlp,llm", help="extraction methods ('default' = the config's default)"
    )
    ap.add_argument("--queries", default="local,global,drift", help="query methods to grade")
    ap.add_argument("--graphrag-src", type=Path, default=None, help="load xpullm.graphrag from this folder")
    ap.add_argument("--json", type=Path, default=None, help="also write the raw result here")
    ap.add_argument("--progress", action="store_true")
    args = ap.parse_args()
    if args.graphrag_src is not None:
        _load_graphrag_from(args.graphrag_src.resolve())
    result = run(args.methods.split(","), [q for q in args.queries.split(",") if q], args.progress)
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2))
    print(f"model load {result['model_load_s']} s; corpus {result['input_tokens']} tokens")
    print(table(result))


if __name__ == "__main__":
    main()
