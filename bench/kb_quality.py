"""Knowledge-base answer quality with the packaged model: correct, refused-when-unanswerable, hallucinated citations.

Corpus: eight short fictional articles about an invented coast (so the model cannot answer from memory) plus
`--distractors` articles of exllamav2's packaged Wikipedia sample. Questions: answerable ones (gold keywords, gold
article) and unanswerable in-topic ones (about the same places and people, asking for facts no article holds).

Per configuration (model format x answer-support check):
- correct: an answerable question answered (not refused) with a gold keyword in the text;
- refused: an unanswerable question refused;
- hallucinated citation: an answer that cites a source yet is wrong (unanswerable: any cited answer; answerable: a
  cited answer without a gold keyword).
Configurations, interleaved question by question in one run: "before" reproduces main at aba0b28 by options (the
packaged model re-quantized to sym_int4, no reranker, no support check); "after" is today's default (the
checkpoint's own asym_int4 and the support check; the EmbeddingReranker is opt-in and has its own rows); the rows
between change one thing at a time. The support check only post-processes the model's draft, so the rows with and
without it judge the same generations.
Reranking: gold-article hit@1 / MRR over the top 8 of hybrid search, without and with each reranker.

    python -P bench/kb_quality.py [--distractors 150] [--calibrate] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # run with -P, the script's folder is not on sys.path
from rag_fragment import machine, wiki_articles

ARTICLES = {
    "Varn Lighthouse": "The Varn Lighthouse stands on Kerrow Point, at the northern tip of the Orlen peninsula. It was "
    "first lit in 1873 and was designed by the engineer Alma Fenwick. Its lamp is painted cobalt blue and can be "
    "seen from 19 nautical miles. The tower is 31 metres tall and has 142 steps. Since 1994 the light has been "
    "automatic, and the keeper's cottage is now a small museum about shipwrecks on the Orlen coast.",
    "Kerrow Rye Bakery": "The Kerrow Rye Bakery was founded in 1921 by Marit Solgell, a baker from the inland town "
    "of Drumholt. The bakery is known for its caraway rye loaves, which are baked in a wood-fired oven every "
    "morning before five o'clock. Solgell's granddaughter Ines Solgell runs the bakery today. Once a year, on the "
    "first Sunday of October, the bakery holds a bread festival on the harbour square.",
    "Hestholm Ferry": "The Hestholm ferry connects the town of Kerrow with the island of Hestholm. In summer it "
    "crosses twice a day; in winter it sails only on Saturdays. The current vessel, the MV Tarnel, was built in "
    "2009 in a shipyard at Lorvik and carries up to 140 passengers and 12 cars. The crossing takes 55 minutes.",
    "Orlen Salt Marsh": "The Orlen Salt Marsh is a protected wetland south of Kerrow covering 840 hectares. It is "
    "the main wintering ground of the grey-winged plover, and about 3,000 birds arrive each November. The marsh "
    "became a nature reserve in 1968 after a campaign led by the teacher Per Vangsmo. Walkers may only use the "
    "wooden boardwalk, which is 4 kilometres long.",
    "Kerrow Harbour": "Kerrow Harbour was built in 1802 to shelter the herring fleet. Its stone breakwater is 410 "
    "metres long. The herring trade collapsed in the 1950s, and today the harbour serves mostly pleasure boats "
    "and the Hestholm ferry. The harbour master's office is in the old customs house, painted dark red.",
    "Drumholt Mill": "Drumholt Mill is a watermill on the river Sella, eight kilometres inland from Kerrow. It "
    "ground rye and barley from 1760 until 1958. The mill wheel has a diameter of 6 metres. After restoration in "
    "2003 by the Drumholt heritage society, the mill grinds flour again on open days, and its flour is sold to "
    "the Kerrow Rye Bakery.",
    "Kerrow Sea Festival": "The Kerrow Sea Festival takes place every July on the harbour front. It began in 1977 "
    "as a rowing race between the fishing crews of Kerrow and Hestholm. The race course runs from the breakwater "
    "to the Varn Lighthouse and back. The winning crew receives the Brass Oar, a trophy made from a ship's "
    "propeller.",
    "Orlen Coast Railway": "The Orlen Coast Railway ran from Lorvik to Kerrow between 1889 and 1961. The line was "
    "36 kilometres long and had seven stations. Its last steam locomotive, number 14, is kept in a shed next to "
    "Kerrow station, which now houses the town library.",
}

ANSWERABLE = [
    ("When was the Varn Lighthouse first lit?", ["1873"], "Varn Lighthouse"),
    ("Who designed the Varn Lighthouse?", ["Fenwick"], "Varn Lighthouse"),
    ("What colour is the lamp of the Varn Lighthouse?", ["cobalt", "blue"], "Varn Lighthouse"),
    ("How tall is the Varn Lighthouse?", ["31"], "Varn Lighthouse"),
    ("Who founded the Kerrow Rye Bakery?", ["Marit"], "Kerrow Rye Bakery"),
    ("What are the loaves of the Kerrow Rye Bakery known for?", ["caraway"], "Kerrow Rye Bakery"),
    ("Who runs the Kerrow Rye Bakery today?", ["Ines"], "Kerrow Rye Bakery"),
    ("How long does the Hestholm ferry crossing take?", ["55"], "Hestholm Ferry"),
    ("How many passengers can the MV Tarnel carry?", ["140"], "Hestholm Ferry"),
    ("Which bird winters in the Orlen Salt Marsh?", ["plover"], "Orlen Salt Marsh"),
    ("When did the Orlen Salt Marsh become a nature reserve?", ["1968"], "Orlen Salt Marsh"),
    ("How long is the breakwater of Kerrow Harbour?", ["410"], "Kerrow Harbour"),
    ("On which river is Drumholt Mill?", ["Sella"], "Drumholt Mill"),
    (
        "What is the prize of the Kerrow Sea Festival rowing race?",
        ["Brass Oar", "oar"],
        "Kerrow Sea Festival",
    ),
    ("When did the Orlen Coast Railway close?", ["1961"], "Orlen Coast Railway"),
    ("What building does Kerrow station house now?", ["library"], "Orlen Coast Railway"),
]

UNANSWERABLE = [
    "What is the population of Kerrow?",
    "Who is the mayor of Kerrow?",
    "How much does a ticket on the Hestholm ferry cost?",
    "What is the opening time of the Varn Lighthouse museum?",
    "How many employees does the Kerrow Rye Bakery have?",
    "What is the phone number of the Kerrow harbour master?",
    "Which company owns the MV Tarnel?",
    "How deep is the water in Kerrow Harbour?",
    "What is the price of a caraway rye loaf?",
    "Who won the Kerrow Sea Festival rowing race in 2019?",
    "What is the average rainfall in the Orlen Salt Marsh?",
    "Who was the last keeper of the Varn Lighthouse?",
]


def _has_gold(text: str, gold: list[str]) -> bool:
    return any(g.lower() in text.lower() for g in gold)


def build_kb(root: Path, distractors: int):
    from xpullm.rag import KnowledgeBase

    kb = KnowledgeBase.create(root / "kb")
    names = [re.sub(r"[^\w\- ]", "_", t) + ".txt" for t in ARTICLES]
    kb.add(texts=list(ARTICLES.values()), names=names, show_progress=False)
    wiki = wiki_articles()[:distractors]
    if wiki:
        kb.add(texts=[b for _, b in wiki], names=[re.sub(r"[^\w\- ]", "_", t)[:80] + ".txt" for t, _ in wiki])
    return kb


def _verdicts(answers: dict[str, object]) -> dict[str, float]:
    """Rates from {question: CitedAnswer} over both question sets."""
    correct = sum(
        1 for q, gold, _ in ANSWERABLE if not answers[q].refused and _has_gold(answers[q].text, gold)
    )  # type: ignore[attr-defined]
    wrong_cited = sum(
        1 for q, gold, _ in ANSWERABLE if answers[q].citations and not _has_gold(answers[q].text, gold)
    )  # type: ignore[attr-defined]
    refused = sum(1 for q in UNANSWERABLE if answers[q].refused)  # type: ignore[attr-defined]
    cited_unans = sum(1 for q in UNANSWERABLE if answers[q].citations)  # type: ignore[attr-defined]
    return {
        "correct": correct / len(ANSWERABLE),
        "answerable refused": sum(1 for q, _, _ in ANSWERABLE if answers[q].refused) / len(ANSWERABLE),  # type: ignore[attr-defined]
        "hallucinated citations (answerable)": wrong_cited / len(ANSWERABLE),
        "refused (unanswerable)": refused / len(UNANSWERABLE),
        "hallucinated citations (unanswerable)": cited_unans / len(UNANSWERABLE),
    }


GENERATIONS = {  # name: (LLM format, reranker on): each is one model draft per question
    "sym": ("sym_int4", False),
    "asym": ("asym_int4", False),
    "asym+rerank": ("asym_int4", True),
}
CONFIGS = [  # (row label, generation, support check on); "before" and "after" are the two ends
    ("before: sym_int4, no reranker, no support check", "sym", False),
    ("sym_int4 + support check", "sym", True),
    ("asym_int4 (checkpoint format), no reranker, no support check", "asym", False),
    ("after (default): asym_int4 + support check", "asym", True),
    ("asym_int4 + EmbeddingReranker, no support check", "asym+rerank", False),
    ("asym_int4 + EmbeddingReranker (opt-in) + support check", "asym+rerank", True),
]


def run_answers(kb, max_new_tokens: int, drafts: dict[str, str]) -> tuple[dict, dict]:
    """Every question under every generation, interleaved (question by question, the generations in turn, the
    order alternating), each draft judged with the support check off and on.

    Returns ({(generation, support on): {question: CitedAnswer}}, {generation: seconds per question}).
    `drafts` maps prompts to the model's text: filled as the model answers, replayed when already there
    (`--drafts FILE` keeps them, so the support check can be re-scored without generating again).
    """
    from xpullm.engine import LLM
    from xpullm.rag import EmbeddingReranker
    from xpullm.rag.support import SupportConfig

    llms = {fmt: LLM(low_bit=fmt, device="cpu") for fmt, _ in GENERATIONS.values()}
    reranker = EmbeddingReranker(kb.embed_texts)

    class Replay:
        """The same generation judged twice (check off / on): the model runs once per question."""

        def __init__(self, fmt: str) -> None:
            self.fmt = fmt

        def chat(self, messages, **params):
            key = f"{self.fmt}\n{messages[-1]['content']}"
            if key not in drafts:
                drafts[key] = llms[self.fmt].chat(messages, **params).text
            return type("Completion", (), {"text": drafts[key]})()

    questions = [q for q, _, _ in ANSWERABLE] + UNANSWERABLE
    answers: dict = {(g, on): {} for g in GENERATIONS for on in (False, True)}
    seconds = dict.fromkeys(GENERATIONS, 0.0)
    for i, q in enumerate(questions):
        order = list(GENERATIONS) if i % 2 == 0 else list(GENERATIONS)[::-1]
        for g in order:
            fmt, rerank = GENERATIONS[g]
            kw = {"llm": Replay(fmt), "max_new_tokens": max_new_tokens}
            if rerank:
                kw["rerank"] = reranker
            t0 = time.perf_counter()
            answers[(g, False)][q] = kb.ask(q, support=SupportConfig(enabled=False), **kw)
            seconds[g] += time.perf_counter() - t0
            answers[(g, True)][q] = kb.ask(q, **kw)
            print(
                f"[{g}] {q}\n   draft: {answers[(g, False)][q].text[:160]!r}\n"
                f"   checked: {answers[(g, True)][q].text[:160]!r}",
                flush=True,
            )
    return answers, {g: s / len(questions) for g, s in seconds.items()}


def calibrate(answers: dict) -> list[tuple[float, bool]]:
    """(support score, label) of every sentence of the drafts: supported = answerable and holds a gold keyword."""
    gold = {q: g for q, g, _ in ANSWERABLE}
    out = []
    for q, a in answers.items():
        for s in a.support:
            label = q in gold and _has_gold(s.sentence, gold[q]) and not s.missing
            out.append((s.score, label))
    return out


def rerank_table(kb, llm_fmt: str, llm_questions: int) -> list[str]:
    from xpullm.engine import LLM
    from xpullm.rag import EmbeddingReranker, LLMReranker

    titles = {re.sub(r"[^\w\- ]", "_", t) + ".txt": t for t in ARTICLES}
    llm = LLM(low_bit=llm_fmt, device="cpu")

    class Verdict(LLMReranker):
        """The old reranker: the generated yes/no word."""

        def rerank(self, query, hits):
            v = [self.judge(query, h) for h in hits]
            return [h for h, y in zip(hits, v, strict=True) if y] + [
                h for h, y in zip(hits, v, strict=True) if not y
            ]

    rerankers = {
        "hybrid (no reranker)": None,
        "+ EmbeddingReranker (best sentence)": EmbeddingReranker(kb.embed_texts),
        f"hybrid, first {llm_questions} questions": "subset",
        "+ LLMReranker, generated yes/no (before)": Verdict(llm),
        "+ LLMReranker, logit margin (after)": LLMReranker(llm),
    }
    rows = []
    for name, rr in rerankers.items():
        h1 = mrr = 0.0
        moved = 0
        t0 = time.perf_counter()
        subset = isinstance(rr, LLMReranker) or rr == "subset"
        questions = ANSWERABLE[:llm_questions] if subset else ANSWERABLE
        rr = None if rr == "subset" else rr
        for q, _, gold in questions:
            first = kb.search(q, top_k=8)
            hits = kb.search(q, top_k=8, rerank=rr) if rr else first
            moved += [h.chunk_id for h in hits] != [h.chunk_id for h in first]
            docs = [titles.get(h.document, h.document) for h in hits]
            if gold in docs:
                rank = docs.index(gold) + 1
                h1 += rank == 1
                mrr += 1 / rank
        n = len(questions)
        per_q = (time.perf_counter() - t0) / n
        rows.append(f"| {name} | {h1 / n:.3f} | {mrr / n:.3f} | {moved}/{n} | {per_q:.2f} s |")
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--distractors", type=int, default=150, help="Wikipedia articles added as distractors")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--rerank-questions", type=int, default=8, help="questions for the LLM rerankers (slow)")
    ap.add_argument(
        "--questions", type=int, default=0, help="use only the first N of each question set (0: all)"
    )
    ap.add_argument(
        "--drafts", type=Path, default=None, help="JSON file of the model's drafts (read, then updated)"
    )
    ap.add_argument(
        "--no-rerank", action="store_true", help="skip the reranking table (re-scoring saved drafts)"
    )
    ap.add_argument("--calibrate", action="store_true", help="print the support-score threshold sweep")
    ap.add_argument("--no-write", action="store_true", help="print the table instead of writing docs/rag.md")
    args = ap.parse_args()
    if args.questions:  # every 2nd question first, so a short run still covers every article
        global ANSWERABLE, UNANSWERABLE
        ANSWERABLE = (ANSWERABLE[::2] + ANSWERABLE[1::2])[: args.questions]
        UNANSWERABLE = (UNANSWERABLE[::2] + UNANSWERABLE[1::2])[: args.questions]
    root = Path(tempfile.mkdtemp(prefix="kb_quality_"))
    try:
        kb = build_kb(root, args.distractors)
        rows, scores = [], []
        drafts = json.loads(args.drafts.read_text()) if args.drafts and args.drafts.exists() else {}
        answers, per_q = run_answers(kb, args.max_new_tokens, drafts)
        if args.drafts:
            args.drafts.write_text(json.dumps(drafts, indent=1))
        for label, g, on in CONFIGS:
            r = _verdicts(answers[(g, on)])
            rows.append(
                f"| {label} | {r['correct']:.0%} | {r['answerable refused']:.0%} | "
                f"{r['hallucinated citations (answerable)']:.0%} | {r['refused (unanswerable)']:.0%} | "
                f"**{r['hallucinated citations (unanswerable)']:.0%}** | {per_q[g]:.1f} s |"
            )
            print(rows[-1], flush=True)
        for g in GENERATIONS:
            scores += calibrate(answers[(g, True)])
        if args.calibrate:
            for t in [x / 20 for x in range(4, 16)]:
                acc = sum((s >= t) == lab for s, lab in scores) / max(len(scores), 1)
                print(f"threshold {t:.2f}: sentence accuracy {acc:.3f} over {len(scores)} sentences")
        rerank_rows = [] if args.no_rerank else rerank_table(kb, "asym_int4", args.rerank_questions)
        n_chunks = kb.check()["chunks"]
        kb.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    md = "\n".join(
        [
            "<!-- kb-quality:start (written by bench/kb_quality.py) -->",
            f"Machine: {machine()} (shared with other jobs: noisy timings). Packaged SmolLM2-135M-Instruct, greedy, "
            f"{args.max_new_tokens} new tokens; embedder all-MiniLM-L6-v2. Base: 8 fictional articles + "
            f"{args.distractors} Wikipedia distractors ({n_chunks} chunks). {len(ANSWERABLE)} answerable and "
            f"{len(UNANSWERABLE)} unanswerable in-topic questions (`bench/kb_quality.py`).",
            "",
            "| configuration | correct | answerable refused | hallucinated citations (answerable) | "
            "refused (unanswerable) | hallucinated citations (unanswerable) | s / question |",
            "|---|---:|---:|---:|---:|---:|---:|",
            *rows,
            "",
            "Reranking the top 8 hybrid hits (gold article of the answerable questions):",
            "",
            f"LLM rerankers on the first {args.rerank_questions} questions (one LLM pass per hit).",
            "",
            "| retrieval | hit@1 | MRR | order changed | time / question |",
            "|---|---:|---:|---:|---:|",
            *rerank_rows,
            "<!-- kb-quality:end -->",
        ]
    )
    print(md)
    if not args.no_write:
        doc = Path(__file__).resolve().parent.parent / "docs" / "rag.md"
        text = doc.read_text(encoding="utf-8")
        block = re.compile(r"<!-- kb-quality:start.*?<!-- kb-quality:end -->", re.S)
        doc.write_text(
            block.sub(lambda _m: md, text) if block.search(text) else text.rstrip() + "\n\n" + md + "\n"
        )
        print("wrote", doc)


if __name__ == "__main__":
    main()
