"""Merging extracted records into one graph, and summarizing the descriptions of merged entities/relationships.

Rows are plain dicts with Microsoft GraphRAG's column names, so `tables.py` writes them without renaming.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from xpullm.documents import stable_id
from xpullm.graphrag.calls import LLMCaller
from xpullm.graphrag.config import SummarizeConfig
from xpullm.graphrag.extraction import ParseResult
from xpullm.graphrag.loopfree import cut_loops, strip_echo
from xpullm.graphrag.prompts import SUMMARIZE, SUMMARY_LABEL, fill

__all__ = ["build_graph", "to_graphml"]


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(i for i in items if i))


def build_graph(
    extractions: dict[str, ParseResult],
    caller: LLMCaller,
    config: SummarizeConfig,
    previous_ids: dict[str, int] | None = None,
    llm_descriptions: bool = True,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Entities and relationships rows: duplicates merged by name / endpoint pair, descriptions summarized.

    llm_descriptions: the LLM merges several descriptions into one (the "llm" method); False joins them as they
    are, up to `config.max_new_tokens` tokens (the "nlp" method, whose descriptions are sentences of the text).

    previous_ids maps "entity:NAME" / "relationship:SRC|TGT" to the human_readable_id of an earlier run: an update
    keeps those ids (so reports citing them stay right) and numbers new records after them.
    """
    ent_types: dict[str, Counter[str]] = {}
    ent_desc: dict[str, list[str]] = {}
    ent_units: dict[str, list[str]] = {}
    rel_desc: dict[tuple[str, str], list[str]] = {}
    rel_units: dict[tuple[str, str], list[str]] = {}
    rel_weight: dict[tuple[str, str], float] = {}
    for unit_id in sorted(extractions):
        result = extractions[unit_id]
        for e in result.entities:
            ent_types.setdefault(e.name, Counter())[e.type] += 1
            ent_desc.setdefault(e.name, []).append(e.description)
            ent_units.setdefault(e.name, []).append(unit_id)
        for r in result.relationships:
            # The graph is undirected: A->B and B->A are one edge; the first orientation seen is kept.
            key = (r.source, r.target) if (r.target, r.source) not in rel_desc else (r.target, r.source)
            rel_desc.setdefault(key, []).append(r.description)
            rel_units.setdefault(key, []).append(unit_id)
            rel_weight[key] = rel_weight.get(key, 0.0) + r.weight
    for s, t in list(rel_desc):
        if f"relationship:{t}|{s}" in (previous_ids or {}):  # keep the orientation an earlier run published
            for table in (rel_desc, rel_units, rel_weight):
                table[(t, s)] = table.pop((s, t))  # type: ignore[attr-defined]
    implicit = 0
    for source, target in rel_desc:
        for name in (source, target):
            if name not in ent_desc:  # named only inside a relationship: still a node of the graph
                ent_types[name] = Counter()
                ent_desc[name], ent_units[name] = [], list(rel_units[(source, target)])
                implicit += 1
    caller.stats.count("extract_graph.implicit_entities", implicit)

    names = sorted(ent_desc)
    rel_keys = sorted(rel_desc)
    merge = _summarize if llm_descriptions else _join
    ent_summaries = merge(caller, config, "entity", [(n, _unique(ent_desc[n])) for n in names])
    rel_summaries = merge(
        caller, config, "relationship", [(f"{s} -> {t}", _unique(rel_desc[(s, t)])) for s, t in rel_keys]
    )
    degree: Counter[str] = Counter()
    for s, t in rel_keys:
        degree[s] += 1
        degree[t] += 1
    ent_hr = _short_ids([f"entity:{n}" for n in names], previous_ids or {})
    rel_hr = _short_ids([f"relationship:{s}|{t}" for s, t in rel_keys], previous_ids or {})
    entities = []
    for i, name in enumerate(names):
        types = ent_types[name]
        entities.append(
            {
                "id": stable_id("entity", name),
                "human_readable_id": ent_hr[i],
                "title": name,
                "type": types.most_common(1)[0][0] if types else "",
                "description": ent_summaries[i],
                "text_unit_ids": _unique(ent_units[name]),
                "frequency": len(_unique(ent_units[name])),
                "degree": degree[name],
                "x": 0.0,
                "y": 0.0,
            }
        )
    relationships = []
    for i, (s, t) in enumerate(rel_keys):
        relationships.append(
            {
                "id": stable_id("relationship", s, t),
                "human_readable_id": rel_hr[i],
                "source": s,
                "target": t,
                "description": rel_summaries[i],
                "weight": rel_weight[(s, t)],
                "combined_degree": degree[s] + degree[t],
                "text_unit_ids": _unique(rel_units[(s, t)]),
            }
        )
    entities.sort(key=lambda e: e["human_readable_id"])
    relationships.sort(key=lambda r: r["human_readable_id"])
    return entities, relationships


def _short_ids(keys: list[str], previous: dict[str, int]) -> list[int]:
    """Earlier ids for known keys; new keys numbered after the largest earlier id, in order."""
    next_id = max(previous.values(), default=-1) + 1
    out = []
    for key in keys:
        if key in previous:
            out.append(previous[key])
        else:
            out.append(next_id)
            next_id += 1
    return out


def _join(
    caller: LLMCaller, config: SummarizeConfig, kind: str, items: list[tuple[str, list[str]]]
) -> list[str]:
    """One description per item: its distinct descriptions joined (sorted), up to `max_new_tokens` tokens."""
    out = []
    for _, descs in items:
        kept, used = [], 0
        for d in sorted(descs):
            n = caller.count_tokens(d)
            if kept and used + n > config.max_new_tokens:
                caller.stats.count("summarize_descriptions.descriptions_left_out")
                continue
            kept.append(d)
            used += n
        out.append(" ".join(kept))
    return out


def _summarize(
    caller: LLMCaller, config: SummarizeConfig, kind: str, items: list[tuple[str, list[str]]]
) -> list[str]:
    """One description per item: as is when there is one, an LLM summary (batched) when there are several."""
    stage = "summarize_descriptions"
    out = [descs[0] if descs else "" for _, descs in items]
    todo: list[tuple[int, str, list[str]]] = []
    for i, (name, descs) in enumerate(items):
        if len(descs) < 2:
            continue
        kept, used = [], 0
        for d in sorted(descs):  # sorted: the prompt (and its cache key) must not depend on extraction order
            n = caller.count_tokens(d)
            if kept and used + n > config.max_input_tokens:
                caller.stats.count(f"{stage}.descriptions_left_out")
                continue
            kept.append(d)
            used += n
        prompt = fill(SUMMARIZE, kind=kind, name=name, descriptions="\n".join(f"- {d}" for d in kept))
        todo.append((i, prompt, kept))
    if not todo:
        return out
    answers = caller.generate([p for _, p, _ in todo], stage=stage, max_new_tokens=config.max_new_tokens)
    for (i, _, kept), ans in zip(todo, answers, strict=True):
        # A small model echoes the prompt's label and loops; neither may reach the table (or the next merge).
        text = cut_loops(strip_echo(" ".join(ans.text.split()), SUMMARY_LABEL))
        if text:
            out[i] = text
        else:
            # An empty summary must not erase what was extracted: keep the descriptions themselves.
            caller.stats.count(f"{stage}.fallback_joined")
            out[i] = " ".join(kept)
    return out


def to_graphml(entities: list[dict[str, Any]], relationships: list[dict[str, Any]], path: str | Path) -> None:
    """Write the graph (entity attributes on nodes, relationship attributes on edges) as GraphML."""
    import networkx as nx

    g = nx.Graph()
    for e in entities:
        g.add_node(
            e["title"],
            id=e["id"],
            type=e["type"],
            description=e["description"],
            degree=int(e["degree"]),
            frequency=int(e["frequency"]),
            community=int(e.get("community", -1)),
        )
    for r in relationships:
        g.add_edge(
            r["source"], r["target"], id=r["id"], description=r["description"], weight=float(r["weight"])
        )
    nx.write_graphml(g, str(path))
