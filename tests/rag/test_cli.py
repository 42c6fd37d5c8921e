"""`xpullm kb ...` end to end through the real CLI entry point (in-process, plus one real subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from xpullm.cli.main import main


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_kb_cli_end_to_end(tmp_path: Path, capsys) -> None:
    base = str(tmp_path / "kb")
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "reset.md").write_text("# Reset\n\nHold the power button for ten seconds to reset the router.\n")
    (docs / "colors.csv").write_text("color,meaning\nred,no internet\ngreen,all good\n")
    (docs / "broken.pdf").write_bytes(b"not a pdf")

    code, out, _ = run(capsys, "kb", "create", base)
    assert code == 0 and "384-d" in out
    code, out, err = run(capsys, "kb", "create", base)
    assert code == 1 and "already holds a knowledge base" in err

    code, out, _ = run(capsys, "kb", "add", base, str(docs), "--meta", "product=router")
    assert code == 0 and "2 added" in out and "1 failed" in out and "broken.pdf" in out

    code, out, _ = run(capsys, "kb", "ls", base, "--json")
    listed = {Path(d["source"]).name: d for d in json.loads(out)}
    assert set(listed) == {"reset.md", "colors.csv"} and listed["colors.csv"]["template"] == "table"
    assert listed["reset.md"]["metadata"] == {"product": "router"}
    code, out, _ = run(capsys, "kb", "ls", base, "--jobs")
    assert "job 1  done" in out and "1 failed" in out
    code, out, _ = run(capsys, "kb", "ls", base, "--check")
    assert json.loads(out)["chunks_without_vector"] == 0

    code, out, _ = run(capsys, "kb", "search", base, "how to reset the router", "-k", "1", "--json")
    (hit,) = json.loads(out)
    assert "ten seconds" in hit["text"] and hit["document"] == "Reset"
    code, out, _ = run(capsys, "kb", "search", base, "what does a red light mean?", "-k", "2")
    assert out.startswith("[1]") and "color: red; meaning: no internet" in out

    code, out, _ = run(capsys, "kb", "ask", base, "Who won the 1998 football world cup?", "--json")
    assert code == 0 and json.loads(out)["grounded"] is False

    code, out, _ = run(capsys, "kb", "rm", base, listed["reset.md"]["doc_id"])
    assert code == 0 and "1 chunks" in out
    code, out, err = run(capsys, "kb", "rm", base, "no-such-doc")
    assert code == 1 and "no document 'no-such-doc'" in err
    code, out, err = run(capsys, "kb", "search", str(tmp_path / "missing"), "x")
    assert code == 1 and "no knowledge base" in err


def test_kb_help_in_a_real_process() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "xpullm.cli.main", "kb", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for action in ("create", "add", "ls", "search", "ask", "rm"):
        assert action in out
