"""The layer rule of docs/dev/architecture.md, read from the code: nothing imports upward or in a cycle.

Every `import xpullm...` in the five package folders counts, including imports inside functions (a lazy upward
import is still an upward dependency).
"""

from __future__ import annotations

import ast
import collections
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FOLDERS = {
    "sdk": "xpullm",
    "kernels": "xpullm.kernels",
    "integrations": "xpullm.integrations",
    "graphrag": "xpullm.graphrag",
    "apps": "xpullm.apps",
}

# Top-level package -> layer (architecture.md's diagram). A package may import its own layer or lower ones.
LAYERS = {
    0: ("xpullm.settings", "xpullm.errors", "xpullm.protocols", "xpullm.units"),
    1: ("xpullm.kernels",),
    2: (
        "xpullm.formats", "xpullm.linear", "xpullm.devices", "xpullm.hub", "xpullm.memory", "xpullm.optimize",
        "xpullm.loading", "xpullm.models", "xpullm.documents", "xpullm.parallel",
    ),
    3: ("xpullm.engine", "xpullm.embeddings", "xpullm.finetune"),
    4: ("xpullm.answers", "xpullm.scaleout", "xpullm.rag", "xpullm.graphrag", "xpullm.server"),
    5: ("xpullm.apps", "xpullm.integrations", "xpullm.cli", "xpullm"),
}  # fmt: skip
LAYER_OF = {pkg: layer for layer, pkgs in LAYERS.items() for pkg in pkgs}


def _module(path: Path) -> str:
    for folder, pkg in FOLDERS.items():
        if path.is_relative_to(REPO / folder):
            parts = list(path.relative_to(REPO / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            return ".".join([pkg, *parts])
    raise AssertionError(path)


def _package(module: str) -> str:
    """The layer unit: `xpullm.<top>` (the root module `xpullm` itself is the public facade)."""
    return ".".join(module.split(".")[:2])


def _imports() -> dict[str, set[str]]:
    """Package -> packages it imports (self-imports left out)."""
    edges: dict[str, set[str]] = collections.defaultdict(set)
    for folder in FOLDERS:
        for path in (REPO / folder).rglob("*.py"):
            if ".venv" in path.parts:
                continue
            src = _package(_module(path))
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                names = []
                if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                elif isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                for name in names:
                    if name == "xpullm" or name.startswith("xpullm."):
                        dst = _package(name)
                        if dst != src:
                            edges[src].add(dst)
    return edges


def test_every_package_has_a_layer() -> None:
    unknown = sorted({p for src, dsts in _imports().items() for p in (src, *dsts)} - set(LAYER_OF))
    assert not unknown, f"add these packages to a layer in LAYERS and architecture.md: {unknown}"


def test_nothing_imports_upward() -> None:
    upward = [
        f"{src} (layer {LAYER_OF[src]}) imports {dst} (layer {LAYER_OF[dst]})"
        for src, dsts in sorted(_imports().items())
        for dst in sorted(dsts)
        if LAYER_OF.get(dst, 0) > LAYER_OF.get(src, 0)
    ]
    assert not upward, "\n".join(upward)


def test_no_import_cycle_between_packages() -> None:
    edges = _imports()
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for start in sorted(edges):
        if start not in state:
            visit(start, [start])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)
