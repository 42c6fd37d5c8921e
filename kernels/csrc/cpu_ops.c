/* Native CPU ops for x86-64, compiled at first use by cpu_native.py without -march flags: every SIMD function
 * carries its own target attribute and the exported entry points pick a path at run time from CPUID and XGETBV
 * (`xq_best_isa`), so one build runs on any x86-64 CPU with AVX2 and uses AVX-512 VNNI where the CPU and the OS
 * have it. `xq_set_isa` forces a path (the tests run every path the CPU has; XPULLM_CPU_ISA sets it at load).
 *
 *   path       weights x activations                             used for
 *   avx2       u8/s8 x s8 vpmaddubsw, fp8 -> fp16 -> fp32 FMA    any AVX2 + FMA + F16C CPU (the portable floor)
 *   avx512     u8 x s8 vpdpbusd (VNNI) on 4 rows per zmm,         AVX-512 F/BW/VL + VNNI (Ice Lake, Sapphire
 *              fp8 -> fp16 -> fp32 FMA on 16 lanes               Rapids, Zen 4+)
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
 * Weights are regrouped at load into tiles of 4 rows interleaved by block of 32 columns (one tile block is a
 * 64-byte cache line for 4-bit codes), so the stream is read strictly in order; scales (and zeros) are in the
 * same order, [n/4, blocks or groups, 4].
 */
#include <cpuid.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <immintrin.h>

#define XQ_AVX2_FN __attribute__((target("avx2,fma,f16c")))
#define XQ_AVX512_FN __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")))

enum { XQ_NONE = 0, XQ_AVX2 = 1, XQ_AVX512 = 2 };
enum { K_INT4 = 0, K_LUT4 = 1, K_INT8 = 2, K_FP8 = 3 };

static uint64_t xgetbv0(void) {
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}

/* The best path this CPU and OS run: CPUID feature bits, and XCR0 for the OS saving ymm (and zmm) state. */
int xq_best_isa(void) {
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

/* AMX tiles (int8) reported by CPUID and enabled by the OS (XCR0 bits 17-18): informational; no AMX path yet. */
int xq_has_amx(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return 0;
    const int tile = (d >> 24) & 1, int8 = (d >> 25) & 1;
    return tile && int8 && ((xgetbv0() >> 17) & 3) == 3;
}

static int active_isa = -1;

/* The path the kernels run now. */
int xq_isa(void) {
    if (active_isa < 0) active_isa = xq_best_isa();
    return active_isa;
}

/* Force a path (-1: back to the best); returns the active path, or -1 when this CPU cannot run `isa`. */
int xq_set_isa(int isa) {
    const int best = xq_best_isa();
    if (isa < 0) isa = best;
    if (isa > best || isa < XQ_AVX2) return -1;
    active_isa = isa;
    return active_isa;
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
    float *y;
};

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
    const uint8_t *w = j->w + t * nb * bb;
    const uint16_t *sc = j->scale + t * nb * 4, *zc = j->zero ? j->zero + t * nb * 4 : 0;
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
            const __m128 s4 = _mm_cvtph_ps(_mm_loadl_epi64((const __m128i *)(sc + b * 4)));
            const __m128 z4 = zc ? _mm_cvtph_ps(_mm_loadl_epi64((const __m128i *)(zc + b * 4))) : _mm_mul_ps(s4, zmul);
            zacc = _mm_fmadd_ps(z4, _mm_set1_ps(bs[b]), zacc);
            float f[4];
            _mm_storeu_ps(f, _mm_mul_ps(s4, _mm_set1_ps(d[b] * j->wmul)));
            for (int i = 0; i < 4; ++i) {
                __m256 dot;
                if (kind == K_INT4) {
                    dot = dot_u(nibbles_avx2(w + b * 64 + i * 16), x);
                } else if (kind == K_LUT4) {
                    dot = dot_s(_mm256_shuffle_epi8(lut, nibbles_avx2(w + b * 64 + i * 16)), x);
                } else {
                    const uint8_t *p = w + b * 128 + i * 16;
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

/* One tile against the activation rows, 4 rows at a time: each tile block (4 weight rows x 32 columns) is decoded
   once into two 64-byte vectors (even / odd columns of the 4 rows, one row per 128-bit lane) and meets each
   activation row's broadcast block in two vpdpbusd; lane group i then holds row i's 4 partial sums. */
XQ_AVX512_FN static inline __attribute__((always_inline)) void rows_int_avx512(const struct job *j, int64_t t,
                                                                            int64_t r0, const int R) {
    const int kind = j->kind;
    const int64_t nb = j->nb, bb = kind == K_INT8 ? 128 : 64;
    const uint8_t *w = j->w + t * nb * bb;
    const uint16_t *sc = j->scale + t * nb * 4, *zc = j->zero ? j->zero + t * nb * 4 : 0;
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
    __m512 acc[4];
    __m128 zacc[4];
    for (int i = 0; i < R; ++i) acc[i] = _mm512_setzero_ps(), zacc[i] = _mm_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
        __m512i we, wo;
        if (kind == K_INT8) {
            we = _mm512_xor_si512(_mm512_loadu_si512(w + b * 128), flip);
            wo = _mm512_xor_si512(_mm512_loadu_si512(w + b * 128 + 64), flip);
        } else {
            const __m512i raw = _mm512_loadu_si512(w + b * 64);
            we = _mm512_and_si512(raw, mask);
            wo = _mm512_and_si512(_mm512_srli_epi16(raw, 4), mask);
            if (kind == K_LUT4) we = _mm512_shuffle_epi8(lut, we), wo = _mm512_shuffle_epi8(lut, wo);
        }
        const __m128 s4 = _mm_cvtph_ps(_mm_loadl_epi64((const __m128i *)(sc + b * 4)));
        const __m512 s16 = _mm512_permutexvar_ps(sel, _mm512_castps128_ps512(s4));
        const __m128 z4 = zc ? _mm_cvtph_ps(_mm_loadl_epi64((const __m128i *)(zc + b * 4))) : _mm_setzero_ps();
        for (int i = 0; i < R; ++i) {
            const __m512i xe = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(xr[i] + b * 32)));
            const __m512i xo = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(xr[i] + b * 32 + 16)));
            __m512i ai = _mm512_dpbusd_epi32(_mm512_setzero_si512(), we, xe);
            ai = _mm512_dpbusd_epi32(ai, wo, xo);
            if (bias) ai = _mm512_sub_epi32(ai, _mm512_maskz_set1_epi32(0x1111, bias * ir[i][b]));
            const __m512 f = _mm512_mul_ps(s16, _mm512_set1_ps(dr[i][b] * j->wmul));
            acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(ai), f, acc[i]);
            if (zc) zacc[i] = _mm_fmadd_ps(z4, _mm_set1_ps(br[i][b]), zacc[i]);
        }
    }
    for (int i = 0; i < R; ++i) {
        float lanes[16], z[4];
        _mm512_storeu_ps(lanes, acc[i]);
        _mm_storeu_ps(z, zacc[i]);
        for (int q = 0; q < 4 && t * 4 + q < j->n_out; ++q)
            j->y[(r0 + i) * j->n_out + t * 4 + q] =
                (lanes[4 * q] + lanes[4 * q + 1]) + (lanes[4 * q + 2] + lanes[4 * q + 3]) + z[q];
    }
}

/* One tile against the activation rows, up to 4 rows at a time: each tile block (4 weight rows x 32 columns) is
   decoded once into two 64-byte vectors (even / odd columns of the 4 rows, one row per 128-bit lane) and meets
   each activation row's broadcast block in two vpdpbusd; lane group i then holds row i's 4 partial sums. */
XQ_AVX512_FN static void tile_int_avx512(const struct job *j, int64_t t) {
    int64_t r0 = 0;
    for (; r0 + 4 <= j->m; r0 += 4) rows_int_avx512(j, t, r0, 4);
    switch (j->m - r0) { /* each count compiled on its own: registers, no wasted rows */
    case 3: rows_int_avx512(j, t, r0, 3); break;
    case 2: rows_int_avx512(j, t, r0, 2); break;
    case 1: rows_int_avx512(j, t, r0, 1); break;
    default: break;
    }
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
    if (xq_isa() == XQ_AVX512)
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
    const int isa = xq_isa();
    tile_fn fn = j->kind == K_FP8 ? (isa == XQ_AVX512 ? tile_fp8_avx512 : tile_fp8_avx2)
                                  : (isa == XQ_AVX512 ? tile_int_avx512 : tile_int_avx2);
    const int64_t count = n / 4, chunk = threads > 1 && count / (8 * threads) > 1 ? count / (8 * threads) : 1;
#pragma omp parallel for num_threads(threads) schedule(dynamic, chunk) if (threads > 1 && j->m * n * j->k >= (1 << 20))
    for (int64_t t = 0; t < count; ++t) fn(j, t);
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
                   float *);
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

/* The G heads' outputs (w: G rows of len weights, inv: G factors, out: G rows of D), one head at a time. */
XQ_AVX2_FN static void paged_values_heads(const struct paged *p, const struct krun *runs, int64_t nruns, int64_t j, const float *w,
                                          int64_t len, const float *inv, float *out) {
    for (int64_t g = 0; g < p->h / p->kv; ++g) paged_values(p, runs, nruns, j, w + g * len, len, inv[g], out + g * p->d);
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
                                         int64_t len, const float *inv, float *out) {
    const int64_t d = p->d, g_n = p->h / p->kv;
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

/* Phase 2 for one token and one kv head j, i.e. its G = H / KV query heads (each key is loaded once for all G,
   four keys per step; values per head with the output row in registers). For each head the arithmetic is a
   fixed loop that reads nothing of other tokens: scores over keys 0..pos, their max, exp and sum, then
   sum_t e_t v_t (in order of t) times 1 / sum. So a head's result is bitwise the same in any batch, any
   chunking and on any thread. `buf` holds G D + D + G (pos + 1) floats. */
XQ_AVX2_FN static void paged_group(const struct paged *p, int64_t n, int64_t j, float *buf, struct krun *runs) {
    const int64_t d = p->d, bs = p->bs, g_n = p->h / p->kv, pos = p->positions[n];
    const int64_t width = (p->h + 2 * p->kv) * d;
    const int32_t *table = p->tables + p->seq_index[n] * p->max_blocks;
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
    float *q = buf, *tmp = buf + g_n * d, *sc = tmp + d;
    for (int64_t g = 0; g < g_n; ++g)
        paged_rotate(p->qkv + n * width + (j * g_n + g) * d, p->q_norm, p->eps, p->cos + pos * d, p->sin + pos * d,
                     d, tmp, q + g * d);
    if (p->rotate)
        for (int64_t g = 0; g < g_n; ++g) paged_hadamard(q + g * d, d);
    for (int64_t ri = 0, t0 = 0; ri < nruns; t0 += runs[ri].cnt, ++ri) {
        const int64_t base = (runs[ri].blk * p->kv + j) * bs + runs[ri].off, cnt = runs[ri].cnt;
        p->scores(p, q, g_n, base, cnt, t0, len, sc);
    }
    float inv[g_n];
    for (int64_t g = 0; g < g_n; ++g) {
        float *e = sc + g * len, mx = -INFINITY;
        for (int64_t t = 0; t < len; ++t) mx = e[t] > mx ? e[t] : mx;
        inv[g] = 1.0f / softmax_exp(e, len, mx);
    }
    float *out = p->out + (n * p->h + j * g_n) * d;
    p->values(p, runs, nruns, j, sc, len, inv, out);
    if (p->rotate)
        for (int64_t g = 0; g < g_n; ++g) paged_hadamard(out + g * d, d);
}

#ifdef _OPENMP
#include <omp.h>
#define XQ_THREAD omp_get_thread_num()
#else
#define XQ_THREAD 0
#endif

static int paged_run(struct paged *p, int threads) {
    int64_t top, keys;
    const int bad = paged_check(p, &top, &keys);
    if (bad) return bad;
    if (threads < 1) threads = 1;
    const int wide = xq_isa() == XQ_AVX512 && p->d % 16 == 0;
    p->scores = wide ? paged_scores512 : paged_scores;
    p->values = wide ? paged_values512 : paged_values_heads;
    const int64_t g_n = p->h / p->kv, per = (g_n + 1) * p->d + g_n * top + 16; /* +16: own cache line */
    const int64_t per_runs = top / p->bs + 4; /* a token's key runs: its blocks, plus split ends */
    float *scratch = malloc(sizeof(float) * (size_t)(threads * per));
    struct krun *runs = malloc(sizeof(struct krun) * (size_t)(threads * per_runs));
    if (!scratch || !runs) {
        free(scratch), free(runs);
        return -1;
    }
    paged_write(p, scratch);
    /* Threads only where there is work to split: >= 256k multiply-adds for the scores (as many again for the
       values; ~10 us on one core). Below that a fork gains a microsecond or two on a quiet machine and loses far
       more where the other cores are busy: one sequence decoding at a few hundred tokens of context stays on one
       thread, eight sequences at 128 tokens (600k) are split (docs/benchmarks-batching.md). */
    const int64_t jobs = p->n * p->kv, parallel = threads > 1 && jobs >= 2 && keys * p->h * p->d >= (1 << 18);
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1) if (parallel)
    for (int64_t job = 0; job < jobs; ++job)
        paged_group(p, job / p->kv, job % p->kv, scratch + XQ_THREAD * per, runs + XQ_THREAD * per_runs);
    free(scratch), free(runs);
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
