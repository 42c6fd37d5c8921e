"""A GGUF file's config and tokenizer are parsed once, then loaded from the cache: the same objects' behaviour."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from xpullm.loading import gguf_meta
from xpullm.loading.gguf_source import GGUFSource
from xpullm.loading.resolve import load_tokenizer, read_config, resolve_source
from xpullm.models import default_llm_gguf

TEXTS = ["The capital of France is Paris.", "  spaces\tand\nnewlines ", "émoji 🙂 and 数字 12345", ""]


def _entries(cache: Path) -> list[str]:
    return sorted(p.name for p in (cache / "gguf").glob("*/*"))


def test_config_and_tokenizer_come_back_the_same_from_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("XPULLM_CACHE", str(tmp_path))
    src = resolve_source(default_llm_gguf())
    config, tok = read_config(src), load_tokenizer(src)  # parsed from the file, then saved
    assert _entries(tmp_path) == ["config", "tokenizer"]
    config2, tok2 = read_config(src), load_tokenizer(src)  # from the cache
    assert config2.to_dict() == config.to_dict()
    assert tok2.name_or_path == tok.name_or_path == str(src.folder)
    for text in TEXTS:
        assert tok2(text)["input_ids"] == tok(text)["input_ids"], text
    assert tok2.chat_template == tok.chat_template
    chat = [{"role": "user", "content": "Hi there"}]
    assert tok2.apply_chat_template(
        chat, tokenize=False, add_generation_prompt=True
    ) == tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert (tok2.bos_token, tok2.eos_token, tok2.pad_token) == (tok.bos_token, tok.eos_token, tok.pad_token)
    assert len(tok2) == len(tok) and tok2.decode(tok("Hello world")["input_ids"]) == "Hello world"


def test_a_damaged_entry_is_rebuilt_from_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("XPULLM_CACHE", str(tmp_path))
    src = resolve_source(default_llm_gguf())
    want = read_config(src).to_dict()
    (entry,) = (tmp_path / "gguf").glob("*/config")
    (entry / "config.json").write_text("{ not json")
    assert read_config(src).to_dict() == want  # parsed again ...
    assert read_config(src).to_dict() == want  # ... and cached again


def test_an_edited_file_is_parsed_again_and_the_reader_is_shared(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("XPULLM_CACHE", str(tmp_path / "cache"))
    copy = tmp_path / "model.gguf"
    shutil.copyfile(default_llm_gguf(), copy)
    read_config(resolve_source(copy))
    os.utime(copy, ns=(1_000_000_000, 1_000_000_000))  # a new modification time: a new version of the file
    read_config(resolve_source(copy))
    assert len(list((tmp_path / "cache" / "gguf").glob("model-*"))) == 2
    assert GGUFSource(copy).reader is GGUFSource(copy).reader is gguf_meta.reader(copy)
