"""Embedding stage: vectors for entity descriptions, text units and report contents, reused when text is unchanged."""

from __future__ import annotations

import hashlib
from typing import Any

from xpullm.graphrag.config import EmbeddingConfig
from xpullm.graphrag.tables import TableStore
from xpullm.protocols import EmbeddingModel

__all__ = ["embedding_inputs", "run_embeddings"]


def embedding_inputs(
    target: str,
    entities: list[dict[str, Any]],
    text_units: list[dict[str, Any]],
    reports: list[dict[str, Any]],
) -> tuple[list[str], list[str]]:
    """(ids, texts) embedded for one target."""
    if target == "entity.description":
        return [e["id"] for e in entities], [f"{e['title']}: {e['description']}" for e in entities]
    if target == "text_unit.text":
        return [u["id"] for u in text_units], [u["text"] for u in text_units]
    if target == "community.full_content":
        return [r["id"] for r in reports], [r["full_content"] for r in reports]
    raise ValueError(
        f"unknown embedding target {target!r}; choose from entity.description, text_unit.text, community.full_content"
    )


def run_embeddings(
    store: TableStore,
    embedder: EmbeddingModel,
    config: EmbeddingConfig,
    entities: list[dict[str, Any]],
    text_units: list[dict[str, Any]],
    reports: list[dict[str, Any]],
    progress: bool = False,
) -> dict[str, int]:
    """Embed every target; a vector whose (id, text) is unchanged since the last run is reused. Returns counts."""
    import numpy as np

    name = embedder.model_name
    dim = int(embedder.dim)
    counts = {"embedded": 0, "reused": 0}
    targets = config.targets
    if progress:
        from tqdm.auto import tqdm

        targets = tqdm(targets, desc="embeddings", unit="table", leave=False)
    for target in targets:
        ids, texts = embedding_inputs(target, entities, text_units, reports)
        hashes = [hashlib.sha256(t.encode()).hexdigest()[:16] for t in texts]
        old = {
            (row["id"], row["text_hash"]): row["vector"]
            for row in store.read_internal(f"vectors.{target}")
            if row.get("model") == name and len(row["vector"]) == dim
        }
        todo = [i for i, key in enumerate(zip(ids, hashes, strict=True)) if key not in old]
        fresh = embedder.embed_matrix([texts[i] for i in todo], batch_size=config.batch_size)
        mat = np.zeros((len(ids), dim), dtype=np.float32)
        for row, i in enumerate(todo):
            mat[i] = fresh[row]
        for i, key in enumerate(zip(ids, hashes, strict=True)):
            if key in old:
                mat[i] = np.asarray(old[key], dtype=np.float32)
        counts["embedded"] += len(todo)
        counts["reused"] += len(ids) - len(todo)
        store.write_vectors(target, ids, mat, name)
        store.write_internal(
            f"vectors.{target}",
            [
                {"id": i, "text_hash": h, "model": name, "vector": v.tolist()}
                for i, h, v in zip(ids, hashes, mat, strict=True)
            ],
        )
    return counts
