"""Re-record `transcript.jsonl`: the answers a capable model gives to the prompts the pipeline builds for this corpus.

The answers are authored here by hand (records per sentence, reports and query answers from the context the
prompt shows), including deliberate failures the pipeline must survive: a broken tuple, a self-loop, records
without the record delimiter, an empty gleaning answer, an empty summary, a report that is not JSON on the first
try, a fenced report with a trailing comma, and a global map answer that is not JSON.

Run after changing prompts, settings.yaml or the corpus:
    .venv/bin/python tests/graphrag/data/author_transcript.py
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from xpullm.graphrag import GraphRAG, GraphRAGConfig
from xpullm.graphrag.prompts import EXTRACT_CONTINUE, EXTRACT_LOOP_CHECK
from xpullm.graphrag.transcript import Completion, approx_token_count

HERE = Path(__file__).parent
MODEL = "recorded-capable-model"
QUESTIONS = json.loads((HERE / "questions.json").read_text())
TD, RD, CD = "<|>", "##", "<|COMPLETE|>"


def E(name: str, kind: str, desc: str) -> str:
    return f'("entity"{TD}{name}{TD}{kind}{TD}{desc})'


def R(src: str, tgt: str, desc: str, strength: int) -> str:
    return f'("relationship"{TD}{src}{TD}{tgt}{TD}{desc}{TD}{strength})'


# Records a capable model writes for each sentence (trigger phrase -> records).
SENTENCES: list[tuple[str, list[str]]] = [
    ("run by the Velmora Harbor Authority", [
        E("PORT OF VELMORA", "geo", "The Port of Velmora is the harbor of Velmora, run by the Velmora Harbor Authority"),
        E("VELMORA HARBOR AUTHORITY", "organization", "The Velmora Harbor Authority runs the Port of Velmora"),
        E("VELMORA", "geo", "Velmora is a city with a port run by the Velmora Harbor Authority"),
        R("VELMORA HARBOR AUTHORITY", "PORT OF VELMORA", "The Velmora Harbor Authority runs the Port of Velmora", 9),
        R("PORT OF VELMORA", "VELMORA", "The Port of Velmora is the harbor of Velmora", 7),
    ]),
    ("Ines Caldera, opened", [
        E("INES CALDERA", "person", "Ines Caldera is the director of the Velmora Harbor Authority and opened the North Pier in 2019"),
        E("NORTH PIER", "geo", "The North Pier is a pier of the Port of Velmora, opened in 2019 after six years of planning"),
        R("INES CALDERA", "VELMORA HARBOR AUTHORITY", "Ines Caldera is the director of the Velmora Harbor Authority", 9),
        R("INES CALDERA", "NORTH PIER", "Ines Caldera opened the North Pier in 2019", 8),
        R("NORTH PIER", "PORT OF VELMORA", "The North Pier is part of the Port of Velmora", 8),
    ]),
    ("handles grain shipped by", [
        E("TALLIS GRAIN COMPANY", "organization", "The Tallis Grain Company ships grain through the North Pier"),
        R("TALLIS GRAIN COMPANY", "NORTH PIER", "The North Pier handles grain shipped by the Tallis Grain Company", 7),
    ]),
    ("founded by Omar Tallis", [
        E("OMAR TALLIS", "person", "Omar Tallis founded the grain company, grew up in Velmora and keeps his office near the harbor"),
        R("OMAR TALLIS", "VELMORA", "Omar Tallis grew up in Velmora and keeps his office near its harbor", 5),
    ]),
    ("Lantern Festival fills", [
        E("LANTERN FESTIVAL", "event", "The Lantern Festival fills the old town of Velmora with paper lanterns and music every spring"),
        E("VELMORA", "geo", "Velmora is a city whose old town hosts the Lantern Festival every spring"),
        R("LANTERN FESTIVAL", "VELMORA", "The Lantern Festival takes place in Velmora every spring", 8),
    ]),
    ("chaired by Mira Okoye", [
        E("VELMORA ARTS COUNCIL", "organization", "The Velmora Arts Council organises the Lantern Festival"),
        E("MIRA OKOYE", "person", "Mira Okoye chairs the Velmora Arts Council"),
        R("VELMORA ARTS COUNCIL", "LANTERN FESTIVAL", "The Velmora Arts Council organises the Lantern Festival", 9),
        R("MIRA OKOYE", "VELMORA ARTS COUNCIL", "Mira Okoye chairs the Velmora Arts Council", 9),
    ]),
    ("moved to the North Pier", [
        E("LANTERN FESTIVAL", "event", "In 2022 the Lantern Festival moved to the North Pier while the old town square was repaired"),
        E("NORTH PIER", "geo", "The North Pier hosted the Lantern Festival in 2022"),
        R("LANTERN FESTIVAL", "NORTH PIER", "The Lantern Festival moved to the North Pier in 2022", 8),
    ]),
    ("thanked Ines Caldera", [
        E("MIRA OKOYE", "person", "Mira Okoye thanked Ines Caldera for lending the North Pier to the festival"),
        E("INES CALDERA", "person", "Ines Caldera lent the North Pier to the Lantern Festival"),
        R("MIRA OKOYE", "INES CALDERA", "Mira Okoye thanked Ines Caldera for lending the pier to the festival", 6),
    ]),
    ("Sable River flows", [
        "Here are the records:",
        E("SABLE RIVER", "geo", "The Sable River flows past Velmora into the Grey Bay"),
        E("GREY BAY", "geo", "The Grey Bay is the bay the Sable River flows into"),
        '("entity"<|>GREY BAY)',  # broken: no type, no description
        R("SABLE RIVER", "GREY BAY", "The Sable River flows into the Grey Bay", 8),
        R("SABLE RIVER", "VELMORA", "The Sable River flows past Velmora", 7),
        R("SABLE RIVER", "SABLE RIVER", "The river is the river", 1),  # self-loop
    ]),
    ("led by the hydrologist", [
        E("SABLE RIVER TRUST", "organization", "The Sable River Trust measures the Sable River and warns the city about floods"),
        E("TEODOR BRANDT", "person", "Teodor Brandt is a hydrologist who leads the Sable River Trust"),
        R("TEODOR BRANDT", "SABLE RIVER TRUST", "Teodor Brandt leads the Sable River Trust", 9),
        R("SABLE RIVER TRUST", "SABLE RIVER", "The Sable River Trust measures the Sable River", 8),
    ]),
    ("dredging near the North Pier", [
        E("TEODOR BRANDT", "person", "Teodor Brandt warned that dredging near the North Pier could raise the flood risk"),
        R("TEODOR BRANDT", "VELMORA HARBOR AUTHORITY", "Teodor Brandt warned the Velmora Harbor Authority about flood risk from dredging", 7),
        R("TEODOR BRANDT", "NORTH PIER", "Teodor Brandt warned that dredging near the North Pier could raise the flood risk", 6),
    ]),
    ("Coastline Railway connects", [
        E("COASTLINE RAILWAY", "organization", "The Coastline Railway connects Velmora with Dunmere and carries grain to the North Pier"),
        E("DUNMERE", "geo", "Dunmere is an inland city connected to Velmora by the Coastline Railway"),
        E("TALLIS GRAIN COMPANY", "organization", "The Tallis Grain Company moves most of its grain from Dunmere to the North Pier by rail"),
        R("COASTLINE RAILWAY", "VELMORA", "The Coastline Railway connects to Velmora", 7),
        R("COASTLINE RAILWAY", "DUNMERE", "The Coastline Railway connects to Dunmere", 7),
        R("TALLIS GRAIN COMPANY", "COASTLINE RAILWAY", "The Tallis Grain Company moves grain on the Coastline Railway", 8),
    ]),
    ("Lea Voss", [
        E("LEA VOSS", "person", "Lea Voss is the chief engineer of the Coastline Railway and plans a second track"),
        R("LEA VOSS", "COASTLINE RAILWAY", "Lea Voss is the chief engineer of the Coastline Railway", 9),
    ]),
]  # fmt: skip

GLEANED = {  # what a second look at a unit adds
    "handles grain shipped by": [
        R(
            "TALLIS GRAIN COMPANY",
            "PORT OF VELMORA",
            "The Tallis Grain Company ships grain through the Port of Velmora",
            5,
        )
    ]
}


def _unit_text(prompt: str) -> str:
    return prompt.split("-Real data-\nText: ", 1)[1].split("\nOutput:", 1)[0]


def _extraction(prompt: str) -> str:
    text = _unit_text(prompt)
    turns = prompt.count(EXTRACT_CONTINUE.strip())
    if prompt.rstrip().endswith(EXTRACT_LOOP_CHECK.strip()):
        # Keep going only for the harbor unit, once.
        return "Y" if "handles grain shipped by" in text and turns == 1 else "N"
    if turns == 0:
        records = [r for trigger, recs in SENTENCES if trigger in text for r in recs]
        records = list(dict.fromkeys(records))
        if "dredging near the North Pier" in text:
            return "\n".join(records) + "\n" + CD  # one record per line, no record delimiter
        return f"{RD}\n".join(records) + f"\n{CD}"
    if "Lantern Festival fills" in text and turns == 1:
        return ""  # an empty answer
    extra = [r for trigger, recs in GLEANED.items() if trigger in text for r in recs]
    return (f"{RD}\n".join(extra) + f"\n{CD}") if extra and turns == 1 else CD


def _summary(prompt: str) -> str:
    name = re.search(r"^(?:entity|relationship): (.+)$", prompt, re.MULTILINE).group(1)
    descs = re.findall(r"^- (.+)$", prompt, re.MULTILINE)
    if name == "TEODOR BRANDT":
        return ""  # an empty answer: the pipeline must keep the descriptions
    if name == "NORTH PIER":
        return (
            "The North Pier is a pier of the Port of Velmora that Ines Caldera opened in 2019. It handles grain and "
            "hosted the Lantern Festival in 2022."
        )
    return " ".join(d.rstrip(".") + "." for d in descs)


def _table(prompt: str, header: str) -> list[list[str]]:
    if header not in prompt:
        return []
    block = prompt.split(header, 1)[1].split("\n\n", 1)[0]
    return [line.split("|") for line in block.strip().splitlines()[1:] if "|" in line]


def _report(prompt: str) -> str:
    ents = _table(prompt, "-----Entities-----")
    rels = _table(prompt, "-----Relationships-----")
    names = [e[1] for e in ents]
    title = " and ".join(n.title() for n in names[:2])
    report = {
        "title": title,
        "summary": f"This community centres on {names[0].title()}. " + " ".join(e[2] for e in ents[:2]),
        "rating": float(min(10, 2 + len(ents))),
        "rating_explanation": f"The community links {len(ents)} entities through {len(rels)} relationships.",
        "findings": [
            {
                "summary": f"{r[1].title()} and {r[2].title()}",
                "explanation": f"{r[3]} [Data: Relationships ({r[0]})]",
            }
            for r in rels[:3]
        ],
    }
    text = json.dumps(report)
    if "LANTERN FESTIVAL" in names and "not valid JSON" not in prompt:
        return f"I think this community is about {title}, which is important."
    if "SABLE RIVER" in names:
        return "```json\n" + text[:-1] + ",}\n```"  # fenced, trailing comma: repairable
    return text


def _global_map(prompt: str) -> str:
    rows = _table(prompt, "-Reports-")
    if any("Sable" in r[1] for r in rows):
        return "The reports mention a river."  # not JSON
    points = [
        {
            "description": f"{r[1]} [Data: Reports ({r[0]})]",
            "score": int(float(r[2]) * 10),
            "reports": [int(r[0])],
        }
        for r in rows
    ]
    return json.dumps({"points": points})


def _global_reduce(prompt: str) -> str:
    points = re.findall(r"Importance: [\d.]+\n(.+)", prompt)
    return "Velmora's data has these main themes: " + "; ".join(points[:3])


def _cite(prompt: str) -> str:
    ents = [r[0] for r in _table(prompt, "-----Entities-----")][:3]
    srcs = [r[0] for r in _table(prompt, "-----Sources-----")][:2]
    reps = [r[0] for r in _table(prompt, "-----Reports-----")][:1]
    parts = [f"Entities ({', '.join(ents)})"] if ents else []
    parts += [f"Sources ({', '.join(srcs)})"] if srcs else []
    parts += [f"Reports ({', '.join(reps)})"] if reps else []
    return f" [Data: {'; '.join(parts)}]" if parts else ""


def _question(prompt: str) -> str:
    return re.findall(r"^Question: (.+)$", prompt, re.MULTILINE)[-1]


def _local(prompt: str) -> str:
    q = _question(prompt)
    return QUESTIONS["answers"].get(
        q, f"From the data: {q.rstrip('?')} is covered by the records shown."
    ) + _cite(prompt)


def _basic(prompt: str) -> str:
    return QUESTIONS["answers"][_question(prompt)] + _cite(prompt)


def _drift_primer(prompt: str) -> str:
    rows = _table(prompt, "-Reports-") or [line.split("|") for line in prompt.split("id|title|content\n", 1)[1].split(
        "\n\n"
    )[0].splitlines()]  # fmt: skip
    return json.dumps(
        {
            "intermediate_answer": f"Dredging concerns the harbor and the river [Data: Reports ({rows[0][0]})]",
            "follow_up_queries": QUESTIONS["drift_follow_ups"],
            "score": 60,
        }
    )


def _drift_reduce(prompt: str) -> str:
    return QUESTIONS["answers"][_question(prompt)]


ROUTES = [
    ("-Goal-", _extraction),
    ("You merge descriptions", _summary),
    ("You are writing a report", _report),
    ("You read part of a set of community reports", _global_map),
    ("Analysts each read", _global_reduce),
    ("Answer the question using the data tables", _local),
    ("Answer the question using the source texts", _basic),
    ("You plan an answer", _drift_primer),
    ("Combine a first answer", _drift_reduce),
]


class AuthorLLM:
    """Engine-shaped object whose answers are the authored ones above."""

    model_name = MODEL
    context_length = 8192

    def count_tokens(self, text: str) -> int:
        return approx_token_count(text)

    def generate(self, prompt: Any, **params: Any) -> Any:
        if isinstance(prompt, list):
            return [self.generate(p, **params) for p in prompt]
        for prefix, fn in ROUTES:
            if prompt.startswith(prefix):
                text = fn(prompt)
                return Completion(text, "stop", approx_token_count(prompt), approx_token_count(text))
        raise ValueError(f"no authored answer for prompt starting {prompt[:80]!r}")


def record(out: Path = HERE / "transcript.jsonl") -> int:
    """Run the pipeline against AuthorLLM in a scratch project and write every call to `out`."""
    from xpullm.embeddings import Embedder

    config = GraphRAGConfig.from_yaml(HERE / "settings.yaml")
    embedder = Embedder(device="cpu", dtype="float32")
    root = Path(tempfile.mkdtemp(prefix="graphrag-author-"))
    try:
        rag = GraphRAG(root, llm=AuthorLLM(), embedder=embedder, config=config)
        rag.index(HERE / "corpus")
        for method, q in QUESTIONS["before_update"].items():
            rag.query(q, method=method)
        rag.update(HERE / "update")
        for method, q in QUESTIONS["after_update"].items():
            rag.query(q, method=method)
        n = rag.cache.export_transcript(out)
        rag.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return n


if __name__ == "__main__":
    print(f"wrote {record()} calls")
