"""Training data: JSONL text / chat / prompt records and folders of documents, tokenized with the right targets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from xpullm.finetune import load_records, tokenize_records
from xpullm.finetune.data import IGNORE_INDEX


def test_text_records_pack_into_rows_where_every_token_is_a_target(
    tokenizer, wiki_paragraphs, tmp_path: Path
) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n\n" for t in wiki_paragraphs[:5]))
    rows = tokenize_records(load_records(path), tokenizer, seq_len=64)
    total = sum(len(tokenizer(t, add_special_tokens=False).input_ids) + 1 for t in wiki_paragraphs[:5])
    assert all(r.input_ids.numel() == 64 for r in rows[:-1])
    assert abs(sum(r.input_ids.numel() for r in rows) - total) < 8  # only a < 8-token tail may be dropped
    assert all((r.labels == r.input_ids).all() for r in rows)


def test_chat_and_prompt_records_learn_only_the_answer(tokenizer, tmp_path: Path) -> None:
    chat = {
        "messages": [
            {"role": "user", "content": "Capital of Romania?"},
            {"role": "assistant", "content": "Bucharest."},
        ]
    }
    prompt = {"prompt": "Q: Capital of France?\nA:", "completion": " Paris."}
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(chat) + "\n" + json.dumps(prompt) + "\n")
    chat_row, prompt_row = tokenize_records(load_records(path), tokenizer, seq_len=128)
    for row, answer in ((chat_row, "Bucharest."), (prompt_row, " Paris.")):
        targets = row.labels[row.labels != IGNORE_INDEX]
        assert answer.strip() in tokenizer.decode(targets)
        assert "Capital" not in tokenizer.decode(targets)
        assert targets[-1] == tokenizer.eos_token_id or tokenizer.decode(targets).strip().endswith(
            "<|im_end|>"
        )


def test_folder_of_documents_becomes_text_records(tmp_path: Path) -> None:
    (tmp_path / "docs" / "sub").mkdir(parents=True)
    (tmp_path / "docs" / "a.md").write_text("# Title\n\nFirst document body.")
    (tmp_path / "docs" / "sub" / "b.txt").write_text("Second document.")
    (tmp_path / "docs" / "image.bin").write_bytes(b"\x00\x01")
    records = load_records(tmp_path / "docs")
    assert [r["text"] for r in records] == ["Title\n\nFirst document body.", "Second document."]


def test_bad_records_are_named_with_their_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\n{"question": "?"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: a record needs 'text', 'messages'"):
        load_records(path)
