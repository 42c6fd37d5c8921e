"""A 16-level codebook (nf4, fp4) decoded two weights at a time into one bf16x2 register, by byte permutes.

`mma_t`'s pair decode takes a 32-bit word whose bits 0-3 and 16-19 hold two codes (planes p and p + 4 of the
layout) and yields both weights as bf16. For sym_int4 that is arithmetic (`jit._int4_pair_bf16`); a codebook has
no arithmetic form, so `jit._lut_pair_bf16` looks the levels up in registers: the low and the high bytes of the 16
bf16 levels are two 16-byte tables (four 32-bit immediates each), and `prmt` gathers bytes by 3-bit indices from
8-byte halves:

    sel  = nibbles (c0 & 7, c0 & 7, c1 & 7, c1 & 7)          index into each 8-byte half, per output byte
    mask = 0xFFFF where bit 3 of c0 is set | 0xFFFF0000 where bit 3 of c1 is   which half holds the level
    lo   = mask ? prmt(LO[8..15], sel) : prmt(LO[0..7], sel)   (one lop3)
    hi   = mask ? prmt(HI[8..15], sel) : prmt(HI[0..7], sel)
    out  = lo's bytes 0 and 2, hi's bytes 1 and 3              (one lop3): {bf16(level[c0]), bf16(level[c1])}

About 14 instructions per two weights, against a 15-select tree and an fp32 -> bf16 conversion per weight.
`pair_ptx` writes the PTX; `pair_reference` runs the same steps on Python integers (the PTX's bit-level twin,
tested against the levels for every pair of codes); the Triton interpreter runs `jit._lut_pair_bf16`'s plain path
(the register decode). fp4 (e2m1) has an arithmetic form too (its bits moved into an fp16), but that is two
conversions per weight; the permutes are the same ~14 instructions for any 16 levels.
"""

from __future__ import annotations

import struct

from xpullm.kernels.codebook import E2M1_LEVELS, NF4_LEVELS

__all__ = ["E2M1_LEVELS", "NF4_LEVELS", "bf16_bits", "pair_ptx", "pair_reference", "pair_tables"]


def bf16_bits(x: float) -> int:
    """The bf16 bit pattern of fp32 `x`, rounded to nearest even (as a float -> bf16 conversion rounds)."""
    u = struct.unpack("<I", struct.pack("<f", x))[0]
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) & 0xFFFF


def pair_tables(levels: tuple[float, ...]) -> tuple[list[int], list[int]]:
    """(LO, HI): four 32-bit words each holding the low / high bytes of the 16 levels' bf16 patterns, level i
    in byte i % 4 of word i // 4."""
    if len(levels) != 16:
        raise ValueError(f"a 4-bit codebook has 16 levels, got {len(levels)}")
    bits = [bf16_bits(v) for v in levels]
    lo = [sum((bits[4 * w + b] & 0xFF) << (8 * b) for b in range(4)) for w in range(4)]
    hi = [sum((bits[4 * w + b] >> 8) << (8 * b) for b in range(4)) for w in range(4)]
    return lo, hi


def pair_ptx(levels: tuple[float, ...], scaled: bool) -> str:
    """Inline PTX for `tl.inline_asm_elementwise`: $2 the word, ($3 a bf16 scale when `scaled`), $0 / $1 the
    bf16 weights of the codes in bits 0-3 / 16-19 (times the scale, one rounding, with `scaled`)."""
    lo, hi = pair_tables(levels)
    tables = "".join(f"mov.b32 l{i}, {lo[i]:#010x};\nmov.b32 h{i}, {hi[i]:#010x};\n" for i in range(4))
    scale = "mov.b32 nz, 0x80008000;\nmov.b32 ss, {$3, $3};\nfma.rn.bf16x2 q, q, ss, nz;\n" if scaled else ""
    return (
        "{\n.reg .b32 x, t, m, r0, r1, r2, r3, q, ss, nz, l0, l1, l2, l3, h0, h1, h2, h3;\n"
        + tables
        + "and.b32 x, $2, 0x7;\n"  # c0 & 7
        "shr.u32 t, $2, 8;\n"
        "and.b32 t, t, 0x700;\n"  # (c1 & 7) << 8
        "or.b32 x, x, t;\n"
        "shl.b32 t, x, 4;\n"
        "or.b32 x, x, t;\n"  # selector nibbles c0, c0, c1, c1
        "shr.u32 m, $2, 3;\n"
        "and.b32 m, m, 0x10001;\n"
        "mul.lo.u32 m, m, 0xFFFF;\n"  # bit 3 of c0 -> bytes 0-1, of c1 -> bytes 2-3
        "prmt.b32 r0, l0, l1, x;\n"
        "prmt.b32 r1, l2, l3, x;\n"
        "prmt.b32 r2, h0, h1, x;\n"
        "prmt.b32 r3, h2, h3, x;\n"
        "lop3.b32 r0, r0, r1, m, 0xD8;\n"  # m ? r1 : r0, bitwise
        "lop3.b32 r2, r2, r3, m, 0xD8;\n"
        "lop3.b32 q, r0, r2, 0x00FF00FF, 0xE4;\n"  # low bytes from r0, high bytes from r2
         + scale + "mov.b32 {$0, $1}, q;\n}"
    )


def _prmt(a: int, b: int, sel: int) -> int:
    """PTX `prmt.b32` (default mode, selector nibbles < 8): byte i of the result is byte sel_i of {b, a}."""
    pool = a | (b << 32)
    return sum(((pool >> (8 * ((sel >> (4 * i)) & 7))) & 0xFF) << (8 * i) for i in range(4))


def _lop3(a: int, b: int, c: int, lut: int) -> int:
    """PTX `lop3.b32`: bit i of the result is bit (a_i << 2 | b_i << 1 | c_i) of `lut`, as the truth table's
    operands 0xF0 / 0xCC / 0xAA encode it."""
    out = 0
    for i in range(32):
        index = ((a >> i) & 1) << 2 | ((b >> i) & 1) << 1 | ((c >> i) & 1)
        out |= ((lut >> index) & 1) << i
    return out


def pair_reference(word: int, levels: tuple[float, ...]) -> tuple[int, int]:
    """The bf16 bit patterns `pair_ptx(levels, scaled=False)` yields for the 32-bit `word`, step by step."""
    lo, hi = pair_tables(levels)
    x = (word & 0x7) | ((word >> 8) & 0x700)
    x |= (x << 4) & 0xFFFFFFFF
    m = (((word >> 3) & 0x10001) * 0xFFFF) & 0xFFFFFFFF
    r0, r1 = _prmt(lo[0], lo[1], x), _prmt(lo[2], lo[3], x)
    r2, r3 = _prmt(hi[0], hi[1], x), _prmt(hi[2], hi[3], x)
    r0, r2 = _lop3(r0, r1, m, 0xD8), _lop3(r2, r3, m, 0xD8)
    q = _lop3(r0, r2, 0x00FF00FF, 0xE4)
    return q & 0xFFFF, q >> 16
