"""Is this text? Bytes that decode only as latin-1 are not necessarily text: random or compressed data has no NUL
byte about a third of the time in 8 KB, decodes "fine" as latin-1, and then ranks first for every unmatched query.

Text has almost no control characters (tab, newline, carriage return and form feed aside), in UTF-8 or in a
legacy Western encoding; arbitrary bytes have about one in eight (C0, DEL, and the C1 range / cp1252's holes).
"""

from __future__ import annotations

import codecs

__all__ = ["SNIFF_BYTES", "binary_reason"]

SNIFF_BYTES = 32768  # how much of a file is judged (its head; parsers then read all of it)
_MAX_CONTROL_SHARE = 0.02  # text: ~0 (a stray escape sequence or form feed); random bytes: ~0.13
_WHITESPACE = frozenset("\t\n\r\f\v")


def _control_share(text: str) -> float:
    if not text:
        return 0.0
    bad = sum(1 for ch in text if (ch < " " and ch not in _WHITESPACE) or "\x7f" <= ch <= "\x9f")
    return bad / len(text)


def binary_reason(data: bytes) -> str:
    """Why `data` is not text ('' when it is): NUL bytes, or a share of control bytes no text has."""
    head = data[:SNIFF_BYTES]
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return ""  # UTF-16 text: NUL-rich by design, decoded by its BOM
    if b"\x00" in head:
        return "NUL bytes"
    try:
        text = codecs.getincrementaldecoder("utf-8-sig")().decode(head, final=len(data) <= SNIFF_BYTES)
    except UnicodeDecodeError:  # a legacy encoding: cp1252's undefined bytes count as control bytes too
        text = head.decode("cp1252", errors="replace").replace("\ufffd", "\x7f")
    share = _control_share(text)
    if share > _MAX_CONTROL_SHARE:
        return (
            f"{share:.0%} of its first {len(head) // 1024 or 1} KB are control bytes (text has almost none)"
        )
    return ""
