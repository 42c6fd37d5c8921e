"""Pure parts: config/YAML, tuple parser, JSON repair, chunking, cache keys."""

from __future__ import annotations

import pytest

from xpullm.graphrag import CacheMiss, ConfigError, ExtractionConfig, GraphRAGConfig, LLMCache
from xpullm.graphrag.cache import CacheEntry, cache_key
from xpullm.graphrag.chunking import Document, chunk_document, load_inputs
from xpullm.graphrag.extraction import parse_tuples
from xpullm.graphrag.jsonfix import parse_json_object
from xpullm.graphrag.transcript import approx_token_count


def test_yaml_roundtrip_and_errors(tmp_path):
    cfg = GraphRAGConfig().replace(extract_graph={"max_gleanings": 0, "entity_types": ["person", "place"]})
    cfg.to_yaml(tmp_path / "settings.yaml")
    back = GraphRAGConfig.from_yaml(tmp_path / "settings.yaml")
    assert back == cfg
    assert back.extract_graph.entity_types == ("person", "place")
    with pytest.raises(ConfigError, match="unknown key"):
        GraphRAGConfig.from_dict({"chunks": {"sise": 3}})
    with pytest.raises(ConfigError, match="unknown config section"):
        GraphRAGConfig.from_dict({"chunking": {}})
    with pytest.raises(ConfigError, match="overlap"):
        GraphRAGConfig().replace(chunks={"size": 10, "overlap": 10})
    with pytest.raises(ConfigError, match="settings file"):
        GraphRAGConfig.from_yaml(tmp_path / "missing.yaml")


def test_parse_tuples_counts_malformed():
    cfg = ExtractionConfig()
    answer = (
        'Sure, here you go:\n("entity"<|>ada lovelace<|>person<|>A mathematician)##\n'
        '("entity"<|>"LONDON"<|>geo<|>A city)\n'  # no record delimiter, quoted name
        '("entity"<|>BROKEN)##'  # too few fields
        '("relationship"<|>ADA LOVELACE<|>LONDON<|>lived in<|>strength 7)##'
        '("relationship"<|>LONDON<|>london<|>self<|>1)##'  # self-loop
        '("relationship"<|>ADA LOVELACE<|>LONDON)##'  # no description
        '("entity" ADA)<|COMPLETE|>'  # no delimiter at all
    )
    res = parse_tuples(answer, cfg, "u1")
    assert [(e.name, e.type) for e in res.entities] == [("ADA LOVELACE", "person"), ("LONDON", "geo")]
    assert [(r.source, r.target, r.weight) for r in res.relationships] == [("ADA LOVELACE", "LONDON", 7.0)]
    assert res.malformed == 4
    assert parse_tuples("", cfg, "u1").malformed == 0


@pytest.mark.parametrize(
    ("text", "repaired"),
    [
        ('{"title": "A", "n": 1}', False),
        ('```json\n{"title": "A", "n": 1,}\n```', True),
        ('Here it is: {"title": "A", "n": 1} hope that helps', True),
        ('{"title": "A", "n": 1, "findings": [{"summary": "cut', True),
    ],
)
def test_parse_json_object_repairs(text, repaired):
    data, was_repaired = parse_json_object(text)
    assert data is not None and data["title"] == "A"
    assert was_repaired is repaired


def test_parse_json_object_gives_up():
    assert parse_json_object("no json here") == (None, False)
    assert parse_json_object("") == (None, False)
    assert parse_json_object("[1, 2]") == (None, False)


def test_chunking_keeps_every_sentence_within_size():
    text = " ".join(f"Sentence number {i} talks about topic {i % 3}." for i in range(40))
    doc = Document(id="d", title="t", text=text)
    units = chunk_document(doc, size=40, overlap=10, count_tokens=approx_token_count)
    assert len(units) > 3
    assert all(u.n_tokens <= 40 for u in units)
    joined = " ".join(u.text for u in units)
    assert all(f"Sentence number {i} " in joined for i in range(40))
    assert units[0].text.split(". ")[-1].rstrip(".") in units[1].text  # overlap of one sentence
    # the same input gives the same ids (resume and update depend on it)
    assert [u.id for u in units] == [u.id for u in chunk_document(doc, 40, 10, approx_token_count)]


def test_load_inputs_paths_folders_and_texts(tmp_path):
    (tmp_path / "a.txt").write_text("Alpha text.")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.md").write_text("Beta text.")
    docs = load_inputs([tmp_path, "raw text here"])
    assert [d.title for d in docs] == ["a.txt", "sub/b.md", "text_0"]
    with pytest.raises(ConfigError, match="empty"):
        load_inputs(["   "])
    sentence = "Marie Curie was born in Warsaw and moved to Paris, where she studied physics. " * 5
    assert len(sentence) > 255  # longer than a file name may be: it is text, not a missing path
    assert [d.text for d in load_inputs([sentence])] == [sentence]


def test_cache_persists_and_replay_miss_names_hash(tmp_path):
    path = tmp_path / "c.sqlite"
    cache = LLMCache(path)
    key = cache_key("m", "hello", {"max_new_tokens": 5})
    cache.put_many([CacheEntry(key, "s", "m", {"max_new_tokens": 5}, "hello", "world", "stop", 1, 1)])
    cache.close()
    again = LLMCache(path, mode="replay")
    assert again.get(key).text == "world"
    other = cache_key("m", "hello", {"max_new_tokens": 6})
    assert other != key
    with pytest.raises(CacheMiss, match=other):
        again.require(other, "extract_graph", "hello")
    n = again.export_transcript(tmp_path / "t.jsonl")
    assert n == 1
    assert LLMCache(None, mode="replay", transcript=tmp_path / "t.jsonl").get(key).text == "world"


def test_import_is_light():
    import subprocess
    import sys

    code = (
        "import sys, xpullm.graphrag; "
        "print([m for m in ('pyarrow', 'pandas', 'networkx', 'graspologic_native', 'torch') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
