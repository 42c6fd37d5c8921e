"""Low-bit weight formats: one registry, a portable storage layout, quantize / dequantize for each."""

from xpullm.formats import codebook, float8, integer, passthrough  # noqa: F401  (registers the formats)
from xpullm.formats.base import (
    FORMATS,
    PER_CHANNEL,
    QuantFormat,
    QuantizedWeight,
    get_format,
    list_formats,
    pack_nibbles,
    register_format,
    unpack_nibbles,
)

__all__ = [
    "FORMATS",
    "PER_CHANNEL",
    "QuantFormat",
    "QuantizedWeight",
    "get_format",
    "list_formats",
    "pack_nibbles",
    "register_format",
    "unpack_nibbles",
]
