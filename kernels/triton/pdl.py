"""Programmatic dependent launch (PDL, Hopper and later): the next kernel starts while this one drains.

A batch-1 decode step is a chain of ~330 short kernels, each waiting for the previous one to finish before
its programs are even scheduled: an SM sits idle for the launch and for the first HBM round trip of every
kernel. With PDL (`launch_pdl=True`), a kernel's programs may be scheduled as soon as every program of the
kernel before it has signalled (`gdc_launch_dependents`); they can then do the work that depends on nothing
earlier - the GEMVs load their first tile of weights - and block in `gdc_wait` until the previous kernel has
finished and its writes are visible. The chain stays ordered: each kernel waits before it reads or writes
anything an earlier kernel touches, and signals only after its own wait, so at most two kernels overlap.

Every kernel here takes a `PDL: tl.constexpr`; `launch_options(device)` gives the keyword arguments that switch
it on for one launch, and it is on only on CUDA devices of compute capability 9.0+ (never in the Triton
interpreter, on XPU or on older GPUs, where the constexpr-false branch compiles to nothing).
XPULLM_PDL=0 turns it off (for A/B measurements and as an escape hatch).
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

from xpullm.settings import runtime_settings

__all__ = ["launch_options", "pdl_enabled", "wait_for_inputs"]


@triton.jit
def wait_for_inputs(PDL: tl.constexpr):
    """Block until the previous kernel in the stream has finished, then let the next one be scheduled.

    Call it before the first read of anything an earlier kernel wrote (activations, caches) and before the first
    write; loads of weights, which no kernel of the step writes, may come before it.
    """
    if PDL:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()


@functools.cache
def _supported(device: torch.device) -> bool:
    if device.type != "cuda" or os.environ.get("TRITON_INTERPRET") == "1" or not torch.cuda.is_available():
        return False
    if torch.cuda.get_device_capability(device)[0] < 9:
        return False
    extra = getattr(tl, "extra", None)
    return hasattr(getattr(extra, "cuda", None), "gdc_wait")


def pdl_enabled(device: torch.device) -> bool:
    """Whether kernels launched on `device` use PDL (CUDA, compute capability >= 9.0, XPULLM_PDL not 0)."""
    return runtime_settings().pdl and _supported(device)


def launch_options(device: torch.device) -> dict[str, bool]:
    """Keyword arguments for one launch of a kernel taking `PDL`: `PDL=...`, plus `launch_pdl=True` when on."""
    if pdl_enabled(device):
        return {"PDL": True, "launch_pdl": True}
    return {"PDL": False}
