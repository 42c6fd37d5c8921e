"""Embeddings written where Microsoft GraphRAG's query engines look: its vector store (LanceDB by default).

`graphrag query` (3.x) reads no embedding parquet files; it opens the vector store named in `settings.yaml`
(`vector_store.type: lancedb`, `db_uri: output/lancedb` by default) and one table per embedding, named as
`graphrag.config.embeddings` names them. The tables are written through Microsoft's own `graphrag_vectors` classes,
so their schema is exactly what its readers expect. Needs `graphrag-vectors` (installed with `graphrag` >= 3).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["MS_INDEX_NAMES", "VECTOR_STORES", "export_vector_store", "write_lancedb"]

# Our embedding targets -> Microsoft GraphRAG 3.x's embedding (and LanceDB table) names.
MS_INDEX_NAMES = {
    "entity.description": "entity_description",
    "text_unit.text": "text_unit_text",
    "community.full_content": "community_full_content",
}


def write_lancedb(db_uri: str | Path, target: str, ids: list[str], vectors: Any) -> None:
    """Replace the LanceDB table of one embedding target with `ids` and their `vectors` ([n, dim] float32)."""
    import numpy as np

    try:
        from graphrag_vectors import VectorStoreDocument
        from graphrag_vectors.lancedb import LanceDBVectorStore
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(
            f"writing Microsoft GraphRAG's vector store needs graphrag-vectors ({exc.name} is missing): "
            "pip install 'graphrag>=3'"
        ) from exc
    if target not in MS_INDEX_NAMES:
        raise ValueError(f"unknown embedding target {target!r}; choose from {sorted(MS_INDEX_NAMES)}")
    mat = np.asarray(vectors, dtype=np.float32).reshape(len(ids), -1)
    store = LanceDBVectorStore(
        db_uri=str(db_uri), index_name=MS_INDEX_NAMES[target], vector_size=int(mat.shape[1])
    )
    store.connect()
    store.create_index()  # mode="overwrite": a re-index replaces the table
    store.load_documents(
        [VectorStoreDocument(id=i, vector=v.tolist()) for i, v in zip(ids, mat, strict=True)]
    )


# Vector store kind -> writer(db folder, target, ids, vectors); the folder is `output/<kind>`.
VECTOR_STORES: dict[str, Callable[[Path, str, list[str], Any], None]] = {"lancedb": write_lancedb}


def export_vector_store(output_dir: str | Path, kind: str = "lancedb") -> dict[str, int]:
    """Write every `embeddings.<target>.parquet` of an index into `output_dir/<kind>`; returns vectors per target.

    For an index built without `vector_store=...`: afterwards `graphrag query` finds the embeddings.
    """
    import pyarrow.parquet as pq

    if kind not in VECTOR_STORES:
        raise ValueError(f"unknown vector store {kind!r}; choose from {sorted(VECTOR_STORES)}")
    output_dir = Path(output_dir)
    written: dict[str, int] = {}
    for target in MS_INDEX_NAMES:
        path = output_dir / f"embeddings.{target}.parquet"
        if not path.exists():
            continue
        table = pq.read_table(path)
        ids = table.column("id").to_pylist()
        dim = int((table.schema.metadata or {}).get(b"xpullm.dim", b"0"))
        vectors = table.column("vector").to_pylist()
        import numpy as np

        mat = np.asarray(vectors, dtype=np.float32).reshape(len(ids), dim)
        VECTOR_STORES[kind](output_dir / kind, target, ids, mat)
        written[target] = len(ids)
    if not written:
        from xpullm.graphrag.errors import IndexNotFound

        raise IndexNotFound(
            f"no embeddings.<target>.parquet under {str(output_dir)!r}; run `xpullm graphrag index` first"
        )
    return written
