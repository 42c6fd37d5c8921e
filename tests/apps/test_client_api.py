"""End to end through `gradio_client` against the launched app: chat, knowledge base, GraphRAG."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from gradio_client import handle_file
from gradio_client.exceptions import AppError

from xpullm.apps.demo.config import DEMO_LOW_BIT

GRAPHRAG_DATA = Path(__file__).parents[1] / "graphrag" / "data"


def _rows(table) -> list[list]:
    """Rows of a Dataframe output as the client returns it."""
    return table["data"] if isinstance(table, dict) else table


def test_chat_endpoint_streams_the_engine_answer(app, client):
    job = client.submit("Name a colour of the sky.", "", 0.0, 12, api_name="/chat")
    updates = list(job)
    final = job.result()
    expected = app.llm.chat([{"role": "user", "content": "Name a colour of the sky."}], max_new_tokens=12)
    assert final == expected.text  # greedy: the streamed answer is exactly the engine's answer
    assert len(updates) >= 2  # it streamed: several growing updates, not one final message
    assert all(final.startswith(u) for u in updates)


def test_chat_endpoint_uses_the_system_prompt(app, client):
    system = "You are a pirate. Always answer like a pirate."
    final = client.predict("Hello!", system, 0.0, 10, api_name="/chat")
    expected = app.llm.chat(
        [{"role": "system", "content": system}, {"role": "user", "content": "Hello!"}], max_new_tokens=10
    )
    assert final == expected.text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("   ", "", 0.0, 8), "the message is empty"),
        (("hi", "", 0.0, 0), "max tokens=0 must be between 1 and"),
        (("hi", "", 5.0, 8), "temperature=5.0 must be between 0 and 2"),
    ],
)
def test_chat_endpoint_bad_input_is_a_readable_error(client, args, message):
    with pytest.raises(AppError, match=message):
        client.predict(*args, api_name="/chat")


def test_kb_upload_then_ask_with_citations(client, docs_dir):
    files = [handle_file(str(docs_dir / n)) for n in ("zorblat.txt", "quillon.md", "malware.exe")]
    results, status, docs, _picker = client.predict("default", files, api_name="/kb_add")
    by_file = {r[0]: r for r in _rows(results)}
    assert by_file["zorblat.txt"][1] == "added" and by_file["zorblat.txt"][2] >= 1
    assert by_file["quillon.md"][1] == "added"
    assert by_file["malware.exe"][1] == "rejected"
    assert "unsupported file type '.exe'" in by_file["malware.exe"][3]
    assert "2 of 3 files" in status and "1 could not be added" in status
    assert {"Quillon Bakery", "zorblat"} <= {r[0] for r in _rows(docs)}  # a .txt file's title is its stem

    answer, sources = client.predict("default", "Who built the Zorblat Lighthouse?", api_name="/kb_ask")
    assert sources.startswith("**[1] zorblat**")  # the right chunk ranked first, shown beside
    assert "Alma Fenwick" in sources
    assert "[1]" in answer  # cited, by the model or by sentence attribution
    assert "**Sources**\n- **[1]** zorblat" in answer


def test_kb_bad_input_is_readable(client):
    answer, sources = client.predict("default", "   ", api_name="/kb_ask")
    assert answer == "Error: the question is empty; type a question first" and sources == ""
    answer, _ = client.predict("no such base!", "why?", api_name="/kb_ask")
    assert "knowledge base name 'no such base!' is not valid" in answer
    _, status, _, _ = client.predict("default", [], api_name="/kb_add")
    assert "no files selected" in status


def test_graphrag_index_uploads_then_query(client):
    corpus = sorted((GRAPHRAG_DATA / "corpus").glob("*.txt"))
    stages, summary, reports = client.predict(
        "velmora", "uploaded files", [handle_file(str(p)) for p in corpus], api_name="/graphrag_index"
    )
    assert summary.startswith("Indexed 3 uploaded files: 3 documents, 6 text units, 14 entities")
    assert "0 LLM calls" in summary  # replayed: every call answered from the recorded transcript
    assert stages.count("done, ") == 8  # every stage reported done, with its time
    titles = [r[2] for r in _rows(reports)]
    assert any("Sable River" in t for t in titles)

    questions = json.loads((GRAPHRAG_DATA / "questions.json").read_text())["before_update"]
    answer, context = client.predict("velmora", questions["basic"], "basic", api_name="/graphrag_query")
    assert answer.startswith("The Lantern Festival moved to the North Pier in 2022")
    assert {r[0] for r in _rows(context)} == {"source"}
    answer, context = client.predict("velmora", questions["local"], "local", api_name="/graphrag_query")
    assert answer.startswith("Ines Caldera, director of the Velmora Harbor Authority")
    assert {"entity", "relationship", "source"} <= {r[0] for r in _rows(context)}


def test_graphrag_bad_input_is_readable(client, docs_dir):
    _, summary, _ = client.predict(
        "velmora2", "uploaded files", [handle_file(str(docs_dir / "malware.exe"))], api_name="/graphrag_index"
    )
    assert summary == "Error: GraphRAG indexes .txt and .md files; cannot index: malware.exe"
    answer, _ = client.predict("never-indexed", "What?", "local", api_name="/graphrag_query")
    assert answer == "Error: project 'never-indexed' has no index yet; build the graph index first"
    answer, _ = client.predict("velmora", "", "local", api_name="/graphrag_query")
    assert answer == "Error: the question is empty; type a question first"


def test_measure_endpoint_reports_real_numbers(client):
    table, status, _chart, info = client.predict([DEMO_LOW_BIT], api_name="/measure")
    assert status == f"Measured {DEMO_LOW_BIT}"
    fmt, memory, _load_s, first_token_s, tok_s, ppl = _rows(table)[0]
    assert fmt == DEMO_LOW_BIT
    assert 60 < memory < 120  # SmolLM2-135M in 4 bits (+ fp embeddings): tens of MiB, not hundreds
    assert first_token_s > 0 and tok_s > 0
    assert 1.0 < ppl < 200.0  # a real language model on Wikipedia text, not noise (vocab 49k)
    assert f"| SmolLM2-135M-Instruct | {DEMO_LOW_BIT} | cpu |" in info  # the loaded chat model
