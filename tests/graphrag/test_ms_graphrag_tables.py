"""Microsoft GraphRAG 3.x (PyPI `graphrag`) reads our output: its typed loaders and `read_indexer_*` readers on
the replayed index's tables, and its LanceDB vector store on our embeddings."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from xpullm.graphrag import COLUMNS
from xpullm.graphrag.ms_vector_store import MS_INDEX_NAMES, export_vector_store
from xpullm.graphrag.tables import TableStore

graphrag = pytest.importorskip("graphrag", reason="Microsoft graphrag 3.x is in the dev extra")


def _frame(rag, name: str) -> pd.DataFrame:
    return pd.read_parquet(rag.store.path(name))


def test_tables_have_graphrag_3_final_columns(indexed):
    from graphrag.data_model import schemas

    rag, _ = indexed
    final = {
        "documents": schemas.DOCUMENTS_FINAL_COLUMNS,
        "text_units": schemas.TEXT_UNITS_FINAL_COLUMNS,
        "entities": schemas.ENTITIES_FINAL_COLUMNS,
        "relationships": schemas.RELATIONSHIPS_FINAL_COLUMNS,
        "communities": schemas.COMMUNITIES_FINAL_COLUMNS,
        "community_reports": schemas.COMMUNITY_REPORTS_FINAL_COLUMNS,
    }
    for name, columns in final.items():
        assert COLUMNS[name] == columns, name
        assert list(_frame(rag, name).columns) == columns, name


def test_graphrag_readers_load_every_table(indexed):
    from graphrag.data_model import dfs
    from graphrag.query import indexer_adapters as ia

    rag, result = indexed
    docs = dfs.documents_typed(_frame(rag, "documents"))
    units = dfs.text_units_typed(_frame(rag, "text_units"))
    entities = dfs.entities_typed(_frame(rag, "entities"))
    rels = dfs.relationships_typed(_frame(rag, "relationships"))
    comms = dfs.communities_typed(_frame(rag, "communities"))
    reports = dfs.community_reports_typed(_frame(rag, "community_reports"))

    text_units = ia.read_indexer_text_units(units)
    assert len(text_units) == result.text_units
    doc_of = {tid: row.id for row in docs.itertuples() for tid in row.text_unit_ids}
    assert all(t.document_id == doc_of[t.id] for t in text_units)
    assert all(t.entity_ids for t in text_units)

    ents = ia.read_indexer_entities(entities, comms, community_level=None)
    assert sorted(e.title for e in ents) == sorted(entities["title"])
    assert all(e.community_ids and e.community_ids != ["-1"] for e in ents)  # every entity is in a community
    relationships = ia.read_indexer_relationships(rels)
    assert len(relationships) == result.relationships
    assert {(r.source, r.target) for r in relationships} == set(
        zip(rels["source"], rels["target"], strict=True)
    )

    report_objs = ia.read_indexer_reports(reports, comms, community_level=None)
    assert report_objs and all(r.full_content for r in report_objs)
    communities = ia.read_indexer_communities(comms, reports)
    assert len(communities) == result.communities
    assert json.loads(docs["raw_data"].iloc[0]) is not None  # the document metadata, as a JSON object


def test_rows_keep_internal_names_and_old_tables_still_read(tmp_path):
    store = TableStore(tmp_path)
    unit = {"id": "u1", "human_readable_id": 0, "text": "t", "n_tokens": 1, "document_ids": ["d1"]}
    unit |= {"entity_ids": ["e"], "relationship_ids": [], "covariate_ids": []}
    doc = {"id": "d1", "human_readable_id": 0, "title": "a.txt", "text": "t", "text_unit_ids": ["u1"]}
    doc |= {"creation_date": "2026-12-05", "metadata": '{"path": "a.txt"}'}
    store.write("text_units", [unit])
    store.write("documents", [doc])
    assert pd.read_parquet(store.path("text_units"))["document_id"].tolist() == ["d1"]
    assert pd.read_parquet(store.path("documents"))["raw_data"].tolist() == ['{"path": "a.txt"}']
    assert store.read("text_units") == [unit]
    assert store.read("documents") == [doc]
    # A table written with the 2.x columns (document_ids, metadata) reads as it did.
    pd.DataFrame([unit]).to_parquet(store.path("text_units"))
    pd.DataFrame([doc]).to_parquet(store.path("documents"))
    assert store.read("text_units")[0]["document_ids"] == ["d1"]
    assert store.read("documents")[0]["metadata"] == '{"path": "a.txt"}'
    with pytest.raises(ValueError, match="exactly one document_id"):
        store.write("text_units", [{**unit, "document_ids": ["d1", "d2"]}])


def test_embeddings_in_graphrag_lancedb_store(indexed, tmp_path):
    import shutil

    from graphrag.query.indexer_adapters import read_indexer_report_embeddings, read_indexer_reports
    from graphrag_vectors.lancedb import LanceDBVectorStore

    rag, _ = indexed
    out = tmp_path / "output"
    shutil.copytree(rag.store.dir, out)
    written = export_vector_store(out)
    assert set(written) == set(MS_INDEX_NAMES) and written["entity.description"] > 0
    ours = TableStore(out)
    ids, mat = ours.read_vectors("entity.description", rag.embedder.model_name, int(rag.embedder.dim))
    store = LanceDBVectorStore(
        db_uri=str(out / "lancedb"), index_name="entity_description", vector_size=mat.shape[1]
    )
    store.connect()
    hits = store.similarity_search_by_vector(mat[3].tolist(), k=2)
    assert hits[0].document.id == ids[3] and hits[0].score == pytest.approx(1.0, abs=1e-4)
    # graphrag's own reader attaches the report vectors from the store by report id.
    reports_store = LanceDBVectorStore(
        db_uri=str(out / "lancedb"), index_name="community_full_content", vector_size=mat.shape[1]
    )
    reports_store.connect()
    reports = read_indexer_reports(_frame(rag, "community_reports"), _frame(rag, "communities"), None)
    read_indexer_report_embeddings(reports, reports_store)
    assert all(
        r.full_content_embedding is not None and len(r.full_content_embedding) == mat.shape[1]
        for r in reports
    )


def test_table_store_writes_the_vector_store_with_its_parquet(tmp_path):
    import numpy as np
    from graphrag_vectors.lancedb import LanceDBVectorStore

    store = TableStore(tmp_path, vector_store="lancedb")
    vectors = np.eye(3, 4, dtype=np.float32)
    store.write_vectors("text_unit.text", ["a", "b", "c"], vectors, "m")
    lance = LanceDBVectorStore(db_uri=str(tmp_path / "lancedb"), index_name="text_unit_text", vector_size=4)
    lance.connect()
    assert lance.search_by_id("b").vector == pytest.approx([0.0, 1.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="vector_store='qdrant' is invalid"):
        TableStore(tmp_path, vector_store="qdrant")
