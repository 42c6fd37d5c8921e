"""The exceptions xpullm raises. Each message names the bad value and what to do about it."""

from __future__ import annotations

__all__ = [
    "CorruptCheckpoint",
    "DeviceUnavailable",
    "EmbedderMismatch",
    "InvalidGroupSize",
    "ModelNotFound",
    "UnsupportedArchitecture",
    "UnsupportedFormat",
    "XPULLMError",
]


class XPULLMError(Exception):
    """Base class of every error xpullm raises on purpose."""


class UnsupportedFormat(XPULLMError, ValueError):
    """A low-bit format name that is not registered."""

    def __init__(self, name: object, choices: list[str]) -> None:
        super().__init__(f"unsupported low-bit format {name!r}; choose one of: {', '.join(choices)}")
        self.name = name
        self.choices = choices


class InvalidGroupSize(XPULLMError, ValueError):
    """A group size that the chosen format does not accept."""

    def __init__(self, fmt: str, group_size: object, allowed: tuple[int, ...]) -> None:
        allowed_txt = ", ".join("0 (one group per row)" if g == 0 else str(g) for g in allowed)
        super().__init__(f"group size {group_size!r} is not valid for {fmt!r}; use one of: {allowed_txt}")


class ModelNotFound(XPULLMError, FileNotFoundError):
    """A model path that does not exist, or a hub id that cannot be fetched."""


class CorruptCheckpoint(XPULLMError, ValueError):
    """A safetensors / GGUF / low-bit folder that cannot be read back."""


class UnsupportedArchitecture(XPULLMError, ValueError):
    """A model architecture that the loader cannot build."""


class DeviceUnavailable(XPULLMError, RuntimeError):
    """A device that was asked for but is not present on this machine."""


class EmbedderMismatch(XPULLMError, ValueError):
    """Stored vectors were made by another embedding model (other name or dimension) than the one given: vectors of
    two models are not comparable. Raised by knowledge bases and GraphRAG projects alike."""
