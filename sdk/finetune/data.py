"""Training data: JSONL records, chat conversations or a folder of documents, tokenized into training rows.

Three record kinds, told apart by their keys (one JSONL file may mix them):
- `{"text": ...}`: plain text for continued pre-training; texts are joined with EOS and cut into rows of
  `seq_len` tokens (packing), every token is a target.
- `{"messages": [{"role": ..., "content": ...}, ...]}`: a chat rendered with the tokenizer's chat template;
  only the last assistant turn is a target (the prompt is context, as in SFT).
- `{"prompt": ..., "completion": ...}`: like a one-turn chat without the template; the completion is the target.
A folder (or a single document file) becomes `text` records, one per document, read with the knowledge base's
parsers (txt, md, html, pdf, docx, csv).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = ["IGNORE_INDEX", "TrainingRow", "load_records", "tokenize_records"]

IGNORE_INDEX = -100  # label value that cross-entropy skips (PyTorch's and transformers' convention)


@dataclass(frozen=True)
class TrainingRow:
    """One training sequence: token ids and per-token labels (IGNORE_INDEX where no loss is taken)."""

    input_ids: torch.Tensor  # int64 [T]
    labels: torch.Tensor  # int64 [T]


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"{path}:{number}: not a JSON object ({exc.msg}); write one JSON object per line"
            ) from exc
        if not isinstance(record, dict) or not ({"text", "messages"} & record.keys() or "prompt" in record):
            raise ValueError(
                f"{path}:{number}: a record needs 'text', 'messages' or 'prompt'+'completion'; got {str(record)[:80]!r}"
            )
        records.append(record)
    return records


def _read_documents(paths: Iterable[Path]) -> list[dict[str, Any]]:
    from xpullm.documents.parsers import parse_file, supported_extensions

    known = set(supported_extensions())
    return [{"text": parse_file(p).text} for p in sorted(paths) if p.suffix.lower() in known]


def load_records(source: str | os.PathLike) -> list[dict[str, Any]]:
    """Records from a `.jsonl` / `.json` file, one document file, or every parseable document under a folder."""
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(
            f"training data {path} does not exist: give a .jsonl file or a folder of documents"
        )
    if path.is_dir():
        records = _read_documents(p for p in path.rglob("*") if p.is_file())
    elif path.suffix.lower() in (".jsonl", ".json"):
        records = _read_jsonl(path)
    else:
        records = _read_documents([path])
    if not records:
        raise ValueError(f"no training records found in {path} (expected JSONL records or documents)")
    return records


def _chat_row(record: dict[str, Any], tokenizer: Any, seq_len: int) -> TrainingRow:
    messages = record["messages"]
    if not messages or messages[-1].get("role") != "assistant":
        raise ValueError("a 'messages' record must end with an assistant turn (the target to learn)")
    prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    return _prompt_row(prompt, full[len(prompt) :] if full.startswith(prompt) else messages[-1]["content"],
                       tokenizer, seq_len)  # fmt: skip


def _prompt_row(prompt: str, completion: str, tokenizer: Any, seq_len: int) -> TrainingRow:
    p = tokenizer(prompt, add_special_tokens=False).input_ids
    c = tokenizer(completion, add_special_tokens=False).input_ids
    if tokenizer.eos_token_id is not None and (not c or c[-1] != tokenizer.eos_token_id):
        c = [*c, tokenizer.eos_token_id]
    ids = torch.tensor((p + c)[:seq_len])
    labels = ids.clone()
    labels[: min(len(p), seq_len)] = IGNORE_INDEX
    return TrainingRow(ids, labels)


def tokenize_records(records: list[dict[str, Any]], tokenizer: Any, seq_len: int = 256) -> list[TrainingRow]:
    """Training rows of at most `seq_len` tokens: packed text blocks first, then one row per chat/prompt record."""
    if seq_len < 8:
        raise ValueError(f"seq_len={seq_len} is too short to learn from; use at least 8 (typical: 256-2048)")
    rows: list[TrainingRow] = []
    stream: list[int] = []
    eos = tokenizer.eos_token_id
    for record in records:
        if "text" in record:
            stream += tokenizer(str(record["text"]), add_special_tokens=False).input_ids
            if eos is not None:
                stream.append(eos)
        elif "messages" in record:
            rows.append(_chat_row(record, tokenizer, seq_len))
        else:
            rows.append(
                _prompt_row(str(record["prompt"]), str(record.get("completion", "")), tokenizer, seq_len)
            )
    blocks = [stream[i : i + seq_len] for i in range(0, len(stream), seq_len)]
    text_rows = [TrainingRow(torch.tensor(b), torch.tensor(b)) for b in blocks if len(b) >= 8]
    return text_rows + rows
