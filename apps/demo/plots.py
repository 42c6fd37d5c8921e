"""Charts as self-contained HTML: plotly figures with plotly.js inlined from the installed `plotly` package.

No CDN is referenced, so the page works offline. `gr.HTML` does not run `<script>` tags, so each figure is a full
HTML document inside an `<iframe srcdoc=...>`, where the browser does run them.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

__all__ = ["graph_figure", "plot_iframe", "speed_figure"]

# Qualitative colours (colour-blind friendly Okabe-Ito, then extras) cycled over communities.
PALETTE = (
    "#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000",
    "#8C564B", "#7F7F7F", "#17BECF", "#BCBD22",
)  # fmt: skip


def plot_iframe(fig: Any, height: int = 520, title: str = "chart") -> str:
    """`fig` as an iframe holding a complete HTML page with plotly.js inlined (works without network)."""
    page = fig.to_html(
        include_plotlyjs=True, full_html=True, config={"displaylogo": False, "responsive": True}
    )
    return (
        f'<iframe title="{html.escape(title)}" class="xpullm-plot" style="width:100%;height:{height}px;border:0" '
        f'srcdoc="{html.escape(page, quote=True)}"></iframe>'
    )


def graph_figure(
    entities: Sequence[dict[str, Any]],
    relationships: Sequence[dict[str, Any]],
    communities: Sequence[dict[str, Any]],
) -> Any:
    """The entity graph: nodes coloured by their most specific community, sized by degree, hover shows details."""
    import networkx as nx
    import plotly.graph_objects as go

    community_of: dict[str, int] = {}
    for c in sorted(communities, key=lambda c: c["level"]):
        for eid in c["entity_ids"]:
            community_of[eid] = int(c["community"])  # deepest level wins, as in graph.graphml
    g = nx.Graph()
    for e in entities:
        g.add_node(e["title"])
    for r in relationships:
        if r["source"] in g and r["target"] in g:
            g.add_edge(r["source"], r["target"], weight=float(r.get("weight") or 1.0))
    pos = nx.spring_layout(g, seed=7, k=None) if len(g) else {}
    edge_x: list[float | None] = []
    edge_y: list[float | None] = []
    for a, b in g.edges():
        edge_x += [pos[a][0], pos[b][0], None]
        edge_y += [pos[a][1], pos[b][1], None]
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=edge_x, y=edge_y, mode="lines", line={"width": 1, "color": "#bbbbbb"}, hoverinfo="skip",
            showlegend=False,
        )
    )  # fmt: skip
    by_community: dict[int, list[dict[str, Any]]] = {}
    for e in entities:
        by_community.setdefault(community_of.get(e["id"], -1), []).append(e)
    for cid in sorted(by_community):
        members = by_community[cid]
        colour = "#999999" if cid < 0 else PALETTE[cid % len(PALETTE)]
        fig.add_trace(
            go.Scatter(
                x=[pos[e["title"]][0] for e in members],
                y=[pos[e["title"]][1] for e in members],
                mode="markers+text",
                text=[e["title"] for e in members],
                textposition="top center",
                textfont={"size": 10},
                marker={
                    "size": [10 + 3 * min(int(e.get("degree") or 0), 8) for e in members],
                    "color": colour,
                    "line": {"width": 1, "color": "#ffffff"},
                },
                hovertext=[
                    f"<b>{html.escape(e['title'])}</b> ({html.escape(str(e.get('type') or ''))})<br>"
                    f"{html.escape(str(e.get('description') or '')[:200])}"
                    for e in members
                ],
                hoverinfo="text",
                name="no community" if cid < 0 else f"community {cid}",
            )
        )
    fig.update_layout(
        margin={"l": 10, "r": 10, "t": 30, "b": 10},
        xaxis={"visible": False},
        yaxis={"visible": False},
        legend={"title": {"text": "communities"}},
        plot_bgcolor="#ffffff",
        title={
            "text": f"{len(entities)} entities, {g.number_of_edges()} relationships",
            "font": {"size": 13},
        },
    )
    return fig


def speed_figure(rows: Sequence[dict[str, Any]]) -> Any:
    """Bars per format: weight memory (MiB), load time (s), decode speed (tok/s) and perplexity."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    metrics = (
        ("memory_mib", "weights, MiB"),
        ("load_s", "load time, s"),
        ("decode_tok_s", "decode, tok/s"),
        ("perplexity", "perplexity (lower is better)"),
    )
    fig = make_subplots(rows=1, cols=len(metrics), subplot_titles=[t for _, t in metrics])
    formats = [r["format"] for r in rows]
    colours = [PALETTE[i % len(PALETTE)] for i in range(len(rows))]
    for col, (key, _) in enumerate(metrics, start=1):
        fig.add_trace(
            go.Bar(x=formats, y=[r[key] for r in rows], marker_color=colours, showlegend=False),
            row=1,
            col=col,
        )
    fig.update_layout(margin={"l": 30, "r": 10, "t": 40, "b": 30}, plot_bgcolor="#ffffff", height=360)
    return fig
