"""Every fast kernel against the reference twin on fresh random inputs."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F

from xpullm.formats import get_format, list_formats
from xpullm.kernels import cpu_native, kernel_table, select_kernel
from xpullm.kernels.cpu import CpuInt4Kernel, CpuInt8Kernel
from xpullm.kernels.packing import unpack_nibbles
from xpullm.kernels.reference import ReferenceKernel

CPU = torch.device("cpu")
SHAPES = [(64, 64), (128, 96), (192, 576), (576, 1536), (64, 100), (256, 33), (50, 96)]
NATIVE = cpu_native.library() is not None
KERNELS = {
    "sym_int4": [cpu_native.CpuNativeInt4Kernel(), CpuInt4Kernel()],
    "asym_int4": [cpu_native.CpuNativeInt4Kernel(), CpuInt4Kernel()],
    "sym_int8": [cpu_native.CpuNativeInt8Kernel(), CpuInt8Kernel()],
    "nf4": [cpu_native.CpuNativeCodebookKernel()],
    "fp4": [cpu_native.CpuNativeCodebookKernel()],
    "fp8_e4m3": [cpu_native.CpuNativeFp8Kernel()],
    "fp8_e5m2": [cpu_native.CpuNativeFp8Kernel()],
}
CASES = [(fmt, kernel) for fmt, kernels in KERNELS.items() for kernel in kernels]
native_only = pytest.mark.skipif(
    not NATIVE, reason="no C compiler / AVX2 here: the native kernel is not built"
)


def _pair(fmt: str, n: int, k: int, seed: int):
    w = torch.randn(n, k, generator=torch.Generator().manual_seed(seed)) * 0.05
    return get_format(fmt).quantize(w)


@pytest.mark.parametrize(("fmt", "kernel"), CASES, ids=[f"{f}-{k.name}" for f, k in CASES])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("batch", [(1,), (3,), (2, 17)])
def test_fast_cpu_kernel_matches_reference(
    fmt: str, kernel, shape: tuple[int, int], batch: tuple[int, ...]
) -> None:
    seed = int(torch.randint(0, 2**31 - 1, ()).item())  # fresh inputs every run; the seed is in the failure
    qw = _pair(fmt, *shape, seed)
    if not kernel.supports(qw):
        pytest.skip(f"{kernel.name} does not take {fmt} {shape} here (the registry falls back)")
    x = torch.randn(*batch, shape[1], dtype=torch.bfloat16)
    ref = ReferenceKernel().matmul(x.float(), qw)
    out = kernel.matmul(x, kernel.prepare(qw, CPU))
    assert out.shape == ref.shape and out.dtype == x.dtype
    rel = ((out.float() - ref).norm() / ref.norm()).item()
    assert rel < _REL_TO_REFERENCE.get((fmt, kernel.name), 1e-2), (
        f"seed {seed}: {kernel.name} off by {rel:.4f}"
    )


# Against the exact fp32 reference (the property test holds every kernel to its exact twin). The native nf4
# kernel stores the levels as round(127 * level) (<= 0.0037 * scale per weight) on top of int8 activations:
# 0.78% median, 1.07% max over 400 seeds on 64x64 (1% for the int4 kernels: 0.55% median, 0.94% max).
_REL_TO_REFERENCE = {("nf4", "cpu_codebook_native"): 1.5e-2}


def test_fast_paths_are_selected_where_they_exist() -> None:
    int4 = "cpu_int4_native" if NATIVE else "cpu_int4pack"
    assert select_kernel(_pair("sym_int4", 128, 64, 0), CPU).name == int4
    assert select_kernel(_pair("asym_int4", 128, 64, 0), CPU).name == int4
    assert select_kernel(_pair("sym_int8", 128, 64, 0), CPU).name == (
        "cpu_int8_native" if NATIVE else "cpu_int8pack"
    )
    # Shapes the ops cannot take fall back instead of crashing: int4pack needs rows in blocks of 64. int8pack
    # pads K to a multiple of 64 at load (its op reads K in whole SIMD vectors), so it takes every width.
    assert CpuInt4Kernel().supports(_pair("sym_int4", 48, 64, 0)) is False
    assert select_kernel(_pair("sym_int8", 64, 100, 0), CPU).name == "cpu_int8pack"
    table = kernel_table("cpu")
    assert set(table) == set(list_formats())
    assert table["bf16"] == "dense"
    # Every low-bit format has a native kernel where the library builds (`xpullm info` shows it).
    native = {"nf4": "cpu_codebook_native", "fp4": "cpu_codebook_native", "fp8_e4m3": "cpu_fp8_native"}
    for fmt, name in native.items():
        assert table[fmt] == (name if NATIVE else "reference")
        assert select_kernel(_pair(fmt, 128, 64, 0), CPU).name == table[fmt]


@native_only
def test_isa_paths_are_detected_and_each_can_be_forced(monkeypatch) -> None:
    paths = cpu_native.isa_paths()
    assert paths[0] == "avx2" and cpu_native.active_isa() == paths[-1]
    qw = _pair("nf4", 64, 96, 2)
    kernel = cpu_native.CpuNativeCodebookKernel()
    state, x = kernel.prepare(qw, CPU), torch.randn(3, 96)
    outs = []
    for isa in paths:
        with cpu_native.forced_isa(isa):
            assert cpu_native.active_isa() == isa
            outs.append(kernel.matmul(x, state))
        assert cpu_native.active_isa() == paths[-1]  # back to the best path after the block
    for out in outs[1:]:  # same integer sums, same twin: the paths agree to float rounding
        assert torch.allclose(out, outs[0], rtol=1e-5, atol=1e-5 * outs[0].abs().max().item())
    with pytest.raises(ValueError, match="not a CPU path"):
        monkeypatch.setenv("XPULLM_CPU_ISA", "sse9")
        cpu_native.library.cache_clear()
        cpu_native.library()
    monkeypatch.delenv("XPULLM_CPU_ISA")
    cpu_native.library.cache_clear()
    assert cpu_native.library() is not None


def test_codebook_tables() -> None:
    from xpullm.formats.codebook import E2M1_LEVELS, NF4_LEVELS

    table, mul = cpu_native.codebook_table(E2M1_LEVELS)  # fp4: exact (levels x 2 are integers)
    assert mul == 0.5 and torch.equal(table.float() * mul, torch.tensor(E2M1_LEVELS))
    table, mul = cpu_native.codebook_table(NF4_LEVELS)  # nf4: round(127 level), <= half a step off
    err = (table.float() * mul - torch.tensor(NF4_LEVELS)).abs().max().item()
    assert mul == 1 / 127 and err <= 0.5 / 127 and table[7] == 0 and table.abs().max() == 127


@pytest.mark.parametrize(("fmt", "kernel"), CASES, ids=[f"{f}-{k.name}" for f, k in CASES])
def test_export_gives_back_the_portable_weight(fmt: str, kernel) -> None:
    qw = _pair(fmt, 128, 96, 5)
    if not kernel.supports(qw):
        pytest.skip(f"{kernel.name} is not available here")
    out = kernel.export(kernel.prepare(qw, CPU))
    codes = out["codes"]
    expected = unpack_nibbles(qw.data) if get_format(fmt).bits == 4 else qw.data
    assert torch.equal(codes.to(expected.dtype), expected)
    # Scales survive to the runtime precision of the CPU op (bf16 for int4pack; fp16, i.e. exact, for native).
    rtol = 0 if kernel.name.endswith("_native") else 2**-8
    assert torch.allclose(out["scales"].float(), qw.scales.float(), rtol=rtol, atol=0)
    if qw.zeros is not None and kernel.name.endswith("_native"):
        assert torch.equal(out["zeros"].float(), qw.zeros.float())


@native_only
@pytest.mark.parametrize("fmt", ["sym_int4", "asym_int4", "sym_int8"])
@pytest.mark.parametrize(("n", "k", "group"), [(1, 32, 32), (5, 64, 64), (130, 288, 32), (67, 512, 256)])
@pytest.mark.parametrize("m", [1, 4, 19])
def test_native_kernel_equals_its_int8_activation_twin(fmt: str, n: int, k: int, group: int, m: int) -> None:
    """Bit-level arithmetic check: x quantised per block of 32 to int8, exactly as the C kernel does."""
    seed = int(torch.randint(0, 2**31 - 1, ()).item())
    gen = torch.Generator().manual_seed(seed)
    qw = get_format(fmt).quantize(torch.randn(n, k, generator=gen) * 0.05, group)
    x = torch.randn(m, k, generator=gen) * 3
    x[0, :32] = 0.0  # an all-zero block (scale 0) must not divide by zero
    kernel = KERNELS[fmt][0]
    out = kernel.matmul(x, kernel.prepare(qw, CPU))
    twin = cpu_native.reference_int8_activations(x, qw)
    assert out.shape == (m, n) and torch.isfinite(out).all()
    assert torch.allclose(out, twin, rtol=1e-5, atol=1e-5 * twin.abs().max().item()), f"seed {seed}"


@native_only
def test_native_rms_norm_matches_pytorch() -> None:
    x, w = torch.randn(3, 5, 576), torch.randn(576)
    assert torch.allclose(cpu_native.rms_norm(x, (576,), w, 1e-5), F.rms_norm(x, (576,), w, 1e-5), atol=1e-5)
    # Anything the native op does not take (bf16, strided) goes to PyTorch's own.
    xb = x.bfloat16()
    assert torch.equal(
        cpu_native.rms_norm(xb, (576,), w.bfloat16(), 1e-5), F.rms_norm(xb, (576,), w.bfloat16(), 1e-5)
    )


@native_only
def test_native_kernel_falls_back_when_it_cannot_be_built(monkeypatch, tmp_path, caplog) -> None:
    qw = _pair("sym_int4", 128, 64, 0)
    monkeypatch.setenv("XPULLM_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", "false")  # a "compiler" that always fails
    cpu_native.library.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="xpullm.kernels.cpu_native"):
            assert cpu_native.library() is None
            assert select_kernel(qw, CPU).name == "cpu_int4pack"
            assert kernel_table("cpu")["sym_int4"] == "cpu_int4pack"  # `xpullm info` tells the truth
        assert "building the int4 CPU kernel failed" in caplog.text
        assert not list(tmp_path.rglob("*.so")) and not list(tmp_path.rglob("*.tmp"))  # nothing half-built
        monkeypatch.setenv("XPULLM_NATIVE", "0")
        monkeypatch.delenv("CC")
        cpu_native.library.cache_clear()
        assert cpu_native.library() is None
    finally:
        monkeypatch.undo()
        cpu_native.library.cache_clear()
    assert cpu_native.library() is not None


@pytest.mark.parametrize("kernel", KERNELS["asym_int4"], ids=lambda k: k.name)
def test_int4_state_reads_rows_back(kernel) -> None:
    qw = _pair("asym_int4", 256, 96, 11)
    if not kernel.supports(qw):
        pytest.skip(f"{kernel.name} is not available here")
    state = kernel.prepare(qw, CPU)
    rows = torch.tensor([0, 1, 63, 64, 200, 255])
    got = state.dequantize_rows(rows, torch.float32)
    assert torch.allclose(got, qw.dequantize()[rows], atol=2e-3)  # bf16 runtime scale/zero


@native_only
@pytest.mark.parametrize("fmt", ["nf4", "fp4", "fp8_e4m3", "fp8_e5m2", "sym_int8"])
def test_native_state_reads_rows_back_exactly(fmt: str) -> None:
    """Tied-head lookups read the format's exact values (nf4's too, not the kernel's int8 table)."""
    qw = _pair(fmt, 70, 96, 4)
    kernel = select_kernel(qw, CPU)
    rows = torch.tensor([0, 1, 3, 4, 42, 69])
    got = kernel.prepare(qw, CPU).dequantize_rows(rows, torch.float32)
    assert torch.equal(got, qw.dequantize()[rows])


@native_only
@pytest.mark.parametrize("fmt", ["sym_int4", "asym_int4", "nf4", "sym_int8"])
@pytest.mark.parametrize(("n", "k"), [(70, 96), (48, 288)])
def test_both_weight_layouts_give_the_same_bits_on_every_path(fmt: str, n: int, k: int) -> None:
    """Tiles one after the other (AVX2 CPUs) or four interleaved by block (AVX-512 CPUs, `xq_tile_group`): each
    path's arithmetic does not depend on the layout (the four-tile kernel and the per-tile one it falls back to on
    the other layout add in the same order), and the rows read back are the weight's exact values."""
    qw = _pair(fmt, n, k, 7)
    kernel = select_kernel(qw, CPU)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(21, k, generator=gen)
    for path in cpu_native.checked_paths():
        outs = []
        for tiles in (1, 4):
            with cpu_native.tile_group(tiles), cpu_native.forced_isa(path):
                state = kernel.prepare(qw, CPU)
                assert state.rows % (4 * tiles) == 0 and state.rows >= n
                outs.append([kernel.matmul(x[:m], state) for m in (1, 3, 5, 21)])
                assert torch.equal(
                    state.codes(), qw.data if fmt == "sym_int8" else unpack_nibbles(qw.data)[:, :k]
                )
        for a, b in zip(*outs, strict=True):
            assert torch.equal(a, b), path


def _rope_tables(positions: int, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    angle = torch.arange(positions)[:, None] * (10000.0 ** (-torch.arange(0, d, 2) / d))[None]
    sin = torch.cat((-angle.sin(), angle.sin()), -1)  # first half negated, as the decoder stores it
    return torch.cat((angle.cos(), angle.cos()), -1), sin


@native_only
@pytest.mark.parametrize(("heads", "kv", "d"), [(9, 3, 64), (4, 4, 32), (8, 2, 12)])
def test_native_decode_attention_matches_its_twin(heads: int, kv: int, d: int) -> None:
    gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, ()).item()))
    batch, cap, slot = 3, 40, 21
    qkv = torch.randn(batch, 1, (heads + 2 * kv) * d, generator=gen)
    cos, sin = _rope_tables(cap, d)
    k, v = torch.randn(batch, kv, cap, d, generator=gen), torch.randn(batch, kv, cap, d, generator=gen)
    k2, v2 = k.clone(), v.clone()
    first, rope_pos = torch.tensor([0, 4, 9]), torch.tensor([21, 17, 12])
    out = cpu_native.decode_attention(qkv, cos, sin, rope_pos, k, v, first, slot, heads, d**-0.5)
    twin = cpu_native.reference_decode_attention(qkv, cos, sin, rope_pos, k2, v2, first, slot, heads, d**-0.5)
    assert out.shape == (batch, 1, heads * d)
    assert torch.allclose(out, twin, atol=1e-5) and torch.allclose(k, k2, atol=1e-5) and torch.equal(v, v2)
    # A row's result does not depend on the rest of the batch (batch == one by one, bit for bit).
    alone = cpu_native.decode_attention(
        qkv[1:2], cos, sin, rope_pos[1:2], k[1:2].clone(), v[1:2].clone(), first[1:2], slot, heads, d**-0.5
    )
    assert torch.equal(alone[0], out[1])


@native_only
def test_native_int4_takes_fp32_scales_by_rounding_them_to_fp16() -> None:
    """Folders written through a bf16 runtime hold fp32 zeros off the fp16 grid: still the fast path."""
    qw = _pair("asym_int4", 64, 96, 3)
    qw.zeros = qw.zeros.float() + 1e-4  # no longer fp16-exact
    kernel = cpu_native.CpuNativeInt4Kernel()
    assert select_kernel(qw, CPU).name == kernel.name
    x = torch.randn(2, 96)
    ref = ReferenceKernel().matmul(x, qw)
    rel = ((kernel.matmul(x, kernel.prepare(qw, CPU)) - ref).norm() / ref.norm()).item()
    assert rel < 1e-2


@native_only
def test_info_shows_a_native_kernel_for_every_low_bit_format_and_the_path(capsys) -> None:
    from xpullm.cli.main import main

    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"native CPU kernels: {cpu_native.active_isa()} path" in out
    table = out.split("kernels on cpu:\n")[1].splitlines()
    end = next((i for i, ln in enumerate(table) if not ln.startswith("  ")), len(table))
    rows = [line.split() for line in table[:end]]
    kernels = dict(rows)
    for fmt in ("sym_int4", "asym_int4", "nf4", "fp4", "sym_int8", "fp8_e4m3", "fp8_e5m2"):
        assert kernels[fmt].endswith("_native"), f"{fmt} runs {kernels[fmt]}"
