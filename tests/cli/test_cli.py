"""`xpullm` subcommands end to end on the packaged default model (in-process, through `main`)."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest

from xpullm.cli.main import SUBCOMMAND_MODULES, _import_plugin, build_parser, main


def test_help_lists_every_core_command(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for name in ("generate", "chat", "convert", "bench", "ppl", "info"):
        assert name in out


def test_no_command_prints_help(capsys) -> None:
    assert main([]) == 2
    assert "usage: xpullm" in capsys.readouterr().out


def test_plugin_registry_skips_only_missing_modules() -> None:
    assert _import_plugin("xpullm.not_a_module_yet") is None
    assert _import_plugin("xpullm.cli.info") is not None
    assert "xpullm.rag.cli" in SUBCOMMAND_MODULES and "xpullm.apps.cli" in SUBCOMMAND_MODULES


def test_plugin_with_a_broken_import_is_not_hidden(tmp_path, monkeypatch) -> None:
    (tmp_path / "broken_plugin.py").write_text("import a_dependency_that_is_missing\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError, match="a_dependency_that_is_missing"):
        build_parser(["broken_plugin"])


def test_generate_json_matches_engine(capsys, default_llm) -> None:
    assert main(["generate", "The capital of France is", "-n", "12", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    expected = default_llm.generate("The capital of France is", max_new_tokens=12)
    assert data["text"] == expected.text
    assert data["prompt_tokens"] == expected.prompt_tokens
    assert data["completion_tokens"] == expected.completion_tokens


def test_generate_streams_text(capsys, default_llm) -> None:
    assert main(["generate", "The capital of France is", "-n", "12", "--stop", "."]) == 0
    out = capsys.readouterr().out
    expected = default_llm.generate("The capital of France is", max_new_tokens=12, stop=".").text
    assert out == expected + "\n"


def test_chat_reads_turns_from_stdin(capsys, monkeypatch, default_llm) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("What is 2+2?\n/exit\nnever read\n"))
    assert main(["chat", "-n", "16"]) == 0
    out = capsys.readouterr().out
    answer = default_llm.chat([{"role": "user", "content": "What is 2+2?"}], max_new_tokens=16).text
    assert out == f"assistant> {answer}\n"


def test_info_shows_kernels(capsys) -> None:
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "devices: " in out and "sym_int4" in out and "kernels on cpu" in out


def test_bench_reports_speed_and_memory(capsys) -> None:
    assert main(["bench", "--prompt-tokens", "32", "--new-tokens", "8", "--repeat", "1", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["prompt_tokens"] == 32
    assert data["new_tokens"] == 8
    assert data["decode_tok_s"] > 0 and data["first_token_s"] > 0 and data["peak_rss_mib"] > 0


def test_ppl_on_a_text_file(capsys, tmp_path) -> None:
    text = tmp_path / "t.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 20)
    assert main(["ppl", str(text), "--window", "64", "--max-tokens", "128"]) == 0
    out = capsys.readouterr().out
    ppl = float(out.split()[1])
    # Repeated text is easy to predict: far below a uniform guess over the vocabulary.
    assert 1.0 < ppl < 50.0


def test_convert_then_generate_from_the_folder(capsys, tmp_path, default_llm) -> None:
    from xpullm.models import default_llm_path

    # The default model's converted folder (already built by the session fixture) as the source: the same
    # weights as `convert default`, without parsing the GGUF's metadata again (~25 s of pure-Python reading).
    folder = tmp_path / "int8"
    assert main(["convert", str(default_llm_path()), str(folder), "--low-bit", "sym_int8"]) == 0
    assert (folder / "config.json").is_file()
    capsys.readouterr()
    assert (
        main(["generate", "Hello", "-n", "4", "--json", "--model", str(folder), "--low-bit", "sym_int8"]) == 0
    )
    assert json.loads(capsys.readouterr().out)["completion_tokens"] >= 1


def test_console_script_runs() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "xpullm.cli.main", "--help"], capture_output=True, text=True, check=True
    )
    assert "generate" in out.stdout


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["generate", "--model", "/no/such/model", "hi"], "/no/such/model"),
        (["generate", "--low-bit", "nf5", "hi"], "unsupported low-bit format 'nf5'"),
        (["generate", ""], "prompt='' is invalid"),
        (["graphrag", "query", "--root", "/no/such/project", "what?"], "no index under"),
    ],
    ids=["missing-model", "unknown-format", "empty-prompt", "missing-index"],
)
def test_a_user_mistake_is_one_error_line_and_a_hint(capsys, argv, needle) -> None:
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2, err
    assert err[0].startswith("error: ") and needle in err[0]
    assert err[1].startswith("hint: ") and "--debug" in err[1]


def test_debug_anywhere_on_the_line_shows_the_traceback() -> None:
    from xpullm.errors import ModelNotFound

    with pytest.raises(ModelNotFound):
        main(["generate", "--model", "/no/such/model", "hi", "--debug"])
    with pytest.raises(ModelNotFound):
        main(["--debug", "generate", "--model", "/no/such/model", "hi"])
