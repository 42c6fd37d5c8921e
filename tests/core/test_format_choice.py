"""With no format named, a load keeps the checkpoint's own format where xpullm has it exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import xpullm
from xpullm.loading import ModelSource
from xpullm.loading.format_choice import choose_format
from xpullm.models import default_llm_gguf


def _gguf(path: Path, qtype: str) -> ModelSource:
    """A GGUF file holding two layer weights of block type `qtype` (enough for the format decision)."""
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    rng = np.random.default_rng(0)
    kind = gguf.GGMLQuantizationType[qtype]
    for name in ("blk.0.attn_q.weight", "blk.0.ffn_up.weight"):
        floats = rng.standard_normal((64, 256)).astype(np.float32)
        if qtype == "Q4_K":  # gguf-py cannot quantize K-types; the decision reads only the block type
            block, size = gguf.GGML_QUANT_SIZES[kind]
            data = rng.integers(0, 255, (64, 256 // block * size), dtype=np.uint8)
        else:
            data = gguf.quants.quantize(floats, kind) if qtype != "F32" else floats
        writer.add_tensor(name, data, raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return ModelSource("gguf", path.parent, path.name)


@pytest.mark.parametrize(
    ("qtype", "expected", "lossless"),
    [("Q4_0", "sym_int4", True), ("Q4_1", "asym_int4", True), ("Q8_0", "sym_int8", True),
     ("Q4_K", "sym_int4", False), ("F32", "sym_int4", False)],
)  # fmt: skip
def test_gguf_block_type_decides_the_default(
    tmp_path: Path, qtype: str, expected: str, lossless: bool
) -> None:
    source = _gguf(tmp_path / f"m-{qtype}.gguf", qtype)
    choice = choose_format(source)
    assert choose_format(source, "auto") == choice  # "auto" and None both mean "follow the checkpoint"
    assert (choice.low_bit, choice.stored_formats) == (expected, lossless)
    assert qtype in choice.reason or "float" in choice.reason  # the message says why
    # A named format (or load_in_8bit) always wins over the checkpoint's own.
    assert choose_format(source, "nf4").low_bit == "nf4"
    assert choose_format(source, load_in_8bit=True).low_bit == "sym_int8"


def test_packaged_q4_1_gguf_follows_asym_int4() -> None:
    path = default_llm_gguf()
    choice = choose_format(ModelSource("gguf", path.parent, path.name))
    assert choice.low_bit == "asym_int4" and choice.stored_formats and "Q4_1" in choice.reason


def test_default_load_keeps_the_stored_formats(default_path: Path, wiki_ids, capsys) -> None:
    """The packaged model without a format: asym_int4 layers and the Q8_0 head as stored, equal to load_low_bit."""
    model = xpullm.AutoModelForCausalLM.from_pretrained(default_path, device="cpu", dtype=torch.float32)
    assert "asym_int4" in capsys.readouterr().err  # the load message names the format and the reason
    assert model.xpullm_format.low_bit == "asym_int4" and "own format" in model.xpullm_format.reason
    assert model.model.layers[3].mlp.down_proj.format_name == "asym_int4"
    assert model.lm_head.format_name == "sym_int8"
    exact = xpullm.AutoModelForCausalLM.load_low_bit(default_path, device="cpu", dtype=torch.float32)
    ids = wiki_ids[:, :32]
    with torch.no_grad():
        assert torch.equal(model(ids).logits, exact(ids).logits)
    # Group size given without a format: same format, new groups (re-quantized, not the stored layers).
    regrouped = choose_format(ModelSource("lowbit", default_path), group_size=64)
    assert regrouped.low_bit == "asym_int4" and not regrouped.stored_formats
