/* Native CPU ops for x86 with AVX2 + FMA + F16C, compiled at first use by cpu_native.py: the int4 weight x int8
 * activation matmul, and RMSNorm (one call instead of PyTorch's eight small ops per norm).
 *
 * Weights stay in xpullm's portable layout: per row, K/2 bytes where byte j holds column 2j in its low nibble
 * and column 2j+1 in its high nibble; one fp16 scale (and for asym_int4 one fp16 zero) per group of columns,
 * so w = q * scale + zero (sym_int4: zero = -8 * scale).
 *
 * Activations are quantised per block of 32 columns to int8 with scale max|x| / 127, stored with each block's
 * even columns first and odd columns second: exactly the order in which 16 packed weight bytes unpack into
 * 32 codes (low nibbles, then high nibbles). A block's dot product is then one u8 x s8 multiply-add
 * (codes are 0..15, so pair sums stay far from int16 saturation), and
 *     y = sum_b scale_b * d_b * (q . xq_b)  +  zero_b * d_b * sum(xq_b)
 * where the zero term sums the same quantised activations, so the result is exactly x_q @ W^T: the only error
 * is x's rounding, weighted by w itself (taking exact sums of x there would weight it by q * scale, which is
 * biased towards +7.5 * scale, and double the error).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
#define XQ_SIMD 1
#else
#define XQ_SIMD 0
#endif

int xq_simd(void) { return XQ_SIMD; }

/* x [m, k] float -> q [m, k] int8 (block-permuted), d [m, k/32] block scales, bsum [m, k/32] block sums of the
   quantised values (d * sum of codes). */
static void xq_quantize(const float *x, int64_t m, int64_t k, int8_t *q, float *d, float *bsum) {
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
            int isum = 0;
            for (int i = 0; i < 16; ++i) {
                out[i] = (int8_t)lrintf(v[2 * i] * inv);
                out[16 + i] = (int8_t)lrintf(v[2 * i + 1] * inv);
                isum += out[i] + out[16 + i];
            }
            d[r * nb + b] = scale;
            bsum[r * nb + b] = scale * (float)isum;
        }
    }
}

#if XQ_SIMD
static inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* One block's 32-term integer dot product of codes (16 packed bytes) and quantised activations, as 8 float
   partial sums. The bytes go to both lanes and the high lane is shifted by 4: low nibbles (even columns), then
   high nibbles (odd columns). Codes are 0..15, so the u8 x s8 pair sums stay far from int16 saturation. */
static inline __m256 block_dot(const uint8_t *packed, __m256i x) {
    const __m256i shifts = _mm256_set_epi32(4, 4, 4, 4, 0, 0, 0, 0), mask = _mm256_set1_epi8(0x0F);
    const __m256i raw = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)packed));
    const __m256i codes = _mm256_and_si256(_mm256_srlv_epi32(raw, shifts), mask);
    return _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_maddubs_epi16(codes, x), _mm256_set1_epi16(1)));
}

/* The same for a block of 32 int8 codes (stored in the activations' even-then-odd column order). |w|, |x| <= 127,
   so the u8 x s8 pair sums (|w| times x with w's sign) stay below int16 saturation. */
static inline __m256 block_dot_i8(const uint8_t *packed, __m256i x) {
    const __m256i w = _mm256_loadu_si256((const __m256i *)packed);
    const __m256i pairs = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w));
    return _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
}

/* Dot products of the 4 weight rows of one tile with one activation row, 8 blocks at a time. The tile's
   codes are interleaved by block (block b of rows 0..3 = one 64-byte cache line), so the weights stream
   strictly sequentially; scales and zeros are per row and block of 32 (expanded at load), so each chunk
   converts 8 of them with one instruction. Four accumulators keep the FMA pipes busy and each activation
   block is loaded once for the 4 rows. */
static inline void tile_dot(const int int8, const uint8_t *w, const uint16_t *scale, const uint16_t *zero,
                            float zmul, int64_t nb, const int8_t *xq, const float *d, const float *bsum,
                            float out[4]) {
    const int64_t bytes = int8 ? 32 : 16; /* per row and block */
    __m256 acc[4], zacc[4];
    for (int r = 0; r < 4; ++r) acc[r] = zacc[r] = _mm256_setzero_ps();
    int64_t b0 = 0;
    for (; b0 + 8 <= nb; b0 += 8) {
        float f[4][8] __attribute__((aligned(32)));
        const __m256 dv = _mm256_loadu_ps(d + b0), sv = _mm256_loadu_ps(bsum + b0);
        for (int r = 0; r < 4; ++r) {
            const __m256 s = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(scale + r * nb + b0)));
            const __m256 z = zero ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(zero + r * nb + b0)))
                                  : _mm256_mul_ps(s, _mm256_set1_ps(zmul));
            _mm256_store_ps(f[r], _mm256_mul_ps(s, dv));
            zacc[r] = _mm256_fmadd_ps(z, sv, zacc[r]);
        }
        for (int j = 0; j < 8; ++j) {
            const __m256i x = _mm256_loadu_si256((const __m256i *)(xq + (b0 + j) * 32));
            for (int r = 0; r < 4; ++r)
            {
                const uint8_t *p = w + (b0 + j) * 4 * bytes + r * bytes;
                const __m256 dot = int8 ? block_dot_i8(p, x) : block_dot(p, x);
                acc[r] = _mm256_fmadd_ps(dot, _mm256_broadcast_ss(&f[r][j]), acc[r]);
            }
        }
    }
    float tail[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int64_t b = b0; b < nb; ++b) {
        const __m256i x = _mm256_loadu_si256((const __m256i *)(xq + b * 32));
        for (int r = 0; r < 4; ++r) {
            const float s = _cvtsh_ss(scale[r * nb + b]);
            const uint8_t *p = w + b * 4 * bytes + r * bytes;
            const __m256 dot = int8 ? block_dot_i8(p, x) : block_dot(p, x);
            acc[r] = _mm256_fmadd_ps(dot, _mm256_set1_ps(s * d[b]), acc[r]);
            tail[r] += (zero ? _cvtsh_ss(zero[r * nb + b]) : zmul * s) * bsum[b];
        }
    }
    for (int r = 0; r < 4; ++r) out[r] = hsum8(_mm256_add_ps(acc[r], zacc[r])) + tail[r];
}
#endif

/* y [m, n] = x [m, k] @ W^T for a tiled low-bit W [n, k] (see cpu_native.py): tiles of 4 rows interleaved by
   block of 32 columns ([n/4, k/32, 4, bytes]) and one fp16 scale (and optional fp16 zero; NULL means
   zero = zmul * scale) per row and block, [n, k/32]. n is a multiple of 4 (padded rows are computed, and only
   the first n_out columns of y are written); k is a multiple of 32. Returns 0, or -1 when this build has no
   SIMD path or memory runs out. */
static int tiled_linear(const int int8, const float *x, int64_t m, int64_t k, const uint8_t *w,
                        const uint16_t *scale, const uint16_t *zero, float zmul, int64_t n, int64_t n_out, float *y,
                        int threads) {
#if XQ_SIMD
    const int64_t nb = k / 32, row_bytes = int8 ? k : k / 2;
    int8_t *xq = malloc((size_t)(m * k));
    float *d = malloc(sizeof(float) * (size_t)(m * nb)), *bsum = malloc(sizeof(float) * (size_t)(m * nb));
    if (!xq || !d || !bsum) {
        free(xq), free(d), free(bsum);
        return -1;
    }
    xq_quantize(x, m, k, xq, d, bsum);
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1 && n >= 256)
    for (int64_t t = 0; t < n / 4; ++t) {
        const int64_t row = t * 4;
        for (int64_t r = 0; r < m; ++r) {
            float out[4];
            tile_dot(int8, w + row * row_bytes, scale + row * nb, zero ? zero + row * nb : 0, zmul, nb, xq + r * k,
                     d + r * nb, bsum + r * nb, out);
            for (int i = 0; i < 4 && row + i < n_out; ++i) y[r * n_out + row + i] = out[i];
        }
    }
    free(xq), free(d), free(bsum);
    return 0;
#else
    (void)int8, (void)x, (void)m, (void)k, (void)w, (void)scale, (void)zero, (void)zmul, (void)n, (void)n_out;
    (void)y, (void)threads;
    return -1;
#endif
}

/* int4 codes (byte j of a row's block holds columns 2j and 2j+1 in its low and high nibble): w = q * s + z,
   sym_int4 passes zero = NULL for z = -8 s. */
int xq_int4_linear(const float *x, int64_t m, int64_t k, const uint8_t *w, const uint16_t *scale,
                   const uint16_t *zero, int64_t n, int64_t n_out, float *y, int threads) {
    return tiled_linear(0, x, m, k, w, scale, zero, -8.0f, n, n_out, y, threads);
}

/* int8 codes (-127..127, each block's columns stored even first, then odd): w = q * s. */
int xq_int8_linear(const float *x, int64_t m, int64_t k, const uint8_t *w, const uint16_t *scale, int64_t n,
                   int64_t n_out, float *y, int threads) {
    return tiled_linear(1, x, m, k, w, scale, 0, 0.0f, n, n_out, y, threads);
}

/* y [rows, d] = x / sqrt(mean(x^2) + eps) * weight, all fp32 and contiguous. */
void xq_rms_norm(const float *x, const float *weight, float *y, int64_t rows, int64_t d, float eps) {
    for (int64_t r = 0; r < rows; ++r) {
        const float *v = x + r * d;
        float ss = 0.0f;
        for (int64_t i = 0; i < d; ++i) ss += v[i] * v[i];
        const float inv = 1.0f / sqrtf(ss / (float)d + eps);
        for (int64_t i = 0; i < d; ++i) y[r * d + i] = v[i] * inv * weight[i];
    }
}

static inline float dot_f32(const float *a, const float *b, int64_t n) {
#if XQ_SIMD
    if (n % 8 == 0) {
        __m256 acc = _mm256_setzero_ps();
        for (int64_t i = 0; i < n; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc);
        return hsum8(acc);
    }
#endif
    float s = 0.0f;
    for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
    return s;
}

/* RoPE as the decoder applies it: out = x * cos + roll(x, d/2) * sin, with sin's first half negated. */
static inline void rope(const float *x, const float *cos, const float *sin, int64_t d, float *out) {
    const int64_t half = d / 2;
    for (int64_t i = 0; i < d; ++i) out[i] = x[i] * cos[i] + x[(i + half) % d] * sin[i];
}

/* One decode step of attention for B rows (one new token each), as one call:
     qkv [B, (H + 2 KV) D]      the new token's q, k, v projections;
     cos, sin [positions, D]    RoPE tables; rope_pos[b] is row b's position;
     k_cache, v_cache [B, KV, cap, D]  this layer's cache: slot `slot` receives the rotated k and v;
     first[b]                   row b's first real cache slot (left padding);
     out [B, H D]               softmax(q k^T * scale) v over slots first[b]..slot, GQA (H / KV heads per kv head).
   Each row is computed on its own, so a row's result does not depend on the rest of the batch. */
int xq_decode_attention(const float *qkv, const float *cos, const float *sin, const int64_t *rope_pos,
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
