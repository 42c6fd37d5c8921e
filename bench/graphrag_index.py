"""GraphRAG indexing benchmark: a slice of gensim's packaged Wikipedia sample through the default local model.

Measures wall time per stage, LLM calls and tokens, and engine throughput with and without prompt batching
(the cache is off so every call reaches the engine), then asks a few questions with basic / local / global search
and records the answers (reported, not judged). Writes `docs/benchmarks-graphrag.md`.

    .venv/bin/python bench/graphrag_index.py --articles 20 --chars 1500
"""

from __future__ import annotations

import argparse
import bz2
import dataclasses
import html
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
        text = _plain_text(body)
        if len(text) < 500 or title.startswith(("Wikipedia:", "Template:", "Category:")):
            continue
        cut = text[:chars]
        cut = cut[: cut.rfind(". ") + 1] or cut
        docs.append(f"{title}\n\n{cut}")
        if len(docs) == n:
            break
    return docs


_NESTED = (  # innermost first, repeated until none is left: templates, tables and links nest
    (re.compile(r"\{\{[^{}]*\}\}"), " "),
    (re.compile(r"\{\|(?:(?!\{\|).)*?\|\}", re.DOTALL), " "),
    (re.compile(r"\[\[(?!(?:File|Image|Category):)(?:[^\[\]|]*\|)?([^\[\]]*)\]\]"), r"\1"),
    (re.compile(r"\[\[(?:File|Image|Category):[^\[\]]*\]\]"), " "),
)


def _plain_text(wikitext: str) -> str:
    """Article prose from wiki markup: comments, references, templates, tables, files and markup removed."""
    text = html.unescape(html.unescape(wikitext))  # the dump escapes entities twice (&amp;nbsp;)
    text = re.sub(r"<!--.*?-->|<ref[^>]*/>|<ref.*?</ref>|<[^>]+>", " ", text, flags=re.DOTALL)
    for pattern, repl in _NESTED:
        while pattern.search(text):
            text = pattern.sub(repl, text)
    text = re.sub(r"\[https?://\S+\s*([^\]]*)\]", r"\1", text)
    text = re.sub(r"'{2,}|={2,}|^[*#:;]+", " ", text, flags=re.MULTILINE)
    return re.sub(r"\s+", " ", text).strip()


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


def compare_constrained(rag: GraphRAG, llm, n_units: int, max_new: int, batch_size: int) -> list[tuple]:
    """Extraction alone on the first `n_units` text units, with and without the tuple grammar (cache off)."""
    from xpullm.graphrag.cache import LLMCache
    from xpullm.graphrag.calls import LLMCaller
    from xpullm.graphrag.chunking import TextUnit
    from xpullm.graphrag.config import LLMConfig
    from xpullm.graphrag.extraction import extract_graph
    from xpullm.graphrag.stats import IndexStats

    table = rag.table("text_units").head(n_units)
    units = [TextUnit(r.id, r.text, int(r.n_tokens), r.document_ids[0], 0) for r in table.itertuples()]
    rows = []
    for constrained in (True, False):
        config = dataclasses.replace(
            rag.config.extract_graph, max_new_tokens=max_new, constrained=constrained
        )
        stats = IndexStats()
        caller = LLMCaller(llm, LLMCache(None, mode="off"), stats, LLMConfig(batch_size=batch_size))
        t0 = time.perf_counter()
        found = extract_graph(units, caller, config).values()
        seconds = time.perf_counter() - t0
        names = {e.name for r in found for e in r.entities}
        rows.append(
            (
                "on" if constrained else "off",
                sum(len(r.entities) for r in found),
                len(names),
                sum(len(r.relationships) for r in found),
                sum(r.malformed for r in found),
                sum(1 for r in found if not r.entities),
                stats.stage("extract_graph").completion_tokens,
                seconds,
                sorted(names)[:12],
            )
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--articles", type=int, default=20)
    ap.add_argument("--chars", type=int, default=1500, help="characters kept per article")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--batch-sizes", default="1,8")
    ap.add_argument(
        "--compare-units", type=int, default=4, help="text units extracted with and without the grammar"
    )
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
    compared = compare_constrained(rag, llm, args.compare_units, args.max_new_tokens, max(rows[-1][0], 1))
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
    totals = rows[-1][2]["totals"]
    calls = max(totals["llm_calls"], 1)
    lines += [
        "",
        "Completion tok/s = completion tokens / seconds of the LLM stages (extract, summarize, reports; prefill "
        f"included). Prompts average {totals['prompt_tokens'] / calls:.0f} tokens and answers "
        f"{totals['completion_tokens'] / calls:.0f}, so prefill weighs heavily.",
        "",
        f"Handled issues (last run): {rows[-1][2]['issues']}",
        "",
        f"Extraction alone on the first {args.compare_units} text units, with and without the tuple grammar "
        "(`extract_graph.constrained`):",
        "",
        "| grammar | entity records | distinct names | relationship records | malformed | units without entities | "
        "completion tok | s | names (first 12) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for mode, ents, distinct, rels, bad, empty, tok, secs, names in compared:
        shown = ", ".join(names).replace("|", "/")
        lines.append(
            f"| {mode} | {ents} | {distinct} | {rels} | {bad} | {empty} | {tok} | {secs:.1f} | {shown} |"
        )
    lines += [
        "",
        "| question | method | answer (first 300 chars) | records |",
        "|---|---|---|---|",
    ]
    for q, m, text, n in answers:
        lines.append(f"| {q} | {m} | {text.replace('|', '/')} | {n} |")
    out = Path(args.out)
    keep = ""  # sections other scripts append (graphrag_batching.py's) survive a re-run
    if out.exists() and "\n## Continuous batching" in out.read_text():
        keep = "\n## Continuous batching" + out.read_text().split("\n## Continuous batching", 1)[1]
    out.write_text("\n".join(lines) + "\n" + keep)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
