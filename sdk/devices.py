"""Device selection: `auto` picks the best accelerator present; nothing here initialises CUDA/XPU at import."""

from __future__ import annotations

import torch

from xpullm.errors import DeviceUnavailable

__all__ = ["DEVICE_CHOICES", "available_devices", "resolve_device"]

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
