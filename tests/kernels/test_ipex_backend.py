"""The optional IPEX kernel backend (`xpullm.kernels.ipex`).

Everywhere: `import xpullm` / `import xpullm.kernels` never import IPEX, and `XPULLM_IPEX=0` keeps it out. Where
`intel_extension_for_pytorch` imports (its own venv: `make test-ipex`), its WOQ linear is held to its reference
twin for every format it takes, on random shapes, at M = 1 and a prompt chunk; the registry's property test
(`test_kernel_properties.py -k ipex_woq`) covers it over Hypothesis' shapes too.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from xpullm.formats import get_format
from xpullm.kernels import candidates, ipex, select_kernel
from xpullm.kernels.reference import ReferenceKernel

CPU = torch.device("cpu")


def test_importing_xpullm_and_its_kernels_never_imports_ipex() -> None:
    code = (
        "import sys, xpullm, xpullm.kernels, xpullm.formats, xpullm.linear; "
        "print('intel_extension_for_pytorch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "False"


def test_xpullm_ipex_0_keeps_the_kernel_out(monkeypatch) -> None:
    monkeypatch.setenv("XPULLM_IPEX", "0")
    kernel = ipex.IpexWoqKernel()
    assert not kernel.available()
    assert all(not isinstance(k, ipex.IpexWoqKernel) for k in candidates("nf4", CPU))


def test_ipex_registers_only_the_formats_it_takes() -> None:
    assert set(ipex.IPEX_FORMATS) == {"sym_int4", "asym_int4", "nf4", "sym_int8", "fp8_e4m3"}
    qw = get_format("fp4").quantize(torch.randn(8, 64))
    assert not ipex.IpexWoqKernel().supports(qw)


needs_ipex = pytest.mark.skipif(
    ipex.ipex_module() is None, reason="intel_extension_for_pytorch does not import"
)

# (N, K, group size or None for the format's default): K off the group multiple, N below and above a tile.
SHAPES = [
    (1, 1, None),
    (7, 33, None),
    (64, 128, 32),
    (40, 200, 64),
    (96, 1000, 128),
    (17, 70, 256),
    (160, 576, 0),
]


def _group(fmt: str, group: int | None) -> int:
    spec = get_format(fmt)
    return spec.default_group_size if group is None or group not in spec.group_sizes else group


@needs_ipex
@pytest.mark.parametrize("fmt", sorted(ipex.IPEX_FORMATS))
def test_ipex_woq_matches_its_twin(fmt: str) -> None:
    kernel = next(k for k in candidates(fmt, CPU) if isinstance(k, ipex.IpexWoqKernel))
    gen = torch.Generator().manual_seed(23)
    for n, k, group in SHAPES:
        qw = get_format(fmt).quantize(torch.randn(n, k, generator=gen) * 0.05, _group(fmt, group))
        assert kernel.supports(qw), f"{fmt} N={n} K={k}: IPEX declined a weight it takes"
        state = kernel.prepare(qw, CPU)
        for m in (1, 5, 33):
            for dtype in (torch.float32, torch.bfloat16):
                x = (torch.randn(m, k, generator=gen) * 2).to(dtype)
                out = kernel.matmul(x, state)
                assert out.shape == (m, n) and out.dtype == dtype
                x_read = kernel.twin_activations(x, qw)
                weight = kernel.twin_weight(qw)
                twin = F.linear(x_read, weight)
                # fp32 sums in another order (bf16 outputs: one more rounding of 2^-9).
                rel = 2.0**-8 if dtype == torch.bfloat16 else 1e-5
                bound = rel * F.linear(x_read.abs(), weight.abs()) + 1e-6
                worst = ((out.float() - twin).abs() / bound).max().item()
                assert worst <= 1.0, f"{fmt} N={n} K={k} M={m} {dtype}: {worst:.2f}x the bound"
        # Three leading dims, as a decoder calls it, and the reference kernel's answer on the same weight.
        x3 = torch.randn(2, 3, k, generator=gen)
        ref = ReferenceKernel()
        expected = ref.matmul(x3, ref.prepare(qw, CPU))
        torch.testing.assert_close(kernel.matmul(x3, state), expected, rtol=1e-5, atol=1e-5)


@needs_ipex
def test_asym_int4_with_a_zero_scale_is_declined_and_still_has_a_path() -> None:
    w = torch.randn(8, 64) * 0.05
    w[3, :32] = 0.25  # a constant group: scale 0, minimum 0.25 (no IPEX zero point expresses it)
    qw = get_format("asym_int4").quantize(w, 32)
    assert (qw.scales == 0).any()
    kernel = ipex.IpexWoqKernel()
    assert not kernel.supports(qw)
    assert not isinstance(select_kernel(qw, CPU), ipex.IpexWoqKernel)


@needs_ipex
@pytest.mark.parametrize("fmt", ["sym_int4", "nf4", "sym_int8"])
def test_export_and_row_lookups_give_the_portable_weight_back(fmt: str) -> None:
    qw = get_format(fmt).quantize(torch.randn(12, 96) * 0.05)
    kernel = ipex.IpexWoqKernel()
    state = kernel.prepare(qw, CPU)
    back = kernel.export(state)
    assert torch.equal(back.data, qw.data) and torch.equal(back.scales, qw.scales)
    rows = torch.tensor([0, 5, 11])
    torch.testing.assert_close(state.dequantize_rows(rows, torch.float32), qw.dequantize(torch.float32)[rows])


@needs_ipex
def test_the_registry_ranks_ipex_by_the_measured_priority() -> None:
    """Below the native kernels and PyTorch's int4/int8 ops everywhere; above the reference only for sym_int4
    (docs/benchmarks-cpu-avx512.md: the measured table)."""
    for fmt in ipex.IPEX_FORMATS:
        names = [k.name for k in candidates(fmt, CPU)]
        above_reference = names.index("ipex_woq") < names.index("reference")
        assert above_reference == (ipex.IPEX_PRIORITY[fmt] > -100), names
        for faster in (
            "cpu_int4_native",
            "cpu_codebook_native",
            "cpu_int8_native",
            "cpu_fp8_native",
            "cpu_int4pack",
        ):
            if faster in names:
                assert names.index(faster) < names.index("ipex_woq"), names
