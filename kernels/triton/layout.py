"""Repack a portable `QuantizedWeight` into the layout the Triton kernels stream (done once, at load).

Device layout, per weight row (N rows, KW int32 words each; see `jit.py` for why):
- codes are regrouped into blocks of 4 words = 4 * PLANES elements (32 for 4-bit, 16 for 8-bit); word `l` of a
  block holds, in bit plane `i`, element `4 * i + l` of that block;
- rows are padded to a multiple of 16 words (128 / 64 elements), so a row start is 64-byte aligned and the
  tail masks are known to Triton to be constant over whole 16-byte vectors;
- scales (and asym zero points) keep fp16 when stored so, else become fp32; e4m3 scales absorb the 2**8 of
  its fp16 decode;
- int8 codes are stored as they are (two's complement bytes), so the vendor int8 GEMM (`w8a8`) reads the words as
  an int8 matrix; the kernels' decode flips each byte's sign bit (one XOR per word) into the unsigned bit trick
  the other integer formats use.
Only torch ops are used here, so repacking runs on whatever device the weight is moved to.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from xpullm.kernels.codebook import CODEBOOKS
from xpullm.kernels.triton import jit
from xpullm.kernels.triton.configs import SINGLE_GROUP_WORDS

__all__ = ["FORMAT_CODES", "LAUNCH_FIELDS", "TritonWeight", "pack_weight", "unpack_weight"]

# format name -> (constexpr code in jit.py, bits per code)
FORMAT_CODES: dict[str, tuple[int, int]] = {
    "sym_int4": (jit.SYM_INT4.value, 4),
    "asym_int4": (jit.ASYM_INT4.value, 4),
    "nf4": (jit.LUT4.value, 4),
    "fp4": (jit.LUT4.value, 4),
    "sym_int8": (jit.SYM_INT8.value, 8),
    "fp8_e4m3": (jit.FP8_E4M3.value, 8),
    "fp8_e5m2": (jit.FP8_E5M2.value, 8),
}
_ROW_WORD_MULTIPLE = 16
_REPACK_ROWS = 4096  # rows repacked at a time, to bound the temporary memory of huge (vocab) weights


LAUNCH_FIELDS = ("fmt_code", "n", "k", "kw", "planes", "group_size", "group_words", "n_groups")


@dataclass(frozen=True, eq=False)  # eq=False: comparing tensor fields elementwise would be meaningless
class TritonWeight:
    """A weight in the Triton kernels' device layout; built by `pack_weight`, consumed by `launch`."""

    format: str
    fmt_code: int  # jit.py format constant
    n: int  # out_features
    k: int  # in_features (unpadded)
    kw: int  # int32 words per row (padded)
    planes: int  # codes per word: 8 (4-bit) or 4 (8-bit)
    group_size: int  # elements per scale group, as stored in the portable layout
    group_words: int  # words per scale group, or SINGLE_GROUP_WORDS
    n_groups: int
    words: torch.Tensor  # int32 [N, KW]
    scales: torch.Tensor  # [N, n_groups]: float16 when the portable scales are, else float32
    zeros: torch.Tensor | None  # [N, n_groups], same dtype as scales; asym_int4 only
    lut: torch.Tensor  # float32 [16] codebook (a dummy for formats without one)
    portable_scales_dtype: torch.dtype = torch.float16  # the portable scales' dtype (what export returns)
    launch: tuple[str, tuple[int, ...]] = field(init=False, repr=False)
    """(format, the integer fields in `LAUNCH_FIELDS` order): what the compiled custom op receives besides tensors.

    `torch.compile` guards every attribute a traced function reads; one tuple read is one guard instead of nine
    per layer (measured on a replica of a 64-layer guard tree: 2.6 -> 1.1 us of guard checks per layer per call).
    """

    def __post_init__(self) -> None:
        object.__setattr__(self, "launch", (self.format, tuple(int(getattr(self, f)) for f in LAUNCH_FIELDS)))

    @property
    def kx(self) -> int:
        """Activation width the kernels read: K padded to the words' length."""
        return self.kw * self.planes

    @property
    def device(self) -> torch.device:
        return self.words.device

    @property
    def nbytes(self) -> int:
        """Bytes the GEMV streams per call: codes, scales and zero points."""
        return sum(
            t.numel() * t.element_size() for t in (self.words, self.scales, self.zeros) if t is not None
        )

    def dequantize_rows(self, rows: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Rows `rows` (an index tensor on this weight's device) of the float weight [R, K], decoded on the
        device by the dequantize kernel: what training's backward pass and a tied low-bit head's lookups read."""
        from xpullm.kernels.triton.launch import dequantize

        pick = lambda t: None if t is None else t.index_select(0, rows)  # noqa: E731
        part = replace(self, n=rows.numel(), words=pick(self.words), scales=pick(self.scales),
                       zeros=pick(self.zeros))  # fmt: skip
        return dequantize(part, dtype)


def _codebook(fmt: str) -> tuple[float, ...] | None:
    return CODEBOOKS.get(fmt)


_LUTS: dict[tuple[tuple[float, ...], torch.device], torch.Tensor] = {}


def _shared_lut(levels: tuple[float, ...] | None, device: torch.device) -> torch.Tensor:
    """One codebook tensor per (codebook, device), shared by every weight of the model.

    Every distinct tensor a compiled decode step reads is a graph input that CUDA-graph replays re-check on
    each call (`torch.compile(mode="reduce-overhead")`): one shared table instead of one per layer removes
    a hundred-odd such inputs from a 7B model's step. Nothing writes to it.
    """
    key = (tuple(levels) if levels is not None else (0.0,) * 16, device)
    lut = _LUTS.get(key)
    if lut is None:
        lut = _LUTS[key] = torch.tensor(key[0], dtype=torch.float32, device=device)
    return lut


def _interleave_rows(codes: torch.Tensor, planes: int, kq: int) -> torch.Tensor:
    """codes uint8 [R, K'] (one code per element) -> int32 words [R, kq / planes] in the block layout."""
    rows, width = codes.shape
    if width < kq:
        codes = torch.nn.functional.pad(codes, (0, kq - width))
    # [R, blocks, plane i, word l] -> [R, blocks, word l, plane i]
    blocks = codes.reshape(rows, kq // (4 * planes), planes, 4).transpose(2, 3)
    if planes == 8:  # two nibbles per byte: plane 2t in the low half of byte t, plane 2t+1 in the high half
        blocks = blocks[..., 0::2] | (blocks[..., 1::2] << 4)
    return blocks.contiguous().reshape(rows, -1).view(torch.int32)


def _deinterleave_rows(words: torch.Tensor, planes: int) -> torch.Tensor:
    """The inverse of `_interleave_rows`: int32 words [R, KW] -> codes uint8 [R, KW * planes]."""
    rows = words.shape[0]
    raw = words.contiguous().view(torch.uint8).reshape(rows, -1, 4, 4)  # [R, blocks, word l, byte]
    if planes == 8:  # byte t holds plane 2t (low nibble) and plane 2t + 1 (high nibble)
        raw = torch.stack((raw & 0x0F, raw >> 4), dim=-1).reshape(rows, raw.shape[1], 4, 8)
    return raw.transpose(2, 3).contiguous().reshape(rows, -1)  # [R, blocks, plane i, word l]


def unpack_weight(tw: TritonWeight) -> dict[str, torch.Tensor | None]:
    """The portable parts back out of the device layout, bit for bit: unpacked codes [N, K'] (K' the portable
    padded width), scales and zero points in their portable dtype. What `save_low_bit` and adapter merging
    read, so no host copy of the weight has to be kept."""
    kp = tw.n_groups * tw.group_size
    codes = torch.empty((tw.n, kp), dtype=torch.uint8, device=tw.device)
    for r0 in range(0, tw.n, _REPACK_ROWS):
        rows = _deinterleave_rows(tw.words[r0 : r0 + _REPACK_ROWS], tw.planes)
        codes[r0 : r0 + _REPACK_ROWS] = rows[:, :kp]
    if tw.format == "sym_int8":
        codes = codes.view(torch.int8)
    scales = tw.scales / 256.0 if tw.format == "fp8_e4m3" else tw.scales
    back = lambda t: None if t is None else t.to(tw.portable_scales_dtype)  # noqa: E731  (exact: it came from it)
    return {"codes": codes, "scales": back(scales), "zeros": back(tw.zeros)}


def pack_weight(qw, device: torch.device | str) -> TritonWeight:
    """Build the device layout for a portable `QuantizedWeight` on `device`."""
    if qw.format not in FORMAT_CODES:
        raise ValueError(
            f"Triton kernels do not handle format {qw.format!r}; supported: {', '.join(FORMAT_CODES)} "
            "(pass-through formats use the dense kernel)"
        )
    device = torch.device(device)
    code, bits = FORMAT_CODES[qw.format]
    planes = 32 // bits
    n, k = (int(v) for v in qw.shape)
    data = qw.data.to(device)
    kp = data.shape[1] * (2 if bits == 4 else 1)
    row_mult = _ROW_WORD_MULTIPLE * planes
    kq = -(-kp // row_mult) * row_mult
    n_groups = qw.scales.shape[1]
    gs = int(qw.group_size)
    if n_groups == 1:
        group_words = SINGLE_GROUP_WORDS
    elif gs % (4 * planes) == 0:
        group_words = gs // planes
    else:
        raise ValueError(
            f"Triton kernels need the group size of {qw.format!r} to be a multiple of {4 * planes} "
            f"(or one group per row); got {gs}. Re-quantize with group_size in 32, 64, 128, 256."
        )

    words = torch.empty((n, kq // planes), dtype=torch.int32, device=device)
    for r0 in range(0, n, _REPACK_ROWS):
        chunk = data[r0 : r0 + _REPACK_ROWS]
        if bits == 4:
            codes = torch.stack((chunk & 0x0F, chunk >> 4), dim=-1).reshape(chunk.shape[0], -1)
        else:  # 8-bit codes as their bytes (sym_int8: two's complement)
            codes = chunk.view(torch.uint8)
        words[r0 : r0 + _REPACK_ROWS] = _interleave_rows(codes, planes, kq)

    # Scales keep the portable dtype when it is fp16 (a fifth of the bytes an int4 g32 GEMV streams) and are
    # fp32 otherwise (fp8 formats store fp32 scales: e5m2's absmax / 57344 underflows fp16). e4m3 scales
    # absorb the 2**8 of its fp16 decode, so they are always fp32.
    keep = qw.scales.dtype == torch.float16 and qw.format != "fp8_e4m3"
    sdtype = torch.float16 if keep else torch.float32
    scales = qw.scales.to(device=device, dtype=sdtype)
    if qw.format == "fp8_e4m3":
        scales = scales * 256.0
    zeros = None
    if qw.format == "asym_int4":
        zeros = qw.zeros.to(device=device, dtype=sdtype).contiguous()
    lut = _shared_lut(_codebook(qw.format), device)
    return TritonWeight(
        format=qw.format,
        fmt_code=code,
        n=n,
        k=k,
        kw=kq // planes,
        planes=planes,
        group_size=gs,
        group_words=group_words,
        n_groups=n_groups,
        words=words,
        scales=scales.contiguous(),
        zeros=zeros,
        lut=lut,
        portable_scales_dtype=qw.scales.dtype,
    )
