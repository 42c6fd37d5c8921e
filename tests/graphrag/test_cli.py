"""`xpullm graphrag init|index|update|query` through the plug-in's own argparse registration."""

from __future__ import annotations

import argparse
import json
import shutil

from xpullm.graphrag.cli import register


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="xpullm")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_init_index_update_query(tmp_path, data_dir, questions, capsys):
    root = tmp_path / "proj"
    assert _run(["graphrag", "init", "--root", str(root)]) == 0
    assert (root / "settings.yaml").exists() and (root / "input").is_dir()
    # use the recorded project's settings so the transcript holds every prompt
    shutil.copy(data_dir / "settings.yaml", root / "settings.yaml")
    for doc in (data_dir / "corpus").iterdir():
        shutil.copy(doc, root / "input" / doc.name)
    transcript = str(data_dir / "transcript.jsonl")
    assert _run(["graphrag", "index", "--root", str(root), "--transcript", transcript, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "indexed 3 documents: 6 text units (6 new), 14 entities, 19 relationships" in out
    assert "extract_graph.malformed_records=2" in out
    q = questions["before_update"]["global"]
    # global search reads reports only, so its prompts do not depend on the embedder's float rounding
    assert _run(["graphrag", "query", "--root", str(root), "--transcript", transcript, "--method", "global",
                 "--json", q]) in (0,)  # fmt: skip
    payload = json.loads(capsys.readouterr().out)
    assert payload["method"] == "global" and payload["text"]
    assert any(r["kind"] == "report" for r in payload["context"])
    upd = ["graphrag", "update", "--root", str(root), "--transcript", transcript, str(data_dir / "update")]
    assert _run(upd) == 0
    assert "updated 4 documents: 8 text units (2 new)" in capsys.readouterr().out
