"""Device selection: `auto` picks the best accelerator present; nothing here initialises CUDA/XPU at import."""

from __future__ import annotations

import torch

from xpullm.errors import DeviceUnavailable

__all__ = ["DEVICE_CHOICES", "available_devices", "default_dtype", "native_bf16", "resolve_device"]

DEVICE_CHOICES = ("auto", "cpu", "cuda", "xpu")


def _xpu_available() -> bool:
    # Upstream PyTorch ships torch.xpu (no IPEX); older builds lack the attribute entirely.
    xpu = getattr(torch, "xpu", None)
    return bool(xpu is not None and xpu.is_available())


def available_devices() -> list[str]:
    """Device kinds usable on this machine, best first (`cuda`, `xpu`, then always `cpu`)."""
    found = []
    if torch.cuda.is_available():
        found.append("cuda")
    if _xpu_available():
        found.append("xpu")
    found.append("cpu")
    return found


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Turn `auto` / `cpu` / `cuda[:n]` / `xpu[:n]` into a `torch.device`, or raise `DeviceUnavailable`."""
    if isinstance(device, torch.device):
        device = str(device)
    if not isinstance(device, str):
        raise DeviceUnavailable(f"device must be a string such as {DEVICE_CHOICES}, got {device!r}")
    kind = device.split(":", 1)[0]
    if kind == "auto":
        return torch.device(available_devices()[0])
    if kind not in DEVICE_CHOICES:
        raise DeviceUnavailable(f"unknown device {device!r}; choose one of {', '.join(DEVICE_CHOICES)}")
    if kind != "cpu" and kind not in available_devices():
        raise DeviceUnavailable(
            f"device {device!r} is not available on this machine (found: {', '.join(available_devices())}); "
            "use device='auto' or 'cpu'"
        )
    return torch.device(device)


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 arithmetic runs natively on `device` (GPUs; CPUs with AVX512-BF16 or AMX)."""
    from xpullm.kernels.reference import native_bf16 as kernel_native_bf16

    return kernel_native_bf16(device)


def default_dtype(device: torch.device) -> torch.dtype:
    """The compute dtype used when none is given: fp32 on CPUs where xpullm's native kernels run (they, and the
    native norm and attention, work in fp32: bf16 would convert per op and skip the native decode step), bf16
    where it runs natively otherwise (PyTorch's CPU int4 op is fast only with bf16 activations), fp16 on CUDA GPUs
    without bf16, fp32 on CPUs that would emulate bf16 (every norm and attention op would pay)."""
    from xpullm.kernels import cpu_native

    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    if device.type == "cpu" and cpu_native.library() is not None:
        return torch.float32
    if not native_bf16(device):
        return torch.float32
    return torch.bfloat16
