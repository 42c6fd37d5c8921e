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

__all__ = [
    "E2M1_LEVELS",
    "NF4_LEVELS",
    "bf16_bits",
    "pair_ptx",
    "pair_reference",
    "pair_tables",
    "quad_f32_ptx",
    "quad_f32_reference",
    "quad_ptx",
    "quad_reference",
]


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
    """PTX `prmt.b32` (default mode): byte i of the result is byte sel_i & 7 of {b, a}, or, where nibble sel_i has
    bit 3 set, that byte's top bit replicated over all eight bits."""
    pool = a | (b << 32)
    out = 0
    for i in range(4):
        nib = (sel >> (4 * i)) & 0xF
        byte = (pool >> (8 * (nib & 7))) & 0xFF
        out |= (0xFF if byte & 0x80 else 0) << (8 * i) if nib & 8 else byte << (8 * i)
    return out


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


# Four codes at a time: planes 2q, 2q + 1 (byte q of the word) and 2q + 4, 2q + 5 (byte q + 2), for q = 0 after the
# caller shifts the word right by 8 q. One gather serves all four codes, where the pair decode's gathers use half of
# the bytes they fetch, and the selectors and masks come from byte permutes of the word itself:
#
#     sel  = prmt(word, bytes 0, 2) & 0x7777                  the four codes' low 3 bits, one nibble each
#     mask = prmt(word << 4, word, sign of bytes 0, 0, 2, 2)  each code's bit 3 spread over its output byte
#     lo   = mask ? prmt(LO[8..15], sel) : prmt(LO[0..7], sel)   (one lop3; hi likewise)
#     a    = prmt(lo, hi, 0x6240) = {level[c 2q], level[c 2q+4]},  b = prmt(lo, hi, 0x7351) = {2q+1, 2q+5}
#
# 12 instructions per four weights (the pair decode: about 16 per two).
_QUAD_SEL = 0x20  # bytes 0 and 2 of the word into bytes 0 and 1: the selector nibbles
_QUAD_MASK = 0xEAC8  # sign of (word << 4).byte0, word.byte0, (word << 4).byte2, word.byte2
_QUAD_A = 0x6240  # lo.b0, hi.b0, lo.b2, hi.b2: planes 2q, 2q + 4
_QUAD_B = 0x7351  # lo.b1, hi.b1, lo.b3, hi.b3: planes 2q + 1, 2q + 5


def quad_ptx(levels: tuple[float, ...], scaled: bool) -> str:
    """Inline PTX for `tl.inline_asm_elementwise`: $4 the word (shifted so that its bytes 0 and 2 hold the four
    codes), ($5 a bf16 scale when `scaled`), $0 / $1 the bf16 weights of the codes in bits 0-3 / 16-19, $2 / $3
    those in bits 4-7 / 20-23 (times the scale, one rounding, with `scaled`)."""
    lo, hi = pair_tables(levels)
    tables = "".join(f"mov.b32 l{i}, {lo[i]:#010x};\nmov.b32 h{i}, {hi[i]:#010x};\n" for i in range(4))
    scale = (
        "mov.b32 nz, 0x80008000;\nmov.b32 ss, {$5, $5};\nfma.rn.bf16x2 a, a, ss, nz;\nfma.rn.bf16x2 b, b, ss, nz;\n"
        if scaled
        else ""
    )
    return (
        "{\n.reg .b32 x, y, m, r0, r1, r2, r3, lo, hi, a, b, ss, nz, l0, l1, l2, l3, h0, h1, h2, h3;\n"
        + tables
        + f"prmt.b32 x, $4, $4, {_QUAD_SEL:#x};\n"
        "and.b32 x, x, 0x7777;\n"
        "shl.b32 y, $4, 4;\n"
        f"prmt.b32 m, y, $4, {_QUAD_MASK:#x};\n"
        "prmt.b32 r0, l0, l1, x;\n"
        "prmt.b32 r1, l2, l3, x;\n"
        "prmt.b32 r2, h0, h1, x;\n"
        "prmt.b32 r3, h2, h3, x;\n"
        "lop3.b32 lo, r0, r1, m, 0xD8;\n"  # m ? r1 : r0, bitwise
        "lop3.b32 hi, r2, r3, m, 0xD8;\n"
        f"prmt.b32 a, lo, hi, {_QUAD_A:#x};\n"
        f"prmt.b32 b, lo, hi, {_QUAD_B:#x};\n" + scale + "mov.b32 {$0, $1}, a;\nmov.b32 {$2, $3}, b;\n}"
    )


def quad_reference(word: int, levels: tuple[float, ...]) -> tuple[int, int, int, int]:
    """The bf16 bit patterns `quad_ptx(levels, scaled=False)` yields for the 32-bit `word`, step by step: the
    levels of the codes in bits 0-3, 16-19, 4-7 and 20-23."""
    lo_t, hi_t = pair_tables(levels)
    word &= 0xFFFFFFFF
    x = _prmt(word, word, _QUAD_SEL) & 0x7777
    m = _prmt((word << 4) & 0xFFFFFFFF, word, _QUAD_MASK)
    r0, r1 = _prmt(lo_t[0], lo_t[1], x), _prmt(lo_t[2], lo_t[3], x)
    r2, r3 = _prmt(hi_t[0], hi_t[1], x), _prmt(hi_t[2], hi_t[3], x)
    lo, hi = _lop3(r0, r1, m, 0xD8), _lop3(r2, r3, m, 0xD8)
    a, b = _prmt(lo, hi, _QUAD_A), _prmt(lo, hi, _QUAD_B)
    return a & 0xFFFF, a >> 16, b & 0xFFFF, b >> 16


# The same four codes to their exact fp32 levels (the one-row GEMV multiplies in fp32): four byte tables instead
# of two, one select per table, then a 4 x 4 byte transpose (8 permutes): 24 instructions per four weights, no
# memory reads (the GEMV otherwise loads each level from a 16-entry table in global memory).
_T01 = 0x5140  # {a.b0, b.b0, a.b1, b.b1}
_T23 = 0x7362  # {a.b2, b.b2, a.b3, b.b3}
_LOW = 0x5410  # {a.b0, a.b1, b.b0, b.b1}
_HIGH = 0x7632  # {a.b2, a.b3, b.b2, b.b3}


def f32_tables(levels: tuple[float, ...]) -> list[list[int]]:
    """Four tables (byte 0..3 of the levels' fp32 patterns), each four 32-bit words: level i in byte i % 4 of
    word i // 4."""
    if len(levels) != 16:
        raise ValueError(f"a 4-bit codebook has 16 levels, got {len(levels)}")
    bits = [struct.unpack("<I", struct.pack("<f", v))[0] for v in levels]
    return [
        [sum(((bits[4 * w + b] >> (8 * k)) & 0xFF) << (8 * b) for b in range(4)) for w in range(4)]
        for k in range(4)
    ]


def quad_f32_ptx(levels: tuple[float, ...]) -> str:
    """Inline PTX for `tl.inline_asm_elementwise`: $4 the word (bytes 0 and 2 hold the four codes, as for
    `quad_ptx`), $0 / $1 / $2 / $3 the fp32 levels of the codes in bits 0-3 / 16-19 / 4-7 / 20-23."""
    tabs = f32_tables(levels)
    regs = ", ".join(f"t{k}{w}" for k in range(4) for w in range(4))
    tables = "".join(f"mov.b32 t{k}{w}, {tabs[k][w]:#010x};\n" for k in range(4) for w in range(4))
    gathers = "".join(
        f"prmt.b32 r0, t{k}0, t{k}1, x;\nprmt.b32 r1, t{k}2, t{k}3, x;\nlop3.b32 b{k}, r0, r1, m, 0xD8;\n"
        for k in range(4)
    )  # b_k: byte k of each of the four levels
    return (
        f"{{\n.reg .b32 x, y, m, r0, r1, b0, b1, b2, b3, u0, u1, u2, u3, {regs};\n"
        + tables
        + f"prmt.b32 x, $4, $4, {_QUAD_SEL:#x};\n"
        "and.b32 x, x, 0x7777;\n"
        "shl.b32 y, $4, 4;\n"
        f"prmt.b32 m, y, $4, {_QUAD_MASK:#x};\n"
        + gathers
        + f"prmt.b32 u0, b0, b1, {_T01:#x};\nprmt.b32 u1, b2, b3, {_T01:#x};\n"
        f"prmt.b32 u2, b0, b1, {_T23:#x};\nprmt.b32 u3, b2, b3, {_T23:#x};\n"
        f"prmt.b32 $0, u0, u1, {_LOW:#x};\nprmt.b32 $2, u0, u1, {_HIGH:#x};\n"
        f"prmt.b32 $1, u2, u3, {_LOW:#x};\nprmt.b32 $3, u2, u3, {_HIGH:#x};\n}}"
    )


def quad_f32_reference(word: int, levels: tuple[float, ...]) -> tuple[int, int, int, int]:
    """The fp32 bit patterns `quad_f32_ptx(levels)` yields for the 32-bit `word`, step by step: the levels of the
    codes in bits 0-3, 16-19, 4-7 and 20-23."""
    tabs = f32_tables(levels)
    word &= 0xFFFFFFFF
    x = _prmt(word, word, _QUAD_SEL) & 0x7777
    m = _prmt((word << 4) & 0xFFFFFFFF, word, _QUAD_MASK)
    b = [_lop3(_prmt(t[0], t[1], x), _prmt(t[2], t[3], x), m, 0xD8) for t in tabs]
    u0, u1 = _prmt(b[0], b[1], _T01), _prmt(b[2], b[3], _T01)
    u2, u3 = _prmt(b[0], b[1], _T23), _prmt(b[2], b[3], _T23)
    return _prmt(u0, u1, _LOW), _prmt(u2, u3, _LOW), _prmt(u0, u1, _HIGH), _prmt(u2, u3, _HIGH)
