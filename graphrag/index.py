"""The indexing pipeline: documents -> text units -> graph -> communities -> reports -> embeddings -> tables.

Resume needs no checkpoint files: every stage is deterministic given its inputs and every LLM answer is cached,
so re-running a killed job replays finished calls from the cache and only makes the calls that never completed.
`update` re-extracts only new text units (old extractions are kept in `output/internal/`) and reuses every report
whose community context did not change.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from xpullm.graphrag.calls import LLMCaller
from xpullm.graphrag.chunking import Document, TextUnit, chunk_task
from xpullm.graphrag.communities import cluster_graph
from xpullm.graphrag.config import GraphRAGConfig
from xpullm.graphrag.embedding import run_embeddings
from xpullm.graphrag.errors import ConfigError
from xpullm.graphrag.extraction import (
    EntityRecord,
    ParseResult,
    RelationshipRecord,
    extraction_prompt,
)
from xpullm.graphrag.graph import build_graph, to_graphml
from xpullm.graphrag.methods import choose_method, get_method
from xpullm.graphrag.reports import normalize_report, summarize_communities
from xpullm.graphrag.stats import IndexStats
from xpullm.graphrag.tables import TableStore
from xpullm.protocols import EmbeddingModel
from xpullm.scaleout import in_order

__all__ = ["IndexResult", "run_index"]


@dataclass(frozen=True)
class IndexResult:
    """What an index/update run produced."""

    documents: int
    text_units: int
    new_text_units: int
    entities: int
    relationships: int
    communities: int
    community_reports: int
    stats: dict[str, Any]


def run_index(
    docs: list[Document],
    caller: LLMCaller,
    embedder: EmbeddingModel,
    store: TableStore,
    config: GraphRAGConfig,
    stats: IndexStats,
    update: bool = False,
    remove: Sequence[str] = (),
) -> IndexResult:
    """Index `docs` (update=False: replace the project; update=True: add them to the existing index).

    On update, a document whose source (its path, else its title) is already indexed with other text replaces the
    old version: the old text units, and every entity or relationship only they held, are dropped. `remove` names
    indexed documents (source path, title or id) to delete.
    """
    with stats.run():  # stats.json says "interrupted" / "failed" when the run does not finish
        result = _run(docs, caller, embedder, store, config, stats, update, remove)
    return dataclasses.replace(result, stats=stats.to_dict())  # with the final status


def _run(
    docs: list[Document],
    caller: LLMCaller,
    embedder: EmbeddingModel,
    store: TableStore,
    config: GraphRAGConfig,
    stats: IndexStats,
    update: bool,
    remove: Sequence[str],
) -> IndexResult:
    old_docs: list[dict[str, Any]] = []
    old_units: list[dict[str, Any]] = []
    old_extractions: dict[str, ParseResult] = {}
    reuse: dict[str, dict[str, Any]] = {}
    previous_ids: dict[str, int] = {}
    name, why = choose_method(
        config.extract_graph.method, caller.llm, config.extract_graph.small_model_params
    )
    method = get_method(name)
    stats.info["extraction_method"] = name
    stats.info["extraction_method_reason"] = why
    if update:
        previous_ids = {f"entity:{e['title']}": e["human_readable_id"] for e in store.read("entities")}
        previous_ids.update(
            {
                f"relationship:{r['source']}|{r['target']}": r["human_readable_id"]
                for r in store.read("relationships")
            }
        )
        old_docs = store.read("documents")
        old_units = store.read("text_units")
        old_extractions = _load_extractions(store, method.name)
        reuse = _load_report_reuse(store)
        known = {d["id"] for d in old_docs}
        skipped = [d for d in docs if d.id in known]
        stats.note("update.documents_already_indexed", len(skipped))
        docs = [d for d in docs if d.id not in known]
        incoming = {_source(d.title, d.metadata) for d in docs}
        replaced = {d["id"] for d in old_docs if _row_source(d) in incoming}
        deleted = _documents_named(old_docs, remove)
        stats.note("update.documents_replaced", len(replaced))
        stats.note("update.documents_deleted", len(deleted - replaced))
        gone = replaced | deleted
        old_docs = [d for d in old_docs if d["id"] not in gone]
        old_units = [
            {**u, "document_ids": [x for x in u["document_ids"] if x not in gone]}
            for u in old_units
            if any(x not in gone for x in u["document_ids"])
        ]
        kept_units = {u["id"] for u in old_units}
        old_extractions = {k: v for k, v in old_extractions.items() if k in kept_units}
    elif remove:
        raise ConfigError("remove= deletes documents from an existing index; call it with update=True")

    with stats.timed("chunk"):
        size = _chunk_size_that_fits(caller, config, stats) if method.unit_in_prompt else config.chunks.size
        new_units: list[TextUnit] = []
        unit_docs: dict[str, str] = {}
        overlap = min(config.chunks.overlap, size // 2)
        # Chunks are cut with the model's tokenizer where the executor runs (workers hold their own copy).
        pieces = caller.executor.map(chunk_task, [(d, size, overlap) for d in docs], model=caller.llm)
        for doc, units in zip(docs, in_order(pieces), strict=True):
            for unit in units:
                if unit.id not in unit_docs and unit.id not in old_extractions:
                    new_units.append(unit)
                    unit_docs[unit.id] = doc.id

    with stats.timed("extract_graph"):
        extractions = dict(old_extractions)
        extractions.update(method.extract(new_units, caller, config.extract_graph))
        store.write_internal("extractions", _dump_extractions(extractions, method.name))

    with stats.timed("summarize_descriptions"):
        entities, relationships = build_graph(
            extractions, caller, config.summarize_descriptions, previous_ids, method.llm_descriptions
        )

    with stats.timed("cluster_graph"):
        communities = cluster_graph(entities, relationships, config.cluster_graph)

    with stats.timed("community_reports"):
        reports, hashes = summarize_communities(
            communities, entities, relationships, caller, config.community_reports, reuse
        )
        store.write_internal(
            "report_contexts", [{"community": cid, "context_hash": h} for cid, h in sorted(hashes.items())]
        )

    with stats.timed("finalize"):
        now = _dt.datetime.now(_dt.timezone.utc).isoformat()
        unit_rows = _text_unit_rows(old_units, new_units, unit_docs, entities, relationships)
        doc_rows = _document_rows(old_docs, docs, unit_rows, now)

    with stats.timed("embeddings"):
        counts = run_embeddings(
            store,
            caller.executor.embedder(embedder),
            config.embeddings,
            entities,
            unit_rows,
            reports,
            progress=config.progress,
        )
        stats.note("embeddings.vectors_embedded", counts["embedded"])
        stats.note("embeddings.vectors_reused", counts["reused"])

    with stats.timed("write"):
        store.write("documents", doc_rows)
        store.write("text_units", unit_rows)
        store.write("entities", entities)
        store.write("relationships", relationships)
        store.write("communities", communities)
        store.write("community_reports", reports)
        community_of = {}
        for c in sorted(communities, key=lambda c: c["level"]):
            for eid in c["entity_ids"]:
                community_of[eid] = c["community"]  # deepest level wins: the most specific community
        to_graphml(
            [{**e, "community": community_of.get(e["id"], -1)} for e in entities],
            relationships,
            store.dir / "graph.graphml",
        )
    return IndexResult(
        documents=len(doc_rows),
        text_units=len(unit_rows),
        new_text_units=len(new_units),
        entities=len(entities),
        relationships=len(relationships),
        communities=len(communities),
        community_reports=len(reports),
        stats=stats.to_dict(),
    )


def _source(title: str, metadata: dict[str, Any]) -> str:
    """What identifies a document across versions: its file path, else its title."""
    return str(metadata.get("path") or title)


def _row_source(row: dict[str, Any]) -> str:
    meta = row.get("metadata") or "{}"
    return _source(row["title"], json.loads(meta) if isinstance(meta, str) else dict(meta))


def _documents_named(rows: list[dict[str, Any]], names: Sequence[str]) -> set[str]:
    """Ids of the indexed documents named by source path, title or id; an unknown name is an error."""
    out: set[str] = set()
    for name in names:
        hits = {r["id"] for r in rows if name in (r["id"], r["title"], _row_source(r))}
        if not hits:
            shown = ", ".join(repr(r["title"]) for r in rows[:5]) + (" ..." if len(rows) > 5 else "")
            raise ConfigError(f"no indexed document is named {name!r}; indexed: {shown or 'none'}")
        out |= hits
    return out


def _chunk_size_that_fits(caller: LLMCaller, config: GraphRAGConfig, stats: IndexStats) -> int:
    """chunks.size, lowered when an extraction prompt of that size could not fit the context window."""
    overhead = caller.count_tokens(caller.format(extraction_prompt("", config.extract_graph))) + 16
    room = caller.context_length - config.extract_graph.max_new_tokens - overhead
    if room < 32:
        raise ConfigError(
            f"extract_graph.max_new_tokens={config.extract_graph.max_new_tokens} leaves only {room} tokens of the "
            f"{caller.context_length}-token context for text; lower max_new_tokens or use a longer-context model"
        )
    if config.chunks.size > room:
        # Split, never cut: smaller units keep every sentence of the document.
        stats.count("chunk.size_lowered_to_fit_context")
        return room
    return config.chunks.size


def _text_unit_rows(
    old_units: list[dict[str, Any]],
    new_units: list[TextUnit],
    unit_docs: dict[str, str],
    entities: list[dict[str, Any]],
    relationships: list[dict[str, Any]],
) -> list[dict[str, Any]]:
    ent_in: dict[str, list[str]] = {}
    for e in entities:
        for u in e["text_unit_ids"]:
            ent_in.setdefault(u, []).append(e["id"])
    rel_in: dict[str, list[str]] = {}
    for r in relationships:
        for u in r["text_unit_ids"]:
            rel_in.setdefault(u, []).append(r["id"])
    base = [(u["id"], u["text"], u["n_tokens"], u["document_ids"]) for u in old_units]
    base += [(u.id, u.text, u.n_tokens, [unit_docs[u.id]]) for u in new_units]
    return [
        {
            "id": uid,
            "human_readable_id": i,
            "text": text,
            "n_tokens": n_tokens,
            "document_ids": list(doc_ids),
            "entity_ids": ent_in.get(uid, []),
            "relationship_ids": rel_in.get(uid, []),
            "covariate_ids": [],
        }
        for i, (uid, text, n_tokens, doc_ids) in enumerate(base)
    ]


def _document_rows(
    old_docs: list[dict[str, Any]], docs: list[Document], unit_rows: list[dict[str, Any]], now: str
) -> list[dict[str, Any]]:
    units_of: dict[str, list[str]] = {}
    for u in unit_rows:
        for d in u["document_ids"]:
            units_of.setdefault(d, []).append(u["id"])
    rows = [dict(d) for d in old_docs]
    rows += [
        {
            "id": d.id,
            "title": d.title,
            "text": d.text,
            "creation_date": now,
            "metadata": json.dumps(d.metadata, sort_keys=True),
        }
        for d in docs
    ]
    for i, row in enumerate(rows):
        row["human_readable_id"] = i
        row["text_unit_ids"] = units_of.get(row["id"], [])
    return rows


def _dump_extractions(extractions: dict[str, ParseResult], method: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for unit_id in sorted(extractions):
        res = extractions[unit_id]
        rows.append(
            {
                "text_unit_id": unit_id,
                "kind": "unit",
                "a": method,  # which method read this unit: an update with another method reads it again
                "b": "",
                "description": "",
                "weight": float(res.malformed),
            }
        )
        rows += [
            {
                "text_unit_id": unit_id,
                "kind": "entity",
                "a": e.name,
                "b": e.type,
                "description": e.description,
                "weight": 0.0,
            }
            for e in res.entities
        ]
        rows += [
            {
                "text_unit_id": unit_id,
                "kind": "relationship",
                "a": r.source,
                "b": r.target,
                "description": r.description,
                "weight": r.weight,
            }
            for r in res.relationships
        ]
    return rows


def _load_extractions(store: TableStore, method: str) -> dict[str, ParseResult]:
    """Earlier extractions made by `method` (units read by another method are extracted again)."""
    rows = store.read_internal("extractions")
    made_by = {r["text_unit_id"]: r["a"] or "llm" for r in rows if r["kind"] == "unit"}
    out: dict[str, ParseResult] = {}
    for row in rows:
        if made_by.get(row["text_unit_id"], "llm") != method:
            continue
        res = out.setdefault(row["text_unit_id"], ParseResult())
        if row["kind"] == "entity":
            res.entities.append(EntityRecord(row["a"], row["b"], row["description"], row["text_unit_id"]))
        elif row["kind"] == "relationship":
            res.relationships.append(
                RelationshipRecord(row["a"], row["b"], row["description"], row["weight"], row["text_unit_id"])
            )
        else:
            res.malformed = int(row["weight"])
    return out


def _load_report_reuse(store: TableStore) -> dict[str, dict[str, Any]]:
    hashes = {r["community"]: r["context_hash"] for r in store.read_internal("report_contexts")}
    out = {}
    for rep in store.read("community_reports"):
        h = hashes.get(rep["community"])
        data = normalize_report(
            {
                "title": rep["title"],
                "summary": rep["summary"],
                "rating": rep["rank"],
                "rating_explanation": rep["rating_explanation"],
                "findings": rep["findings"],
            }
        )
        if h is not None and data is not None:
            out[h] = data
    return out
