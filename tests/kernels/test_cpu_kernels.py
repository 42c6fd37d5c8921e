"""Every fast kernel against the reference twin on fresh random inputs."""

from __future__ import annotations

import pytest
import torch

from xpullm.formats import get_format, list_formats
from xpullm.kernels import kernel_table, select_kernel
from xpullm.kernels.reference import ReferenceKernel

CPU = torch.device("cpu")
SHAPES = [(64, 64), (128, 96), (192, 576), (576, 1536), (64, 100), (256, 33)]


def _pair(fmt: str, n: int, k: int, seed: int):
    w = torch.randn(n, k, generator=torch.Generator().manual_seed(seed)) * 0.05
    return get_format(fmt).quantize(w)


@pytest.mark.parametrize("fmt", ["sym_int4", "asym_int4", "sym_int8"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("batch", [(1,), (3,), (2, 17)])
def test_fast_cpu_kernel_matches_reference(fmt: str, shape: tuple[int, int], batch: tuple[int, ...]) -> None:
    seed = int(torch.randint(0, 2**31 - 1, ()).item())  # fresh inputs every run; the seed is in the failure
    qw = _pair(fmt, *shape, seed)
    kernel = select_kernel(qw, CPU)
    x = torch.randn(*batch, shape[1], dtype=torch.bfloat16)
    ref = ReferenceKernel().matmul(x.float(), qw)
    out = kernel.matmul(x, kernel.prepare(qw, CPU))
    assert out.shape == ref.shape and out.dtype == x.dtype
    rel = ((out.float() - ref).norm() / ref.norm()).item()
    assert rel < 1e-2, f"seed {seed}: {kernel.name} off by {rel:.4f}"


def test_fast_paths_are_selected_where_they_exist() -> None:
    assert select_kernel(_pair("sym_int4", 128, 64, 0), CPU).name == "cpu_int4pack"
    assert select_kernel(_pair("asym_int4", 128, 64, 0), CPU).name == "cpu_int4pack"
    assert select_kernel(_pair("sym_int8", 128, 64, 0), CPU).name == "cpu_int8pack"
    # Shapes the ops cannot take fall back instead of crashing: rows not in blocks of 64, K not a multiple of 8.
    assert select_kernel(_pair("sym_int4", 48, 64, 0), CPU).name == "reference"
    assert select_kernel(_pair("sym_int8", 64, 100, 0), CPU).name == "reference"
    table = kernel_table("cpu")
    assert set(table) == set(list_formats())
    assert table["nf4"] == "reference" and table["bf16"] == "dense"


@pytest.mark.parametrize("fmt", ["sym_int4", "asym_int4", "sym_int8"])
def test_export_gives_back_the_portable_weight(fmt: str) -> None:
    qw = _pair(fmt, 128, 96, 5)
    kernel = select_kernel(qw, CPU)
    out = kernel.export(kernel.prepare(qw, CPU))
    from xpullm.kernels.packing import unpack_nibbles

    codes = out["codes"]
    expected = unpack_nibbles(qw.data) if get_format(fmt).bits == 4 else qw.data
    assert torch.equal(codes.to(expected.dtype), expected)
    # Scales survive to the runtime precision (bf16) of the CPU ops.
    assert torch.allclose(out["scales"].float(), qw.scales.float(), rtol=2**-8)


def test_int4_state_reads_rows_back() -> None:
    qw = _pair("asym_int4", 256, 96, 11)
    kernel = select_kernel(qw, CPU)
    state = kernel.prepare(qw, CPU)
    rows = torch.tensor([0, 1, 63, 64, 200, 255])
    got = state.dequantize_rows(rows, torch.float32)
    assert torch.allclose(got, qw.dequantize()[rows], atol=2e-3)  # bf16 runtime scale/zero
