"""Retrieval quality and speed of a knowledge base built from the packaged Wikipedia sample.

QA set (built at run time, seeded): for each sampled article one sentence (10+ words, not the first) becomes the
question and is *removed* from the article before ingestion, so no chunk contains it verbatim: the retriever must
find the article from the rest of its content (inverse-cloze style). Answer = that article.

Reports hit@1 / hit@5 / MRR (document level) for vector-only, BM25-only, hybrid (weighted and RRF) and hybrid with
the default LLM as a yes/no reranker (on a subset, since every judgment is an LLM call); ingestion chunks/s; search
latency p50/p95 over the whole base (about 15k chunks with the default settings). Writes the `rag-quality` section of
docs/benchmarks-rag.md.

    python bench/rag_quality.py [--articles 1095] [--questions 200] [--chunk-tokens 48] [--rerank-questions 10]
"""

from __future__ import annotations

import argparse
import random
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # run with -P, the script's folder is not on sys.path
from rag_fragment import machine, wiki_articles, write_section

from xpullm.documents import split_sentences
from xpullm.rag import KBConfig, KnowledgeBase, LLMReranker


def build_qa(
    articles: list[tuple[str, str]], n: int, seed: int
) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """Returns (question, title) pairs and the article texts with each question sentence removed."""
    rng = random.Random(seed)
    texts = {title: body for title, body in articles}
    candidates = [t for t, b in articles if len(split_sentences(b)) >= 5]
    qa = []
    for title in rng.sample(candidates, min(n, len(candidates))):
        sentences = split_sentences(texts[title])
        pool = [s for s in sentences[1:] if len(s.split()) >= 10 and not s.endswith(":")]
        if not pool:
            continue
        question = rng.choice(pool)
        texts[title] = texts[title].replace(question, " ", 1)
        qa.append((question, title))
    return qa, texts


def score(
    kb: KnowledgeBase, qa: list[tuple[str, str]], top_k: int = 10, **search: object
) -> tuple[dict[str, float], list[float]]:
    hits1 = hits5 = rr = 0.0
    latencies = []
    for question, title in qa:
        t0 = time.perf_counter()
        hits = kb.search(question, top_k=top_k, **search)
        latencies.append(time.perf_counter() - t0)
        ranked = list(dict.fromkeys(h.document for h in hits))  # document-level ranking
        if ranked and ranked[0] == title:
            hits1 += 1
        if title in ranked[:5]:
            hits5 += 1
        if title in ranked:
            rr += 1 / (ranked.index(title) + 1)
    n = len(qa)
    return {"hit@1": hits1 / n, "hit@5": hits5 / n, "MRR": rr / n}, latencies


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) > 1 else values[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--articles", type=int, default=1095, help="how many wiki articles to index (1095 have text)"
    )
    ap.add_argument("--questions", type=int, default=200)
    ap.add_argument("--chunk-tokens", type=int, default=48, help="small chunks make the base 10k+ chunks")
    ap.add_argument(
        "--rerank-questions", type=int, default=10, help="0 skips the LLM reranker (10 LLM calls each)"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", default=None, help="build the base in this folder and keep it")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()

    articles = wiki_articles()[: args.articles]
    qa, texts = build_qa(articles, args.questions, args.seed)
    folder = Path(args.keep) if args.keep else Path(tempfile.mkdtemp()) / "kb"
    if folder.exists():
        shutil.rmtree(folder)
    kb = KnowledgeBase.create(
        folder, config=KBConfig(chunk_tokens=args.chunk_tokens, overlap_tokens=max(4, args.chunk_tokens // 6))
    )
    titles = list(texts)
    safe = [re.sub(r"[^\w\- ]", "_", t) + ".txt" for t in titles]
    report = kb.add(texts=[texts[t] for t in titles], names=safe, show_progress=True)
    # Titles were made file-name safe; map them back so hits compare with the QA answers.
    back = {s: t for s, t in zip(safe, titles, strict=True)}
    n_chunks = kb.check()["chunks"]
    print(report)

    class Titled:
        """Search wrapper that reports original article titles."""

        def __init__(self, inner: KnowledgeBase) -> None:
            self.inner = inner

        def search(self, q: str, **kw: object):
            from dataclasses import replace

            return [replace(h, document=back.get(h.document, h.document)) for h in self.inner.search(q, **kw)]

    base = Titled(kb)
    modes = {
        "vector only": {"vector_weight": 1.0},
        "BM25 only": {"vector_weight": 0.0},
        "hybrid (weighted 0.5)": {"vector_weight": 0.5},
        "hybrid (RRF)": {"vector_weight": 0.5, "fusion": "rrf"},
    }
    results, lat = {}, {}
    for name, kw in modes.items():
        results[name], lat[name] = score(base, qa, **kw)  # type: ignore[arg-type]
        print(name, results[name])
    sub = qa[: args.rerank_questions]
    rerank_rows = []
    if sub:
        from xpullm.engine import LLM

        reranker = LLMReranker(LLM())
        # The reranker judges 2 * top_k candidates with one LLM call each, so this uses top_k=5.
        plain, _ = score(base, sub, top_k=5, vector_weight=0.5)
        reranked, rlat = score(base, sub, top_k=5, vector_weight=0.5, rerank=reranker)
        rerank_rows = [
            f"| hybrid, first {len(sub)} questions, top 5 | {plain['hit@1']:.3f} | {plain['hit@5']:.3f} | "
            f"{plain['MRR']:.3f} | |",
            f"| hybrid + LLM rerank of the top 10 (SmolLM2-135M yes/no), same {len(sub)} | {reranked['hit@1']:.3f} | "
            f"{reranked['hit@5']:.3f} | {reranked['MRR']:.3f} | {pct(rlat, 50):.1f} s p50 |",
        ]
        print("rerank", plain, reranked)

    rows = [
        f"| {name} | {r['hit@1']:.3f} | {r['hit@5']:.3f} | {r['MRR']:.3f} | "
        f"{pct(lat[name], 50) * 1000:.1f} / {pct(lat[name], 95) * 1000:.1f} ms |"
        for name, r in results.items()
    ]
    md = "\n".join(
        [
            "## Knowledge-base retrieval quality and speed (`bench/rag_quality.py`)",
            "",
            f"Machine: {machine()}. Corpus: exllamav2's packaged `wiki.utf8`, {len(articles)} articles -> "
            f"{n_chunks} chunks ({args.chunk_tokens}-token `naive` chunks), embedder all-MiniLM-L6-v2 (xpullm fp32).",
            f"QA set: {len(qa)} questions, seed {args.seed}; each question is a sentence removed from its article "
            "before ingestion (inverse cloze), answer = that article; document-level hit@k over the top 10 chunks.",
            "",
            f"Ingestion: {report.chunks} chunks in {report.seconds:.0f} s = **{report.chunks_per_s:.1f} chunks/s** "
            "(parse + chunk + embed + SQLite/FTS5/FAISS writes).",
            "",
            "| retriever | hit@1 | hit@5 | MRR | search latency p50 / p95 |",
            "|---|---:|---:|---:|---:|",
            *rows,
            *rerank_rows,
            "",
            "Latency includes embedding the query on the CPU; FAISS is exact (flat) search.",
        ]
    )
    print(md)
    if not args.no_write:
        print("wrote", write_section("rag-quality", md))
    kb.close()


if __name__ == "__main__":
    main()
