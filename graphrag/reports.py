"""Community reports: one structured JSON report per community, constrained-decoded, repaired or retried.

A report is never dropped: when the model's JSON stays unreadable after repair and `max_retries` retries, a report
is built from the community's own data (titles and descriptions) and counted as `community_reports.fallback`.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from xpullm.graphrag.calls import LLMCaller
from xpullm.graphrag.config import ReportConfig
from xpullm.graphrag.jsonfix import parse_json_object
from xpullm.graphrag.loopfree import cut_loops
from xpullm.graphrag.prompts import REPORT, REPORT_RETRY_NOTE, REPORT_SCHEMA, fill

__all__ = ["community_context", "normalize_report", "summarize_communities"]


def community_context(
    community: dict[str, Any],
    ent_by_id: dict[str, dict[str, Any]],
    rel_by_id: dict[str, dict[str, Any]],
    caller: LLMCaller,
    max_tokens: int,
) -> tuple[str, bool]:
    """(context text, truncated?): entity and relationship tables, highest degree first, within `max_tokens`."""
    ents = sorted((ent_by_id[i] for i in community["entity_ids"]), key=lambda e: (-e["degree"], e["title"]))
    rels = sorted(
        (rel_by_id[i] for i in community["relationship_ids"]),
        key=lambda r: (-r["weight"], -r["combined_degree"], r["source"], r["target"]),
    )
    lines = ["-----Entities-----", "id|entity|description"]
    ent_lines = [f"{e['human_readable_id']}|{e['title']}|{e['description']}" for e in ents]
    rel_lines, shown = [], set()
    for r in rels:
        # Co-occurrence edges of one sentence share its text: show it once, so the context holds more edges.
        desc = "" if r["description"] in shown else r["description"]
        shown.add(r["description"])
        rel_lines.append(f"{r['human_readable_id']}|{r['source']}|{r['target']}|{desc}")
    used = caller.count_tokens("\n".join(lines)) + 20
    truncated = False
    out_ents, out_rels = [], []
    # Interleave entities and relationships so a cut keeps both kinds of evidence.
    for i in range(max(len(ent_lines), len(rel_lines))):
        for line, bucket in ((ent_lines, out_ents), (rel_lines, out_rels)):
            if i < len(line):
                n = caller.count_tokens(line[i]) + 1
                if used + n > max_tokens:
                    truncated = True
                    continue
                bucket.append(line[i])
                used += n
    text = "\n".join(
        [*lines, *out_ents, "", "-----Relationships-----", "id|source|target|description", *out_rels]
    )
    return text, truncated


def normalize_report(data: dict[str, Any]) -> dict[str, Any] | None:
    """Coerce a parsed answer to the report schema; None when title or summary is missing."""
    title, summary = data.get("title"), data.get("summary")
    if not isinstance(title, str) or not title.strip() or not isinstance(summary, str) or not summary.strip():
        return None
    try:
        rating = float(data.get("rating", 0.0))
    except (TypeError, ValueError):
        rating = 0.0
    findings = []
    for f in data.get("findings") or []:
        if isinstance(f, dict):
            findings.append(
                {
                    "summary": cut_loops(str(f.get("summary", ""))),
                    "explanation": cut_loops(str(f.get("explanation", ""))),
                }
            )
        elif isinstance(f, str):
            findings.append({"summary": cut_loops(f), "explanation": ""})
    return {
        "title": cut_loops(title),
        "summary": cut_loops(summary),
        "rating": max(0.0, min(10.0, rating)),
        "rating_explanation": cut_loops(str(data.get("rating_explanation", ""))),
        "findings": findings,
    }


def full_content(report: dict[str, Any]) -> str:
    """The report as markdown (what queries read)."""
    parts = [f"# {report['title']}", "", report["summary"]]
    for f in report["findings"]:
        parts += ["", f"## {f['summary']}", "", f["explanation"]]
    return "\n".join(parts).strip()


def _fallback(community: dict[str, Any], ent_by_id: dict[str, dict[str, Any]]) -> dict[str, Any]:
    ents = sorted((ent_by_id[i] for i in community["entity_ids"]), key=lambda e: (-e["degree"], e["title"]))
    names = ", ".join(e["title"] for e in ents[:3])
    return {
        "title": f"Community {community['community']}: {names}",
        "summary": " ".join(e["description"] for e in ents[:5] if e["description"]) or names,
        "rating": 0.0,
        "rating_explanation": "Built from the graph data because the model gave no readable report.",
        "findings": [{"summary": e["title"], "explanation": e["description"]} for e in ents[:5]],
    }


def summarize_communities(
    communities: list[dict[str, Any]],
    entities: list[dict[str, Any]],
    relationships: list[dict[str, Any]],
    caller: LLMCaller,
    config: ReportConfig,
    reuse: dict[str, dict[str, Any]] | None = None,
) -> tuple[list[dict[str, Any]], dict[int, str]]:
    """(report rows, community -> context hash). `reuse` maps context hashes to earlier reports (update runs)."""
    stage = "community_reports"
    ent_by_id = {e["id"]: e for e in entities}
    rel_by_id = {r["id"]: r for r in relationships}
    reuse = reuse or {}
    schema = REPORT_SCHEMA if config.constrained else None
    reserve = caller.count_tokens(fill(REPORT, input_text="")) + 64  # instructions + chat template
    budget = min(config.max_input_tokens, caller.budget(config.max_new_tokens, reserve))
    contexts: dict[int, str] = {}
    hashes: dict[int, str] = {}
    for c in communities:
        text, truncated = community_context(c, ent_by_id, rel_by_id, caller, budget)
        caller.stats.count(f"{stage}.context_truncated", int(truncated))
        contexts[c["community"]] = text
        hashes[c["community"]] = hashlib.sha256(text.encode()).hexdigest()
    reports: dict[int, dict[str, Any]] = {}
    raw: dict[int, dict[str, Any]] = {}
    todo = []
    for c in communities:
        old = reuse.get(hashes[c["community"]])
        if old is not None:
            reports[c["community"]] = old
            caller.stats.count(f"{stage}.reused")
        else:
            todo.append(c["community"])
    for attempt in range(config.max_retries + 1):
        if not todo:
            break
        note = REPORT_RETRY_NOTE if attempt else ""
        prompts = [fill(REPORT, input_text=contexts[cid]) + note for cid in todo]
        answers = caller.generate(
            prompts, stage=stage, max_new_tokens=config.max_new_tokens, json_schema=schema
        )
        still = []
        for cid, ans in zip(todo, answers, strict=True):
            data, repaired = parse_json_object(ans.text)
            report = normalize_report(data) if data is not None else None
            if report is None:
                caller.stats.count(f"{stage}.invalid_json")
                still.append(cid)
                continue
            caller.stats.count(f"{stage}.repaired", int(repaired))
            caller.stats.count(f"{stage}.retried_ok", int(attempt > 0))
            reports[cid], raw[cid] = report, data
        todo = still
    by_cid = {c["community"]: c for c in communities}
    for cid in todo:
        caller.stats.count(f"{stage}.fallback")
        reports[cid] = _fallback(by_cid[cid], ent_by_id)
    rows = []
    for c in communities:
        rep = reports[c["community"]]
        rows.append(
            {
                "id": c["id"],
                "human_readable_id": c["community"],
                "community": c["community"],
                "level": c["level"],
                "parent": c["parent"],
                "children": c["children"],
                "title": rep["title"],
                "summary": rep["summary"],
                "full_content": full_content(rep),
                "rank": rep["rating"],
                "rating_explanation": rep["rating_explanation"],
                "findings": rep["findings"],
                "full_content_json": json.dumps(raw.get(c["community"], rep), ensure_ascii=False),
                "period": c["period"],
                "size": c["size"],
            }
        )
    return rows, hashes
