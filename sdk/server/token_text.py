"""Token ids as the OpenAI `logprobs` objects show them: each token's exact bytes and its text.

A token is a byte string, not always whole characters (a byte-level BPE splits `é` into two tokens), so
`tokenizer.decode([id])` cannot give it: it turns a partial character into U+FFFD. The bytes come from the
tokenizer's vocabulary piece instead: byte-level BPE pieces (GPT-2, Llama 3, SmolLM, Qwen) map each character to one
byte through GPT-2's printable-byte alphabet; SentencePiece pieces (Llama 2, Mistral) are UTF-8 text with `▁` for a
space and `<0xNN>` for a raw byte. The text is the bytes decoded as UTF-8, a partial character written as `\\xNN`.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any

__all__ = ["TokenText", "TokenTexts"]

_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


@dataclass(frozen=True)
class TokenText:
    """One token for the wire: `token` (its text) and `bytes` (its exact UTF-8 bytes)."""

    token: str
    bytes: tuple[int, ...]


class TokenTexts:
    """Token id -> `TokenText` for one tokenizer (memoized: a vocabulary is fixed)."""

    def __init__(self, tokenizer: Any) -> None:
        self._tok = tokenizer
        probe = tokenizer.convert_ids_to_tokens(tokenizer.encode(" a", add_special_tokens=False))
        # GPT-2's alphabet writes the space byte as 'Ġ'; SentencePiece writes a leading space as '▁'.
        self._byte_level = any("Ġ" in p for p in probe)
        self._special = set(getattr(tokenizer, "all_special_ids", ()) or ())
        self._cache: dict[int, TokenText] = {}

    def __call__(self, token_id: int) -> TokenText:
        hit = self._cache.get(token_id)
        if hit is None:
            raw = self._bytes(token_id)
            hit = self._cache[token_id] = TokenText(
                raw.decode("utf-8", errors="backslashreplace"), tuple(raw)
            )
        return hit

    def _bytes(self, token_id: int) -> bytes:
        piece = self._tok.convert_ids_to_tokens(token_id)
        if piece is None or token_id in self._special:
            return self._tok.decode([token_id], skip_special_tokens=False).encode("utf-8")
        if self._byte_level:
            table = _gpt2_byte_decoder()
            if all(c in table for c in piece):
                return bytes(table[c] for c in piece)
            return piece.encode("utf-8")  # an added token written as plain text
        m = _BYTE_PIECE.fullmatch(piece)
        if m:
            return bytes([int(m.group(1), 16)])
        return piece.replace("▁", " ").encode("utf-8")


@functools.cache
def _gpt2_byte_decoder() -> dict[str, int]:
    """GPT-2's reversible map from its printable alphabet back to bytes: printable Latin-1 bytes stand for
    themselves, the other 68 bytes (controls, space, ...) are written as the code points 256, 257, ... in order."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table = {chr(b): b for b in printable}
    shifted = 256
    for b in range(256):
        if b not in printable:
            table[chr(shifted)] = b
            shifted += 1
    return table
