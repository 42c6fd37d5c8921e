"""Quantities as people read them (durations); imports nothing from xpullm, so every layer may use it."""

from __future__ import annotations

__all__ = ["human_duration"]


def human_duration(seconds: float) -> str:
    """A duration as people read it: `0.42 s`, `12.3 s`, `3 min 22 s`, `1 h 05 min`."""
    if seconds < 0:
        raise ValueError(f"seconds={seconds} must not be negative")
    if seconds < 1:
        return f"{seconds:.2f} s"
    if seconds < 60:
        return f"{seconds:.1f} s"
    total = round(seconds)
    if total < 3600:
        return f"{total // 60} min {total % 60:02d} s"
    return f"{total // 3600} h {total % 3600 // 60:02d} min"
