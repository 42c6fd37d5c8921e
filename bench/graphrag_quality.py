"""GraphRAG graph size, index speed and graded answers, before vs after, on invented articles and on Wikipedia.

Corpus: tests/graphrag/data/articles (10 short invented articles about Kestrel Falls, so no model can answer from
memory) with the questions in tests/graphrag/data/articles_questions.json. `--wiki N` also indexes the first N
articles of exllamav2's packaged Wikipedia sample (graph size and speed only: no gold answers there).

Profiles (one loaded model per format, so both run in this process, interleaved):
- before: the packaged model re-quantized to `sym_int4` (main's old default) and LLM extraction (the old default
  method);
- after: the checkpoint's own format (`asym_int4` for the Q4_1 GGUF, the default now) and `method: auto` (the NLP
  extraction for a 135M model); `llm` (asym_int4 + LLM extraction) and `nlp-sym` are there to separate the causes.

Grading, automatic, per answer (written down so anyone can re-grade from `--json`):
- correct: not refused, and every expected phrase of the question occurs in the answer (case-insensitive);
- cited: carries a `[Data: ... (n ...)]` reference with at least one id;
- refused: the answer's `refused` flag, or a refusal sentence ("no information", "not mention", "cannot know",
  "No community report held ...");
- answerable: the 6 cross-document questions (each needs two articles) and 2 global questions; unanswerable: 2
  in-topic questions the articles do not answer and 2 off-topic ones: each should be refused, and a cited answer
  to one counts as a hallucinated citation.
Queries of one (profile, method) run concurrently through the engine (greedy output does not depend on the batch);
the answer budget is `--max-new-tokens` (200 by default, for both profiles: a 135M model's answers are shorter).

    .venv/bin/python -P bench/graphrag_quality.py --profiles before,after --wiki 10 --json /tmp/gq.json
    .venv/bin/python -P bench/graphrag_quality.py --profiles after --queries local,global
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # run with -P: the script's folder is not on sys.path

DATA = Path(__file__).resolve().parent.parent / "tests" / "graphrag" / "data"
ARTICLES = DATA / "articles"
QUESTIONS = DATA / "articles_questions.json"
PROFILES = {  # name: (LLM format, extraction method)
    "before": ("sym_int4", "llm"),
    "after": (None, "auto"),
    "llm": (None, "llm"),
    "nlp-sym": ("sym_int4", "nlp"),
}
_REFUSAL = re.compile(
    r"no information|no community report held|not (?:contain|mention|provide|include)|(?:do not|don't|cannot) know",
    re.IGNORECASE,
)
_CITED = re.compile(r"\[Data:[^\]]*\(\s*\d")


def grade(text: str, refused_flag: bool, expect: list[str]) -> dict[str, bool]:
    """The automatic grade of one answer (see the module docstring)."""
    refused = refused_flag or bool(_REFUSAL.search(text))
    correct = bool(expect) and all(e.lower() in text.lower() for e in expect) and not refused
    return {"correct": correct, "cited": bool(_CITED.search(text)), "refused": refused}


def _config(method: str, max_new_tokens: int):
    from xpullm.graphrag import GraphRAGConfig

    return GraphRAGConfig().replace(
        progress=False,
        cache={"mode": "off"},
        extract_graph={"method": method},
        query={"max_new_tokens": max_new_tokens},
    )


def _wiki_texts(n: int, chars: int) -> list[str]:
    from rag_fragment import wiki_articles

    out = []
    for title, body in wiki_articles():
        if len(body) < chars // 2:
            continue
        cut = body[:chars]
        out.append(f"{title}\n\n{cut[: cut.rfind('. ') + 1] or cut}")
        if len(out) == n:
            break
    return out


def index(rag, inputs, n_tokens: int) -> dict:
    """Index `inputs`; graph size, seconds, seconds per 1k input tokens, LLM calls."""
    t0 = time.perf_counter()
    res = rag.index(inputs)
    seconds = time.perf_counter() - t0
    stages = res.stats["stages"]
    return {
        "entities": res.entities,
        "relationships": res.relationships,
        "communities": res.communities,
        "reports": res.community_reports,
        "index_s": round(seconds, 1),
        "s_per_1k_tokens": round(seconds / n_tokens * 1000, 1),
        "llm_calls": res.stats["totals"]["llm_calls"],
        "stage_s": {k: round(v["seconds"], 1) for k, v in stages.items() if v["seconds"] >= 0.1},
        "method_used": res.stats.get("info", {}).get("extraction_method", "?"),
    }


def index_corpus(
    out: dict, corpus: str, texts: list[str], inputs, profile: str, llms, embedder, tok, max_new: int
):
    """Index one corpus with one profile into a fresh project; the row goes into `out`; returns the project."""
    from xpullm.graphrag import GraphRAG

    fmt, method = PROFILES[profile]
    c = out["corpora"].setdefault(corpus, {"rows": {}})
    c["input_tokens"] = sum(tok.count_tokens(t) for t in texts)
    c["bytes"] = sum(len(t.encode()) for t in texts)
    root = Path(tempfile.mkdtemp(prefix=f"graphrag-quality-{profile}-"))
    rag = GraphRAG(root, llm=llms[fmt], embedder=embedder, config=_config(method, max_new))
    c["rows"][profile] = index(rag, inputs, c["input_tokens"]) | {"root": str(root)}
    print(f"[{corpus}/{profile}] {json.dumps(c['rows'][profile])}", flush=True)
    return rag


def ask_all(rag, method: str, items: list[tuple[str, list[str], bool]], workers: int) -> tuple[list, float]:
    """Every question with one query method, `workers` at a time; (graded rows, wall seconds)."""

    def one(item):
        question, expect, answerable = item
        ans = rag.query(question, method=method)
        g = grade(ans.text, bool(ans.details.get("refused")), expect)
        return {"question": question, "answerable": answerable, "answer": ans.text, **g}

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        rows = list(pool.map(one, items))
    return rows, time.perf_counter() - t0


def summarize(rows: list[dict]) -> dict:
    ans = [r for r in rows if r["answerable"]]
    una = [r for r in rows if not r["answerable"]]
    return {
        "correct": sum(r["correct"] for r in ans),
        "cited": sum(r["cited"] and not r["refused"] for r in ans),
        "refused_answerable": sum(r["refused"] for r in ans),
        "refused_unanswerable": sum(r["refused"] for r in una),
        "hallucinated_citations_unanswerable": sum(r["cited"] and not r["refused"] for r in una),
        "answerable": len(ans),
        "unanswerable": len(una),
    }


def run(
    profiles: list[str],
    queries: list[str],
    wiki: int,
    wiki_chars: int,
    max_new: int,
    workers: int,
    reuse: dict[str, Path] | None = None,
    reuse_json: Path | None = None,
) -> dict:
    from xpullm.embeddings import Embedder
    from xpullm.engine import LLM

    qs = json.loads(QUESTIONS.read_text())
    items = [(q["question"], q["expect"], True) for q in qs["answerable"] + qs.get("global", [])]
    items += [(q, [], False) for q in qs["unanswerable"]]
    embedder = Embedder(device="cpu")
    llms: dict = {}
    for p in profiles:
        fmt = PROFILES[p][0]
        if fmt not in llms:
            llms[fmt] = LLM(low_bit=fmt) if fmt else LLM()
            llms[fmt].count_tokens("load")
    tok = next(iter(llms.values()))
    out: dict = {"corpora": {}, "answers": {}, "scores": {}}
    articles = [p.read_text() for p in sorted(ARTICLES.glob("*.txt"))]
    if reuse:  # query an earlier run's indexes (their rows come from that run's --json)
        from xpullm.graphrag import GraphRAG

        out["corpora"] = json.loads(reuse_json.read_text())["corpora"] if reuse_json else {}
        rags = {
            p: GraphRAG(
                reuse[p], llm=llms[PROFILES[p][0]], embedder=embedder, config=_config(PROFILES[p][1], max_new)
            )
            for p in profiles
        }
    else:
        rags = {
            p: index_corpus(out, "articles", articles, ARTICLES, p, llms, embedder, tok, max_new)
            for p in profiles
        }
    for qm in queries:  # interleaved: every profile answers with one method before the next method starts
        for p in profiles:
            rows, wall = ask_all(rags[p], qm, items, workers)
            for r in rows:
                print(
                    f"  [{p}/{qm}] {r['question']!r} -> {r['answer'][:200]!r} {r['correct'], r['cited'], r['refused']}"
                )
            out["answers"][f"{p}/{qm}"] = rows
            out["scores"][f"{p}/{qm}"] = summarize(rows) | {"s_per_question": round(wall / len(rows), 1)}
            print(f"[{p}/{qm}] {out['scores'][f'{p}/{qm}']}", flush=True)
    if wiki:  # graph size and speed only (no gold answers), after the graded part
        texts = _wiki_texts(wiki, wiki_chars)
        for p in profiles:
            index_corpus(out, f"wikipedia x{wiki}", texts, texts, p, llms, embedder, tok, max_new).close()
    for rag in rags.values():
        rag.close()
    return out


def table(result: dict) -> str:
    """Markdown tables of one run."""
    lines = [
        "| corpus | profile | method used | entities | relationships | communities | reports | index s | "
        "s / 1k tokens | LLM calls |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for corpus, c in result["corpora"].items():
        for p, r in c["rows"].items():
            lines.append(
                f"| {corpus} ({c['input_tokens']} tokens) | {p} | {r['method_used']} | {r['entities']} | "
                f"{r['relationships']} | {r['communities']} | {r['reports']} | {r['index_s']} | "
                f"{r['s_per_1k_tokens']} | {r['llm_calls']} |"
            )
    lines += [
        "",
        "| profile / query | correct | cited | refused (answerable) | refused (unanswerable) | "
        "hallucinated citations (unanswerable) | s / question |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, s in result["scores"].items():
        a, u = s["answerable"], s["unanswerable"]
        lines.append(
            f"| {name} | {s['correct']}/{a} | {s['cited']}/{a} | {s['refused_answerable']}/{a} | "
            f"{s['refused_unanswerable']}/{u} | {s['hallucinated_citations_unanswerable']}/{u} | "
            f"{s['s_per_question']} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profiles", default="before,after", help=f"comma list of {', '.join(PROFILES)}")
    ap.add_argument("--queries", default="local,global,drift", help="query methods to grade")
    ap.add_argument(
        "--wiki", type=int, default=0, help="also index this many Wikipedia articles (no grading)"
    )
    ap.add_argument("--wiki-chars", type=int, default=1500, help="characters kept per Wikipedia article")
    ap.add_argument("--max-new-tokens", type=int, default=200, help="answer budget of every query")
    ap.add_argument("--workers", type=int, default=6, help="questions in flight at once")
    ap.add_argument("--json", type=Path, default=None, help="also write the raw result (every answer) here")
    ap.add_argument("--reuse", default="", help="profile=DIR,...: query these projects instead of indexing")
    ap.add_argument("--reuse-json", type=Path, default=None, help="the --json of the run that indexed them")
    args = ap.parse_args()
    reuse = dict(item.split("=", 1) for item in args.reuse.split(",") if item) or None
    result = run(
        args.profiles.split(","),
        [q for q in args.queries.split(",") if q],
        args.wiki,
        args.wiki_chars,
        args.max_new_tokens,
        args.workers,
        {k: Path(v) for k, v in reuse.items()} if reuse else None,
        args.reuse_json,
    )
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2))
    print(table(result))


if __name__ == "__main__":
    main()
