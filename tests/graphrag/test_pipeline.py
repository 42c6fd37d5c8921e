"""The whole pipeline on the recorded corpus, replayed exactly from data/transcript.jsonl."""

from __future__ import annotations

import json

import networkx as nx
import pytest

from xpullm.graphrag import COLUMNS, AnswerStream, CacheMiss


def test_tables_have_graphrag_columns(indexed):
    rag, result = indexed
    for name, columns in COLUMNS.items():
        assert list(rag.table(name).columns) == columns, name
    assert (result.documents, result.text_units, result.entities, result.relationships) == (3, 6, 14, 19)
    docs = rag.table("documents")
    assert sorted(docs["title"]) == ["festival.txt", "harbor.txt", "river.txt"]
    assert all(len(ids) == 2 for ids in docs["text_unit_ids"])


def test_entities_and_relationships_content(indexed):
    rag, _ = indexed
    ents = rag.table("entities").set_index("title")
    # merged across units and summarized (authored summary for NORTH PIER)
    assert ents.loc["NORTH PIER", "description"].startswith("The North Pier is a pier of the Port of Velmora")
    assert ents.loc["NORTH PIER", "frequency"] == 2
    assert ents.loc["NORTH PIER", "type"] == "geo"
    # an empty summary answer keeps the extracted descriptions instead of erasing them
    assert "hydrologist" in ents.loc["TEODOR BRANDT", "description"]
    assert "dredging" in ents.loc["TEODOR BRANDT", "description"]
    # the broken "GREY BAY" tuple was skipped, the good one kept
    assert ents.loc["GREY BAY", "description"] == "The Grey Bay is the bay the Sable River flows into"
    rels = rag.table("relationships")
    assert not (rels["source"] == rels["target"]).any()  # the self-loop was dropped
    pair = rels[(rels["source"] == "INES CALDERA") & (rels["target"] == "NORTH PIER")].iloc[0]
    assert pair["weight"] == 8.0
    degree = dict(zip(ents.index, ents["degree"], strict=True))
    assert all(r.combined_degree == degree[r.source] + degree[r.target] for r in rels.itertuples())
    # gleaning added a relationship that the first round missed
    assert ((rels["source"] == "TALLIS GRAIN COMPANY") & (rels["target"] == "PORT OF VELMORA")).any()
    units = rag.table("text_units")
    assert all(len(u) > 0 for u in units["entity_ids"])


def test_communities_are_hierarchical_and_reported(indexed):
    rag, _ = indexed
    comms = rag.table("communities")
    assert comms["level"].max() >= 1
    by_id = comms.set_index("community")
    for c in comms.itertuples():
        for child in c.children:
            assert by_id.loc[child, "parent"] == c.community
            assert set(by_id.loc[child, "entity_ids"]) <= set(c.entity_ids)
    reports = rag.table("community_reports")
    assert sorted(reports["community"]) == sorted(comms["community"])  # no report dropped
    sable = reports[reports["title"].str.contains("Sable River")]
    assert len(sable) >= 1 and sable["rank"].iloc[0] > 0
    festival = reports[reports["title"].str.contains("Lantern Festival")]
    assert len(festival) >= 1  # not JSON on the first try, valid after the retry
    for r in reports.itertuples():
        data = json.loads(r.full_content_json)
        assert data["title"] == r.title
        assert r.full_content.startswith(f"# {r.title}")
        assert all(set(f) == {"summary", "explanation"} for f in r.findings)


def test_stats_count_calls_time_and_handled_problems(indexed):
    rag, result = indexed
    stats = rag.stats()
    assert stats == result.stats
    assert stats["status"] == "done"
    stages = stats["stages"]
    assert list(stages) == [
        "chunk", "extract_graph", "summarize_descriptions", "cluster_graph", "community_reports", "finalize",
        "embeddings", "write",
    ]  # fmt: skip
    assert all(s["seconds"] >= 0 for s in stages.values())
    # replay: every call is a cache hit, none reaches an engine
    assert stats["totals"]["llm_calls"] == 0
    assert (
        stages["extract_graph"]["cache_hits"] == 6 + 6 + 6 + 1
    )  # round 1, gleaning 1, loop checks, gleaning 2
    issues = stats["issues"]
    assert issues["extract_graph.malformed_records"] == 2
    assert issues["extract_graph.empty_answers"] == 1
    assert issues["summarize_descriptions.fallback_joined"] == 1
    assert issues["community_reports.invalid_json"] >= 1
    assert issues["community_reports.retried_ok"] >= 1
    assert issues["community_reports.repaired"] >= 1
    assert "community_reports.fallback" not in issues


def test_graphml_export(indexed):
    rag, _ = indexed
    g = nx.read_graphml(rag.store.dir / "graph.graphml")
    assert g.number_of_nodes() == 14 and g.number_of_edges() == 19
    assert g.nodes["NORTH PIER"]["type"] == "geo"
    assert g.nodes["NORTH PIER"]["community"] >= 0


def test_local_query_context_and_citations(indexed, questions):
    rag, _ = indexed
    answer = rag.query(questions["before_update"]["local"], method="local")
    assert answer.text.startswith("Ines Caldera, director of the Velmora Harbor Authority")
    titles = {r.text for r in answer.records("entity")}
    ents = rag.table("entities").set_index("id")
    names = {ents.loc[r.id, "title"] for r in answer.records("entity")}
    assert {"INES CALDERA", "NORTH PIER", "MIRA OKOYE"} <= names and titles
    assert any("thanked Ines Caldera" in r.text for r in answer.records("source"))
    assert answer.records("relationship") and answer.records("report")
    cited = answer.citations()
    shown = {r.human_readable_id for r in answer.records("entity")}
    assert cited["entities"] and set(cited["entities"]) <= shown
    assert "-----Entities-----" in answer.context_text and "-----Sources-----" in answer.context_text


def test_global_query_map_reduce(indexed, questions):
    rag, _ = indexed
    answer = rag.query(questions["before_update"]["global"], method="global")
    assert answer.text.startswith("Velmora's data has these main themes:")
    assert answer.details["map_calls"] >= 2
    assert answer.details["map_invalid"] == 2  # two map answers was not JSON: counted, not fatal
    points = answer.records("point")
    assert points and points == sorted(points, key=lambda p: -p.score)
    assert set(answer.citations()["reports"]) <= {r.human_readable_id for r in answer.records("report")}


def test_basic_and_drift_queries(indexed, questions):
    rag, _ = indexed
    basic = rag.query(questions["before_update"]["basic"], method="basic")
    assert "2022" in basic.text
    assert "moved to the North Pier" in basic.records("source")[0].text
    assert all(r.kind == "source" for r in basic.context)
    drift = rag.query(questions["before_update"]["drift"], method="drift")
    assert "flood risk" in drift.text
    assert [f["query"] for f in drift.details["follow_ups"]] == questions["drift_follow_ups"]
    assert drift.records("report") and drift.records("entity") and drift.records("source")


def test_streamed_answer_equals_plain_answer(indexed, questions):
    rag, _ = indexed
    q = questions["before_update"]["basic"]
    stream = rag.query(q, method="basic", stream=True)
    assert isinstance(stream, AnswerStream) and stream.context
    assert "".join(stream).strip() == rag.query(q, method="basic").text


def test_replay_miss_is_an_error_naming_the_hash(indexed):
    rag, _ = indexed
    with pytest.raises(CacheMiss, match=r"replay cache miss for prompt hash [0-9a-f]{64}"):
        rag.query("What did Ines Caldera eat for breakfast?", method="basic")  # names an entity: relevant


def test_irrelevant_question_is_refused_without_a_call(indexed):
    rag, _ = indexed
    before = rag.query_stats.totals()["llm_calls"] + rag.query_stats.totals()["cache_hits"]
    for method in ("local", "global", "basic", "drift"):
        answer = rag.query("How do I bake sourdough bread?", method=method)
        assert answer.text == "The indexed documents hold no information about this question."
        assert answer.details["refused"] and answer.details["relevance"] < 0.3
    assert rag.query_stats.totals()["llm_calls"] + rag.query_stats.totals()["cache_hits"] == before


def test_update_extracts_only_new_units(tmp_path, replay_project, data_dir, questions):
    rag = replay_project(tmp_path)
    rag.index(data_dir / "corpus")
    before = rag.table("entities").set_index("title")["human_readable_id"].to_dict()
    result = rag.update(data_dir / "update")
    assert (result.documents, result.text_units, result.new_text_units) == (4, 8, 2)
    stats = result.stats
    assert (
        stats["stages"]["extract_graph"]["cache_hits"] == 2 + 2 + 2
    )  # 2 new units: first round, loop check, glean
    assert stats["issues"]["community_reports.reused"] >= 1  # untouched communities keep their reports
    after = rag.table("entities").set_index("title")["human_readable_id"].to_dict()
    assert all(after[t] == i for t, i in before.items())  # old short ids stay, so old citations stay right
    assert {"LEA VOSS", "COASTLINE RAILWAY", "DUNMERE"} <= set(after)
    assert rag.update(data_dir / "update").new_text_units == 0  # the same document twice is not indexed twice
    answer = rag.query(questions["after_update"]["local"], method="local")
    assert "second track" in answer.text
