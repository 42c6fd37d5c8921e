"""Parquet output with Microsoft GraphRAG's table and column names, and the vector store next to it.

Layout of `ROOT/output/`: `documents.parquet`, `text_units.parquet`, `entities.parquet`, `relationships.parquet`,
`communities.parquet`, `community_reports.parquet`, `graph.graphml`, `stats.json`, `embeddings.<target>.parquet`,
`lancedb/` (only with `vector_store="lancedb"`: the embeddings where Microsoft GraphRAG's query engines look), and
`internal/` (raw extractions and report context hashes, which incremental `update` needs).

The columns are Microsoft GraphRAG 3.x's final columns (`graphrag.data_model.schemas`, checked against 3.3), so its
readers (`read_indexer_text_units`, `read_indexer_entities`, ...) load the tables. Rows inside this package keep two
older (2.x) names: a text unit's `document_ids` (a list; 3.x stores one `document_id`) and a document's `metadata`
(3.x calls it `raw_data`; here a JSON string). `TableStore` renames them on write and back on read, and reads
tables written with the 2.x names as they are.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from xpullm.errors import EmbedderMismatch
from xpullm.graphrag.errors import IndexNotFound

__all__ = ["COLUMNS", "TableStore"]

COLUMNS: dict[str, list[str]] = {
    "documents": ["id", "human_readable_id", "title", "text", "text_unit_ids", "creation_date", "raw_data"],
    "text_units": [
        "id",
        "human_readable_id",
        "text",
        "n_tokens",
        "document_id",
        "entity_ids",
        "relationship_ids",
        "covariate_ids",
    ],
    "entities": [
        "id",
        "human_readable_id",
        "title",
        "type",
        "description",
        "text_unit_ids",
        "frequency",
        "degree",
    ],
    "relationships": [
        "id",
        "human_readable_id",
        "source",
        "target",
        "description",
        "weight",
        "combined_degree",
        "text_unit_ids",
    ],
    "communities": [
        "id",
        "human_readable_id",
        "community",
        "level",
        "parent",
        "children",
        "title",
        "entity_ids",
        "relationship_ids",
        "text_unit_ids",
        "period",
        "size",
    ],
    "community_reports": [
        "id",
        "human_readable_id",
        "community",
        "level",
        "parent",
        "children",
        "title",
        "summary",
        "full_content",
        "rank",
        "rating_explanation",
        "findings",
        "full_content_json",
        "period",
        "size",
    ],
}


def _text_unit_to_disk(row: dict[str, Any]) -> dict[str, Any]:
    if "document_id" in row:
        return row
    docs = row["document_ids"]
    if len(docs) != 1:
        raise ValueError(
            f"text unit {row['id']!r} belongs to {len(docs)} documents {docs}; Microsoft GraphRAG's table holds "
            "exactly one document_id per text unit (chunk each document separately)"
        )
    return {**row, "document_id": docs[0]}


def _text_unit_from_disk(row: dict[str, Any]) -> dict[str, Any]:
    if "document_ids" in row:  # written with the 2.x columns
        return row
    row = dict(row)
    doc = row.pop("document_id")
    row["document_ids"] = [] if doc is None else [doc]
    return row


def _document_to_disk(row: dict[str, Any]) -> dict[str, Any]:
    return row if "raw_data" in row else {**row, "raw_data": row["metadata"]}


def _document_from_disk(row: dict[str, Any]) -> dict[str, Any]:
    if "metadata" in row:  # written with the 2.x columns
        return row
    row = dict(row)
    row["metadata"] = row.pop("raw_data") or "{}"
    return row


# Per table: (internal row -> on-disk row, on-disk row -> internal row); tables not listed are stored as they are.
_RENAMES: dict[
    str, tuple[Callable[[dict[str, Any]], dict[str, Any]], Callable[[dict[str, Any]], dict[str, Any]]]
] = {
    "text_units": (_text_unit_to_disk, _text_unit_from_disk),
    "documents": (_document_to_disk, _document_from_disk),
}

# Explicit arrow types so empty tables and empty lists still get the right column types.
_LIST_STR = ("text_unit_ids", "entity_ids", "relationship_ids", "covariate_ids")


def _schema(name: str) -> Any:
    import pyarrow as pa

    types: dict[str, Any] = {
        "id": pa.string(),
        "human_readable_id": pa.int64(),
        "title": pa.string(),
        "text": pa.string(),
        "creation_date": pa.string(),
        "raw_data": pa.string(),
        "document_id": pa.string(),
        "n_tokens": pa.int64(),
        "type": pa.string(),
        "description": pa.string(),
        "frequency": pa.int64(),
        "degree": pa.int64(),
        "source": pa.string(),
        "target": pa.string(),
        "weight": pa.float64(),
        "combined_degree": pa.int64(),
        "community": pa.int64(),
        "level": pa.int64(),
        "parent": pa.int64(),
        "children": pa.list_(pa.int64()),
        "period": pa.string(),
        "size": pa.int64(),
        "summary": pa.string(),
        "full_content": pa.string(),
        "rank": pa.float64(),
        "rating_explanation": pa.string(),
        "findings": pa.list_(pa.struct([("summary", pa.string()), ("explanation", pa.string())])),
        "full_content_json": pa.string(),
    }
    for col in _LIST_STR:
        types[col] = pa.list_(pa.string())
    return pa.schema([(c, types[c]) for c in COLUMNS[name]])


class TableStore:
    """Reads and writes the output folder of one project.

    Args:
        output_dir: the project's `output/` folder.
        vector_store: also write every embedding target into this kind of Microsoft GraphRAG vector store
            (`"lancedb"`, its default, under `output/lancedb`), where `graphrag query` looks; None: parquet only.
    """

    def __init__(self, output_dir: str | Path, vector_store: str | None = None) -> None:
        from xpullm.graphrag.ms_vector_store import VECTOR_STORES

        if vector_store is not None and vector_store not in VECTOR_STORES:
            raise ValueError(
                f"vector_store={vector_store!r} is invalid: expected None or one of {sorted(VECTOR_STORES)}"
            )
        self.dir = Path(output_dir)
        self.vector_store = vector_store

    def path(self, name: str) -> Path:
        return self.dir / f"{name}.parquet"

    def write(self, name: str, rows: list[dict[str, Any]]) -> None:
        """Write rows as `<name>.parquet` with the table's exact columns and types (atomic rename)."""
        import pyarrow as pa

        schema = _schema(name)
        if name in _RENAMES:
            rows = [_RENAMES[name][0](r) for r in rows]
        table = pa.Table.from_pylist([{c: r[c] for c in COLUMNS[name]} for r in rows], schema=schema)
        self._write_arrow(self.path(name), table)

    def _write_arrow(self, path: Path, table: Any) -> None:
        import pyarrow.parquet as pq

        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".parquet.tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, path)

    def read(self, name: str) -> list[dict[str, Any]]:
        """Rows of `<name>.parquet` as dicts (lists stay lists), with this package's row names (module doc)."""
        import pyarrow.parquet as pq

        path = self.path(name)
        if not path.exists():
            raise IndexNotFound(
                f"{str(path)!r} does not exist: the project has not been indexed; run `xpullm graphrag index`"
            )
        rows = pq.read_table(path).to_pylist()
        return [_RENAMES[name][1](r) for r in rows] if name in _RENAMES else rows

    def exists(self) -> bool:
        return all(self.path(n).exists() for n in COLUMNS)

    def read_frame(self, name: str) -> Any:
        """`<name>.parquet` as a pandas DataFrame, as stored (Microsoft GraphRAG's columns)."""
        import pandas as pd

        return pd.read_parquet(self.path(name))

    def write_internal(self, name: str, rows: list[dict[str, Any]]) -> None:
        """Write a table that only this package reads back (no fixed schema)."""
        import pyarrow as pa

        self._write_arrow(self.dir / "internal" / f"{name}.parquet", pa.Table.from_pylist(rows))

    def read_internal(self, name: str) -> list[dict[str, Any]]:
        import pyarrow.parquet as pq

        path = self.dir / "internal" / f"{name}.parquet"
        return pq.read_table(path).to_pylist() if path.exists() else []

    def write_vectors(self, target: str, ids: list[str], vectors: Any, model: str) -> None:
        """Store one embedding target (e.g. 'entity.description') with the embedder's name and dimension."""
        import numpy as np
        import pyarrow as pa

        arr = np.asarray(vectors, dtype=np.float32)
        if arr.ndim != 2:  # a flat list of vectors; an empty target keeps its (0, dim) shape from the caller
            arr = arr.reshape(len(ids), -1)
        table = pa.table({"id": ids, "vector": [row.tolist() for row in arr]})
        meta = {b"xpullm.model": model.encode(), b"xpullm.dim": str(arr.shape[1]).encode()}
        self._write_arrow(self.dir / f"embeddings.{target}.parquet", table.replace_schema_metadata(meta))
        if self.vector_store is not None:
            from xpullm.graphrag.ms_vector_store import VECTOR_STORES

            VECTOR_STORES[self.vector_store](self.dir / self.vector_store, target, ids, arr)

    def read_vectors(self, target: str, model: str, dim: int) -> tuple[list[str], Any]:
        """(ids, float32 matrix) of one target; raises `EmbedderMismatch` if another embedder made them."""
        import numpy as np
        import pyarrow.parquet as pq

        path = self.dir / f"embeddings.{target}.parquet"
        if not path.exists():
            raise IndexNotFound(
                f"{str(path)!r} does not exist; re-run `xpullm graphrag index` with embeddings on"
            )
        table = pq.read_table(path)
        meta = table.schema.metadata or {}
        stored_model = meta.get(b"xpullm.model", b"").decode()
        stored_dim = int(meta.get(b"xpullm.dim", b"0"))
        ids = table.column("id").to_pylist()
        if ids and (stored_dim != dim or stored_model != model):
            raise EmbedderMismatch(
                f"{path.name} holds {stored_dim}-d vectors from {stored_model!r}, but the query embedder is "
                f"{model!r} ({dim}-d); query with the same embedder, or re-index to rebuild the vectors"
            )
        mat = np.asarray(table.column("vector").to_pylist(), dtype=np.float32).reshape(len(ids), dim)
        return ids, mat

    def write_json(self, name: str, data: Any) -> None:
        path = self.dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(data, indent=2))
        os.replace(tmp, path)
