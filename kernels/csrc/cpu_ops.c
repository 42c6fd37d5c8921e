/* Native CPU ops for x86-64, compiled at first use by cpu_native.py without -march flags: every SIMD function
 * carries its own target attribute and the exported entry points pick a path at run time from CPUID and XGETBV
 * (`xq_best_isa`), so one build runs on any x86-64 CPU with AVX2 and uses AVX-512 VNNI where the CPU and the OS
 * have it. `xq_set_isa` forces a path (the tests run every path the CPU has; XPULLM_CPU_ISA sets it at load).
 *
 *   path       weights x activations                             used for
 *   avx2       u8/s8 x s8 vpmaddubsw, fp8 -> fp16 -> fp32 FMA    any AVX2 + FMA + F16C CPU (the portable floor)
 *   avx512     u8 x s8 vpdpbusd (VNNI), four tiles (16 weight   AVX-512 F/BW/VL + VNNI (Ice Lake, Sapphire
 *              rows) per block with the tiles' arithmetic        Rapids, Zen 4+)
 *              below; fp8 -> fp16 -> fp32 FMA on 16 lanes
 *   amx        s8 x s8 tdpbssd on 16 x 16 tiles per block of 32  AMX-TILE + AMX-INT8 (Sapphire Rapids+), Linux
 *              for calls of >= amx_min_rows rows, VNNI with the  permission granted; prefill and batched rows
 *              tiles' arithmetic below (bit for bit the tiles);
 *              fp8: tdpbf16ps on a bf16 split (opt-in, amx_fp8)  + AMX-BF16
 *   amx_emulated  the amx path with each tile instruction run by   any AVX-512 CPU: the test twin of the amx path
 *              its scalar C model (amx_emu_*), not the hardware
 *
 * Integer formats (sym_int4, asym_int4, the 4-bit codebooks nf4/fp4, sym_int8): activations are quantised per
 * block of 32 columns to int8 with scale d = max|x| / 127, stored with each block's even columns first and odd
 * columns second: exactly the order in which 16 packed weight bytes unpack into 32 codes (low nibbles, then high
 * nibbles). Per block, y += s * d * (q . xq) + z * d * sum(xq): the zero term sums the same quantised
 * activations, so the result is exactly x_q @ W^T (the only error is x's rounding, weighted by w itself).
 * Codebook formats map each nibble through a 16-entry int8 table (vpshufb) and multiply by the format's table
 * scale `wmul`: fp4 (e2m1 levels times 2 are the integers 0..12) is exact; nf4's levels are held as
 * round(127 * level), off by at most 0.0037 * scale per weight (cpu_native.CODEBOOK_TABLES; the twin uses the
 * same table). vpdpbusd multiplies unsigned by signed bytes, so signed codes get +128 and the block's 128 *
 * sum(xq) comes off in integers: exact.
 *
 * fp8 (e4m3fn, e5m2): fp32 activations; each code becomes an fp16 bit pattern in registers (e5m2: the byte is
 * the high byte of the fp16; e4m3: sign | exponent+mantissa << 7, which is the value / 256 for normals and
 * subnormals alike, the 256 is folded into the scale) and F16C converts it exactly to fp32.
 *
 * Integer and codebook weights are regrouped at load into tiles of 4 rows, and on AVX-512 CPUs groups of four
 * tiles (16 rows) interleaved by block of 32 columns (`xq_tile_group`): block b of a group is its four tiles'
 * blocks in a row (4 x 64 bytes for 4-bit codes, 4 x 128 for int8), so the four-tile kernel reads one stream in
 * order (`tile_w`; with the tiles one after the other it read four interleaved streams and decode ran 0.8x); on
 * AVX2 CPUs a tile's blocks are one run. Scales (and zeros) follow the same order: [n / (4 g), blocks, 4 g]; n is
 * padded to a multiple of 4 g. fp8 weights stay in 4-row tiles, [n/4, blocks, 4, 32], scales [n/4, groups, 4].
 */
#include <cpuid.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef __linux__
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include <immintrin.h>

#ifdef _OPENMP
#include <omp.h>
#define XQ_THREAD omp_get_thread_num()
#else
#define XQ_THREAD 0
#endif

#define XQ_AVX2_FN __attribute__((target("avx2,fma,f16c")))
#define XQ_AVX512_FN __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")))

/* The AMX path's functions: AVX-512 for the weight decode and the float epilogue, AMX for the tile instructions
   (written as inline asm below, so only the assembler must know them). A compiler that rejects the target
   builds with -DXQ_NO_AMX (cpu_native.py retries so): the amx path is then never offered; the emulated one is. */
#ifndef XQ_NO_AMX
#define XQ_AMX_FN                                                                                                  \
    __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,amx-tile,amx-int8,amx-bf16")))
#else
#define XQ_AMX_FN XQ_AVX512_FN
#endif

/* Path numbers (cpu_native.ISA_PATHS): the real ones ordered by speed; amx_emulated is a test twin, not a rank. */
enum { XQ_NONE = 0, XQ_AVX2 = 1, XQ_AVX512 = 2, XQ_AMX = 3, XQ_AMX_EMU = 4 };
enum { K_INT4 = 0, K_LUT4 = 1, K_INT8 = 2, K_FP8 = 3 };

static uint64_t xgetbv0(void) {
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}

/* The best vector path this CPU and OS run: CPUID feature bits, and XCR0 for the OS saving ymm (and zmm) state. */
static int vec_best(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return XQ_NONE;
    const int osxsave = (c >> 27) & 1, avx = (c >> 28) & 1, fma = (c >> 12) & 1, f16c = (c >> 29) & 1;
    if (!osxsave || !avx || !fma || !f16c) return XQ_NONE;
    const uint64_t xcr0 = xgetbv0();
    if ((xcr0 & 0x6) != 0x6) return XQ_NONE;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return XQ_NONE;
    if (!((b >> 5) & 1)) return XQ_NONE; /* AVX2 */
    const int f = (b >> 16) & 1, dq = (b >> 17) & 1, bw = (b >> 30) & 1, vl = (b >> 31) & 1, vnni = (c >> 11) & 1;
    if (f && dq && bw && vl && vnni && (xcr0 & 0xE6) == 0xE6) return XQ_AVX512;
    return XQ_AVX2;
}

/* AMX tiles (int8) reported by CPUID and enabled by the OS (XCR0 bits 17-18). */
int xq_has_amx(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return 0;
    const int tile = (d >> 24) & 1, int8 = (d >> 25) & 1;
    return tile && int8 && ((xgetbv0() >> 17) & 3) == 3;
}

static int amx_state = -1; /* -1 not probed yet, 0 no, 1 yes */
static int amx_why = -1;   /* why not (xq_amx_reason) */

/* Whether the amx path runs here: AMX-INT8 and AVX-512 in CPUID and XCR0, palette 1 with the 16 x 64-byte tiles
   the kernel configures (CPUID leaf 0x1D), and Linux's permission to use tile data (asked once, for the whole
   process: arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA), then read back). Any miss: not offered. */
static int amx_usable(void) {
    if (amx_state >= 0) return amx_state;
    int ok = 0, why = 1;
#if !defined(XQ_NO_AMX) && defined(__linux__) && defined(SYS_arch_prctl)
    unsigned a, b, c, d;
    if (!xq_has_amx()) {
        why = 2;
    } else if (vec_best() != XQ_AVX512) {
        why = 3;
    } else if (!(__get_cpuid_count(0, 0, &a, &b, &c, &d) && a >= 0x1D && __get_cpuid_count(0x1D, 0, &a, &b, &c, &d) &&
                 a >= 1 && __get_cpuid_count(0x1D, 1, &a, &b, &c, &d) && (b & 0xFFFF) >= 64 && (b >> 16) >= 8 &&
                 (c & 0xFFFF) >= 16)) {
        why = 4;
    } else {
        enum { ARCH_GET_XCOMP_PERM = 0x1022, ARCH_REQ_XCOMP_PERM = 0x1023, XFEATURE_XTILEDATA = 18 };
        unsigned long granted = 0;
        if (syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 &&
            syscall(SYS_arch_prctl, ARCH_GET_XCOMP_PERM, &granted) == 0)
            ok = (granted >> XFEATURE_XTILEDATA) & 1;
        why = ok ? 0 : 5;
    }
#elif defined(XQ_NO_AMX)
    why = 6;
#endif
    amx_why = why;
    amx_state = ok;
    return ok;
}

/* AMX-BF16 (CPUID.7.0:EDX[22]) beside AMX-INT8: the amx path then runs the fp8 formats' long calls too. */
static int amx_bf16_usable(void) {
    unsigned a, b, c, d;
    return amx_usable() && __get_cpuid_count(7, 0, &a, &b, &c, &d) && ((d >> 22) & 1);
}

/* Whether the amx path runs the fp8 formats on AMX-BF16 tiles here (else they stay on avx512). */
int xq_amx_bf16(void) { return amx_bf16_usable(); }

/* Why the amx path is (not) offered: 0 it is; 1 not Linux x86-64; 2 no AMX-TILE/INT8 in CPUID or XCR0; 3 no
   AVX-512 VNNI; 4 tile palette too small; 5 Linux refused the tile-data permission (e.g. a signal stack too small
   for the tile state, or a kernel before 5.16); 6 built without AMX (the compiler rejected the target). */
int xq_amx_reason(void) {
    amx_usable();
    return amx_why;
}

/* The best path this CPU and OS run. */
int xq_best_isa(void) {
    const int vec = vec_best();
    return vec == XQ_AVX512 && amx_usable() ? XQ_AMX : vec;
}

/* Whether path `isa` runs here: a real path up to the best one; amx_emulated wherever AVX-512 runs. */
int xq_path_runnable(int isa) {
    if (isa == XQ_AMX_EMU) return vec_best() == XQ_AVX512;
    return isa >= XQ_AVX2 && isa <= xq_best_isa();
}

static int active_isa = -1;

/* The path the kernels run now. */
int xq_isa(void) {
    if (active_isa < 0) active_isa = xq_best_isa();
    return active_isa;
}

/* The vector path under the active one (the amx paths run AVX-512 around their tiles, and for short calls). */
static int vec_isa(void) {
    const int isa = xq_isa();
    return isa >= XQ_AVX512 ? XQ_AVX512 : isa;
}

/* Force a path (-1: back to the best); returns the active path, or -1 when this CPU cannot run `isa`. */
int xq_set_isa(int isa) {
    if (isa < 0) isa = xq_best_isa();
    if (!xq_path_runnable(isa)) return -1;
    active_isa = isa;
    return active_isa;
}

/* The amx paths take calls of at least this many activation rows on their tiles; shorter ones run VNNI with the
   tiles' arithmetic (tile_int_avx512_bd). One tile holds 16 rows: a call of fewer pays a whole tile's tdpbssd and
   epilogue for part of it, while VNNI's cost per row is flat. Measured on a Sapphire Rapids-class Xeon
   (docs/benchmarks-cpu-avx512.md, bench/cpu_kernels.py's amx_tiles column): at 8 rows the tiles beat VNNI on every
   integer and codebook shape at 1 thread (1.1-1.4x) and on all but one at 2; at 1 row VNNI is 2-3x faster. */
static int amx_min_rows = 8;

/* Whether the amx paths run the fp8 formats' long calls on bf16 tiles (off unless asked for): those are the fp32
   product to 2^-17 per activation, not bit for bit the avx512 path that takes the short calls, so with them a
   row's result depends on whether its call had amx_min_rows rows (the integer formats' does not). */
static int amx_fp8 = 0;

/* Turn the fp8 bf16 tiles on (1) or off (0); returns the previous setting. */
int xq_set_amx_fp8(int on) {
    const int before = amx_fp8;
    amx_fp8 = on != 0;
    return before;
}

/* Set the amx paths' row threshold (>= 1); returns the previous one. */
int xq_set_amx_min_rows(int rows) {
    const int before = amx_min_rows;
    amx_min_rows = rows < 1 ? 1 : rows;
    return before;
}

int xq_simd(void) { return xq_best_isa() >= XQ_AVX2; }

struct job {
    int kind;
    int64_t m, k, nb;          /* activation rows, padded width (multiple of 32), blocks of 32 */
    const int8_t *xq;          /* int kinds: [m, k] quantised, block-permuted */
    const float *d, *bsum;     /* [m, nb]: block scale, d * sum of the block's codes */
    const int32_t *isum;       /* [m, nb]: sum of the block's codes */
    const float *xf;           /* fp8: fp32 activations [m, k] */
    const uint8_t *w;          /* tiles */
    const uint16_t *scale;     /* int kinds: fp16 [n/4, nb, 4] */
    const uint16_t *zero;      /* asym_int4: fp16 [n/4, nb, 4]; NULL: z = zmul * s */
    const float *fscale;       /* fp8: fp32 [n/4, groups, 4] */
    int64_t groups, group_blocks;
    float zmul, wmul;          /* sym_int4: zmul = -8; codebooks: wmul = the table's scale */
    const int8_t *lut;         /* codebooks: 16 signed table entries */
    int e4m3;
    int64_t n_out;
    int64_t n_tiles;           /* amx, tile_int_avx512_bd: 4-row weight tiles (n / 4) */
    float *y;
};

/* Tiles per group in the integer weights' layout: 4 where the CPU has AVX-512 VNNI (its kernels take four tiles a
   block, so a group's block b is one run), 1 on AVX2-only CPUs (whose kernel takes one tile at a time). A property
   of the CPU, not of a forced path: weights loaded under one path run on every other. */
static int tile_group_cached = 0;
static inline int tile_group(void) {
    if (!tile_group_cached) tile_group_cached = vec_best() == XQ_AVX512 ? 4 : 1;
    return tile_group_cached;
}
int xq_tile_group(void) { return tile_group(); }
/* Tests: the layout of weights prepared from now on (1 or 4 tiles a group; returns the previous). */
int xq_set_tile_group(int g) {
    const int before = tile_group();
    tile_group_cached = g == 4 ? 4 : 1;
    return before;
}

/* Tile t's first block (bb bytes a tile block) and its scales (or zeros) in the group layout; a tile's next block
   is tile_group() * bb bytes further, its next block's scales 4 * tile_group() values (the kernels hold both
   strides in locals: `ws`, `ss`). */
static inline const uint8_t *tile_w(const struct job *j, int64_t t, int64_t bb) {
    const int g = tile_group();
    return j->w + ((t / g) * j->nb * g + (t % g)) * bb;
}
static inline const uint16_t *tile_s(const uint16_t *p, const struct job *j, int64_t t) {
    const int g = tile_group();
    return p + (t / g) * j->nb * 4 * g + (t % g) * 4;
}

/* ---- activations ----------------------------------------------------------------------------------- */

/* x [m, k] float -> q [m, k] int8 (block-permuted), d [m, k/32] block scales, isum / bsum: each block's sum
   of codes, as an integer and times d. */
XQ_AVX2_FN static void xq_quantize(const float *x, int64_t m, int64_t k, int8_t *q, float *d, float *bsum,
                                   int32_t *isum) {
    const int64_t nb = k / 32;
    for (int64_t r = 0; r < m; ++r) {
        for (int64_t b = 0; b < nb; ++b) {
            const float *v = x + r * k + b * 32;
            float amax = 0.0f;
            for (int i = 0; i < 32; ++i) {
                const float a = fabsf(v[i]);
                amax = a > amax ? a : amax;
            }
            const float scale = amax / 127.0f, inv = scale > 0.0f ? 1.0f / scale : 0.0f;
            int8_t *out = q + r * k + b * 32;
            int s = 0;
            for (int i = 0; i < 16; ++i) {
                out[i] = (int8_t)lrintf(v[2 * i] * inv);
                out[16 + i] = (int8_t)lrintf(v[2 * i + 1] * inv);
                s += out[i] + out[16 + i];
            }
            d[r * nb + b] = scale;
            isum[r * nb + b] = s;
            bsum[r * nb + b] = scale * (float)s;
        }
    }
}

/* xq_quantize on 16 lanes, bit for bit the same: the max ignores NaNs as the scalar compare does, the codes are
   one multiply and vcvtps2dq (round half to even, as lrintf in the default mode), kept as their low byte (the
   scalar int8 cast), and the sums add the same codes. */
XQ_AVX512_FN static void xq_quantize512(const float *x, int64_t m, int64_t k, int8_t *q, float *d, float *bsum,
                                        int32_t *isum) {
    const int64_t nb = k / 32;
    const __m512 zero = _mm512_setzero_ps(), sign = _mm512_set1_ps(-0.0f);
    const __m512i even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
    for (int64_t r = 0; r < m; ++r) {
        for (int64_t b = 0; b < nb; ++b) {
            const float *v = x + r * k + b * 32;
            const __m512 lo = _mm512_loadu_ps(v), hi = _mm512_loadu_ps(v + 16);
            /* max(|v|, 0): a NaN lane gives the second operand, 0 */
            const __m512 top = _mm512_max_ps(_mm512_max_ps(_mm512_andnot_ps(sign, lo), zero),
                                             _mm512_max_ps(_mm512_andnot_ps(sign, hi), zero));
            const float amax = _mm512_reduce_max_ps(top);
            const float scale = amax / 127.0f, inv = scale > 0.0f ? 1.0f / scale : 0.0f;
            const __m512 iv = _mm512_set1_ps(inv);
            const __m512i cl = _mm512_cvtps_epi32(_mm512_mul_ps(lo, iv)), ch = _mm512_cvtps_epi32(_mm512_mul_ps(hi, iv));
            const __m128i qe = _mm512_cvtepi32_epi8(_mm512_permutex2var_epi32(cl, even, ch));
            const __m128i qo = _mm512_cvtepi32_epi8(_mm512_permutex2var_epi32(cl, odd, ch));
            int8_t *out = q + r * k + b * 32;
            _mm_storeu_si128((__m128i *)out, qe);
            _mm_storeu_si128((__m128i *)(out + 16), qo);
            const int s = _mm512_reduce_add_epi32(_mm512_add_epi32(_mm512_cvtepi8_epi32(qe), _mm512_cvtepi8_epi32(qo)));
            d[r * nb + b] = scale;
            isum[r * nb + b] = s;
            bsum[r * nb + b] = scale * (float)s;
        }
    }
}

/* ---- AVX2 ------------------------------------------------------------------------------------------ */

XQ_AVX2_FN static inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* 16 packed bytes -> 32 codes 0..15 (low nibbles = even columns, then high nibbles = odd columns). */
XQ_AVX2_FN static inline __m256i nibbles_avx2(const uint8_t *packed) {
    const __m256i shifts = _mm256_set_epi32(4, 4, 4, 4, 0, 0, 0, 0), mask = _mm256_set1_epi8(0x0F);
    const __m256i raw = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)packed));
    return _mm256_and_si256(_mm256_srlv_epi32(raw, shifts), mask);
}

/* 32 products summed in 8 float lanes: unsigned codes (0..15: pair sums far from int16 saturation)... */
XQ_AVX2_FN static inline __m256 dot_u(__m256i codes, __m256i x) {
    return _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_maddubs_epi16(codes, x), _mm256_set1_epi16(1)));
}

/* ...and signed codes (|w|, |x| <= 127: |w| times x with w's sign stays below int16 saturation). */
XQ_AVX2_FN static inline __m256 dot_s(__m256i w, __m256i x) {
    const __m256i pairs = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w));
    return _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
}

/* One tile (4 weight rows) against every activation row, integer kinds. */
XQ_AVX2_FN static void tile_int_avx2(const struct job *j, int64_t t) {
    const int kind = j->kind;
    const int64_t nb = j->nb, bb = kind == K_INT8 ? 128 : 64;
    const uint8_t *w = tile_w(j, t, bb);
    const uint16_t *sc = tile_s(j->scale, j, t), *zc = j->zero ? tile_s(j->zero, j, t) : 0;
    const int64_t ws = tile_group() * bb, ss = 4 * tile_group();
    const __m256i lut = kind == K_LUT4 ? _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)j->lut))
                                       : _mm256_setzero_si256();
    const __m128 zmul = _mm_set1_ps(j->zmul);
    for (int64_t r = 0; r < j->m; ++r) {
        const int8_t *xq = j->xq + r * j->k;
        const float *d = j->d + r * nb, *bs = j->bsum + r * nb;
        __m256 acc[4];
        for (int i = 0; i < 4; ++i) acc[i] = _mm256_setzero_ps();
        __m128 zacc = _mm_setzero_ps();
        for (int64_t b = 0; b < nb; ++b) {
            const __m256i x = _mm256_loadu_si256((const __m256i *)(xq + b * 32));
            const __m128 s4 = _mm_cvtph_ps(_mm_loadl_epi64((const __m128i *)(sc + b * ss)));
            const __m128 z4 = zc ? _mm_cvtph_ps(_mm_loadl_epi64((const __m128i *)(zc + b * ss))) : _mm_mul_ps(s4, zmul);
            zacc = _mm_fmadd_ps(z4, _mm_set1_ps(bs[b]), zacc);
            float f[4];
            _mm_storeu_ps(f, _mm_mul_ps(s4, _mm_set1_ps(d[b] * j->wmul)));
            for (int i = 0; i < 4; ++i) {
                __m256 dot;
                if (kind == K_INT4) {
                    dot = dot_u(nibbles_avx2(w + b * ws + i * 16), x);
                } else if (kind == K_LUT4) {
                    dot = dot_s(_mm256_shuffle_epi8(lut, nibbles_avx2(w + b * ws + i * 16)), x);
                } else {
                    const uint8_t *p = w + b * ws + i * 16;
                    dot = dot_s(_mm256_loadu2_m128i((const __m128i *)(p + 64), (const __m128i *)p), x);
                }
                acc[i] = _mm256_fmadd_ps(dot, _mm256_set1_ps(f[i]), acc[i]);
            }
        }
        float z[4];
        _mm_storeu_ps(z, zacc);
        for (int i = 0; i < 4 && t * 4 + i < j->n_out; ++i) j->y[r * j->n_out + t * 4 + i] = hsum8(acc[i]) + z[i];
    }
}

/* 8 fp8 codes -> 8 floats (exact; e4m3 values / 256). */
XQ_AVX2_FN static inline __m256 fp8x8_avx2(const uint8_t *p, int e4m3) {
    const __m128i c = _mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i *)p));
    const __m128i h = e4m3 ? _mm_or_si128(_mm_slli_epi16(_mm_and_si128(c, _mm_set1_epi16(0x7F)), 7),
                                          _mm_slli_epi16(_mm_and_si128(c, _mm_set1_epi16(0x80)), 8))
                           : _mm_slli_epi16(c, 8);
    return _mm256_cvtph_ps(h);
}

XQ_AVX2_FN static void tile_fp8_avx2(const struct job *j, int64_t t) {
    const int64_t nb = j->nb;
    const uint8_t *w = j->w + t * nb * 128;
    const float *fs = j->fscale + t * j->groups * 4;
    for (int64_t r = 0; r < j->m; ++r) {
        const float *x = j->xf + r * j->k;
        __m256 acc[4];
        for (int i = 0; i < 4; ++i) acc[i] = _mm256_setzero_ps();
        const int per_row = j->groups == 1; /* as in the AVX-512 path */
        for (int64_t b = 0; b < nb; ++b) {
            const float *s = fs + (b / j->group_blocks) * 4;
            for (int i = 0; i < 4; ++i) {
                const __m256 sv = _mm256_set1_ps(per_row ? 1.0f : s[i] * j->wmul);
                for (int q = 0; q < 4; ++q) {
                    const __m256 wf = _mm256_mul_ps(fp8x8_avx2(w + b * 128 + i * 32 + q * 8, j->e4m3), sv);
                    acc[i] = _mm256_fmadd_ps(wf, _mm256_loadu_ps(x + b * 32 + q * 8), acc[i]);
                }
            }
        }
        for (int i = 0; i < 4 && t * 4 + i < j->n_out; ++i)
            j->y[r * j->n_out + t * 4 + i] = hsum8(acc[i]) * (per_row ? fs[i] * j->wmul : 1.0f);
    }
}

/* ---- AVX-512 VNNI ---------------------------------------------------------------------------------- */

/* One tile against R (<= 4) activation rows with the tiles' arithmetic (the four-tile kernel's, for a group it
   cannot take whole): each tile block (4 weight rows x 32 columns) is decoded once into two 64-byte vectors (even /
   odd columns of the 4 rows, one row per 128-bit lane) and meets each activation row's broadcast block in two
   vpdpbusd; the partial sums are added in int32 to the block's exact dots, then scaled as the tile epilogue does. */
XQ_AVX512_FN static inline __attribute__((always_inline)) void rows_int_avx512(const struct job *j, int64_t t,
                                                                            int64_t r0, const int R) {
    const int kind = j->kind;
    const int64_t nb = j->nb, bb = kind == K_INT8 ? 128 : 64;
    const uint8_t *w = tile_w(j, t, bb);
    const uint16_t *sc = tile_s(j->scale, j, t), *zc = j->zero ? tile_s(j->zero, j, t) : 0;
    const int64_t ws = tile_group() * bb, ss = 4 * tile_group();
    const __m512i mask = _mm512_set1_epi8(0x0F), flip = _mm512_set1_epi8((char)0x80);
    const __m512i sel = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
    __m512i lut = _mm512_setzero_si512();
    if (kind == K_LUT4)
        lut = _mm512_xor_si512(_mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)j->lut)), flip);
    /* Codes enter vpdpbusd unsigned: +128 for signed ones, +8 removed for sym_int4 (zero = -8 s). */
    const int bias = kind == K_INT4 ? (zc ? 0 : 8) : 128;
    const int8_t *xr[4];
    const float *dr[4], *br[4];
    const int32_t *ir[4];
    for (int i = 0; i < R; ++i) {
        const int64_t r = r0 + i;
        xr[i] = j->xq + r * j->k, dr[i] = j->d + r * nb, br[i] = j->bsum + r * nb, ir[i] = j->isum + r * nb;
    }
    __m512 acc = _mm512_setzero_ps(), zsum = _mm512_setzero_ps(); /* the zero terms: a sum of their own */
    for (int64_t b = 0; b < nb; ++b) {
        const uint8_t *wb = w + b * ws;
        __m512i we, wo;
        if (kind == K_INT8) {
            we = _mm512_xor_si512(_mm512_loadu_si512(wb), flip);
            wo = _mm512_xor_si512(_mm512_loadu_si512(wb + 64), flip);
        } else {
            const __m512i raw = _mm512_loadu_si512(wb);
            we = _mm512_and_si512(raw, mask);
            wo = _mm512_and_si512(_mm512_srli_epi16(raw, 4), mask);
            if (kind == K_LUT4) we = _mm512_shuffle_epi8(lut, we), wo = _mm512_shuffle_epi8(lut, wo);
        }
        const __m128 s4 = _mm_cvtph_ps(_mm_loadl_epi64((const __m128i *)(sc + b * ss)));
        const __m512 s16 = _mm512_permutexvar_ps(sel, _mm512_castps128_ps512(s4));
        const __m128 z4 = zc ? _mm_cvtph_ps(_mm_loadl_epi64((const __m128i *)(zc + b * ss))) : _mm_setzero_ps();
        __m512i ai[4];
        for (int i = 0; i < R; ++i) {
            const __m512i xe = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(xr[i] + b * 32)));
            const __m512i xo = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(xr[i] + b * 32 + 16)));
            ai[i] = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), we, xe), wo, xo);
            if (bias) ai[i] = _mm512_sub_epi32(ai[i], _mm512_maskz_set1_epi32(0x1111, bias * ir[i][b]));
        }
        /* per 128-bit lane q: lane i = the exact dot of weight row q and activation row i (int32 adds) */
        __m512i dot;
        if (R == 1) {
            dot = _mm512_add_epi32(ai[0], _mm512_shuffle_epi32(ai[0], _MM_PERM_BADC));
            dot = _mm512_add_epi32(dot, _mm512_shuffle_epi32(dot, _MM_PERM_CDAB));
        } else {
            for (int i = R; i < 4; ++i) ai[i] = _mm512_setzero_si512();
            const __m512i s01 = _mm512_add_epi32(_mm512_unpacklo_epi32(ai[0], ai[1]), _mm512_unpackhi_epi32(ai[0], ai[1]));
            const __m512i s23 = _mm512_add_epi32(_mm512_unpacklo_epi32(ai[2], ai[3]), _mm512_unpackhi_epi32(ai[2], ai[3]));
            dot = _mm512_add_epi32(_mm512_unpacklo_epi64(s01, s23), _mm512_unpackhi_epi64(s01, s23));
        }
        /* lane i's d * wmul and bsum (one row: every lane of a group holds its dot, so any d will do) */
        const float wm = j->wmul;
        const __m512 d16 = R == 1 ? _mm512_set1_ps(dr[0][b] * wm)
                                  : _mm512_broadcast_f32x4(_mm_set_ps(R > 3 ? dr[3][b] * wm : 0.0f,
                                                                      R > 2 ? dr[2][b] * wm : 0.0f,
                                                                      dr[1][b] * wm, dr[0][b] * wm));
        acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(s16, d16), acc);
        if (zc) {
            const __m512 b16 = R == 1 ? _mm512_set1_ps(br[0][b])
                                      : _mm512_broadcast_f32x4(_mm_set_ps(R > 3 ? br[3][b] : 0.0f,
                                                                          R > 2 ? br[2][b] : 0.0f, br[1][b], br[0][b]));
            zsum = _mm512_fmadd_ps(_mm512_permutexvar_ps(sel, _mm512_castps128_ps512(z4)), b16, zsum);
        }
    }
    float lanes[16]; /* lane 4 q + i: activation row i, weight row q */
    _mm512_storeu_ps(lanes, zc ? _mm512_add_ps(acc, zsum) : acc);
    for (int i = 0; i < R; ++i)
        for (int q = 0; q < 4 && t * 4 + q < j->n_out; ++q) j->y[(r0 + i) * j->n_out + t * 4 + q] = lanes[4 * q + i];
}

/* quad_int_avx512_bd's state: the group's weights (four-tile layout: block b of tile i at w + (4 b + i) bb), R
   activation rows, their sums. */
struct quad {
    const uint8_t *w;
    const int8_t *xr[4];
    const float *dr[4], *br[4];
    const int32_t *ir[4];
    __m512i lut;
    __m512 acc[4], zsum[4];
};

/* One block of quad_int_avx512_bd (KIND, ZERO: the job's, as constants): the four tiles decoded once, then per
   activation row 8 vpdpbusd and one 4 x 4 transpose of the partial sums (int32 adds: exact in any order) give the
   block's 16 exact dots, lane 4 q + i = tile i's weight row q; one fma takes them all into the row's accumulator. */
XQ_AVX512_FN static inline __attribute__((always_inline)) void quad_block(const struct job *j, struct quad *s,
                                                                       int64_t b, __m512 s16, __m512 z16,
                                                                       const int R, const int KIND,
                                                                       const int ZERO) {
    /* rows_int_avx512's bias (codes enter vpdpbusd unsigned), as a shift: 8 for sym_int4, 128 for signed codes */
    const int shift = KIND == K_INT4 ? (ZERO ? 0 : 3) : 7;
    const __m512i mask = _mm512_set1_epi8(0x0F), flip = _mm512_set1_epi8((char)0x80);
    __m512i we[4], wo[4];
    const int64_t bb = KIND == K_INT8 ? 128 : 64;
    const uint8_t *wb = s->w + b * 4 * bb; /* the four tiles' block b: one run of 4 bb bytes */
    for (int i = 0; i < 4; ++i) {
        if (KIND == K_INT8) {
            we[i] = _mm512_xor_si512(_mm512_loadu_si512(wb + i * 128), flip);
            wo[i] = _mm512_xor_si512(_mm512_loadu_si512(wb + i * 128 + 64), flip);
        } else {
            const __m512i raw = _mm512_loadu_si512(wb + i * 64);
            we[i] = _mm512_and_si512(raw, mask);
            wo[i] = _mm512_and_si512(_mm512_srli_epi16(raw, 4), mask);
            if (KIND == K_LUT4) we[i] = _mm512_shuffle_epi8(s->lut, we[i]), wo[i] = _mm512_shuffle_epi8(s->lut, wo[i]);
        }
    }
    for (int r = 0; r < R; ++r) {
        const __m512i xe = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(s->xr[r] + b * 32)));
        const __m512i xo = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(s->xr[r] + b * 32 + 16)));
        __m512i a[4];
        for (int i = 0; i < 4; ++i)
            a[i] = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), we[i], xe), wo[i], xo);
        /* per 128-bit lane q: element i = the sum of a[i]'s four partials there (tile i, weight row q) */
        const __m512i s01 = _mm512_add_epi32(_mm512_unpacklo_epi32(a[0], a[1]), _mm512_unpackhi_epi32(a[0], a[1]));
        const __m512i s23 = _mm512_add_epi32(_mm512_unpacklo_epi32(a[2], a[3]), _mm512_unpackhi_epi32(a[2], a[3]));
        __m512i dot = _mm512_add_epi32(_mm512_unpacklo_epi64(s01, s23), _mm512_unpackhi_epi64(s01, s23));
        if (shift) dot = _mm512_sub_epi32(dot, _mm512_slli_epi32(_mm512_set1_epi32(s->ir[r][b]), shift));
        /* s * (d * wmul); wmul is 1 for the integer kinds (xq_int4_linear, xq_int8_linear), where d * 1 is d */
        const float dw = KIND == K_LUT4 ? s->dr[r][b] * j->wmul : s->dr[r][b];
        const __m512 f = _mm512_mul_ps(s16, _mm512_set1_ps(dw));
        s->acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), f, s->acc[r]);
        if (ZERO) s->zsum[r] = _mm512_fmadd_ps(z16, _mm512_set1_ps(s->br[r][b]), s->zsum[r]);
    }
}

/* Four tiles (tiles t0 .. t0 + 3: 16 weight rows) against R activation rows with the tiles' arithmetic: per block
   quad_block, acc += dot * (s * (d * wmul)) as amx_epilogue does; asym_int4's z * bsum in a sum of its own, added
   at the end as amx_zero_terms does. Blocks go in pairs for the scales' loads. */
XQ_AVX512_FN static inline __attribute__((always_inline)) void quad_int_avx512_bd(const struct job *j, int64_t t0,
                                                                               int64_t r0, const int R,
                                                                               const int KIND, const int ZERO) {
    const int64_t nb = j->nb, bb = KIND == K_INT8 ? 128 : 64;
    struct quad s;
    s.w = tile_w(j, t0, bb); /* t0 is a group's first tile */
    const uint16_t *sc = tile_s(j->scale, j, t0), *zc = ZERO ? tile_s(j->zero, j, t0) : sc;
    s.lut = KIND == K_LUT4 ? _mm512_xor_si512(_mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)j->lut)),
                                              _mm512_set1_epi8((char)0x80))
                           : _mm512_setzero_si512();
    for (int r = 0; r < R; ++r) {
        const int64_t row = r0 + r;
        s.xr[r] = j->xq + row * j->k, s.dr[r] = j->d + row * nb, s.br[r] = j->bsum + row * nb;
        s.ir[r] = j->isum + row * nb;
        s.acc[r] = _mm512_setzero_ps(), s.zsum[r] = _mm512_setzero_ps();
    }
    /* lane 4 q + i takes element 4 i + q: a block's 16 scales (tile i, row q at 4 i + q) into the dots' order */
    const __m512i tr = _mm512_set_epi32(15, 11, 7, 3, 14, 10, 6, 2, 13, 9, 5, 1, 12, 8, 4, 0);
    for (int64_t b = 0; b < nb; ++b) {
        const __m512 s16 =
            _mm512_permutexvar_ps(tr, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(sc + b * 16))));
        const __m512 z16 =
            ZERO ? _mm512_permutexvar_ps(tr, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(zc + b * 16))))
                 : _mm512_setzero_ps();
        quad_block(j, &s, b, s16, z16, R, KIND, ZERO);
    }
    /* back to lane 4 i + q: output column 4 (t0 + i) + q */
    const int64_t n0 = t0 * 4, cols = j->n_out - n0 < 16 ? j->n_out - n0 : 16;
    const __mmask16 keep = (__mmask16)((1u << cols) - 1);
    for (int r = 0; r < R; ++r) {
        const __m512 v = ZERO ? _mm512_add_ps(s.acc[r], s.zsum[r]) : s.acc[r];
        _mm512_mask_storeu_ps(j->y + (r0 + r) * j->n_out + n0, keep, _mm512_permutexvar_ps(tr, v));
    }
}

/* Every activation row against the four tiles t0 .. t0 + 3, four rows at a time, then the 3, 2 or 1 left. */
XQ_AVX512_FN static inline __attribute__((always_inline)) void quad_rows(const struct job *j, int64_t t0,
                                                                      const int KIND, const int ZERO) {
    int64_t r0 = 0;
    for (; r0 + 4 <= j->m; r0 += 4) quad_int_avx512_bd(j, t0, r0, 4, KIND, ZERO);
    switch (j->m - r0) {
    case 3: quad_int_avx512_bd(j, t0, r0, 3, KIND, ZERO); break;
    case 2: quad_int_avx512_bd(j, t0, r0, 2, KIND, ZERO); break;
    case 1: quad_int_avx512_bd(j, t0, r0, 1, KIND, ZERO); break;
    default: break;
    }
}

/* Every avx512 call, and the amx path's calls below its row threshold: VNNI with the tiles' arithmetic per (row,
   weight row): each block's partial sums added in int32 to the block's exact dot, dot * (s * (d * wmul))
   accumulated as amx_epilogue does, asym_int4's z * bsum in a sum of their own added at the end as amx_zero_terms
   does. So a row's result is the tiles' bit for bit, whatever the call's row count: batch invariance holds across
   the threshold, and the avx512 and amx paths give the same bits. Called per group of four tiles (tiles() steps by
   4 for it): a whole group in the four-tile layout runs quad_int_avx512_bd (16 dots per fma, one stream); a last
   group of fewer tiles, or the one-tile layout (tests: `xq_set_tile_group`), runs rows_int_avx512 tile by tile
   (the same bits). */
XQ_AVX512_FN static void tile_int_avx512_bd(const struct job *j, int64_t g) {
    const int64_t t0 = g * 4, left = j->n_tiles - t0;
    /* quad_block takes d * wmul as d outside the codebooks, exact where wmul is 1 (always, as the entry points set
       it); any other wmul goes tile by tile too */
    if (left < 4 || (j->kind != K_LUT4 && j->wmul != 1.0f) || tile_group() != 4) {
        const int64_t last = left < 4 ? t0 + left : t0 + 4;
        for (int64_t t = t0; t < last; ++t) {
            int64_t r0 = 0;
            for (; r0 + 4 <= j->m; r0 += 4) rows_int_avx512(j, t, r0, 4);
            switch (j->m - r0) {
            case 3: rows_int_avx512(j, t, r0, 3); break;
            case 2: rows_int_avx512(j, t, r0, 2); break;
            case 1: rows_int_avx512(j, t, r0, 1); break;
            default: break;
            }
        }
        return;
    }
    if (j->kind == K_INT4 && j->zero)
        quad_rows(j, t0, K_INT4, 1);
    else if (j->kind == K_INT4)
        quad_rows(j, t0, K_INT4, 0);
    else if (j->kind == K_LUT4)
        quad_rows(j, t0, K_LUT4, 0);
    else
        quad_rows(j, t0, K_INT8, 0);
}

/* 32 fp8 codes -> fp16 bit patterns in one zmm (exact; e4m3 values / 256). */
XQ_AVX512_FN static inline __m512i fp8x32_avx512(const uint8_t *p, int e4m3) {
    const __m512i c = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)p));
    if (!e4m3) return _mm512_slli_epi16(c, 8);
    return _mm512_or_si512(_mm512_slli_epi16(_mm512_and_si512(c, _mm512_set1_epi16(0x7F)), 7),
                           _mm512_slli_epi16(_mm512_and_si512(c, _mm512_set1_epi16(0x80)), 8));
}

XQ_AVX512_FN static inline __attribute__((always_inline)) void rows_fp8_avx512(const struct job *j, int64_t t,
                                                                            int64_t r0, const int R) {
    const int64_t nb = j->nb;
    const uint8_t *w = j->w + t * nb * 128;
    const float *fs = j->fscale + t * j->groups * 4;
    const float *xr[4];
    for (int i = 0; i < R; ++i) xr[i] = j->xf + (r0 + i) * j->k;
    __m512 acc[4][4];
    for (int i = 0; i < R; ++i)
        for (int q = 0; q < 4; ++q) acc[i][q] = _mm512_setzero_ps();
    /* One scale per row (per-channel): it multiplies the finished sums; per group: each block's weights. */
    const int per_row = j->groups == 1;
    for (int64_t b = 0; b < nb; ++b) {
        const float *s = fs + (b / j->group_blocks) * 4;
        for (int q = 0; q < 4; ++q) {
            const __m512i h = fp8x32_avx512(w + b * 128 + q * 32, j->e4m3);
            __m512 lo = _mm512_cvtph_ps(_mm512_castsi512_si256(h)), hi = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(h, 1));
            if (!per_row) {
                const __m512 sv = _mm512_set1_ps(s[q] * j->wmul);
                lo = _mm512_mul_ps(lo, sv), hi = _mm512_mul_ps(hi, sv);
            }
            for (int i = 0; i < R; ++i) {
                acc[i][q] = _mm512_fmadd_ps(lo, _mm512_loadu_ps(xr[i] + b * 32), acc[i][q]);
                acc[i][q] = _mm512_fmadd_ps(hi, _mm512_loadu_ps(xr[i] + b * 32 + 16), acc[i][q]);
            }
        }
    }
    for (int i = 0; i < R; ++i)
        for (int q = 0; q < 4 && t * 4 + q < j->n_out; ++q)
            j->y[(r0 + i) * j->n_out + t * 4 + q] =
                _mm512_reduce_add_ps(acc[i][q]) * (per_row ? fs[q] * j->wmul : 1.0f);
}

XQ_AVX512_FN static void tile_fp8_avx512(const struct job *j, int64_t t) {
    int64_t r0 = 0;
    for (; r0 + 4 <= j->m; r0 += 4) rows_fp8_avx512(j, t, r0, 4);
    switch (j->m - r0) {
    case 3: rows_fp8_avx512(j, t, r0, 3); break;
    case 2: rows_fp8_avx512(j, t, r0, 2); break;
    case 1: rows_fp8_avx512(j, t, r0, 1); break;
    default: break;
    }
}

/* ---- AMX ------------------------------------------------------------------------------------------- */

/* The kernels speak to the tiles through seven operations (ldtilecfg, tileloadd, tilezero, tdpbssd, tdpbf16ps,
   tilestored, tilerelease), each with two implementations chosen at compile time of the calling function: the hardware instruction (inline asm,
   with a memory clobber: GCC's own tile macros do not tell the compiler that tileloadd reads memory), or
   amx_emu_*, a scalar C model of the same instruction as Intel's SDM specifies it (rows and bytes per row from
   the tile config, unused rows and bytes zeroed, int32 wrap-around adds, no saturation; bf16 pairs added in fp32
   one product at a time). The amx_emulated path
   runs the very same kernel over the model, so the tests check the kernel's tiling, decode and epilogue on any
   AVX-512 CPU, and on an AMX CPU check the model against the hardware (`xq_amx_probe`). */

/* ldtilecfg's 64-byte operand (palette 1: 8 tiles of up to 16 rows x 64 bytes). */
struct amx_cfg {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
};

struct amx_emu {
    struct amx_cfg cfg;
    uint8_t t[8][16][64];
};

/* Tile uses the hardware would fault on (#UD / #GP) in the emulated path: the tests require none. */
static int amx_emu_faults;

/* Faults the emulator counted since the library loaded. */
int xq_amx_emu_faults(void) { return __atomic_load_n(&amx_emu_faults, __ATOMIC_RELAXED); }

static void amx_emu_fault(void) { __atomic_fetch_add(&amx_emu_faults, 1, __ATOMIC_RELAXED); }

static int amx_emu_valid(const struct amx_emu *e, int t) {
    return e->cfg.palette == 1 && t >= 0 && t < 8 && e->cfg.rows[t] && e->cfg.colsb[t];
}

/* ldtilecfg: palette 1 with rows <= 16 and colsb <= 64 (tiles 8..15 unused), or palette 0 (= tilerelease);
   every tile is zeroed. */
static void amx_emu_cfg(struct amx_emu *e, const struct amx_cfg *c) {
    int bad = c->palette > 1;
    for (int t = 0; t < 16 && !bad; ++t)
        bad = c->palette == 1 && (t < 8 ? c->rows[t] > 16 || c->colsb[t] > 64 || !c->rows[t] != !c->colsb[t]
                                        : c->rows[t] || c->colsb[t]);
    if (bad) {
        amx_emu_fault();
        return;
    }
    e->cfg = *c;
    if (!c->palette) memset(&e->cfg, 0, sizeof e->cfg);
    memset(e->t, 0, sizeof e->t);
}

static void amx_emu_release(struct amx_emu *e) {
    memset(&e->cfg, 0, sizeof e->cfg);
    memset(e->t, 0, sizeof e->t);
}

/* tileloadd: rows x colsb bytes from base + row * stride; the rest of the tile zeroed. */
static void amx_emu_load(struct amx_emu *e, int t, const void *base, int64_t stride) {
    if (!amx_emu_valid(e, t)) {
        amx_emu_fault();
        return;
    }
    memset(e->t[t], 0, sizeof e->t[t]);
    for (int r = 0; r < e->cfg.rows[t]; ++r) memcpy(e->t[t][r], (const uint8_t *)base + r * stride, e->cfg.colsb[t]);
}

/* tilestored: rows x colsb bytes to base + row * stride. */
static void amx_emu_store(struct amx_emu *e, int t, void *base, int64_t stride) {
    if (!amx_emu_valid(e, t)) {
        amx_emu_fault();
        return;
    }
    for (int r = 0; r < e->cfg.rows[t]; ++r) memcpy((uint8_t *)base + r * stride, e->t[t][r], e->cfg.colsb[t]);
}

static void amx_emu_zero(struct amx_emu *e, int t) {
    if (!amx_emu_valid(e, t)) {
        amx_emu_fault();
        return;
    }
    memset(e->t[t], 0, sizeof e->t[t]);
}

/* The operand checks both tile dot products make (shapes agree: a.colsb = 4 b.rows, c.colsb = b.colsb,
   c.rows = a.rows; three distinct configured tiles); a violation counts as a fault, as the hardware would raise. */
static int amx_emu_dot_shapes(const struct amx_emu *e, int c, int a, int b) {
    const struct amx_cfg *g = &e->cfg;
    if (!amx_emu_valid(e, c) || !amx_emu_valid(e, a) || !amx_emu_valid(e, b) || c == a || c == b || a == b ||
        g->colsb[a] % 4 || g->colsb[c] % 4 || g->colsb[a] != 4 * g->rows[b] || g->colsb[c] != g->colsb[b] ||
        g->rows[c] != g->rows[a]) {
        amx_emu_fault();
        return 0;
    }
    return 1;
}

/* tdpbssd c, a, b: c (M x N int32) += a (M x K dwords of 4 s8) . b (K rows of N dwords of 4 s8); per dword the
   four byte products are added to c in 32 bits with wrap-around. Shapes must agree (a.colsb = 4 b.rows,
   c.colsb = b.colsb, c.rows = a.rows) and the three tiles differ. (The AVX-512 target only lets the compiler
   vectorise this scalar model: the emulated path runs on AVX-512 CPUs.) */
XQ_AVX512_FN static void amx_emu_dpbssd(struct amx_emu *e, int c, int a, int b) {
    const struct amx_cfg *g = &e->cfg;
    if (!amx_emu_dot_shapes(e, c, a, b)) return;
    const int M = g->rows[c], N = g->colsb[c] / 4, K = g->colsb[a] / 4;
    for (int m = 0; m < M; ++m) {
        uint32_t acc[16];
        memcpy(acc, e->t[c][m], sizeof acc);
        for (int k = 0; k < K; ++k)
            for (int n = 0; n < N; ++n) {
                const int8_t *x = (const int8_t *)&e->t[a][m][4 * k], *y = (const int8_t *)&e->t[b][k][4 * n];
                const int32_t p = x[0] * y[0] + x[1] * y[1] + x[2] * y[2] + x[3] * y[3]; /* |p| <= 4 * 2^14 */
                acc[n] += (uint32_t)p;
            }
        memset(e->t[c][m], 0, 64);
        memcpy(e->t[c][m], acc, 4 * (size_t)N);
    }
    for (int m = M; m < 16; ++m) memset(e->t[c][m], 0, 64);
}

/* A bf16 operand as tdpbf16ps reads it: denormals are zero (DAZ). */
static float amx_emu_bf16(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    if (!(u & 0x7F800000u)) u &= 0x80000000u;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* tdpbf16ps c, a, b: c (M x N fp32) += a (M x K dwords of 2 bf16) . b (K rows of N dwords of 2 bf16), as the SDM
   writes it: per dword, c += a0 * b0, then c += a1 * b1, each product exact (bf16 x bf16 fits fp32), each add
   rounded to nearest even (one fmaf), denormal inputs as zero and denormal results flushed to zero. */
XQ_AVX512_FN static void amx_emu_dpbf16ps(struct amx_emu *e, int c, int a, int b) {
    const struct amx_cfg *g = &e->cfg;
    if (!amx_emu_dot_shapes(e, c, a, b)) return;
    const int M = g->rows[c], N = g->colsb[c] / 4, K = g->colsb[a] / 4;
    for (int m = 0; m < M; ++m) {
        float acc[16];
        memcpy(acc, e->t[c][m], sizeof acc);
        for (int k = 0; k < K; ++k)
            for (int n = 0; n < N; ++n)
                for (int i = 0; i < 2; ++i) {
                    uint16_t x, y;
                    memcpy(&x, &e->t[a][m][4 * k + 2 * i], 2);
                    memcpy(&y, &e->t[b][k][4 * n + 2 * i], 2);
                    float r = fmaf(amx_emu_bf16(x), amx_emu_bf16(y), acc[n]);
                    if (fabsf(r) < 0x1p-126f) r = copysignf(0.0f, r); /* FTZ */
                    acc[n] = r;
                }
        memset(e->t[c][m], 0, 64);
        memcpy(e->t[c][m], acc, 4 * (size_t)N);
    }
    for (int m = M; m < 16; ++m) memset(e->t[c][m], 0, 64);
}

#ifndef XQ_NO_AMX
#define AMX_HW(...) __asm__ volatile(__VA_ARGS__)
#else
#define AMX_HW(...) __builtin_trap() /* never reached: the path is not offered */
#endif
/* E: 1 runs the model (state em), 0 the instruction. Tile numbers must be literals (they name tmm registers). */
#define T_CFG(E, em, cfg)                                                                                          \
    do {                                                                                                           \
        if (E) amx_emu_cfg(em, cfg);                                                                               \
        else AMX_HW("ldtilecfg %0" ::"m"(*(const struct amx_cfg *)(cfg)));                                         \
    } while (0)
#define T_RELEASE(E, em)                                                                                           \
    do {                                                                                                           \
        if (E) amx_emu_release(em);                                                                                \
        else AMX_HW("tilerelease" ::: "memory");                                                                   \
    } while (0)
#define T_LOAD(E, em, t, base, stride)                                                                             \
    do {                                                                                                           \
        if (E) amx_emu_load(em, t, base, stride);                                                                  \
        else AMX_HW("tileloadd (%0,%1,1), %%tmm" #t ::"r"((const void *)(base)), "r"((int64_t)(stride)) : "memory"); \
    } while (0)
#define T_STORE(E, em, t, base, stride)                                                                            \
    do {                                                                                                           \
        if (E) amx_emu_store(em, t, base, stride);                                                                 \
        else AMX_HW("tilestored %%tmm" #t ", (%0,%1,1)" ::"r"((void *)(base)), "r"((int64_t)(stride)) : "memory"); \
    } while (0)
#define T_ZERO(E, em, t)                                                                                           \
    do {                                                                                                           \
        if (E) amx_emu_zero(em, t);                                                                                \
        else AMX_HW("tilezero %%tmm" #t ::: "memory");                                                             \
    } while (0)
#define T_DPBSSD(E, em, c, a, b)                                                                                   \
    do {                                                                                                           \
        if (E) amx_emu_dpbssd(em, c, a, b);                                                                        \
        else AMX_HW("tdpbssd %%tmm" #b ", %%tmm" #a ", %%tmm" #c ::: "memory");                                    \
    } while (0)

#define T_DPBF16PS(E, em, c, a, b)                                                                                 \
    do {                                                                                                           \
        if (E) amx_emu_dpbf16ps(em, c, a, b);                                                                      \
        else AMX_HW("tdpbf16ps %%tmm" #b ", %%tmm" #a ", %%tmm" #c ::: "memory");                                  \
    } while (0)

/* Test hook, one tile instruction as the kernels issue it: op 0 tdpbssd, c [rows, n] int32 += a [rows, kb] s8
   . b [kb/4, 4n] s8; op 1 tdpbf16ps, c [rows, n] fp32 += a [rows, kb/2] bf16 . b [kb/4, 2n] bf16 (VNNI layout: the
   dword j of b's row k multiplies the dword k of a's row r into c[r][j]); a's rows a_stride bytes apart, b's and
   c's 4n. On the hardware (emulated = 0) or the model. Returns 0, or -1 when that path does not run here or a
   shape is out of range (rows 1..16, kb 4..64 a multiple of 4, n 1..16). */
XQ_AMX_FN static void amx_probe_run(const int E, int op, const void *a, int64_t a_stride, const void *b, void *c,
                                    int rows, int kb, int n) {
    struct amx_emu em_state, *em = &em_state;
    _Alignas(64) struct amx_cfg cfg = {.palette = 1};
    cfg.rows[0] = (uint8_t)rows, cfg.colsb[0] = (uint16_t)kb;
    cfg.rows[1] = (uint8_t)(kb / 4), cfg.colsb[1] = (uint16_t)(4 * n);
    cfg.rows[2] = (uint8_t)rows, cfg.colsb[2] = (uint16_t)(4 * n);
    T_CFG(E, em, &cfg);
    T_LOAD(E, em, 2, c, 4 * n);
    T_LOAD(E, em, 0, a, a_stride);
    T_LOAD(E, em, 1, b, 4 * n);
    if (op)
        T_DPBF16PS(E, em, 2, 0, 1);
    else
        T_DPBSSD(E, em, 2, 0, 1);
    T_STORE(E, em, 2, c, 4 * n);
    T_RELEASE(E, em);
}

int xq_amx_probe(int op, int emulated, const void *a, int64_t a_stride, const void *b, void *c, int rows, int kb,
                 int n) {
    if (rows < 1 || rows > 16 || kb < 4 || kb > 64 || kb % 4 || n < 1 || n > 16 || op < 0 || op > 1) return -1;
    if (emulated) {
        if (vec_best() != XQ_AVX512) return -1;
        amx_probe_run(1, op, a, a_stride, b, c, rows, kb, n);
    } else {
        if (!(op ? amx_bf16_usable() : amx_usable())) return -1;
        amx_probe_run(0, op, a, a_stride, b, c, rows, kb, n);
    }
    return 0;
}

/* The decoded weights of one N tile (16 weight rows = four 4-row tiles) for every block of 32 columns, as
   tdpbssd's B operand wants them: per block 8 rows of 64 bytes, row kk holding for each weight row n the signed
   codes of block positions 4kk..4kk+3 (the activations' order: even columns, then odd). Scales and zeros per
   block and weight row in fp32. Decoded once per call and N tile, read by every 16-row M tile. */
struct amx_panel {
    int8_t *b;       /* [nb][8][64] */
    float *s, *z;    /* [nb][16] */
    float *zero_row; /* [nb] zeros: the d / bsum of an M tile's missing rows */
};

/* 16 dwords per weight tile (row q's 4 dwords at 4q..4q+3) -> v[c] holding dword c of each of the 16 rows. */
XQ_AMX_FN static inline void amx_transpose4(const __m512i z[4], __m512i v[4]) {
    const __m512i lo = _mm512_set_epi32(29, 25, 21, 17, 13, 9, 5, 1, 28, 24, 20, 16, 12, 8, 4, 0);
    const __m512i hi = _mm512_set_epi32(31, 27, 23, 19, 15, 11, 7, 3, 30, 26, 22, 18, 14, 10, 6, 2);
    const __m512i a0 = _mm512_permutex2var_epi32(z[0], lo, z[1]), a1 = _mm512_permutex2var_epi32(z[0], hi, z[1]);
    const __m512i b0 = _mm512_permutex2var_epi32(z[2], lo, z[3]), b1 = _mm512_permutex2var_epi32(z[2], hi, z[3]);
    v[0] = _mm512_shuffle_i64x2(a0, b0, 0x44), v[1] = _mm512_shuffle_i64x2(a0, b0, 0xEE);
    v[2] = _mm512_shuffle_i64x2(a1, b1, 0x44), v[3] = _mm512_shuffle_i64x2(a1, b1, 0xEE);
}

/* Decode weight tiles t0..t0+count-1 (count <= 4; missing rows zero) into the panel. Codes as signed bytes:
   sym_int4 q - 8 (its zero, -8 s, becomes part of the integer dot), asym_int4 q (its zero term is added in
   floats from the block's code sum, as on the other paths), codebooks lut[q], int8 as stored. */
XQ_AMX_FN static void amx_decode(const struct job *j, int64_t t0, int64_t count, const struct amx_panel *p) {
    const int kind = j->kind;
    const int64_t nb = j->nb, bb = kind == K_INT8 ? 128 : 64, ws = tile_group() * bb, ss = 4 * tile_group();
    const __m512i mask = _mm512_set1_epi8(0x0F), eight = _mm512_set1_epi8(8);
    const __m512i lut = kind == K_LUT4 ? _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)j->lut))
                                       : _mm512_setzero_si512();
    const int minus8 = kind == K_INT4 && !j->zero;
    for (int64_t b = 0; b < nb; ++b) {
        __m512i z[4], o[4], v[4], u[4];
        for (int t = 0; t < 4; ++t) {
            const uint8_t *w = tile_w(j, t0 + t, bb) + b * ws;
            z[t] = t < count ? _mm512_loadu_si512(w) : _mm512_setzero_si512();
            o[t] = kind == K_INT8 && t < count ? _mm512_loadu_si512(w + 64) : _mm512_setzero_si512();
        }
        amx_transpose4(z, v);
        int8_t *out = p->b + b * 512;
        if (kind == K_INT8) {
            amx_transpose4(o, u);
        } else {
            for (int c = 0; c < 4; ++c) {
                u[c] = _mm512_and_si512(_mm512_srli_epi16(v[c], 4), mask);
                v[c] = _mm512_and_si512(v[c], mask);
                if (kind == K_LUT4) {
                    v[c] = _mm512_shuffle_epi8(lut, v[c]), u[c] = _mm512_shuffle_epi8(lut, u[c]);
                } else if (minus8) {
                    v[c] = _mm512_sub_epi8(v[c], eight), u[c] = _mm512_sub_epi8(u[c], eight);
                }
            }
        }
        /* missing weight rows decode to zeros (for minus8: 0 - 8; harmless, their outputs are not written) */
        for (int c = 0; c < 4; ++c) {
            _mm512_storeu_si512(out + c * 64, v[c]);
            _mm512_storeu_si512(out + (c + 4) * 64, u[c]);
        }
        for (int t = 0; t < 4; ++t) {
            const int64_t at = b * ss;
            const __m128 s4 = t < count ? _mm_cvtph_ps(_mm_loadl_epi64((const __m128i *)(tile_s(j->scale, j, t0 + t) + at)))
                                        : _mm_setzero_ps();
            _mm_storeu_ps(p->s + b * 16 + 4 * t, s4);
            if (j->zero) {
                const __m128 z4 = t < count ? _mm_cvtph_ps(_mm_loadl_epi64((const __m128i *)(tile_s(j->zero, j, t0 + t) + at)))
                                            : _mm_setzero_ps();
                _mm_storeu_ps(p->z + b * 16 + 4 * t, z4);
            }
        }
    }
}

/* One block's 16 x 16 int32 dots (c) into the 16 rows' accumulators: acc[r] += dot * s * (d_r * wmul). (asym_int4's
   zero terms are summed on their own, amx_zero_terms.) */
XQ_AMX_FN static inline __attribute__((always_inline)) void amx_epilogue(__m512 acc[16], const int32_t *c,
                                                                       const struct amx_panel *p, int64_t b,
                                                                       const float *const dr[16],
                                                                       float wmul) {
    const __m512 s16 = _mm512_loadu_ps(p->s + b * 16);
    for (int r = 0; r < 16; ++r) {
        const __m512 f = _mm512_mul_ps(s16, _mm512_set1_ps(dr[r][b] * wmul));
        acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_loadu_si512(c + 16 * r)), f, acc[r]);
    }
}

/* asym_int4's zero terms: acc[r] += sum over blocks (in order) of z * bsum_r, summed apart from the dots as the
   VNNI kernels sum them (8 rows at a time: 8 independent chains). */
XQ_AMX_FN static inline __attribute__((always_inline)) void amx_zero_terms(__m512 acc[16], const struct amx_panel *p,
                                                                         int64_t nb, const float *const br[16]) {
    for (int h = 0; h < 16; h += 8) {
        __m512 z[8];
        for (int i = 0; i < 8; ++i) z[i] = _mm512_setzero_ps();
        for (int64_t b = 0; b < nb; ++b) {
            const __m512 z16 = _mm512_loadu_ps(p->z + b * 16);
            for (int i = 0; i < 8; ++i) z[i] = _mm512_fmadd_ps(z16, _mm512_set1_ps(br[h + i][b]), z[i]);
        }
        for (int i = 0; i < 8; ++i) acc[h + i] = _mm512_add_ps(acc[h + i], z[i]);
    }
}

/* One N tile (weight tiles 4 nt .. 4 nt + 3) against every activation row, 16 rows per M tile. Tiles: 0, 1 the
   activations of blocks b, b + 1 (16 rows x 32 bytes, read in place with the row stride k; a partial last M tile
   from `tail`, a zero-padded copy), 2, 3 their decoded weights (8 x 64 bytes), 4, 5 their int32 dots (16 x 64
   bytes). Each block's dots leave the tiles at once: every block has its own activation and weight scales. */
XQ_AMX_FN static inline __attribute__((always_inline)) void amx_ntile(const struct job *j, int64_t nt,
                                                                    const struct amx_panel *p, const int8_t *tail,
                                                                    const int E) {
    struct amx_emu em_state, *em = &em_state;
    const int64_t nb = j->nb, k = j->k, t0 = nt * 4, n0 = t0 * 4;
    const int64_t count = j->n_tiles - t0 < 4 ? j->n_tiles - t0 : 4;
    const int zero = j->zero != NULL;
    amx_decode(j, t0, count, p);
    _Alignas(64) struct amx_cfg cfg = {.palette = 1};
    for (int t = 0; t < 6; ++t) {
        cfg.rows[t] = t == 2 || t == 3 ? 8 : 16;
        cfg.colsb[t] = t < 2 ? 32 : 64;
    }
    _Alignas(64) int32_t c[2][256];
    T_CFG(E, em, &cfg);
    for (int64_t m0 = 0; m0 < j->m; m0 += 16) {
        const int64_t rows = j->m - m0 < 16 ? j->m - m0 : 16;
        const int8_t *xa = rows == 16 ? j->xq + m0 * k : tail;
        const float *dr[16], *br[16];
        for (int r = 0; r < 16; ++r) {
            dr[r] = r < rows ? j->d + (m0 + r) * nb : p->zero_row;
            br[r] = r < rows ? j->bsum + (m0 + r) * nb : p->zero_row;
        }
        __m512 acc[16];
        for (int r = 0; r < 16; ++r) acc[r] = _mm512_setzero_ps();
        int64_t b = 0;
        for (; b + 2 <= nb; b += 2) {
            T_LOAD(E, em, 0, xa + b * 32, k);
            T_LOAD(E, em, 2, p->b + b * 512, 64);
            T_ZERO(E, em, 4);
            T_DPBSSD(E, em, 4, 0, 2);
            T_LOAD(E, em, 1, xa + b * 32 + 32, k);
            T_LOAD(E, em, 3, p->b + b * 512 + 512, 64);
            T_ZERO(E, em, 5);
            T_DPBSSD(E, em, 5, 1, 3);
            T_STORE(E, em, 4, c[0], 64);
            T_STORE(E, em, 5, c[1], 64);
            amx_epilogue(acc, c[0], p, b, dr, j->wmul);
            amx_epilogue(acc, c[1], p, b + 1, dr, j->wmul);
        }
        if (b < nb) {
            T_LOAD(E, em, 0, xa + b * 32, k);
            T_LOAD(E, em, 2, p->b + b * 512, 64);
            T_ZERO(E, em, 4);
            T_DPBSSD(E, em, 4, 0, 2);
            T_STORE(E, em, 4, c[0], 64);
            amx_epilogue(acc, c[0], p, b, dr, j->wmul);
        }
        if (zero) amx_zero_terms(acc, p, nb, br);
        const int64_t cols = j->n_out - n0 < 16 ? j->n_out - n0 : 16;
        const __mmask16 keep = (__mmask16)((1u << cols) - 1);
        for (int64_t r = 0; r < rows; ++r) _mm512_mask_storeu_ps(j->y + (m0 + r) * j->n_out + n0, keep, acc[r]);
    }
    T_RELEASE(E, em);
}

XQ_AMX_FN static void amx_ntile_hw(const struct job *j, int64_t nt, const struct amx_panel *p, const int8_t *tail) {
    amx_ntile(j, nt, p, tail, 0);
}

XQ_AMX_FN static void amx_ntile_emu(const struct job *j, int64_t nt, const struct amx_panel *p,
                                    const int8_t *tail) {
    amx_ntile(j, nt, p, tail, 1);
}

/* Activation rows per pass over the weights: a pass's activations (bytes_per_row each) stay within ~1 MiB, which
   a Sapphire Rapids core's 2 MiB L2 holds beside the weight panel, instead of streaming from L3 once per N tile.
   Each pass decodes the weights again (cheap beside 2+ M tiles' work). A guess from the cache sizes: untuned. */
static int64_t amx_pass_rows(int64_t bytes_per_row) {
    const int64_t rows = ((int64_t)1 << 20) / bytes_per_row / 16 * 16;
    return rows < 32 ? 32 : rows > 1024 ? 1024 : rows;
}

/* Every N tile of an integer-kind weight (n rows, a multiple of 4) on the amx path (`emulated`: over the model),
   in passes of amx_pass_rows rows, threads taking N tiles as they come; each thread decodes into its own panel.
   Returns 0, or -1 out of memory (the caller then runs the vector path). */
static int amx_tiles(struct job *j, int64_t n, int threads, int emulated) {
    const int64_t nb = j->nb, k = j->k, m = j->m, count = (n / 4 + 3) / 4, pass = amx_pass_rows(k);
    const int partial = m % 16 != 0;
    const size_t per = ((size_t)nb * (512 + 3 * 64) + 63) / 64 * 64 + 64; /* b, s, z, zero_row; own line */
    char *buf = aligned_alloc(64, per * (size_t)threads + (partial ? ((size_t)(16 * k) + 63) / 64 * 64 : 0));
    if (!buf) return -1;
    int8_t *tail = NULL;
    if (partial) { /* the last partial M tile, zero-padded to 16 rows (tileloadd reads all 16) */
        const int64_t full = m / 16 * 16;
        tail = (int8_t *)(buf + per * (size_t)threads);
        memset(tail, 0, (size_t)(16 * k));
        memcpy(tail, j->xq + full * k, (size_t)((m - full) * k));
    }
    for (int64_t r0 = 0; r0 < m; r0 += pass) {
        struct job c = *j; /* rows r0 .. r0 + pass - 1 (pass is a multiple of 16: only the last can be partial) */
        c.m = m - r0 < pass ? m - r0 : pass, c.n_tiles = n / 4;
        c.xq = j->xq + r0 * k, c.d = j->d + r0 * nb, c.bsum = j->bsum + r0 * nb, c.y = j->y + r0 * j->n_out;
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1) if (threads > 1 && count > 1 && c.m * n * k >= (1 << 20))
        for (int64_t nt = 0; nt < count; ++nt) {
            char *mine = buf + per * (size_t)XQ_THREAD;
            const struct amx_panel p = {.b = (int8_t *)mine, .s = (float *)(mine + nb * 512),
                                        .z = (float *)(mine + nb * 576), .zero_row = (float *)(mine + nb * 640)};
            memset(p.zero_row, 0, sizeof(float) * (size_t)nb);
            if (emulated)
                amx_ntile_emu(&c, nt, &p, tail);
            else
                amx_ntile_hw(&c, nt, &p, tail);
        }
    }
    free(buf);
    return 0;
}

/* ---- AMX-BF16: the fp8 formats -------------------------------------------------------------------- */

/* fp8 has no integer form, so its long calls go through tdpbf16ps (bf16 pairs -> fp32). Every fp8 code is exact in
   bf16 (e4m3 as value / 256, as on the other paths); the fp32 activations are split into two bf16, x = hi + lo
   (each rounded to nearest even: |x - hi - lo| <= 2^-17 |x|), and both halves are multiplied, so the result is
   the fp32 product to about the fp32 path's own rounding. The weights are the A operand (16 weight rows x 32
   bf16 of one block, their natural layout: decoded once per call and N tile), the activations the B operand
   (pairs of columns interleaved across 16 rows: built once per call), so C holds 16 weight rows x 16 activation
   rows; it accumulates a whole scale group in the tile (per-row scales: all of K) before the fp32 epilogue. */

/* 16 rows of 16 dwords -> 16 columns (r[i] dword j -> r[j] dword i). */
XQ_AMX_FN static void amx_transpose16(__m512i r[16]) {
    __m512i t[16], u[16];
    for (int i = 0; i < 8; ++i)
        t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]), t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
    for (int i = 0; i < 4; ++i) {
        u[4 * i] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
        u[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
        u[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
        u[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
    }
    /* lane L of u[4 i + c] holds rows 4i..4i+3 of column 4 L + c */
    for (int c = 0; c < 4; ++c) {
        const __m512i v0 = _mm512_shuffle_i32x4(u[c], u[4 + c], 0x88), v1 = _mm512_shuffle_i32x4(u[c], u[4 + c], 0xDD);
        const __m512i w0 = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0x88);
        const __m512i w1 = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0xDD);
        r[c] = _mm512_shuffle_i32x4(v0, w0, 0x88), r[8 + c] = _mm512_shuffle_i32x4(v0, w0, 0xDD);
        r[4 + c] = _mm512_shuffle_i32x4(v1, w1, 0x88), r[12 + c] = _mm512_shuffle_i32x4(v1, w1, 0xDD);
    }
}

/* fp32 -> bf16 bits, round to nearest even (finite inputs), in the low half of each dword. */
XQ_AMX_FN static inline __m512i amx_bf16_rne(__m512i u) {
    const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    return _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7FFF))), 16);
}

/* Two zmm of bf16 bits in dword lanes (columns 0..15, 16..31) -> one of 32 bf16 in column order. */
XQ_AMX_FN static inline __m512i amx_pack_bf16(__m512i lo, __m512i hi) {
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtepi32_epi16(lo)), _mm512_cvtepi32_epi16(hi), 1);
}

/* The activations as B operands: per 16-row M tile and block, the hi and the lo halves, each 16 rows (column
   pairs) x 16 activation rows x 2 bf16: panel[(mt * nb + b) * 2 + half][pair][2 row + i] = half(x[16 mt + row]
   [32 b + 2 pair + i]); rows past m are zero. */
XQ_AMX_FN static void amx_fp8_acts(const float *x, int64_t m, int64_t k, uint16_t *panel) {
    const int64_t nb = k / 32, mt_n = (m + 15) / 16;
    for (int64_t mt = 0; mt < mt_n; ++mt)
        for (int64_t b = 0; b < nb; ++b) {
            __m512i hi[16], lo[16];
            for (int r = 0; r < 16; ++r) {
                const int64_t row = mt * 16 + r;
                __m512i h2[2], l2[2];
                for (int q = 0; q < 2; ++q) {
                    const __m512 v = row < m ? _mm512_loadu_ps(x + row * k + b * 32 + 16 * q) : _mm512_setzero_ps();
                    h2[q] = amx_bf16_rne(_mm512_castps_si512(v));
                    const __m512 rest = _mm512_sub_ps(v, _mm512_castsi512_ps(_mm512_slli_epi32(h2[q], 16)));
                    l2[q] = amx_bf16_rne(_mm512_castps_si512(rest));
                }
                hi[r] = amx_pack_bf16(h2[0], h2[1]), lo[r] = amx_pack_bf16(l2[0], l2[1]);
            }
            amx_transpose16(hi);
            amx_transpose16(lo);
            uint16_t *out = panel + (mt * nb + b) * 2 * 512;
            for (int p = 0; p < 16; ++p) {
                _mm512_storeu_si512(out + 32 * p, hi[p]);
                _mm512_storeu_si512(out + 512 + 32 * p, lo[p]);
            }
        }
}

/* Weight tiles t0..t0+count-1 (count <= 4; missing rows zero) as bf16 rows, [nb][16][32], and their scales times
   the format's multiplier, [groups][16]. */
XQ_AMX_FN static void amx_fp8_weights(const struct job *j, int64_t t0, int64_t count, uint16_t *wp, float *sp) {
    const int64_t nb = j->nb;
    for (int64_t b = 0; b < nb; ++b)
        for (int r = 0; r < 16; ++r) {
            const int64_t t = r / 4;
            __m512i row = _mm512_setzero_si512();
            if (t < count) {
                const __m512i h = fp8x32_avx512(j->w + (t0 + t) * nb * 128 + b * 128 + (r % 4) * 32, j->e4m3);
                const __m512 f0 = _mm512_cvtph_ps(_mm512_castsi512_si256(h));
                const __m512 f1 = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(h, 1));
                /* exact in bf16: the low 16 bits of these fp32 values are zero */
                row = amx_pack_bf16(_mm512_srli_epi32(_mm512_castps_si512(f0), 16),
                                    _mm512_srli_epi32(_mm512_castps_si512(f1), 16));
            }
            _mm512_storeu_si512(wp + (b * 16 + r) * 32, row);
        }
    for (int64_t g = 0; g < j->groups; ++g)
        for (int r = 0; r < 16; ++r) {
            const int64_t t = r / 4;
            sp[g * 16 + r] = t < count ? j->fscale[(t0 + t) * j->groups * 4 + g * 4 + r % 4] * j->wmul : 0.0f;
        }
}

/* One N tile of an fp8 weight against every activation row. Tiles: 0 the weights of a block (16 x 64 bytes),
   1, 2 the activations' hi and lo halves (16 x 64 bytes), 3 the fp32 sums (16 weight rows x 16 activation rows). */
XQ_AMX_FN static inline __attribute__((always_inline)) void amx_fp8_ntile(const struct job *j, int64_t nt,
                                                                        uint16_t *wp, float *sp,
                                                                        const uint16_t *acts, const int E) {
    struct amx_emu em_state, *em = &em_state;
    const int64_t nb = j->nb, t0 = nt * 4, n0 = t0 * 4, gb = j->group_blocks;
    const int64_t count = j->n_tiles - t0 < 4 ? j->n_tiles - t0 : 4;
    amx_fp8_weights(j, t0, count, wp, sp);
    _Alignas(64) struct amx_cfg cfg = {.palette = 1};
    for (int t = 0; t < 4; ++t) cfg.rows[t] = 16, cfg.colsb[t] = 64;
    _Alignas(64) float c[256], o[256];
    T_CFG(E, em, &cfg);
    for (int64_t m0 = 0; m0 < j->m; m0 += 16) {
        const uint16_t *xa = acts + (m0 / 16) * nb * 1024;
        __m512 acc[16];
        for (int r = 0; r < 16; ++r) acc[r] = _mm512_setzero_ps();
        for (int64_t b0 = 0; b0 < nb; b0 += gb) {
            const int64_t end = b0 + gb < nb ? b0 + gb : nb;
            T_ZERO(E, em, 3);
            for (int64_t b = b0; b < end; ++b) {
                T_LOAD(E, em, 0, wp + b * 512, 64);
                T_LOAD(E, em, 1, xa + b * 1024, 64);
                T_LOAD(E, em, 2, xa + b * 1024 + 512, 64);
                T_DPBF16PS(E, em, 3, 0, 1);
                T_DPBF16PS(E, em, 3, 0, 2);
            }
            T_STORE(E, em, 3, c, 64);
            const float *s = sp + (b0 / gb) * 16;
            for (int r = 0; r < 16; ++r)
                acc[r] = _mm512_fmadd_ps(_mm512_loadu_ps(c + 16 * r), _mm512_set1_ps(s[r]), acc[r]);
        }
        for (int r = 0; r < 16; ++r) _mm512_storeu_ps(o + 16 * r, acc[r]); /* o[weight row][activation row] */
        const int64_t rows = j->m - m0 < 16 ? j->m - m0 : 16, cols = j->n_out - n0 < 16 ? j->n_out - n0 : 16;
        for (int64_t i = 0; i < rows; ++i)
            for (int64_t q = 0; q < cols; ++q) j->y[(m0 + i) * j->n_out + n0 + q] = o[16 * q + i];
    }
    T_RELEASE(E, em);
}

XQ_AMX_FN static void amx_fp8_ntile_hw(const struct job *j, int64_t nt, uint16_t *wp, float *sp,
                                       const uint16_t *acts) {
    amx_fp8_ntile(j, nt, wp, sp, acts, 0);
}

XQ_AMX_FN static void amx_fp8_ntile_emu(const struct job *j, int64_t nt, uint16_t *wp, float *sp,
                                        const uint16_t *acts) {
    amx_fp8_ntile(j, nt, wp, sp, acts, 1);
}

/* Every N tile of an fp8 weight on the amx path (`emulated`: over the model), in passes of amx_pass_rows rows (their
   bf16 halves: 4 bytes per activation). Returns 0, or -1 out of memory. */
static int amx_fp8_tiles(struct job *j, int64_t n, int threads, int emulated) {
    const int64_t nb = j->nb, k = j->k, m = j->m, count = (n / 4 + 3) / 4, pass = amx_pass_rows(4 * k);
    const size_t acts = (size_t)((pass + 15) / 16 * nb) * 2048;                     /* bytes */
    const size_t per = ((size_t)nb * 1024 + (size_t)j->groups * 64 + 63) / 64 * 64; /* weights, scales */
    char *buf = aligned_alloc(64, acts + per * (size_t)threads);
    if (!buf) return -1;
    for (int64_t r0 = 0; r0 < m; r0 += pass) {
        struct job c = *j;
        c.m = m - r0 < pass ? m - r0 : pass, c.n_tiles = n / 4;
        c.xf = j->xf + r0 * k, c.y = j->y + r0 * j->n_out;
        amx_fp8_acts(c.xf, c.m, k, (uint16_t *)buf);
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1) if (threads > 1 && count > 1 && c.m * n * k >= (1 << 20))
        for (int64_t nt = 0; nt < count; ++nt) {
            char *mine = buf + acts + per * (size_t)XQ_THREAD;
            uint16_t *wp = (uint16_t *)mine;
            float *sp = (float *)(mine + nb * 1024);
            if (emulated)
                amx_fp8_ntile_emu(&c, nt, wp, sp, (const uint16_t *)buf);
            else
                amx_fp8_ntile_hw(&c, nt, wp, sp, (const uint16_t *)buf);
        }
    }
    free(buf);
    return 0;
}

/* ---- entry points ---------------------------------------------------------------------------------- */

typedef void (*tile_fn)(const struct job *, int64_t);

/* Quantised activations of m rows of width k, carved from one buffer of `acts_bytes(m, k)` bytes. */
struct acts {
    int8_t *xq;
    float *d, *bsum;
    int32_t *isum;
};

static size_t acts_bytes(int64_t m, int64_t k) {
    const size_t blocks = (size_t)(m * (k / 32));
    return ((size_t)(m * k) + 63) / 64 * 64 + 3 * 4 * blocks;
}

static struct acts acts_at(void *buf, int64_t m, int64_t k) {
    const size_t blocks = (size_t)(m * (k / 32));
    char *p = buf;
    struct acts a = {.xq = (int8_t *)p};
    p += ((size_t)(m * k) + 63) / 64 * 64;
    a.d = (float *)p, a.bsum = a.d + blocks, a.isum = (int32_t *)(a.bsum + blocks);
    return a;
}

static void quantize_acts(const float *x, int64_t m, int64_t k, const struct acts *a) {
    if (vec_isa() == XQ_AVX512)
        xq_quantize512(x, m, k, a->xq, a->d, a->bsum, a->isum);
    else
        xq_quantize(x, m, k, a->xq, a->d, a->bsum, a->isum);
}

/* Every tile of an n-row weight (n a multiple of 4; rows past n_out are computed, not written), activations
   already in j (quantised, or fp32 for fp8). Threads take chunks of tiles as they come (about 8 per thread): on
   a shared machine a thread the OS parks finds little or nothing left when it wakes, where an even static split
   left its whole half waiting. A tile's result does not depend on the thread that computes it. Calls under ~1M
   multiply-adds (a 576 x 576 or 960 x 576 GEMV) stay on one thread: their ~10 us do not pay for waking a
   second one (at 2 threads, load ~6 on 2 vCPUs, this cut the packaged model's step by 13%). */
static void tiles(const struct job *j, int64_t n, int threads) {
    const int path = xq_isa(), isa = vec_isa();
    if ((path == XQ_AMX || path == XQ_AMX_EMU) && j->m >= amx_min_rows) {
        struct job a = *j;
        const int emu = path == XQ_AMX_EMU;
        if (j->kind != K_FP8 && amx_tiles(&a, n, threads, emu) == 0) return;
        if (j->kind == K_FP8 && amx_fp8 && (emu || amx_bf16_usable()) && amx_fp8_tiles(&a, n, threads, emu) == 0)
            return;
    }
    tile_fn fn = j->kind == K_FP8 ? (isa == XQ_AVX512 ? tile_fp8_avx512 : tile_fp8_avx2)
                                  : (isa == XQ_AVX512 ? tile_int_avx512_bd : tile_int_avx2);
    struct job q = *j;
    int64_t count = n / 4; /* tiles, or for tile_int_avx512_bd groups of four */
    if (fn == tile_int_avx512_bd) q.n_tiles = count, count = (count + 3) / 4;
    const int64_t chunk = threads > 1 && count / (8 * threads) > 1 ? count / (8 * threads) : 1;
#pragma omp parallel for num_threads(threads) schedule(dynamic, chunk) if (threads > 1 && j->m * n * j->k >= (1 << 20))
    for (int64_t t = 0; t < count; ++t) fn(&q, t);
}

/* Calls whose quantised activations fit here (a decode step's projections: m * k up to ~24k) use the stack:
   a decode step makes ~120 such calls, and four mallocs and frees each cost about what a small GEMV's quantising
   does. Bigger calls (prefill chunks) allocate. */
enum { XQ_STACK_ACTS = 32768 };

static int run_tiles(struct job *j, const float *x, int64_t n, int threads) {
    if (xq_isa() < XQ_AVX2) return -1;
    if (j->kind == K_FP8) {
        j->xf = x;
        tiles(j, n, threads);
        return 0;
    }
    _Alignas(64) char stack[XQ_STACK_ACTS];
    const size_t need = acts_bytes(j->m, j->k);
    void *buf = need <= sizeof stack ? stack : malloc(need);
    if (!buf) return -1;
    const struct acts a = acts_at(buf, j->m, j->k);
    quantize_acts(x, j->m, j->k, &a);
    j->xq = a.xq, j->d = a.d, j->bsum = a.bsum, j->isum = a.isum;
    tiles(j, n, threads);
    if (buf != stack) free(buf);
    return 0;
}

/* y [m, n_out] = x [m, k] @ W^T, int4 codes (tile bytes hold columns 2j, 2j+1 in the low / high nibble):
   w = q * s + z; zero = NULL means sym_int4's z = -8 s. Returns 0, or -1 (no SIMD path, out of memory). */
int xq_int4_linear(const float *x, int64_t m, int64_t k, const uint8_t *w, const uint16_t *scale,
                   const uint16_t *zero, int64_t n, int64_t n_out, float *y, int threads) {
    struct job j = {.kind = K_INT4, .m = m, .k = k, .nb = k / 32, .w = w, .scale = scale, .zero = zero,
                    .zmul = -8.0f, .wmul = 1.0f, .n_out = n_out, .y = y};
    return run_tiles(&j, x, n, threads);
}

/* The same with a 16-entry codebook: w = lut[q] * wmul * s. */
int xq_lut4_linear(const float *x, int64_t m, int64_t k, const uint8_t *w, const uint16_t *scale,
                   const int8_t *lut, float wmul, int64_t n, int64_t n_out, float *y, int threads) {
    struct job j = {.kind = K_LUT4, .m = m, .k = k, .nb = k / 32, .w = w, .scale = scale, .lut = lut,
                    .zmul = 0.0f, .wmul = wmul, .n_out = n_out, .y = y};
    return run_tiles(&j, x, n, threads);
}

/* int8 codes (-127..127; a tile block holds the 4 rows' even columns, then their odd columns): w = q * s. */
int xq_int8_linear(const float *x, int64_t m, int64_t k, const uint8_t *w, const uint16_t *scale, int64_t n,
                   int64_t n_out, float *y, int threads) {
    struct job j = {.kind = K_INT8, .m = m, .k = k, .nb = k / 32, .w = w, .scale = scale, .zmul = 0.0f,
                    .wmul = 1.0f, .n_out = n_out, .y = y};
    return run_tiles(&j, x, n, threads);
}

/* fp8 codes (tile blocks of 4 rows x 32 columns in natural order), fp32 scales [n/4, groups, 4] of
   group_blocks blocks each: w = fp8(q) * s. */
int xq_fp8_linear(const float *x, int64_t m, int64_t k, const uint8_t *w, const float *scale, int64_t groups,
                  int64_t group_blocks, int e4m3, int64_t n, int64_t n_out, float *y, int threads) {
    struct job j = {.kind = K_FP8, .m = m, .k = k, .nb = k / 32, .w = w, .fscale = scale, .groups = groups,
                    .group_blocks = group_blocks, .e4m3 = e4m3, .wmul = e4m3 ? 256.0f : 1.0f, .n_out = n_out,
                    .y = y};
    return run_tiles(&j, x, n, threads);
}

/* y [rows, d] = x / sqrt(mean(x^2) + eps) * weight, all fp32 and contiguous. */
XQ_AVX2_FN void xq_rms_norm(const float *x, const float *weight, float *y, int64_t rows, int64_t d, float eps) {
    for (int64_t r = 0; r < rows; ++r) {
        const float *v = x + r * d;
        float ss = 0.0f;
        for (int64_t i = 0; i < d; ++i) ss += v[i] * v[i];
        const float inv = 1.0f / sqrtf(ss / (float)d + eps);
        for (int64_t i = 0; i < d; ++i) y[r * d + i] = v[i] * inv * weight[i];
    }
}

/* ---- the engine's CPU layer stack: two calls per decoder layer ------------------------------------------ */

/* A projection as the fused calls read it (cpu_native.LinearDesc, filled once per weight). */
struct xq_linear {
    int64_t kind, n, n_out, k; /* K_INT4 / K_LUT4 / K_INT8; tile rows (a multiple of 4), real rows, padded width */
    const uint8_t *w;
    const uint16_t *scale, *zero;
    const int8_t *lut;
    float zmul, wmul;
};

/* The bytes of quantised activations for m rows of width k (the fused calls' `acts` scratch). */
int64_t xq_acts_bytes(int64_t m, int64_t k) { return (int64_t)acts_bytes(m, k); }

static void linear_q8(const struct xq_linear *L, int64_t m, const struct acts *a, float *y, int threads) {
    const struct job j = {.kind = (int)L->kind, .m = m, .k = L->k, .nb = L->k / 32, .xq = a->xq, .d = a->d,
                          .bsum = a->bsum, .isum = a->isum, .w = L->w, .scale = L->scale, .zero = L->zero,
                          .lut = L->lut, .zmul = L->zmul, .wmul = L->wmul, .n_out = L->n_out, .y = y};
    tiles(&j, L->n, threads);
}

/* y [m, k] = rms_norm(h [m, hidden]) with zero columns past hidden (what the projections read). */
static void norm_rows(const float *h, const float *weight, float eps, int64_t m, int64_t hidden, int64_t k,
                      float *y) {
    if (k == hidden) {
        xq_rms_norm(h, weight, y, m, hidden, eps);
        return;
    }
    for (int64_t r = 0; r < m; ++r) {
        xq_rms_norm(h + r * hidden, weight, y + r * k, 1, hidden, eps);
        memset(y + r * k + hidden, 0, sizeof(float) * (size_t)(k - hidden));
    }
}

XQ_AVX2_FN static inline __m256 exp8(__m256 x);

/* a [m, k] = silu(g) * u of gu [m, 2f] = [g | u], zero columns past f. silu(g) = g / (1 + e^-g), e^x by exp8. */
XQ_AVX2_FN static void silu_mul(const float *gu, int64_t m, int64_t f, int64_t k, float *a) {
    const __m256 one = _mm256_set1_ps(1.0f), sign = _mm256_set1_ps(-0.0f);
    for (int64_t r = 0; r < m; ++r) {
        const float *g = gu + r * 2 * f, *u = g + f;
        float *o = a + r * k;
        for (int64_t i = 0; i < f; i += 8) {
            float gp[8] = {0}, up[8] = {0}, op[8];
            const int full = i + 8 <= f;
            if (!full)
                for (int64_t t = i; t < f; ++t) gp[t - i] = g[t], up[t - i] = u[t];
            const __m256 x = _mm256_loadu_ps(full ? g + i : gp), y = _mm256_loadu_ps(full ? u + i : up);
            const __m256 v = _mm256_mul_ps(_mm256_div_ps(x, _mm256_add_ps(one, exp8(_mm256_xor_ps(x, sign)))), y);
            _mm256_storeu_ps(full ? o + i : op, v);
            if (!full)
                for (int64_t t = i; t < f; ++t) o[t] = op[t - i];
        }
        memset(o + f, 0, sizeof(float) * (size_t)(k - f));
    }
}

/* SwiGLU of the fused gate/up output on its own: a [m, f] = silu(g) * u of gu [m, 2f] (the fused calls' SiLU). */
void xq_silu_mul(const float *gu, int64_t m, int64_t f, float *a) { silu_mul(gu, m, f, f, a); }

/* First half of a decoder layer for m rows: h += delta (the residual add; none when delta is NULL), then
   out [m, lin->n_out] = rms_norm(h) @ W^T, the norm's output quantised once. Scratch: y [m, k] floats, acts
   xq_acts_bytes(m, k) bytes (k the largest padded width of the layer's projections). The arithmetic is the
   unfused calls' (x + delta, xq_rms_norm, the projection's kernel), so the result is theirs bit for bit. */
int xq_norm_linear(float *h, const float *delta, const float *norm_w, float eps, int64_t m, int64_t hidden,
                   const struct xq_linear *lin, float *out, float *y, void *acts, int threads) {
    if (xq_isa() < XQ_AVX2) return -1;
    if (delta)
        for (int64_t i = 0; i < m * hidden; ++i) h[i] += delta[i];
    norm_rows(h, norm_w, eps, m, hidden, lin->k, y);
    const struct acts a = acts_at(acts, m, lin->k);
    quantize_acts(y, m, lin->k, &a);
    linear_q8(lin, m, &a, out, threads);
    return 0;
}

/* Second half: h += attn [m, width] @ O^T (the residual add), then out [m, hidden] = down(silu(g) * u) with
   [g | u] = rms_norm(h) @ GU^T. Scratch as xq_norm_linear's, plus gu [m, gate_up->n_out] floats. Every step is
   the unfused calls' arithmetic (xq_silu_mul is the CPU's SwiGLU op too), so the result is theirs bit for bit. */
int xq_out_mlp(const float *attn, int64_t width, float *h, const struct xq_linear *o, const float *norm_w, float eps,
               const struct xq_linear *gate_up, const struct xq_linear *down, int64_t m, int64_t hidden, float *out,
               float *y, float *gu, void *acts, int threads) {
    if (xq_isa() < XQ_AVX2) return -1;
    struct acts a = acts_at(acts, m, o->k);
    const float *x = attn;
    if (width != o->k) { /* zero columns up to the padded width, as the unfused call pads */
        for (int64_t r = 0; r < m; ++r) {
            memcpy(y + r * o->k, attn + r * width, sizeof(float) * (size_t)width);
            memset(y + r * o->k + width, 0, sizeof(float) * (size_t)(o->k - width));
        }
        x = y;
    }
    quantize_acts(x, m, o->k, &a);
    linear_q8(o, m, &a, out, threads);
    for (int64_t i = 0; i < m * hidden; ++i) h[i] += out[i];
    norm_rows(h, norm_w, eps, m, hidden, gate_up->k, y);
    a = acts_at(acts, m, gate_up->k);
    quantize_acts(y, m, gate_up->k, &a);
    linear_q8(gate_up, m, &a, gu, threads);
    silu_mul(gu, m, gate_up->n_out / 2, down->k, y);
    a = acts_at(acts, m, down->k);
    quantize_acts(y, m, down->k, &a);
    linear_q8(down, m, &a, out, threads);
    return 0;
}

/* Test hook: x [m, k] -> the kernels' int8 block codes (block-permuted), scales and code sums. */
void xq_quantize_rows(const float *x, int64_t m, int64_t k, int8_t *q, float *d, int32_t *isum) {
    float *bsum = malloc(sizeof(float) * (size_t)(m * (k / 32)));
    if (!bsum) return;
    quantize_acts(x, m, k, &(struct acts){.xq = q, .d = d, .bsum = bsum, .isum = isum});
    free(bsum);
}

XQ_AVX2_FN static inline float dot_f32(const float *a, const float *b, int64_t n) {
    if (n % 8 == 0) {
        __m256 acc = _mm256_setzero_ps();
        for (int64_t i = 0; i < n; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc);
        return hsum8(acc);
    }
    float s = 0.0f;
    for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
    return s;
}

/* RoPE as the decoder applies it: out = x * cos + roll(x, d/2) * sin, with sin's first half negated. Two halves
   with no index wrap-around, so both loops vectorize (a `% d` per element kept it scalar); each element is the
   same expression as before, so the results are bitwise unchanged. */
XQ_AVX2_FN static inline void rope(const float *restrict x, const float *restrict cos, const float *restrict sin,
                                   int64_t d, float *restrict out) {
    const int64_t half = d / 2;
    for (int64_t i = 0; i < half; ++i) out[i] = x[i] * cos[i] + x[i + half] * sin[i];
    for (int64_t i = half; i < d; ++i) out[i] = x[i] * cos[i] + x[i - half] * sin[i];
}

/* One decode step of attention for B rows (one new token each), as one call:
     qkv [B, (H + 2 KV) D]      the new token's q, k, v projections;
     cos, sin [positions, D]    RoPE tables; rope_pos[b] is row b's position;
     k_cache, v_cache [B, KV, cap, D]  this layer's cache: slot `slot` receives the rotated k and v;
     first[b]                   row b's first real cache slot (left padding);
     out [B, H D]               softmax(q k^T * scale) v over slots first[b]..slot, GQA (H / KV heads per kv head).
   Each row is computed on its own, so a row's result does not depend on the rest of the batch. */
XQ_AVX2_FN int xq_decode_attention(const float *qkv, const float *cos, const float *sin, const int64_t *rope_pos,
                        float *k_cache, float *v_cache, const int64_t *first, int64_t B, int64_t H, int64_t KV,
                        int64_t D, int64_t cap, int64_t slot, float scale, float *out, int threads) {
    const int64_t width = (H + 2 * KV) * D, group = H / KV, span_max = slot + 1;
    for (int64_t b = 0; b < B; ++b) { /* rotate and store the new keys and values */
        const float *row = qkv + b * width, *c = cos + rope_pos[b] * D, *s = sin + rope_pos[b] * D;
        for (int64_t j = 0; j < KV; ++j) {
            float *kd = k_cache + ((b * KV + j) * cap + slot) * D, *vd = v_cache + ((b * KV + j) * cap + slot) * D;
            rope(row + (H + j) * D, c, s, D, kd);
            for (int64_t i = 0; i < D; ++i) vd[i] = row[(H + KV + j) * D + i];
        }
    }
    float *scratch = malloc(sizeof(float) * (size_t)(B * H * (span_max + D)));
    if (!scratch) return -1;
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1 && B * H >= 4)
    for (int64_t bh = 0; bh < B * H; ++bh) {
        const int64_t b = bh / H, h = bh % H, j = h / group;
        float *p = scratch + bh * (span_max + D), *q = p + span_max;
        rope(qkv + b * width + h * D, cos + rope_pos[b] * D, sin + rope_pos[b] * D, D, q);
        const float *keys = k_cache + (b * KV + j) * cap * D, *values = v_cache + (b * KV + j) * cap * D;
        float mx = -INFINITY, total = 0.0f;
        for (int64_t t = first[b]; t <= slot; ++t) {
            p[t] = dot_f32(q, keys + t * D, D) * scale;
            mx = p[t] > mx ? p[t] : mx;
        }
        for (int64_t t = first[b]; t <= slot; ++t) {
            p[t] = expf(p[t] - mx);
            total += p[t];
        }
        float *o = out + b * H * D + h * D;
        for (int64_t i = 0; i < D; ++i) o[i] = 0.0f;
        for (int64_t t = first[b]; t <= slot; ++t) {
            const float w = p[t] / total, *v = values + t * D;
            for (int64_t i = 0; i < D; ++i) o[i] += w * v[i];
        }
    }
    free(scratch);
    return 0;
}

/* ---- paged attention (the continuous-batching engine) ---------------------------------------------- */

/* Pools [num_blocks, KV, bs, D]: fp32 values, or 8-bit codes with one fp32 scale per (block, kv head, slot), as
   kernels/paged.py's `quantize_kv`: int8 (scale = max|x| / 127, code = round-half-even(x / scale)) or fp8 e4m3
   (scale = max|x| / 448, code = x / scale rounded to nearest-even e4m3). e4m3 pools with a power-of-two D hold
   head vectors in the Walsh-Hadamard basis (kernels/paged.py's `kv_rotation`): k after RoPE and v are turned by
   the normalized Hadamard transform before coding, q before its scores, and the output back after the values
   (the transform is its own inverse). */
enum { CODES_NONE = 0, CODES_INT8 = 1, CODES_E4M3 = 2 };
/* A run of keys in one block: physical block `blk`, slots off..off+cnt-1 (keys in order of position). */
struct krun {
    int64_t blk, off, cnt;
};
struct paged {
    const float *qkv, *cos, *sin, *q_norm, *k_norm;
    const int64_t *positions, *seq_index;
    const int32_t *tables;
    float *k_pool, *v_pool;   /* fp32 pools, or NULL */
    int8_t *k_q, *v_q;        /* 8-bit code pools (int8, or e4m3 bytes), or NULL */
    float *k_s, *v_s;         /* their scales [num_blocks, KV, bs] */
    int codes;                /* CODES_*: what k_q / v_q hold */
    int rotate;               /* e4m3 codes with a power-of-two D: vectors in the Hadamard basis */
    float code_mul;           /* read codes are value / code_mul (e4m3 decodes to value / 256), so scales get it */
    int64_t n, h, kv, d, bs, max_pos, s, max_blocks, num_blocks;
    int64_t window, sinks;    /* window > 0: keys j > pos - window, plus j < sinks; the table is then a ring */
    float scale, eps;
    float *out;
    /* the SIMD path's phase-2 pieces (AVX2, or AVX-512 where the CPU runs it and 16 divides D) */
    void (*scores)(const struct paged *, const float *, int64_t, int64_t, int64_t, int64_t, int64_t, float *);
    void (*values)(const struct paged *, const struct krun *, int64_t, int64_t, const float *, int64_t, const float *,
                   float *, int64_t);
};

/* The table column of absolute block b (kernels/paged.py's `table_column`): b, or with a window a ring over the
   columns after the sink blocks'. */
static inline int64_t paged_column(const struct paged *p, int64_t b) {
    if (!p->window) return b;
    const int64_t sc = (p->sinks + p->bs - 1) / p->bs;
    return b < sc || p->max_blocks <= sc ? b : sc + (b - sc) % (p->max_blocks - sc);
}

/* The keys token position `pos` attends: [0, *sink_end) then [*lo, pos]. */
static inline void paged_range(const struct paged *p, int64_t pos, int64_t *sink_end, int64_t *lo) {
    *lo = p->window && pos - p->window + 1 > 0 ? pos - p->window + 1 : 0;
    *sink_end = p->sinks < *lo ? p->sinks : *lo;
}

/* Index checks before anything is written: 0 ok, -2 position outside the RoPE table, -3 seq_index outside the
   tables, -4 a position past the table's width, -5 a block id outside the pools. Also gives the largest position
   and the number of (token, key) pairs. */
static int paged_check(const struct paged *p, int64_t *max_len, int64_t *keys) {
    int64_t top = 0, total = 0;
    for (int64_t n = 0; n < p->n; ++n) {
        const int64_t pos = p->positions[n], s = p->seq_index[n];
        if (pos < 0 || pos >= p->max_pos) return -2;
        if (s < 0 || s >= p->s) return -3;
        if (pos / p->bs >= p->max_blocks && (!p->window || (p->sinks + p->bs - 1) / p->bs >= p->max_blocks))
            return -4; /* past the table, and no ring columns to wrap into */
        int64_t sink_end, lo;
        paged_range(p, pos, &sink_end, &lo);
        for (int part = 0; part < 2; ++part) { /* the blocks this token reads */
            const int64_t a = part ? lo : 0, b = part ? pos : sink_end - 1;
            for (int64_t blk = a / p->bs; a <= b && blk <= b / p->bs; ++blk) {
                const int32_t id = p->tables[s * p->max_blocks + paged_column(p, blk)];
                if (id < 0 || id >= p->num_blocks) return -5;
            }
        }
        const int64_t len = sink_end + pos - lo + 1;
        top = len > top ? len : top;
        total += len;
    }
    *max_len = top, *keys = total;
    return 0;
}

/* A head vector as the pools hold it: normalized (optional), rotated. `tmp` holds D floats. */
XQ_AVX2_FN static void paged_rotate(const float *x, const float *norm, float eps, const float *c, const float *s,
                                    int64_t d, float *tmp, float *out) {
    if (norm) {
        xq_rms_norm(x, norm, tmp, 1, d, eps);
        x = tmp;
    }
    rope(x, c, s, d, out);
}

/* x <- x H / sqrt(d), H the Sylvester-ordered Walsh-Hadamard matrix (d a power of two): butterflies in one fixed
   order, so a vector's result depends on that vector alone. */
static void paged_hadamard(float *x, int64_t d) {
    for (int64_t len = 1; len < d; len <<= 1)
        for (int64_t i = 0; i < d; i += len << 1)
            for (int64_t j = i; j < i + len; ++j) {
                const float a = x[j], b = x[j + len];
                x[j] = a + b;
                x[j + len] = a - b;
            }
    const float s = 1.0f / sqrtf((float)d);
    for (int64_t i = 0; i < d; ++i) x[i] *= s;
}

/* int8 codes of one head vector (round half to even: lrintf in the default rounding mode); returns the scale. */
XQ_AVX2_FN static float paged_quantize(const float *x, int64_t d, int8_t *codes) {
    float amax = 0.0f;
    for (int64_t i = 0; i < d; ++i) amax = fabsf(x[i]) > amax ? fabsf(x[i]) : amax;
    const float scale = amax / 127.0f, inv = scale > 0.0f ? 1.0f / scale : 0.0f;
    for (int64_t i = 0; i < d; ++i) {
        const long c = lrintf(x[i] * inv);
        codes[i] = (int8_t)(c > 127 ? 127 : c < -127 ? -127 : c);
    }
    return scale;
}

/* fp32 -> e4m3fn byte, round to nearest even, |a| >= 448 saturating (torch's conversion of the same values): the
   fp32 mantissa rounded to 3 bits in the integer bits (the carry moves into the exponent), steps of 2^-9 below
   the smallest normal 2^-6. */
static uint8_t e4m3_code(float y) {
    uint32_t b;
    memcpy(&b, &y, sizeof b);
    const uint8_t sign = (uint8_t)((b >> 24) & 0x80);
    b &= 0x7FFFFFFFu;
    if (b >= 0x43E00000u) return sign | 0x7E; /* >= 448 */
    if (b < 0x3C800000u) {                    /* < 2^-6: subnormal codes 0..7, and 8 = 2^-6 itself */
        float a;
        memcpy(&a, &b, sizeof a);
        return sign | (uint8_t)(int)nearbyintf(a * 512.0f);
    }
    b += 0x7FFFFu + ((b >> 20) & 1u);
    const uint32_t code = (b >> 20) - ((127u - 7u) << 3);
    return sign | (uint8_t)(code > 0x7Eu ? 0x7Eu : code);
}

/* An e4m3fn byte's value / 256 (the F16C path's scale; exact). */
static float e4m3_value256(uint8_t c) {
    const int e = (c >> 3) & 0xF, m = c & 7;
    const float v = e ? ldexpf((float)(8 + m), e - 18) : ldexpf((float)m, -17);
    return c & 0x80 ? -v : v;
}

/* e4m3 codes of one head vector; returns the scale (max|x| / 448). */
XQ_AVX2_FN static float paged_quantize_e4m3(const float *x, int64_t d, uint8_t *codes) {
    float amax = 0.0f;
    for (int64_t i = 0; i < d; ++i) amax = fabsf(x[i]) > amax ? fabsf(x[i]) : amax;
    const float scale = amax / 448.0f, inv = scale > 0.0f ? 1.0f / scale : 0.0f;
    for (int64_t i = 0; i < d; ++i) codes[i] = e4m3_code(x[i] * inv);
    return scale;
}

/* A code's value / code_mul. */
static inline float code_value(const int8_t *c, int kind, int64_t i) {
    return kind == CODES_E4M3 ? e4m3_value256((uint8_t)c[i]) : (float)c[i];
}

/* q . codes, int8 codes widened to fp32 (the scale multiplies the sum). Same order as dot_f32. */
XQ_AVX2_FN static inline float dot_f32_s8(const float *a, const int8_t *b, int64_t n) {
    if (n % 8 == 0) {
        __m256 acc = _mm256_setzero_ps();
        for (int64_t i = 0; i < n; i += 8) {
            const __m256 bf = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(b + i))));
            acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), bf, acc);
        }
        return hsum8(acc);
    }
    float s = 0.0f;
    for (int64_t i = 0; i < n; ++i) s += a[i] * (float)b[i];
    return s;
}

/* q . codes of any kind, one lane (head dims that are not a multiple of 8). */
XQ_AVX2_FN static inline float dot_codes(const float *a, const int8_t *b, int kind, int64_t n) {
    if (kind == CODES_INT8) return dot_f32_s8(a, b, n);
    float s = 0.0f;
    for (int64_t i = 0; i < n; ++i) s += a[i] * code_value(b, kind, i);
    return s;
}

/* Phase 1: every token's k (normalized, rotated) and v into its slot. Serial: tiny work, and a slot written
   twice in one call (a caller error) still ends with the last token's values, deterministically. */
XQ_AVX2_FN static void paged_write(const struct paged *p, float *tmp) {
    const int64_t width = (p->h + 2 * p->kv) * p->d, d = p->d;
    float *rot = tmp + d;
    for (int64_t n = 0; n < p->n; ++n) {
        const int64_t pos = p->positions[n];
        const int64_t blk = p->tables[p->seq_index[n] * p->max_blocks + paged_column(p, pos / p->bs)];
        const int64_t off = pos % p->bs;
        const float *row = p->qkv + n * width, *c = p->cos + pos * d, *s = p->sin + pos * d;
        for (int64_t j = 0; j < p->kv; ++j) {
            const int64_t slot = (blk * p->kv + j) * p->bs + off;
            const float *k = row + (p->h + j) * d, *v = row + (p->h + p->kv + j) * d;
            if (p->k_pool) {
                paged_rotate(k, p->k_norm, p->eps, c, s, d, tmp, p->k_pool + slot * d);
                for (int64_t i = 0; i < d; ++i) p->v_pool[slot * d + i] = v[i];
            } else {
                paged_rotate(k, p->k_norm, p->eps, c, s, d, tmp, rot);
                if (p->codes == CODES_E4M3) {
                    float vr[d];
                    for (int64_t i = 0; i < d; ++i) vr[i] = v[i];
                    if (p->rotate) paged_hadamard(rot, d), paged_hadamard(vr, d);
                    p->k_s[slot] = paged_quantize_e4m3(rot, d, (uint8_t *)p->k_q + slot * d);
                    p->v_s[slot] = paged_quantize_e4m3(vr, d, (uint8_t *)p->v_q + slot * d);
                } else {
                    p->k_s[slot] = paged_quantize(rot, d, p->k_q + slot * d);
                    p->v_s[slot] = paged_quantize(v, d, p->v_q + slot * d);
                }
            }
        }
    }
}

/* Four dot products q . k_i (fp32 keys, or 8-bit codes widened exactly), for d % 8 == 0. Each key's sum goes
   through the same tree whichever lane it takes (8 lanes, then hadd pairs, then the two halves), so a score does
   not depend on the other keys of its group. */
XQ_AVX2_FN static inline __m256 load_key(const void *k, int s8, int64_t i) {
    if (s8 == CODES_E4M3) return fp8x8_avx2((const uint8_t *)k + i, 1); /* value / 256 */
    if (s8) return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)((const int8_t *)k + i))));
    return _mm256_loadu_ps((const float *)k + i);
}

XQ_AVX2_FN static inline __m128 dot4(const float *q, const void *const *k, int s8, int64_t d) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (int64_t i = 0; i < d; i += 8) {
        const __m256 qv = _mm256_loadu_ps(q + i);
        a0 = _mm256_fmadd_ps(qv, load_key(k[0], s8, i), a0);
        a1 = _mm256_fmadd_ps(qv, load_key(k[1], s8, i), a1);
        a2 = _mm256_fmadd_ps(qv, load_key(k[2], s8, i), a2);
        a3 = _mm256_fmadd_ps(qv, load_key(k[3], s8, i), a3);
    }
    const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
    return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}

/* Scores of the G heads against the keys of one block run (cnt keys from slot `first` of the block at `base`):
   sc[g * len + t] = q_g . k_t (* k scale) * scale. */
XQ_AVX2_FN static void paged_scores(const struct paged *p, const float *q, int64_t g_n, int64_t base, int64_t cnt,
                                    int64_t t0, int64_t len, float *sc) {
    const int64_t d = p->d;
    const int s8 = p->codes;
    const void *keys[4];
    for (int64_t i = 0; i < cnt; i += 4) {
        for (int r = 0; r < 4; ++r) { /* past the run: repeat its last key (computed, not stored) */
            const int64_t slot = base + (i + r < cnt ? i + r : cnt - 1);
            keys[r] = s8 ? (const void *)(p->k_q + slot * d) : (const void *)(p->k_pool + slot * d);
        }
        for (int64_t g = 0; g < g_n; ++g) {
            float dots[4];
            if (d % 8 == 0) {
                _mm_storeu_ps(dots, dot4(q + g * d, keys, s8, d));
            } else {
                for (int r = 0; r < 4; ++r)
                    dots[r] = s8 ? dot_codes(q + g * d, keys[r], s8, d) : dot_f32(q + g * d, keys[r], d);
            }
            for (int r = 0; r < 4 && i + r < cnt; ++r)
                sc[g * len + t0 + i + r] = (s8 ? dots[r] * (p->k_s[base + i + r] * p->code_mul) : dots[r]) * p->scale;
        }
    }
}

/* out[0..8R) = sum_t w_t v_t[c..c+8R) in order of t, times inv, with the R accumulators in registers. */
XQ_AVX2_FN static inline __attribute__((always_inline)) void paged_values_r(const struct paged *p, const struct krun *runs, int64_t nruns,
        int64_t j, const float *w, int64_t len, int64_t c, float inv, float *out, const int R) {
    const int64_t d = p->d, bs = p->bs;
    __m256 acc[8];
    for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
    for (int64_t ri = 0, t0 = 0; ri < nruns; t0 += runs[ri].cnt, ++ri) {
        const int64_t base = (runs[ri].blk * p->kv + j) * bs + runs[ri].off, cnt = runs[ri].cnt;
        for (int64_t i = 0; i < cnt; ++i) {
            if (p->v_pool) {
                const __m256 wt = _mm256_set1_ps(w[t0 + i]);
                const float *v = p->v_pool + (base + i) * d + c;
                for (int r = 0; r < R; ++r) acc[r] = _mm256_fmadd_ps(wt, _mm256_loadu_ps(v + 8 * r), acc[r]);
            } else {
                const __m256 wt = _mm256_set1_ps(w[t0 + i] * (p->v_s[base + i] * p->code_mul));
                const int8_t *v = p->v_q + (base + i) * d + c;
                for (int r = 0; r < R; ++r) acc[r] = _mm256_fmadd_ps(wt, load_key(v, p->codes, 8 * r), acc[r]);
            }
        }
    }
    const __m256 s = _mm256_set1_ps(inv);
    for (int r = 0; r < R; ++r) _mm256_storeu_ps(out + 8 * r, _mm256_mul_ps(acc[r], s));
}

/* One head's output sum_t w_t v_t / total over keys 0..len-1 (d % 8 == 0: 64 columns at a time in registers). */
XQ_AVX2_FN static void paged_values(const struct paged *p, const struct krun *runs, int64_t nruns, int64_t j, const float *w,
                                    int64_t len, float inv, float *out) {
    const int64_t d = p->d;
    if (d % 8 == 0) {
        for (int64_t c = 0; c < d; c += 64) {
            switch ((d - c) >= 64 ? 8 : (d - c) / 8) { /* each width compiled on its own: registers */
            case 8: paged_values_r(p, runs, nruns, j, w, len, c, inv, out + c, 8); break;
            case 4: paged_values_r(p, runs, nruns, j, w, len, c, inv, out + c, 4); break;
            case 7: paged_values_r(p, runs, nruns, j, w, len, c, inv, out + c, 7); break;
            case 6: paged_values_r(p, runs, nruns, j, w, len, c, inv, out + c, 6); break;
            case 5: paged_values_r(p, runs, nruns, j, w, len, c, inv, out + c, 5); break;
            case 3: paged_values_r(p, runs, nruns, j, w, len, c, inv, out + c, 3); break;
            case 2: paged_values_r(p, runs, nruns, j, w, len, c, inv, out + c, 2); break;
            default: paged_values_r(p, runs, nruns, j, w, len, c, inv, out + c, 1); break;
            }
        }
        return;
    }
    const int64_t bs = p->bs;
    for (int64_t i = 0; i < d; ++i) out[i] = 0.0f;
    for (int64_t ri = 0, t0 = 0; ri < nruns; t0 += runs[ri].cnt, ++ri) {
        const int64_t base = (runs[ri].blk * p->kv + j) * bs + runs[ri].off, cnt = runs[ri].cnt;
        for (int64_t i = 0; i < cnt; ++i) {
            const float wt = p->v_pool ? w[t0 + i] : w[t0 + i] * (p->v_s[base + i] * p->code_mul);
            for (int64_t e = 0; e < d; ++e)
                out[e] += wt * (p->v_pool ? p->v_pool[(base + i) * d + e]
                                          : code_value(p->v_q + (base + i) * d, p->codes, e));
        }
    }
    for (int64_t e = 0; e < d; ++e) out[e] *= inv;
}

/* The g_n heads' outputs (w: g_n rows of len weights, inv: g_n factors, out: g_n rows of D), one head at a time. */
XQ_AVX2_FN static void paged_values_heads(const struct paged *p, const struct krun *runs, int64_t nruns, int64_t j, const float *w,
                                          int64_t len, const float *inv, float *out, int64_t g_n) {
    for (int64_t g = 0; g < g_n; ++g) paged_values(p, runs, nruns, j, w + g * len, len, inv[g], out + g * p->d);
}

/* ---- the same two pieces on 16 lanes (AVX-512; D a multiple of 16) ---- */

XQ_AVX512_FN static inline __m512 load_key16(const void *k, int s8, int64_t i) {
    if (s8 == CODES_E4M3) { /* 16 e4m3 bytes -> fp16 bit patterns (value / 256) -> fp32, exact */
        const __m256i c = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)((const uint8_t *)k + i)));
        const __m256i h = _mm256_or_si256(_mm256_slli_epi16(_mm256_and_si256(c, _mm256_set1_epi16(0x7F)), 7),
                                          _mm256_slli_epi16(_mm256_and_si256(c, _mm256_set1_epi16(0x80)), 8));
        return _mm512_cvtph_ps(h);
    }
    if (s8) return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)((const int8_t *)k + i))));
    return _mm512_loadu_ps((const float *)k + i);
}

/* Four dots for each of GB heads: each key chunk is loaded once for the GB heads; every dot goes through one fixed
   tree (16 lanes, halves added, then dot4's hadd tree), whichever lane or head it takes. */
XQ_AVX512_FN static inline __attribute__((always_inline)) void dot4_512_heads(const float *q, const void *const *k,
        int s8, int64_t d, float *dots, const int GB) {
    __m512 a[4][4];
    for (int g = 0; g < GB; ++g)
        for (int r = 0; r < 4; ++r) a[g][r] = _mm512_setzero_ps();
    for (int64_t i = 0; i < d; i += 16) {
        __m512 kv[4];
        for (int r = 0; r < 4; ++r) kv[r] = load_key16(k[r], s8, i);
        for (int g = 0; g < GB; ++g) {
            const __m512 qv = _mm512_loadu_ps(q + g * d + i);
            for (int r = 0; r < 4; ++r) a[g][r] = _mm512_fmadd_ps(qv, kv[r], a[g][r]);
        }
    }
#define XQ_HALVES(x) _mm256_add_ps(_mm512_castps512_ps256(x), _mm512_extractf32x8_ps(x, 1))
    for (int g = 0; g < GB; ++g) {
        const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(XQ_HALVES(a[g][0]), XQ_HALVES(a[g][1])),
                                        _mm256_hadd_ps(XQ_HALVES(a[g][2]), XQ_HALVES(a[g][3])));
        _mm_storeu_ps(dots + 4 * g, _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1)));
    }
#undef XQ_HALVES
}

XQ_AVX512_FN static void paged_scores512(const struct paged *p, const float *q, int64_t g_n, int64_t base,
                                         int64_t cnt, int64_t t0, int64_t len, float *sc) {
    const int64_t d = p->d;
    const int s8 = p->codes;
    const void *keys[4];
    for (int64_t i = 0; i < cnt; i += 4) {
        for (int r = 0; r < 4; ++r) { /* past the run: repeat its last key (computed, not stored) */
            const int64_t slot = base + (i + r < cnt ? i + r : cnt - 1);
            keys[r] = s8 ? (const void *)(p->k_q + slot * d) : (const void *)(p->k_pool + slot * d);
        }
        for (int64_t g0 = 0; g0 < g_n; g0 += 4) {
            float dots[16];
            switch (g_n - g0 < 4 ? g_n - g0 : 4) { /* each head count compiled on its own: registers */
            case 4: dot4_512_heads(q + g0 * d, keys, s8, d, dots, 4); break;
            case 3: dot4_512_heads(q + g0 * d, keys, s8, d, dots, 3); break;
            case 2: dot4_512_heads(q + g0 * d, keys, s8, d, dots, 2); break;
            default: dot4_512_heads(q + g0 * d, keys, s8, d, dots, 1); break;
            }
            const __m128 sv = _mm_set1_ps(p->scale);
            for (int64_t g = g0; g < g_n && g < g0 + 4; ++g) {
                if (i + 4 <= cnt) { /* the same products as the scalar tail, four at a time */
                    __m128 x = _mm_loadu_ps(dots + 4 * (g - g0));
                    if (s8) x = _mm_mul_ps(x, _mm_mul_ps(_mm_loadu_ps(p->k_s + base + i), _mm_set1_ps(p->code_mul)));
                    _mm_storeu_ps(sc + g * len + t0 + i, _mm_mul_ps(x, sv));
                    continue;
                }
                for (int r = 0; r < 4 && i + r < cnt; ++r) {
                    const float x = dots[4 * (g - g0) + r];
                    sc[g * len + t0 + i + r] = (s8 ? x * (p->k_s[base + i + r] * p->code_mul) : x) * p->scale;
                }
            }
        }
    }
}

XQ_AVX512_FN static inline __attribute__((always_inline)) void paged_values512_r(const struct paged *p,
        const struct krun *runs, int64_t nruns, int64_t j, const float *w, int64_t len, int64_t c, float inv, float *out, const int R) {
    const int64_t d = p->d, bs = p->bs;
    __m512 acc[8];
    for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
    for (int64_t ri = 0, t0 = 0; ri < nruns; t0 += runs[ri].cnt, ++ri) {
        const int64_t base = (runs[ri].blk * p->kv + j) * bs + runs[ri].off, cnt = runs[ri].cnt;
        for (int64_t i = 0; i < cnt; ++i) {
            if (p->v_pool) {
                const __m512 wt = _mm512_set1_ps(w[t0 + i]);
                const float *v = p->v_pool + (base + i) * d + c;
                for (int r = 0; r < R; ++r) acc[r] = _mm512_fmadd_ps(wt, _mm512_loadu_ps(v + 16 * r), acc[r]);
            } else {
                const __m512 wt = _mm512_set1_ps(w[t0 + i] * (p->v_s[base + i] * p->code_mul));
                const int8_t *v = p->v_q + (base + i) * d + c;
                for (int r = 0; r < R; ++r) acc[r] = _mm512_fmadd_ps(wt, load_key16(v, p->codes, 16 * r), acc[r]);
            }
        }
    }
    const __m512 s = _mm512_set1_ps(inv);
    for (int r = 0; r < R; ++r) _mm512_storeu_ps(out + 16 * r, _mm512_mul_ps(acc[r], s));
}

/* GB heads at once, R accumulators each: every value vector is loaded once for the GB heads, and the GB * R
   independent FMA chains hide the FMA latency. Per head the arithmetic is paged_values512_r's exactly. */
XQ_AVX512_FN static inline __attribute__((always_inline)) void paged_values512_gr(const struct paged *p,
        const struct krun *runs, int64_t nruns, int64_t j, const float *w, int64_t len, int64_t c, const float *inv, float *out,
        const int GB, const int R) {
    const int64_t d = p->d, bs = p->bs;
    __m512 acc[4][8], vr[8];
    for (int g = 0; g < GB; ++g)
        for (int r = 0; r < R; ++r) acc[g][r] = _mm512_setzero_ps();
    for (int64_t ri = 0, t0 = 0; ri < nruns; t0 += runs[ri].cnt, ++ri) {
        const int64_t base = (runs[ri].blk * p->kv + j) * bs + runs[ri].off, cnt = runs[ri].cnt;
        for (int64_t i = 0; i < cnt; ++i) {
            const int64_t t = t0 + i;
            if (p->v_pool) {
                const float *v = p->v_pool + (base + i) * d + c;
                for (int r = 0; r < R; ++r) vr[r] = _mm512_loadu_ps(v + 16 * r);
                for (int g = 0; g < GB; ++g) {
                    const __m512 wt = _mm512_set1_ps(w[g * len + t]);
                    for (int r = 0; r < R; ++r) acc[g][r] = _mm512_fmadd_ps(wt, vr[r], acc[g][r]);
                }
            } else {
                const int8_t *v = p->v_q + (base + i) * d + c;
                const float vs = p->v_s[base + i] * p->code_mul;
                for (int r = 0; r < R; ++r) vr[r] = load_key16(v, p->codes, 16 * r);
                for (int g = 0; g < GB; ++g) {
                    const __m512 wt = _mm512_set1_ps(w[g * len + t] * vs);
                    for (int r = 0; r < R; ++r) acc[g][r] = _mm512_fmadd_ps(wt, vr[r], acc[g][r]);
                }
            }
        }
    }
    for (int g = 0; g < GB; ++g) {
        const __m512 sv = _mm512_set1_ps(inv[g]);
        for (int r = 0; r < R; ++r) _mm512_storeu_ps(out + g * d + c + 16 * r, _mm512_mul_ps(acc[g][r], sv));
    }
}

XQ_AVX512_FN static void paged_values512(const struct paged *p, const struct krun *runs, int64_t nruns, int64_t j, const float *w,
                                         int64_t len, const float *inv, float *out, int64_t g_n) {
    const int64_t d = p->d;
    for (int64_t c = 0; c < d; c += 128) {
        const int R = (d - c) >= 128 ? 8 : (int)((d - c) / 16);
        const int64_t most = R == 8 ? 2 : 4; /* heads per pass: GB * R accumulators stay within the 32 zmm */
        for (int64_t g0 = 0; g0 < g_n; g0 += most) {
            const int gb = (int)(g_n - g0 < most ? g_n - g0 : most);
            const float *wg = w + g0 * len, *ig = inv + g0;
            float *og = out + g0 * d;
#define XQ_VALUES(GB, RR) paged_values512_gr(p, runs, nruns, j, wg, len, c, ig, og, GB, RR)
            switch (R * 8 + gb) { /* each (R, heads) pair compiled on its own: registers */
            case 8 * 8 + 2: XQ_VALUES(2, 8); break;
            case 8 * 8 + 1: XQ_VALUES(1, 8); break;
            case 4 * 8 + 4: XQ_VALUES(4, 4); break;
            case 4 * 8 + 3: XQ_VALUES(3, 4); break;
            case 4 * 8 + 2: XQ_VALUES(2, 4); break;
            case 4 * 8 + 1: XQ_VALUES(1, 4); break;
            case 2 * 8 + 4: XQ_VALUES(4, 2); break;
            case 2 * 8 + 3: XQ_VALUES(3, 2); break;
            case 2 * 8 + 2: XQ_VALUES(2, 2); break;
            case 2 * 8 + 1: XQ_VALUES(1, 2); break;
            default: /* other widths: one head at a time */
                for (int g = 0; g < gb; ++g)
                    switch (R) {
                    case 7: paged_values512_r(p, runs, nruns, j, wg + g * len, len, c, ig[g], og + g * d + c, 7); break;
                    case 6: paged_values512_r(p, runs, nruns, j, wg + g * len, len, c, ig[g], og + g * d + c, 6); break;
                    case 5: paged_values512_r(p, runs, nruns, j, wg + g * len, len, c, ig[g], og + g * d + c, 5); break;
                    case 3: paged_values512_r(p, runs, nruns, j, wg + g * len, len, c, ig[g], og + g * d + c, 3); break;
                    default: paged_values512_r(p, runs, nruns, j, wg + g * len, len, c, ig[g], og + g * d + c, 1); break;
                    }
            }
#undef XQ_VALUES
        }
    }
}

/* e^x on 8 lanes (Cephes' expf polynomial, ~1 ulp on the range softmax uses; x <= -88.4 gives 0). glibc's
   scalar expf took most of a decode step's attention time. */
XQ_AVX2_FN static inline __m256 exp8(__m256 x) {
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-88.3762626647949f)), _mm256_set1_ps(88.3762626647949f));
    const __m256 fx = _mm256_floor_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f)));
    x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
    x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), x);
    __m256 y = _mm256_set1_ps(1.9875691500e-4f);
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507e-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073e-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894e-2f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459e-1f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201e-1f));
    y = _mm256_add_ps(_mm256_fmadd_ps(y, _mm256_mul_ps(x, x), x), _mm256_set1_ps(1.0f));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(fx), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

/* max of e[0..len): four 8-lane running maxima, so no chain of dependent compares (a scalar loop waited on each
   one: ~a third of a verified row's attention at 800 tokens). A maximum does not depend on the order it is taken
   in, so the result is the scalar loop's (a zero's sign aside, which e[t] - max cannot show). */
XQ_AVX2_FN static float scores_max(const float *e, int64_t len) {
    __m256 m0 = _mm256_set1_ps(-INFINITY), m1 = m0, m2 = m0, m3 = m0;
    int64_t t = 0;
    for (; t + 32 <= len; t += 32) {
        m0 = _mm256_max_ps(m0, _mm256_loadu_ps(e + t));
        m1 = _mm256_max_ps(m1, _mm256_loadu_ps(e + t + 8));
        m2 = _mm256_max_ps(m2, _mm256_loadu_ps(e + t + 16));
        m3 = _mm256_max_ps(m3, _mm256_loadu_ps(e + t + 24));
    }
    for (; t + 8 <= len; t += 8) m0 = _mm256_max_ps(m0, _mm256_loadu_ps(e + t));
    float lanes[8], mx = -INFINITY;
    _mm256_storeu_ps(lanes, _mm256_max_ps(_mm256_max_ps(m0, m1), _mm256_max_ps(m2, m3)));
    for (int i = 0; i < 8; ++i) mx = lanes[i] > mx ? lanes[i] : mx;
    for (; t < len; ++t) mx = e[t] > mx ? e[t] : mx;
    return mx;
}

/* e[t] = exp(e[t] - mx) for t < len; each value through exp8 (the last partial group padded), so e[t] depends on
   e[t] and mx alone. Returns the sum, added in order. */
XQ_AVX2_FN static float softmax_exp(float *e, int64_t len, float mx) {
    const __m256 m = _mm256_set1_ps(mx);
    int64_t t = 0;
    for (; t + 8 <= len; t += 8) _mm256_storeu_ps(e + t, exp8(_mm256_sub_ps(_mm256_loadu_ps(e + t), m)));
    if (t < len) {
        float pad[8] = {0};
        for (int64_t i = t; i < len; ++i) pad[i - t] = e[i];
        _mm256_storeu_ps(pad, exp8(_mm256_sub_ps(_mm256_loadu_ps(pad), m)));
        for (int64_t i = t; i < len; ++i) e[i] = pad[i - t];
    }
    float total = 0.0f;
    for (int64_t i = 0; i < len; ++i) total += e[i];
    return total;
}

/* Phase 2 for tokens n0..n0+R-1 and one kv head j, i.e. their R G query heads (G = H / KV). R > 1 only for
   consecutive positions of one sequence without a window (a verified draft, a prompt chunk): token r attends keys
   0..pos_r, a prefix of the last token's keys, so every key and value is loaded once for all R G heads (four keys
   per step; values with the output rows in registers). For each head the arithmetic is a fixed loop that reads
   nothing of other tokens: scores over keys 0..pos, their max, exp and sum, then sum_t e_t v_t (in order of t)
   times 1 / sum; a shorter token's keys past its own are scored and then weighted by an exact 0, which leaves
   its sums bitwise unchanged (fma(0, v, acc) = acc for finite v and acc != -0, and acc starts at +0). So a head's
   result is bitwise the same in any batch, any chunking and grouping, and on any thread. `buf` holds
   paged_buf(R) floats. */
static inline int64_t paged_buf(const struct paged *p, int64_t r, int64_t top) {
    const int64_t heads = r * (p->h / p->kv);
    return 2 * heads * p->d + p->d + heads * top;
}

XQ_AVX2_FN static void paged_group(const struct paged *p, int64_t n0, int64_t R, int64_t j, float *buf,
                                   struct krun *runs) {
    const int64_t d = p->d, bs = p->bs, g_n = p->h / p->kv, heads = R * g_n, pos = p->positions[n0 + R - 1];
    const int64_t width = (p->h + 2 * p->kv) * d;
    const int32_t *table = p->tables + p->seq_index[n0] * p->max_blocks;
    int64_t sink_end, lo, nruns = 0;
    paged_range(p, pos, &sink_end, &lo);
    const int64_t len = sink_end + pos - lo + 1;
    for (int part = 0; part < 2; ++part) { /* the attended keys as runs within blocks, in order of position */
        const int64_t end = part ? pos + 1 : sink_end;
        for (int64_t t = part ? lo : 0; t < end;) {
            const int64_t off = t % bs, cnt = end - t < bs - off ? end - t : bs - off;
            runs[nruns++] = (struct krun){table[paged_column(p, t / bs)], off, cnt};
            t += cnt;
        }
    }
    float *q = buf, *tmp = buf + heads * d, *sc = tmp + d, *grouped = sc + heads * len;
    for (int64_t r = 0; r < R; ++r) {
        const int64_t n = n0 + r, pn = p->positions[n];
        for (int64_t g = 0; g < g_n; ++g)
            paged_rotate(p->qkv + n * width + (j * g_n + g) * d, p->q_norm, p->eps, p->cos + pn * d,
                         p->sin + pn * d, d, tmp, q + (r * g_n + g) * d);
    }
    if (p->rotate)
        for (int64_t g = 0; g < heads; ++g) paged_hadamard(q + g * d, d);
    for (int64_t ri = 0, t0 = 0; ri < nruns; t0 += runs[ri].cnt, ++ri) {
        const int64_t base = (runs[ri].blk * p->kv + j) * bs + runs[ri].off, cnt = runs[ri].cnt;
        p->scores(p, q, heads, base, cnt, t0, len, sc);
    }
    float inv[heads];
    for (int64_t g = 0; g < heads; ++g) {
        const int64_t own = len - (R - 1 - g / g_n); /* this head's token attends keys 0..own-1 */
        float *e = sc + g * len;
        inv[g] = 1.0f / softmax_exp(e, own, scores_max(e, own));
        for (int64_t t = own; t < len; ++t) e[t] = 0.0f;
    }
    float *out = R == 1 ? p->out + (n0 * p->h + j * g_n) * d : grouped;
    p->values(p, runs, nruns, j, sc, len, inv, out, heads);
    if (p->rotate)
        for (int64_t g = 0; g < heads; ++g) paged_hadamard(out + g * d, d);
    for (int64_t r = 0; R > 1 && r < R; ++r) /* token r's G heads are contiguous in its output row */
        memcpy(p->out + ((n0 + r) * p->h + j * g_n) * d, grouped + r * g_n * d, sizeof(float) * (size_t)(g_n * d));
}

/* Most tokens of one sequence attended together (paged_group): bounds the scratch, and keeps prompt chunks in
   many jobs. `xq_set_paged_group` lowers it (1: one job per token and kv head, the kernel before groups; for
   benchmarks, which time both in one process) and returns the previous value. */
#define XQ_GROUP_MAX 8
static int paged_group_max = XQ_GROUP_MAX;
int xq_set_paged_group(int most) {
    const int before = paged_group_max;
    if (most >= 1 && most <= XQ_GROUP_MAX) paged_group_max = most;
    return before;
}

/* The step's token groups (start, count): runs of consecutive positions of one sequence without a window (single
   tokens otherwise), each cut into near-equal groups of at most paged_group_max tokens; while the step has fewer
   groups than give every thread two kv-head jobs, the run with the largest groups is cut once more (one sequence's
   draft as one group would leave a thread idle; a batch of drafts keeps each whole). Returns the number of groups;
   `start` and `count` hold p->n entries each (`count` first holds each run's part count, at its first token). */
static int64_t paged_groups(const struct paged *p, int threads, int64_t *start, int64_t *count) {
    const int64_t want = (2 * threads + p->kv - 1) / p->kv;
    int64_t nruns = 0, total = 0;
    for (int64_t n = 0; n < p->n;) { /* runs: start[r] = first token, count[r] = parts (runs end where the next starts) */
        int64_t run = 1;
        while (!p->window && !p->sinks && n + run < p->n && p->seq_index[n + run] == p->seq_index[n] &&
               p->positions[n + run] == p->positions[n + run - 1] + 1)
            ++run;
        start[nruns] = n, count[nruns] = (run + paged_group_max - 1) / paged_group_max;
        total += count[nruns++];
        n += run;
    }
#define XQ_RUN_LEN(r) (((r) + 1 < nruns ? start[(r) + 1] : p->n) - start[r])
    while (total < want) { /* cut the run whose groups are largest (the first on ties) once more */
        int64_t best = -1;
        for (int64_t r = 0; r < nruns; ++r)
            if (count[r] < XQ_RUN_LEN(r) &&
                (best < 0 || XQ_RUN_LEN(r) * count[best] > XQ_RUN_LEN(best) * count[r]))
                best = r;
        if (best < 0) break; /* every run is single tokens already */
        ++count[best], ++total;
    }
    /* Expand in place from the last run backwards: group g of run r lands at index >= r, so nothing unread is
       overwritten (total >= nruns). */
    for (int64_t r = nruns - 1, g = total; r >= 0; --r) {
        const int64_t first = start[r], len = XQ_RUN_LEN(r), parts = count[r];
        for (int64_t i = parts - 1, end = first + len; i >= 0; --i) {
            const int64_t c = len / parts + (i < len % parts);
            start[--g] = end - c, count[g] = c;
            end -= c;
        }
    }
#undef XQ_RUN_LEN
    return total;
}

static int paged_run(struct paged *p, int threads) {
    int64_t top, keys;
    const int bad = paged_check(p, &top, &keys);
    if (bad) return bad;
    if (threads < 1) threads = 1;
    const int wide = vec_isa() == XQ_AVX512 && p->d % 16 == 0;
    p->scores = wide ? paged_scores512 : paged_scores;
    p->values = wide ? paged_values512 : paged_values_heads;
    const int64_t per = paged_buf(p, XQ_GROUP_MAX, top) + 16; /* +16: own cache line */
    const int64_t per_runs = top / p->bs + 4; /* a token's key runs: its blocks, plus split ends */
    float *scratch = malloc(sizeof(float) * (size_t)(threads * per));
    struct krun *runs = malloc(sizeof(struct krun) * (size_t)(threads * per_runs));
    int64_t *start = malloc(sizeof(int64_t) * (size_t)(2 * p->n));
    if (!scratch || !runs || !start) {
        free(scratch), free(runs), free(start);
        return -1;
    }
    paged_write(p, scratch);
    int64_t *count = start + p->n;
    const int64_t ng = paged_groups(p, threads, start, count);
    /* Threads only where there is work to split: >= 256k multiply-adds for the scores (as many again for the
       values; ~10 us on one core). Below that a fork gains a microsecond or two on a quiet machine and loses far
       more where the other cores are busy: one sequence decoding at a few hundred tokens of context stays on one
       thread, eight sequences at 128 tokens (600k) are split (docs/benchmarks-batching.md). */
    const int64_t jobs = ng * p->kv, parallel = threads > 1 && jobs >= 2 && keys * p->h * p->d >= (1 << 18);
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1) if (parallel)
    for (int64_t job = 0; job < jobs; ++job)
        paged_group(p, start[job / p->kv], count[job / p->kv], job % p->kv, scratch + XQ_THREAD * per,
                    runs + XQ_THREAD * per_runs);
    free(scratch), free(runs), free(start);
    return 0;
}

/* One step's token metadata (kernels/paged.py's `PagedBatch`), packed once per step by cpu_native.py:
     cos, sin [max_pos, D] (sin's first half negated); positions, seq_index int64 [N]; tables int32 [S, max_blocks]. */
struct xq_paged_step {
    const float *cos, *sin;
    int64_t max_pos;
    const int64_t *positions, *seq_index;
    const int32_t *tables;
    int64_t s, max_blocks;
};

/* One layer's pools and constants (`PagedLayer`), packed once per layer: k_pool, v_pool [num_blocks, KV, bs, D]
   fp32 (codes = 0), or 8-bit codes (codes 1 int8, 2 e4m3 bytes) with fp32 scales k_s, v_s [num_blocks, KV, bs]
   (all written for the step's tokens); q_norm, k_norm [D] or NULL (Qwen3, eps); window > 0: keys j > pos - window
   plus j < sinks, the table a ring. */
struct xq_paged_layer {
    void *k_pool, *v_pool;
    float *k_s, *v_s;
    int64_t codes, num_blocks, bs;
    const float *q_norm, *k_norm;
    float eps, scale;
    int64_t h, kv, d, window, sinks;
};

/* One layer's paged attention for N flattened tokens (kernels/paged.py says the semantics): qkv [N, (H + 2 KV) D]
   in, out [N, H D]. Two packed structs instead of ~25 scalars: a ctypes call converts each argument (~4 us for
   the 25, per layer and step). Returns 0, -1 (out of memory), an index error (-2..-5, see paged_check; nothing
   written then) or -6 (an unknown code kind). */
int xq_paged_attention(const float *qkv, int64_t n, const struct xq_paged_step *st, const struct xq_paged_layer *ly,
                       float *out, int threads) {
    if (ly->codes != CODES_NONE && ly->codes != CODES_INT8 && ly->codes != CODES_E4M3) return -6;
    const int codes = (int)ly->codes;
    struct paged p = {.window = ly->window, .sinks = ly->sinks, .qkv = qkv, .cos = st->cos, .sin = st->sin,
                      .q_norm = ly->q_norm, .k_norm = ly->k_norm, .positions = st->positions,
                      .seq_index = st->seq_index, .tables = st->tables, .n = n, .h = ly->h, .kv = ly->kv,
                      .d = ly->d, .bs = ly->bs, .max_pos = st->max_pos, .s = st->s, .max_blocks = st->max_blocks,
                      .num_blocks = ly->num_blocks, .scale = ly->scale, .eps = ly->eps, .out = out, .codes = codes};
    if (codes == CODES_NONE) {
        p.k_pool = (float *)ly->k_pool, p.v_pool = (float *)ly->v_pool;
    } else {
        p.k_q = (int8_t *)ly->k_pool, p.v_q = (int8_t *)ly->v_pool, p.k_s = ly->k_s, p.v_s = ly->v_s;
        p.rotate = codes == CODES_E4M3 && ly->d >= 2 && !(ly->d & (ly->d - 1));
        p.code_mul = codes == CODES_E4M3 ? 256.0f : 1.0f;
    }
    return paged_run(&p, threads);
}
