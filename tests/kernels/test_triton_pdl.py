"""When kernels use programmatic dependent launch: only on CUDA devices of compute capability 9.0+, and never
when XPULLM_PDL=0. (Whether PDL changes any result is checked on the GPU by
`tests/engine/test_gpu_decode.py::test_programmatic_dependent_launch_changes_no_bit`.)"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from xpullm.kernels.triton.pdl import launch_options, pdl_enabled


def test_off_on_cpu() -> None:
    assert not pdl_enabled(torch.device("cpu"))
    assert launch_options(torch.device("cpu")) == {"PDL": False}


def test_env_switch_turns_it_off(monkeypatch) -> None:
    monkeypatch.setenv("XPULLM_PDL", "0")
    for device in ("cpu", "cuda", "cuda:0", "xpu"):
        assert launch_options(torch.device(device)) == {"PDL": False}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_exactly_from_hopper(monkeypatch) -> None:
    monkeypatch.delenv("XPULLM_PDL", raising=False)
    hopper = torch.cuda.get_device_capability()[0] >= 9
    expected = {"PDL": True, "launch_pdl": True} if hopper else {"PDL": False}
    assert launch_options(torch.device("cuda")) == expected
