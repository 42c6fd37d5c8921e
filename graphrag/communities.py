"""Hierarchical Leiden communities over the entity graph (graspologic-native), as `communities` table rows."""

from __future__ import annotations

import datetime as _dt
from typing import Any

from xpullm.documents import stable_id
from xpullm.graphrag.config import ClusterConfig

__all__ = ["cluster_graph"]


def cluster_graph(
    entities: list[dict[str, Any]], relationships: list[dict[str, Any]], config: ClusterConfig
) -> list[dict[str, Any]]:
    """Community rows (level 0 = coarsest); entities without any relationship belong to no community."""
    import graspologic_native as gn

    if not relationships:
        return []
    edges = sorted((r["source"], r["target"], float(max(r["weight"], 1e-6))) for r in relationships)
    if config.use_lcc:
        edges = _largest_component(edges)
    entries = gn.hierarchical_leiden(edges, max_cluster_size=config.max_cluster_size, seed=config.seed)
    members: dict[int, set[str]] = {}
    level_of: dict[int, int] = {}
    parent_of: dict[int, int] = {}
    for e in entries:
        members.setdefault(e.cluster, set()).add(e.node)
        level_of[e.cluster] = e.level
        parent_of[e.cluster] = e.parent_cluster if e.parent_cluster is not None else -1
    children: dict[int, list[int]] = {}
    for cid, parent in parent_of.items():
        if parent != -1:
            children.setdefault(parent, []).append(cid)
    ent_by_title = {e["title"]: e for e in entities}
    period = _dt.date.today().isoformat()
    rows = []
    # Renumber by (level, smallest member) so ids do not depend on the clustering library's internal counters.
    order = sorted(members, key=lambda c: (level_of[c], min(members[c])))
    renumber = {old: new for new, old in enumerate(order)}
    for old in order:
        nodes = members[old]
        rels = [r for r in relationships if r["source"] in nodes and r["target"] in nodes]
        units = sorted({u for n in nodes for u in ent_by_title[n]["text_unit_ids"]})
        cid = renumber[old]
        rows.append(
            {
                "id": stable_id("community", str(level_of[old]), *sorted(nodes)),
                "human_readable_id": cid,
                "community": cid,
                "level": level_of[old],
                "parent": renumber.get(parent_of[old], -1),
                "children": sorted(renumber[c] for c in children.get(old, [])),
                "title": f"Community {cid}",
                "entity_ids": [ent_by_title[n]["id"] for n in sorted(nodes)],
                "relationship_ids": [r["id"] for r in rels],
                "text_unit_ids": units,
                "period": period,
                "size": len(nodes),
            }
        )
    return rows


def _largest_component(edges: list[tuple[str, str, float]]) -> list[tuple[str, str, float]]:
    import networkx as nx

    g = nx.Graph()
    g.add_weighted_edges_from(edges)
    biggest = max(nx.connected_components(g), key=lambda c: (len(c), sorted(c)[0]))
    return [e for e in edges if e[0] in biggest]
