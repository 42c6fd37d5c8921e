"""GraphRAG indexing benchmark: a slice of gensim's packaged Wikipedia sample through the default local model.

Measures wall time per stage, LLM calls and tokens, and engine throughput with and without prompt batching
(the cache is off so every call reaches the engine), then asks a few questions with basic / local / global search
and records the answers (reported, not judged). Writes `docs/benchmarks-graphrag.md`.

    .venv/bin/python bench/graphrag_index.py --articles 20 --chars 1500
"""

from __future__ import annotations

import argparse
import bz2
import importlib.util
import platform
import re
import tempfile
import time
from pathlib import Path

from xpullm.graphrag import GraphRAG, GraphRAGConfig

QUESTIONS = ["What are the main topics of these articles?", "Who is mentioned most often, and why?"]


def wikipedia_slice(n: int, chars: int) -> list[str]:
    """The first `n` articles of gensim's sample, markup stripped, each cut at a sentence end near `chars`."""
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(
            "install gensim (`pip install gensim`): it ships the Wikipedia sample this bench reads"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "test" / "test_data"
    with bz2.open(
        folder / "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2", "rt"
    ) as fh:
        raw = fh.read()
    docs = []
    for title, body in re.findall(r"<title>(.*?)</title>.*?<text[^>]*>(.*?)</text>", raw, re.DOTALL):
        text = re.sub(r"\{\{.*?\}\}|<ref.*?</ref>|<[^>]+>|'''?|==+", " ", body, flags=re.DOTALL)
        text = re.sub(r"\[\[(?:[^|\]]*\|)?([^\]]*)\]\]", r"\1", text)
        text = re.sub(r"&[a-z]+;|\[http\S+[^\]]*\]", " ", text)
        text = re.sub(r"\s+", " ", text).strip()
        if len(text) < 500 or title.startswith(("Wikipedia:", "Template:", "Category:")):
            continue
        cut = text[:chars]
        cut = cut[: cut.rfind(". ") + 1] or cut
        docs.append(f"{title}\n\n{cut}")
        if len(docs) == n:
            break
    return docs


def run(docs: list[str], llm, embedder, batch_size: int, max_new: int, root: Path) -> tuple[GraphRAG, dict]:
    config = GraphRAGConfig().replace(
        llm={"batch_size": batch_size},
        extract_graph={"max_gleanings": 0, "max_new_tokens": max_new},
        summarize_descriptions={"max_new_tokens": max_new // 2},
        community_reports={"max_new_tokens": max_new * 2, "max_retries": 1},
        query={"max_new_tokens": max_new},
        cache={"mode": "off"},
        progress=False,
    )
    rag = GraphRAG(root, llm=llm, embedder=embedder, config=config)
    t0 = time.perf_counter()
    result = rag.index(docs)
    return rag, {"wall_s": time.perf_counter() - t0, "result": result}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--articles", type=int, default=20)
    ap.add_argument("--chars", type=int, default=1500, help="characters kept per article")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--batch-sizes", default="1,8")
    ap.add_argument(
        "--out", default=str(Path(__file__).resolve().parents[1] / "docs" / "benchmarks-graphrag.md")
    )
    args = ap.parse_args()

    from xpullm.embeddings import Embedder
    from xpullm.engine import LLM

    llm, embedder = LLM(), Embedder()
    docs = wikipedia_slice(args.articles, args.chars)
    rows, answers, last = [], [], None
    for bs in (int(b) for b in args.batch_sizes.split(",")):
        rag, run_info = run(
            docs, llm, embedder, bs, args.max_new_tokens, Path(tempfile.mkdtemp(prefix="grbench-"))
        )
        stats = run_info["result"].stats
        llm_s = sum(
            s["seconds"]
            for k, s in stats["stages"].items()
            if k in ("extract_graph", "summarize_descriptions", "community_reports")
        )
        tok = stats["totals"]["completion_tokens"]
        rows.append((bs, run_info["wall_s"], stats, tok / llm_s if llm_s else 0.0))
        last = (rag, run_info["result"])
    rag, result = last
    for q in QUESTIONS:
        for method in ("basic", "local", "global"):
            a = rag.query(q, method=method)
            answers.append((q, method, " ".join(a.text.split())[:300], len(a.context)))

    lines = [
        "## GraphRAG indexing (`bench/graphrag_index.py`)",
        "",
        f"Machine: {platform.processor() or platform.machine()}, model `{llm.model_name}` (default, sym_int4), "
        f"embedder `{embedder.model_name}`. Corpus: {len(docs)} articles of gensim's Wikipedia sample, "
        f"{args.chars} characters each; gleaning 0, max_new_tokens {args.max_new_tokens}; cache off.",
        "",
        f"Graph: {result.text_units} text units, {result.entities} entities, {result.relationships} relationships, "
        f"{result.communities} communities.",
        "",
        "| batch size | wall s | chunk | extract | summarize | cluster | reports | embed | LLM calls | prompt tok | "
        "completion tok | completion tok/s (LLM stages) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for bs, wall, stats, tps in rows:
        st = stats["stages"]

        def sec(name: str, st: dict = st) -> str:
            return f"{st[name]['seconds']:.1f}"

        lines.append(
            f"| {bs} | {wall:.1f} | {sec('chunk')} | {sec('extract_graph')} | {sec('summarize_descriptions')} | "
            f"{sec('cluster_graph')} | {sec('community_reports')} | {sec('embeddings')} | "
            f"{stats['totals']['llm_calls']} | {stats['totals']['prompt_tokens']} | "
            f"{stats['totals']['completion_tokens']} | {tps:.1f} |"
        )
    lines += [
        "",
        f"Handled issues (last run): {rows[-1][2]['issues']}",
        "",
        "| question | method | answer (first 300 chars) | records |",
        "|---|---|---|---|",
    ]
    for q, m, text, n in answers:
        lines.append(f"| {q} | {m} | {text.replace('|', '/')} | {n} |")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
