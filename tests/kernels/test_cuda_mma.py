"""The CUDA C++ low-bit kernel (`kernels/cuda/lowbit_mma.cu`, path `cuda_mma`) vs its reference twin.

Twin (`_twin_weight`): the weight as the kernel multiplies it, times the bf16 activations in fp64. The kernel
decodes codes to bf16 values - exact for the integer formats (q - 8 for sym_int4, q for asym_int4), the codebook
levels rounded to bf16 for nf4 / fp4 - and multiplies them by the bf16 activations with fp32 accumulation. Groups
of 128+ codes: each 128-code chunk's dot is scaled in fp32 (asym_int4 adds the zero point times the chunk's
activation sum), so the twin is values x scale (+ zero) in fp64. Groups of 32 / 64: the values are scaled in bf16
before the mma (value x bf16(scale) (+ bf16(zero)), rounded to bf16 once), and so is the twin's weight. Before its
one rounding to the bf16 output the kernel then differs from the twin only by fp32 summation order: every output is
the twin's rounded to bf16 within one bf16 step (plus a hair for outputs that cancel to near zero).
Runs where a CUDA GPU and `nvcc` are (the device runs; CI skips the GPU half). The checks that need no GPU - the
kernel's index maps and level lookups, modelled in PyTorch - run everywhere.
"""

from __future__ import annotations

import random
import re
import subprocess
from dataclasses import replace

import pytest
import torch

from xpullm.formats import get_format
from xpullm.kernels import cuda
from xpullm.kernels.codebook import CODEBOOKS
from xpullm.kernels.packing import unpack_nibbles
from xpullm.kernels.triton import LaunchConfig, launch, pack_weight, run
from xpullm.kernels.triton.configs import CONFIG_TABLES, candidates, switched_on, valid
from xpullm.kernels.triton.launch import _prepare_x, _tile_counters

HAS_CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda") if HAS_CUDA else None
gpu = pytest.mark.skipif(
    not (HAS_CUDA and cuda.loadable(DEVICE)),
    reason=f"needs a CUDA GPU (sm_80+) and nvcc: {cuda.build_error(DEVICE) if HAS_CUDA else 'no GPU'}",
)
POOL = CONFIG_TABLES["cuda"]["cuda_mma"]
FORMATS = ("sym_int4", "asym_int4", "nf4", "fp4", "sym_int8", "fp8_e4m3", "fp8_e5m2")
GROUPS = {
    4: (32, 64, 128, 256),
    8: (0, 64, 128, 256),
}  # codes a group the kernel takes, by bits (0: one per row)


@pytest.fixture(autouse=True)
def _switched_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XPULLM_CUDA_KERNELS", "1")  # also where the environment switches it off


def _weight(n: int, k: int, gs: int, seed: int, fmt: str = "sym_int4"):
    """A quantized random weight; `gs` 0 = one group per row."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * 0.05
    w[:, : max(1, k // 50)] *= 20  # a few outlier columns, as real checkpoints have
    return get_format(fmt).quantize(w, gs)


def _bits(fmt: str) -> int:
    return get_format(fmt).bits


def _bf16(t: torch.Tensor) -> torch.Tensor:
    return t.float().bfloat16().double()


def _twin_weight(qw) -> torch.Tensor:
    """fp64 [N, K]: the weight as the kernel multiplies it (the module docstring says how)."""
    n, k = qw.shape
    levels = CODEBOOKS.get(qw.format)
    if qw.format in ("fp8_e4m3", "fp8_e5m2"):
        fp8 = torch.float8_e4m3fn if qw.format == "fp8_e4m3" else torch.float8_e5m2
        v = qw.data.view(fp8).double().reshape(n, -1, qw.group_size)
    elif qw.format == "sym_int8":
        v = qw.data.double().reshape(n, -1, qw.group_size)
    else:
        codes = unpack_nibbles(qw.data).long().reshape(n, -1, qw.group_size)
        v = (
            _bf16(torch.tensor(levels))[codes]
            if levels is not None
            else codes.double() - 8 * (qw.zeros is None)
        )
    s = qw.scales.double()[..., None]
    z = qw.zeros.double()[..., None] if qw.zeros is not None else None
    if _bits(qw.format) == 4 and qw.group_size in (32, 64) and qw.scales.shape[1] > 1:
        w = _bf16(v * _bf16(s) + (_bf16(z) if z is not None else 0.0))
    else:
        w = v * s + (z if z is not None else 0.0)
    return w.reshape(n, -1)[:, :k]


def _check(y: torch.Tensor, x: torch.Tensor, qw, what: str) -> None:
    ref = (x.double() @ _twin_weight(qw).T).float()
    want = ref.bfloat16().float()
    got = y.float().cpu()
    assert torch.isfinite(got).all(), f"{what}: an output was not written"
    step = want.abs() * 2.0**-7  # one bf16 step at most (8 significant bits)
    slack = 1e-5 * ref.abs().max()
    bad = (got - want).abs() > step + slack
    assert not bad.any(), (
        f"{what}: {int(bad.sum())} outputs off by more than one bf16 step, e.g. {got[bad][:4]} vs {want[bad][:4]}"
    )


def test_candidates_are_left_out_where_the_kernel_cannot_run():
    """No GPU (here: a CPU weight): the tuner never times `cuda_mma`, and running it says what it needs."""
    tw = pack_weight(_weight(64, 256, 128, 0), "cpu")
    assert not any(valid(c, tw, torch.bfloat16) for c in POOL)
    assert not any(switched_on(c, tw) for c in POOL)  # a tuned record of the path is passed over here
    with pytest.raises(ValueError, match="cuda_mma runs sym_int4 / asym_int4 / nf4 / fp4"):
        run(torch.zeros(4, 256, dtype=torch.bfloat16), tw, replace(POOL[0], block_m=4))


@pytest.mark.skipif(cuda._nvcc() is None, reason="no nvcc on this machine")
def test_the_source_compiles_for_hopper_with_every_instantiation(tmp_path):
    """Without a GPU, where a CUDA toolkit is (the dev / CI image has one): the kernel source still compiles for
    sm_90, with all 81 instantiations the launcher can reach and (next to) no register spills. The GPU tests run
    rarely; this keeps an edit from breaking the build unnoticed (~65 s on 2 cores)."""
    proc = subprocess.run(
        [cuda._nvcc(), "-std=c++17", "-cubin", "-gencode=arch=compute_90,code=sm_90", "-Xptxas", "-v",
         str(cuda._SOURCE), "-o", str(tmp_path / "k.cubin")],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    entries = re.findall(r"Compiling entry function '(\w+)'", proc.stderr)
    # 9 tile / column-tile pairs x (3 4-bit kinds x 2 scalings + 3 8-bit kinds)
    assert len(entries) == 81, entries
    spills = [int(b) for b in re.findall(r"(\d+) bytes spill stores", proc.stderr)]
    assert len(spills) == 81 and max(spills) <= 8, spills


def test_bad_arguments_are_refused_with_the_fix():
    """Argument checks run before any GPU work: each names what the kernel takes."""
    x = torch.zeros(4, 256, dtype=torch.bfloat16)
    out = torch.zeros(4, 16, dtype=torch.bfloat16)
    words = torch.zeros(16, 32, dtype=torch.int32)  # 4-bit: 256 codes a row
    scales = torch.ones(16, 8, dtype=torch.float16)
    args = dict(out=out, partials=None, counters=None, tiles=1, warps=4, split=1)
    with pytest.raises(ValueError, match="takes the formats"):
        cuda.lowbit_mma(x, words, scales, None, 32, fmt="bf16", **args)
    with pytest.raises(ValueError, match="groups of 32, 64 or a multiple of 128 codes"):
        cuda.lowbit_mma(x, words, scales, None, 48, fmt="nf4", **args)
    with pytest.raises(ValueError, match="zero points for asym_int4 only"):
        cuda.lowbit_mma(x, words, scales, scales, 32, fmt="sym_int4", **args)
    with pytest.raises(
        ValueError, match="KX = 4 \\* KW"
    ):  # 8-bit words hold 4 codes: 256 codes need 64 words
        cuda.lowbit_mma(x, words, scales, None, 0, fmt="sym_int8", **args)
    with pytest.raises(ValueError, match="multiple of 64 codes"):
        cuda.lowbit_mma(x, torch.zeros(16, 64, dtype=torch.int32), scales, None, 32, fmt="fp8_e4m3", **args)
    assert (
        cuda.group_args(32, 4) == (1, 0)
        and cuda.group_args(256, 4) == (0, 2)
        and cuda.group_args(0, 8) == (0, 0)
    )
    assert (
        cuda.group_args(64, 8) == (0, 1) and cuda.group_args(32, 8) is None and cuda.group_args(96, 4) is None
    )


@gpu
def test_matches_twin_over_random_shapes():
    rng = random.SystemRandom()
    seed0 = rng.randrange(2**31)
    r = random.Random(seed0)
    for trial in range(100):
        n = r.choice([1, 15, 16, 17, 64, 100, 257, 640, 1000, 4096])
        k = r.choice([128, 200, 256, 1030, 2048, 4096])
        fmt = r.choice(FORMATS)
        gs = r.choice(GROUPS[_bits(fmt)])
        m = r.randint(2, 64)
        qw = _weight(n, k, gs, seed0 + trial, fmt)
        tw = pack_weight(qw, DEVICE)
        pool = [c for c in POOL if valid(replace(c, block_m=m), tw, torch.bfloat16)]
        assert pool, f"no cuda_mma tile takes {fmt} {n}x{k} g{gs} m={m}"
        cfg = replace(r.choice(pool), block_m=m)
        x = torch.randn(m, k, generator=torch.Generator().manual_seed(seed0 + trial + 1)).bfloat16()
        out = torch.full((m, n), float("nan"), dtype=torch.bfloat16, device=DEVICE)
        y = run(_prepare_x(x.to(DEVICE), tw), tw, cfg, out=out)
        _check(y, x, qw, f"seed0={seed0} trial={trial} {fmt} {n}x{k} g{gs} m={m} {cfg}")


@gpu
@pytest.mark.parametrize(
    ("fmt", "gs"),
    [
        ("sym_int4", 128),
        ("asym_int4", 128),
        ("nf4", 64),
        ("fp4", 32),
        ("sym_int8", 0),
        ("fp8_e4m3", 64),
        ("fp8_e5m2", 0),
    ],
)
@pytest.mark.parametrize("m", [2, 8, 9, 16, 31, 64])
def test_every_tile_of_the_pool(m, fmt, gs):
    """Each (tiles, warps, split) of the table on a ragged shape (N not a multiple of any tile, K padded)."""
    qw = _weight(300, 1030, gs, m, fmt)
    tw = pack_weight(qw, DEVICE)
    x = torch.randn(m, 1030, generator=torch.Generator().manual_seed(m)).bfloat16()
    xd = _prepare_x(x.to(DEVICE), tw)
    ran = 0
    for cfg in POOL:
        cfg = replace(cfg, block_m=m)
        if not valid(cfg, tw, torch.bfloat16):
            continue
        _check(run(xd, tw, cfg), x, qw, f"{fmt} g{gs} m={m} {cfg}")
        ran += 1
    # Up to 32 rows: 1 or 2 tiles x 4 or 8 warps x splits of >= 2 chunks (K = 1030: 9 chunks of 4-bit codes, so
    # splits 1 / 2 / 4). 33-64 rows take 8 column tiles, so 1-tile programs only: 2 warps x 3 splits.
    assert ran >= (12 if m <= 32 else 6), ran


@gpu
def test_split_sums_are_deterministic_and_leave_the_counters_zero():
    qw = _weight(4096, 4096, 128, 7)
    tw = pack_weight(qw, DEVICE)
    x = _prepare_x(torch.randn(16, 4096, device=DEVICE, dtype=torch.bfloat16), tw)
    cfg = LaunchConfig("cuda_mma", 16, 128, 4, 8, 4, 1, tiles=2)
    assert valid(cfg, tw, torch.bfloat16)
    first = run(x, tw, cfg)
    for _ in range(5):
        assert torch.equal(run(x, tw, cfg), first)
    torch.cuda.synchronize()
    assert int(_tile_counters(DEVICE, 1).abs().sum()) == 0


@gpu
def test_inside_a_graph_between_kernels_that_start_early():
    """A CUDA graph of Triton tile -> this kernel (split K) -> Triton tile, all launched with programmatic dependent
    launch on Hopper: each waits for its producer before reading, so every replay gives the eager chain's bits."""
    tws = [pack_weight(_weight(n, k, 128, n + k), DEVICE) for n, k in ((1024, 512), (768, 1024), (512, 768))]
    tile = LaunchConfig("mma_t", 16, 64, 4, 1, 4, 3, plane_dots=True)
    mid = LaunchConfig("cuda_mma", 16, 128, 4, 4, 4, 1, tiles=2)
    assert all(valid(c, tw, torch.bfloat16) for c, tw in zip((tile, mid, tile), tws, strict=True))
    x = torch.zeros(16, 512, device=DEVICE, dtype=torch.bfloat16)

    def chain() -> torch.Tensor:
        h = run(x, tws[0], tile)
        h = run(h, tws[1], mid)
        return run(h, tws[2], tile)

    chain()  # eager warm-up: compiles, and makes the split counters outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = chain()
    g = torch.Generator(device=DEVICE).manual_seed(3)
    for _ in range(20):
        x.copy_(torch.randn(16, 512, device=DEVICE, generator=g).bfloat16())
        graph.replay()
        assert torch.equal(out, chain())


@gpu
def test_the_tuner_times_it_for_the_formats_and_groups_it_takes():
    qw = _weight(512, 1024, 128, 3)
    tw = pack_weight(qw, DEVICE)
    assert any(c.path == "cuda_mma" for c in candidates("cuda", tw, 16, torch.bfloat16))
    assert not any(c.path == "cuda_mma" for c in candidates("cuda", tw, 16, torch.float16))
    assert not any(c.path == "cuda_mma" for c in candidates("cuda", tw, 128, torch.bfloat16))
    for fmt, gs in (
        ("asym_int4", 256),
        ("nf4", 64),
        ("fp4", 128),
        ("sym_int4", 32),
        ("sym_int8", 0),
        ("fp8_e4m3", 128),
        ("fp8_e5m2", 0),
    ):
        other = pack_weight(_weight(512, 1024, gs, 5, fmt), DEVICE)
        assert any(c.path == "cuda_mma" for c in candidates("cuda", other, 8, torch.bfloat16)), (fmt, gs)
    for fmt, gs in (("sym_int8", 32), ("fp8_e5m2", 32)):  # groups inside a 64-code chunk
        other = pack_weight(_weight(512, 1024, gs, 6, fmt), DEVICE)
        assert not any(c.path == "cuda_mma" for c in candidates("cuda", other, 16, torch.bfloat16)), (fmt, gs)


@gpu
def test_a_record_of_the_path_is_passed_over_when_the_kernels_are_switched_off(monkeypatch):
    tw = pack_weight(_weight(256, 512, 128, 9), DEVICE)
    cfg = LaunchConfig("cuda_mma", 16, 128, 4, 2, 4, 1, tiles=2)
    launch.select_config(tw, 16, torch.bfloat16)  # the packaged tables are loaded before the record is set
    monkeypatch.setitem(launch._tuned, launch._key(tw, 16, torch.bfloat16), cfg)
    monkeypatch.setenv("XPULLM_TRITON_AUTOTUNE", "0")
    assert launch.select_config(tw, 16, torch.bfloat16) == cfg
    monkeypatch.setenv("XPULLM_CUDA_KERNELS", "0")
    assert launch.select_config(tw, 16, torch.bfloat16).path != "cuda_mma"


def _prmt(a: torch.Tensor, b: torch.Tensor, sel: torch.Tensor | int) -> torch.Tensor:
    """PTX `prmt.b32` (default mode) on int64 tensors holding u32 words: result byte i is byte sel_i & 7 of
    (a bytes 0-3, b bytes 4-7), or that byte's sign bit copied into all 8 bits where sel_i has bit 3 set."""
    sel = torch.as_tensor(sel)
    out = torch.zeros(torch.broadcast_shapes(a.shape, b.shape, sel.shape), dtype=torch.int64)
    both = (a & 0xFFFFFFFF) | ((b & 0xFFFFFFFF) << 32)
    for i in range(4):
        nib = (sel >> (4 * i)) & 0xF
        byte = (both >> (8 * (nib & 7))) & 0xFF
        byte = torch.where(nib >= 8, torch.where(byte >= 0x80, 0xFF, 0), byte)
        out |= byte << (8 * i)
    return out


def _decode_levels(w: torch.Tensor, lv: list[int]) -> list[torch.Tensor]:
    """lowbit_mma.cu's `lookup4` / `decode_levels`: a word's eight codes as the bf16 level pairs (n_p, n_p+4)."""

    def lookup4(t: list[int], codes: torch.Tensor) -> torch.Tensor:
        sel = codes & 0x7777
        pick = ((codes & 0x8888) >> 1) | 0x3210
        lo = _prmt(torch.tensor(t[0]), torch.tensor(t[1]), sel)
        hi = _prmt(torch.tensor(t[2]), torch.tensor(t[3]), sel)
        return _prmt(lo, hi, pick)

    lo_a, hi_a = lookup4(lv[:4], w), lookup4(lv[4:], w)
    lo_b, hi_b = lookup4(lv[:4], w >> 16), lookup4(lv[4:], w >> 16)
    lo01, hi01 = _prmt(lo_a, lo_b, 0x5140), _prmt(hi_a, hi_b, 0x5140)
    lo23, hi23 = _prmt(lo_a, lo_b, 0x7362), _prmt(hi_a, hi_b, 0x7362)
    return [
        _prmt(lo01, hi01, 0x5140),
        _prmt(lo01, hi01, 0x7362),
        _prmt(lo23, hi23, 0x5140),
        _prmt(lo23, hi23, 0x7362),
    ]


def _bf16_halves(pair: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A bf16x2 register's (low, high) halves as fp64."""
    as_f32 = lambda h: ((h & 0xFFFF) << 16).to(torch.int32).view(torch.float32).double()  # noqa: E731
    return as_f32(pair), as_f32(pair >> 16)


def _decode8(w: torch.Tensor, fmt: str, high: bool) -> torch.Tensor:
    """lowbit_mma.cu's `decode8`: bytes 0 and 2 (high: 1 and 3) of each word as fp64 values [N, 2]."""
    halves = lambda bits: torch.stack(_bf16_halves(bits & 0xFFFFFFFF), 1)  # noqa: E731
    if fmt == "sym_int8":
        b = w >> 8 if high else w
        lo = halves((b & 0x000F000F) | 0x43004300)  # 128 + l
        hi = halves(
            ((b >> 4) & 0x000F000F) ^ 0x43084308
        )  # 128 + h, h the high nibble with the sign bit flipped
        return lo + (hi * 16 - 2304)
    sh = 4 if fmt == "fp8_e4m3" else 5  # exponent and mantissa to bits sh..sh+6
    mag = (0x7F << sh) | (0x7F << (sh + 16))
    if high:
        bits = ((w >> (8 - sh)) & mag) | (w & 0x80008000)
    else:
        bits = ((w << sh) & mag) | ((w << 8) & 0x80008000)
    return halves(bits) * 2.0**112


def _stage_positions(bits: int) -> torch.Tensor:
    """Where `stage_store` puts element e of a chunk in the staged row. A unit is two 16-byte vectors of a row,
    v0 = elements e0 .. e0 + 7 and v1 = the eight `half` elements on (4-bit: e0 = 32 t + 8 sigma, half 16; 8-bit:
    e0 = 16 t, half 8); for l = 0..3 it fills slots 4 t .. 4 t + 3 of step s (4-bit: 2 l + sigma; 8-bit: l) with
    (v0[l], v1[l], v0[4 + l], v1[4 + l])."""
    span, half, sigmas = (32, 16, 2) if bits == 4 else (16, 8, 1)
    pos = torch.full((512 // bits,), -1, dtype=torch.long)
    for t in range(4):
        for sigma in range(sigmas):
            e0 = span * t + 8 * sigma
            for w in range(4):  # the kernel's l
                s = 2 * w + sigma if bits == 4 else w
                for j, e in enumerate((e0 + w, e0 + half + w, e0 + 4 + w, e0 + half + 4 + w)):
                    pos[e] = s * 16 + t * 4 + j
    return pos


def _kernel_model(x: torch.Tensor, tw) -> torch.Tensor:
    """lowbit_mma.cu's arithmetic, written out in PyTorch with its index maps: which code of which word each lane
    puts in each mma K slot, the decodes (integer nibbles, a codebook's levels looked up from `level_words` by byte
    permutes, int8 and e4m3 bytes), where the staging puts each activation, the scaling (per chunk in fp32, or per
    lane's block in bf16 before the mma for 4-bit groups of 32 / 64). Lets a machine without a GPU check the
    kernel's K order and decodes against the layout `pack_weight` writes."""
    m = x.shape[0]
    words = tw.words.long() & 0xFFFFFFFF
    asym = tw.zeros is not None
    bits = 32 // tw.planes
    chunk_codes = 512 // bits
    levels = CODEBOOKS.get(tw.format)
    lv = list(cuda.level_words(levels)) if levels is not None else None
    prescale = bits == 4 and tw.group_words in (4, 8)
    pos = _stage_positions(bits)
    assert sorted(pos.tolist()) == list(range(chunk_codes))
    out = torch.zeros(m, tw.n, dtype=torch.float64)
    for c in range(tw.kw // 16):
        chunk = x[:, c * chunk_codes : (c + 1) * chunk_codes].double()
        staged = torch.empty_like(chunk)
        staged[:, pos] = chunk
        part = torch.zeros(m, tw.n, dtype=torch.float64)
        for s in range(chunk_codes // 16):
            for t in range(4):
                # a: [N, 4] values for mma K slots (2t, 2t+1, 2t+8, 2t+9)
                if bits == 8:  # word s: bytes (0, 2) then (1, 3)
                    word = words[:, c * 16 + 4 * t + s]
                    a = torch.cat([_decode8(word, tw.format, False), _decode8(word, tw.format, True)], 1)
                elif lv is not None:  # pairs (p, p+4) and (p+1, p+5) of word s / 2, p = 2 (s % 2)
                    word = words[:, c * 16 + 4 * t + s // 2]
                    pairs = _decode_levels(word, lv)[2 * (s % 2) : 2 * (s % 2) + 2]
                    a = torch.stack([*_bf16_halves(pairs[0]), *_bf16_halves(pairs[1])], 1)
                else:  # nibbles p, p+4 (a0 / a1) and p+1, p+5 (a2 / a3) of word s / 2
                    w = words[:, c * 16 + 4 * t + s // 2] >> (8 * (s % 2))
                    a = torch.stack([w & 0xF, (w >> 16) & 0xF, (w >> 4) & 0xF, (w >> 20) & 0xF], 1).double()
                    a = a if asym else a - 8
                if prescale:  # the lane's block 4c + t lies in one group
                    gi = min((4 * c + t) // (tw.group_words // 4), tw.n_groups - 1)  # padding: the last group
                    sc = _bf16(tw.scales[:, gi].double())[:, None]
                    a = _bf16(a * sc + (_bf16(tw.zeros[:, gi].double())[:, None] if asym else 0.0))
                b = staged[:, s * 16 + t * 4 : s * 16 + t * 4 + 4]  # b0 = (j0, j1), b1 = (j2, j3)
                part += b @ a.T
        if prescale:
            out += part
            continue
        gi = 0 if tw.group_words >= 1 << 30 else c // (tw.group_words // 16)
        out += part * tw.scales[:, gi].double()
        if asym:
            out += chunk.sum(1, keepdim=True) * tw.zeros[:, gi].double()
    return out


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(("n", "k", "gs"), [(24, 256, 128), (9, 1030, 256), (16, 1536, 64), (7, 520, 32)])
def test_the_kernels_k_order_matches_the_layout(fmt, n, k, gs):
    if gs not in GROUPS[_bits(fmt)]:
        gs = 0  # one group per row (8-bit groups of 32 fall inside a chunk)
    """No GPU needed: the kernel's index maps and lookups (`_kernel_model`) on `pack_weight`'s words give the
    twin's product."""
    qw = _weight(n, k, gs, n + k, fmt)
    tw = pack_weight(qw, "cpu")
    x = torch.randn(5, k, generator=torch.Generator().manual_seed(k)).bfloat16()
    got = _kernel_model(_prepare_x(x, tw), tw)
    ref = x.double() @ _twin_weight(qw).T
    torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-9 * ref.abs().max().item())


def test_level_lookups_give_every_code_its_level():
    """Every code in every nibble of a word comes out of the byte-permute lookup as its level in bf16."""
    for fmt, levels in CODEBOOKS.items():
        lv = list(cuda.level_words(levels))
        want = _bf16(torch.tensor(levels))
        for nib in range(8):
            codes = torch.arange(16)
            w = (codes << (4 * nib)) | ((15 - codes) << (4 * ((nib + 3) % 8)))  # another code beside it
            pairs = _decode_levels(w, lv)
            got = _bf16_halves(pairs[nib % 4])[nib // 4]  # pair p holds nibbles p (low half) and p + 4 (high)
            assert torch.equal(got, want), (fmt, nib, got, want)
