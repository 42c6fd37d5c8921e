"""Loading: GGUF exactness, parity with transformers, save/load round trip, optimize_model, bad input."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import xpullm
from xpullm.errors import (
    CorruptCheckpoint,
    DeviceUnavailable,
    InvalidGroupSize,
    ModelNotFound,
    UnsupportedArchitecture,
    UnsupportedFormat,
)
from xpullm.linear import LowBitEmbedding, LowBitLinear
from xpullm.loading.gguf_source import GGUFSource
from xpullm.models import default_llm_gguf


def test_gguf_q4_1_maps_exactly_onto_asym_int4() -> None:
    """Every Q4_1 / Q8_0 tensor decodes to exactly what gguf's own dequantizer gives (after undoing q/k row order)."""
    from gguf import GGMLQuantizationType, quants

    source = GGUFSource(default_llm_gguf())
    raw = {t.name: t for t in source.reader.tensors}
    checked = 0
    for (hf_name, value), gname in zip(source.tensors(), raw, strict=True):
        if not gname.startswith(("blk.0.", "blk.29.", "token_embd")):
            continue
        t = raw[gname]
        if t.tensor_type not in (GGMLQuantizationType.Q4_1, GGMLQuantizationType.Q8_0):
            continue
        expected = torch.from_numpy(np.array(quants.dequantize(t.data, t.tensor_type), dtype=np.float32))
        order = source._row_order(gname, expected.shape[0])
        if order is not None:
            expected = expected[order]
        assert value.format == ("asym_int4" if t.tensor_type == GGMLQuantizationType.Q4_1 else "sym_int8")
        assert value.group_size == 32
        assert torch.equal(value.dequantize(torch.float32), expected), hf_name
        checked += 1
    assert checked == 15  # 7 linears in each of two layers + the embedding


@pytest.mark.slow
def test_gguf_loader_matches_transformers(wiki_ids) -> None:
    """Our direct GGUF mapping (names, q/k row order) gives the logits transformers' own GGUF loader gives."""
    import transformers

    path = default_llm_gguf()
    ref = transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    )
    ours = xpullm.AutoModelForCausalLM.from_pretrained(
        path, load_in_low_bit="fp32", dtype=torch.float32, progress=False
    )
    ids = wiki_ids[:, :64]
    with torch.no_grad():
        a, b = ref(ids).logits, ours(ids).logits
    assert torch.allclose(a, b, atol=2e-3, rtol=1e-3), (a - b).abs().max()


def test_save_and_load_low_bit_round_trip(default_path, tmp_path: Path, wiki_ids) -> None:
    model = xpullm.AutoModelForCausalLM.from_pretrained(
        default_path, load_in_low_bit="sym_int4", mixed_precision=True, progress=False
    )
    ids = wiki_ids[:, :48]
    with torch.no_grad():
        before = model(ids).logits
    out = model.save_low_bit(tmp_path / "smol-int4")
    manifest = json.loads((out / "xpullm_lowbit.json").read_text())
    assert manifest["formats"] == ["sym_int4", "sym_int8"]
    assert not list(out.glob("*.bin")) and (out / "tokenizer.json").exists()
    start = time.perf_counter()
    again = xpullm.AutoModelForCausalLM.load_low_bit(out)
    load_s = time.perf_counter() - start
    print(f"load_low_bit: {load_s:.2f}s")  # reported, not asserted (speed lives in bench/)
    assert isinstance(again.lm_head, LowBitLinear) and again.lm_head.format_name == "sym_int8"
    assert isinstance(again.get_input_embeddings(), LowBitEmbedding)
    with torch.no_grad():
        after = again(ids).logits
    assert torch.equal(before, after)
    # Saving the reloaded model again is byte-identical in content (the layout is portable, not ISA-packed).
    out2 = again.save_low_bit(tmp_path / "again")
    from safetensors.torch import load_file

    a, b = load_file(str(out / "model.safetensors")), load_file(str(out2 / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_every_source_counts_what_it_yields(default_path, tmp_path: Path) -> None:
    """The load progress bar has a total: each source knows, from headers alone, how many items it yields."""
    from xpullm.loading.gguf_source import GGUFSource
    from xpullm.loading.sources import LowBitSource, SafetensorsSource

    model = xpullm.AutoModelForCausalLM.from_pretrained(default_path, load_in_low_bit="nf4", progress=False)
    lowbit = model.save_low_bit(tmp_path / "smol-nf4")
    sources = [GGUFSource(default_llm_gguf()), SafetensorsSource(default_path), LowBitSource(lowbit)]
    for source in sources:
        names = [name for name, _ in source.tensors()]
        assert source.count() == len(names) > 100, type(source).__name__


def test_optimize_model_on_any_module() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10))
    x = torch.randn(5, 64)
    with torch.no_grad():
        ref = net(x)
        xpullm.optimize_model(net, low_bit="sym_int8", modules_to_not_convert=["4"])
        out = net(x)
    assert isinstance(net[0], LowBitLinear) and isinstance(net[2], LowBitLinear)
    assert isinstance(net[4], nn.Linear) and not isinstance(net[4], LowBitLinear)
    assert ((out - ref).norm() / ref.norm()).item() < 0.02


def test_mixed_precision_keeps_head_in_int8(default_path) -> None:
    model = xpullm.AutoModelForCausalLM.from_pretrained(
        default_path, load_in_low_bit="nf4", mixed_precision=True, progress=False
    )
    assert model.lm_head.format_name == "sym_int8"
    assert model.model.layers[0].mlp.down_proj.format_name == "nf4"
    # nf4 runs the native codebook kernel where the native library builds, else the reference.
    assert model.model.layers[0].mlp.down_proj.kernel.name == xpullm.kernels.kernel_table("cpu")["nf4"]
    assert xpullm.kernels.kernel_table("cpu")["nf4"] in ("cpu_codebook_native", "reference")
    rows = {name: kernel for name, _, kernel in xpullm.kernels.describe(model)}
    assert rows["lm_head"] in ("cpu_int8_native", "cpu_int8pack")  # a fast int8 path, not the reference


# ---------------------------------------------------------------------------------------------- bad input
def test_missing_path_and_offline_hub_id(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFound, match="does not exist"):
        xpullm.AutoModelForCausalLM.from_pretrained(tmp_path / "nope")
    with pytest.raises(ModelNotFound, match="hub"):
        xpullm.AutoModelForCausalLM.from_pretrained("some-org/some-model-that-is-not-here")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFound, match=r"no config\.json"):
        xpullm.AutoModelForCausalLM.from_pretrained(tmp_path / "empty")


def test_bad_format_group_and_device(default_path) -> None:
    with pytest.raises(UnsupportedFormat, match="int3"):
        xpullm.AutoModelForCausalLM.from_pretrained(default_path, load_in_low_bit="int3")
    with pytest.raises(InvalidGroupSize, match="100"):
        xpullm.AutoModelForCausalLM.from_pretrained(default_path, load_in_low_bit="sym_int4", group_size=100)
    if not torch.cuda.is_available():
        with pytest.raises(DeviceUnavailable, match="cuda"):
            xpullm.AutoModelForCausalLM.from_pretrained(default_path, device="cuda")
    with pytest.raises(DeviceUnavailable, match="tpu"):
        xpullm.resolve_device("tpu")


def test_truncated_safetensors(default_path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(default_path, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 3])
    with pytest.raises(CorruptCheckpoint, match="truncated"):
        xpullm.AutoModelForCausalLM.from_pretrained(broken, progress=False)


def test_truncated_gguf_leaves_no_half_written_cache(tmp_path: Path) -> None:
    from xpullm.loading.convert import convert_gguf_lossless

    bad = tmp_path / "cut.gguf"
    with open(default_llm_gguf(), "rb") as f:
        bad.write_bytes(f.read(2_000_000))
    with pytest.raises(CorruptCheckpoint, match="GGUF"):
        convert_gguf_lossless(bad, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.gguf"]  # no folder, no temp leftovers


def test_unsupported_architecture(tmp_path: Path) -> None:
    folder = tmp_path / "weird"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "not-a-real-arch", "architectures": ["X"]}))
    with pytest.raises(UnsupportedArchitecture, match="not-a-real-arch"):
        xpullm.AutoModelForCausalLM.from_pretrained(folder)


def test_fuse_linears_equals_concatenated_outputs() -> None:
    from xpullm.linear import fuse_linears

    torch.manual_seed(1)
    parts = [nn.Linear(128, n, bias=b) for n, b in ((128, True), (64, False), (64, True))]
    low = [LowBitLinear.from_linear(p, "asym_int4") for p in parts]
    fused = fuse_linears(low)
    x = torch.randn(3, 128, dtype=torch.bfloat16)
    expected = torch.cat([m(x) for m in low], -1)
    assert fused.out_features == 256 and fused.kernel.name == low[0].kernel.name != "reference"
    assert torch.allclose(fused(x).float(), expected.float(), atol=1e-2, rtol=1e-2)
    with pytest.raises(ValueError, match="cannot fuse"):
        fuse_linears([low[0], LowBitLinear.from_linear(parts[1], "sym_int8")])
