// Low-bit weights (4-bit: sym_int4, asym_int4, the codebook formats nf4 / fp4; 8-bit: sym_int8, fp8_e4m3 / e5m2) x bf16
// activation rows (2..64) on tensor cores, reading the Triton kernels' weight layout (kernels/triton/layout.py) as
// it is: no second copy of the weight. The 4-bit layout first; the 8-bit one below it.
//
// The layout: per weight row, blocks of 4 int32 words hold 32 codes; word l holds code 4 * i + l of its block in
// nibble i (bits 4i..4i+3). One 16-byte load is one block of one row.
//
// The product is computed as W @ x^T with `mma.sync.m16n8k16` (bf16 in, fp32 accumulate): the weight is the A
// operand (16 output features x 16 K), the activations the B operand (16 K x 8 rows). A warp's four lanes of one
// quad (t = lane % 4) share output rows g and g + 8 (g = lane / 4). Lane t loads block t of a 4-block chunk
// (128 codes) of each of its rows: the quad reads 64 contiguous bytes per row. The 16 K slots of an mma are a sum,
// so any K order works as long as both operands use it: step s (0..7) of a chunk takes, from each lane's block,
// word s / 2 and nibbles {p, p + 4, p + 1, p + 5} (p = 2 * (s % 2)). Nibbles (p, p + 4) of a word decode together
// into one bf16x2 register: (w >> 4p) & 0x000F000F | 0x43004300 is (128 + q_p, 128 + q_(p+4)) in bf16, minus 136
// gives the codes' values q - 8 exactly (asym_int4: minus 128 gives q). The activations are staged in shared memory
// in that same order.
//
// 8-bit weights (sym_int8, fp8_e4m3 / e5m2): a block is 4 words = 16 codes, word l holding code 4 i + l in byte i, and a
// chunk is 64 codes. Step s (0..3) of a chunk takes word s of each lane's block: bytes (0, 2) into one bf16x2, bytes
// (1, 3) into another. int8 codes decode exactly in three steps (the two nibbles of the byte with its sign bit
// flipped, each by the 128 + q magic, then 16 h + l - 128 with two fmas); fp8 codes are moved into a bf16's
// exponent and mantissa bits (e4m3 at bits 4..10, e5m2 at 5..11) and multiplied by 2^112: exact, subnormals
// included (e5m2's bias 15 is 112 below bf16's; e4m3's bias 7 leaves a 2^8 that the layout's e4m3 scales carry).
//
// Codebook formats (w = level[q] s): the 16 levels, rounded to bf16, sit in eight registers as their low and high
// bytes; `prmt` byte permutes look four codes up at a time (`decode_levels`), and a word's eight codes come out as
// the same four pairs (p, p + 4) the integer decode makes.
//
// Scales, groups of 128 codes or more (a whole number of chunks, or one per row): each chunk's dots go to a temporary
// accumulator that is scaled in fp32 and added: no bf16 rounding of scaled weights. asym_int4 (w = q s + z) adds z
// times the chunk's activation sums, taken while staging.
// Groups of 32 or 64 codes (PRESCALE): a lane's block (32 codes) lies in one group, so each lane scales its decoded
// pairs before the mma with one bf16x2 fma (the scale and zero point rounded to bf16, the product once more).
//
// Split K: `split` programs share an output tile; each writes fp32 partials and the last to arrive (an atomic
// counter per tile, reset by that last program) sums them in split order into the bf16 output.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include <algorithm>

// Internal linkage throughout: two builds loaded in one process (two GPU architectures) must not share symbols
// (the loader unifies some, such as function-local statics, across libraries).
namespace xpullm_lowbit {
namespace {

enum Kind { kSym = 0, kAsym = 1, kLevels = 2, kInt8 = 3, kE4m3 = 4, kE5m2 = 5 };

// Per code width: codes per chunk (4 blocks), mma K steps per chunk, and the staged activation row's stride in bf16
// (the chunk plus a pad that puts the 8 rows a warp's lanes read 8 banks apart: conflict-free 8-byte reads).
template <int KIND>
struct Codes {
  static constexpr bool kEight = KIND >= kInt8;
  static constexpr int kChunk = kEight ? 64 : 128;
  static constexpr int kSteps = kChunk / 16;
  static constexpr int kRow = kEight ? 80 : 144;
};

// a * b + c per bf16 half, rounded once (sm_80; sub / mul.bf16x2 need sm_90)
__device__ __forceinline__ uint32_t bf16x2_fma(uint32_t a, uint32_t b, uint32_t c) {
  uint32_t d;
  asm("fma.rn.bf16x2 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
  return d;
}

__device__ __forceinline__ uint32_t decode_pair(uint32_t w, uint32_t minus) {
  uint32_t v;
  // (w & 0x000F000F) | 0x43004300: lop3 with table 0xEA = (a & b) | c
  asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(v) : "r"(w), "r"(0x000F000Fu), "r"(0x43004300u));
  return bf16x2_fma(v, 0x3F803F80u, minus);  // times 1 (bf16 0x3F80) plus `minus` (a negative bf16x2): exact
}

__device__ __forceinline__ void mma_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint4 load_words(const int32_t* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

__device__ __forceinline__ uint32_t word_at(const uint4& v, int l) {
  return l == 0 ? v.x : (l == 1 ? v.y : (l == 2 ? v.z : v.w));
}

template <int TILES, int NT>
__device__ __forceinline__ void zero(float (&a)[TILES][NT][4]) {
#pragma unroll
  for (int T = 0; T < TILES; ++T)
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) a[T][j][e] = 0.f;
}

__device__ __forceinline__ float load_scale(const void* scales, bool half, int64_t idx) {
  return half ? __half2float(reinterpret_cast<const __half*>(scales)[idx])
              : reinterpret_cast<const float*>(scales)[idx];
}

struct Params {
  const __nv_bfloat16* x;  // [m, ldx] activations, K padded to 8 * kw with zeros
  int64_t ldx;
  const int32_t* words;  // [n, kw]
  int64_t kw;
  const void* scales;  // [n, groups] fp16 or fp32
  const void* zeros;   // [n, groups] like scales (asym_int4), else unused
  int64_t ld_scales;
  int n_groups;          // scale groups a row has (K padded to whole chunks may run past the last group)
  int chunks_per_group;  // post-scaled groups: chunks a group (0: one group per row); PRESCALE: blocks a group
  int half_scales;       // scales (and zeros) are fp16, else fp32
  uint32_t levels[8];    // codebook formats: bytes 4i..4i+3 of words 0..3 (low bytes) and 4..7 (high bytes) of
                         // the bf16 levels 4i..4i+3
  __nv_bfloat16* out;    // [m, n]
  float* partials;       // [split, m, n] when split > 1
  int* counters;         // one per program column (blockIdx.x) when split > 1
  int m, n, chunks_per_split, split;
  int window;  // chunks a staged window of activations holds (the host sizes it: window_chunks)
  int pdl;     // host: launched with programmatic dependent launch (the kernel waits the same either way)
};

// Staging a chunk's activation rows in the mma's K order. A unit is two 16-byte vectors of one row, v0 and v1:
// 4-bit, elements e0 .. e0 + 7 of block t (e0 = 8 sigma, sigma = 0, 1) and the eight 16 elements further on (8
// units a row); 8-bit, block t's 16 elements (4 units a row). For each l = 0..3 the unit's (v0[l], v1[l], v0[4 + l],
// v1[4 + l]) are the staged slots 4 t .. 4 t + 3 of step s = 2 l + sigma (8-bit: s = l): one 8-byte store. (4-bit:
// element e = 4 i + l of a block goes to slot 4 t + j of step 2 l + (i % 4) / 2, j = i / 4 + 2 (i % 2); 8-bit: to
// step l, j = i / 2 + 2 (i % 2).) Units are numbered row by row, so a row's units sit in consecutive lanes.
template <int NT, int KIND>
struct Units {
  static constexpr bool kEight = Codes<KIND>::kEight;
  static constexpr int kPerRow = kEight ? 4 : 8;               // units a row
  static constexpr int kSpan = kEight ? 16 : 32;               // codes a block
  static constexpr int kHalf = kEight ? 8 : 16;                // elements from v0 to v1
  static constexpr int kUnits = NT * 8 * kPerRow;              // units a chunk
};

__device__ __forceinline__ float bf16_sum(const uint4& v) {
  const uint32_t w[4] = {v.x, v.y, v.z, v.w};
  float s = 0.f;
#pragma unroll
  for (int i = 0; i < 4; ++i) s += __uint_as_float(w[i] << 16) + __uint_as_float(w[i] & 0xFFFF0000u);
  return s;
}

// Stages chunks [w0, w1) of the activation rows into window slots 0, 1, ... (slot i: chunk w0 + i at
// sx + i * NT * 8 * kRow, its row sums at sums + i * NT * 8; see Units). A thread takes units tid, tid + threads,
// ... (rows past m are zeros), two at a time: both loads before the stores. With SUMS, each row's chunk sum (fp32)
// goes to the slot's sums[row] (asym_int4's zero points multiply it); every lane takes part in the shuffles.
template <int NT, int KIND, bool SUMS>
__device__ __forceinline__ void stage_window(const Params& p, __nv_bfloat16* sx, float* sums, int w0, int w1, int tid,
                                             int threads) {
  using U = Units<NT, KIND>;
  constexpr int kRow = Codes<KIND>::kRow, kCh = Codes<KIND>::kChunk, kBatch = 2;
  const int total = (w1 - w0) * U::kUnits;
  for (int base = 0; base < total; base += kBatch * threads) {  // uniform across the block: shuffles stay whole
    uint4 v[kBatch][2];
    int us[kBatch];  // this thread's units in the window
#pragma unroll
    for (int r = 0; r < kBatch; ++r) {
      const int u = us[r] = base + r * threads + tid, slot = u / U::kUnits, lu = u % U::kUnits;
      const int row = lu / U::kPerRow, q = lu % U::kPerRow;
      v[r][0] = v[r][1] = make_uint4(0, 0, 0, 0);
      if (u < total && row < p.m) {
        const int e0 = U::kEight ? q * U::kSpan : (q >> 1) * U::kSpan + (q & 1) * 8;
        const __nv_bfloat16* src = p.x + row * p.ldx + static_cast<int64_t>(w0 + slot) * kCh + e0;
        v[r][0] = *reinterpret_cast<const uint4*>(src);
        v[r][1] = *reinterpret_cast<const uint4*>(src + U::kHalf);
      }
    }
#pragma unroll
    for (int r = 0; r < kBatch; ++r) {
      const int u = us[r], slot = u / U::kUnits, lu = u % U::kUnits;
      const uint4 v0 = v[r][0], v1 = v[r][1];
      if constexpr (SUMS) {
        float sum = bf16_sum(v0) + bf16_sum(v1);
#pragma unroll
        for (int o = U::kPerRow / 2; o > 0; o >>= 1) sum += __shfl_xor_sync(0xFFFFFFFFu, sum, o);
        if (u < total && lu % U::kPerRow == 0) sums[slot * NT * 8 + lu / U::kPerRow] = sum;
      }
      if (u < total) {
        const int row = lu / U::kPerRow, q = lu % U::kPerRow;
        const int t = U::kEight ? q : q >> 1, sigma = U::kEight ? 0 : q & 1;
        __nv_bfloat16* dst = sx + (slot * NT * 8 + row) * kRow + t * 4;
        const uint32_t a[4] = {v0.x, v0.y, v0.z, v0.w}, b[4] = {v1.x, v1.y, v1.z, v1.w};
#pragma unroll
        for (int l = 0; l < 4; ++l) {
          const uint32_t sel = (l & 1) ? 0x7632u : 0x5410u;  // the halves of element l (or 4 + l) of v0, then v1
          uint2 w;
          w.x = __byte_perm(a[l >> 1], b[l >> 1], sel);
          w.y = __byte_perm(a[2 + (l >> 1)], b[2 + (l >> 1)], sel);
          const int s = U::kEight ? l : 2 * l + sigma;
          *reinterpret_cast<uint2*>(dst + s * 16) = w;
        }
      }
    }
  }
}

// sym_int4: codes' values q - 8 (bf16 0xC308 = -136 after the 128 + q magic); asym_int4: q (0xC300 = -128).
template <int KIND>
__device__ __forceinline__ uint32_t decode(uint32_t w) {
  return decode_pair(w, KIND == kAsym ? 0xC300C300u : 0xC308C308u);
}

__device__ __forceinline__ uint32_t prmt(uint32_t a, uint32_t b, uint32_t sel) {
  uint32_t d;
  asm("prmt.b32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(sel));
  return d;
}

// Byte q_i of the 16-byte table t[0..3] for the codes q_0..q_3 in nibbles 0..3 of `codes` (higher bits ignored):
// entries 0-7 and 8-15 are looked up by their low three bits (a selector nibble's bit 3 would ask prmt for a sign
// fill), then each result byte i is taken from the second lookup where q_i >= 8 (selector i + 4).
__device__ __forceinline__ uint32_t lookup4(const uint32_t* t, uint32_t codes) {
  const uint32_t sel = codes & 0x7777u;
  const uint32_t pick = ((codes & 0x8888u) >> 1) | 0x3210u;
  return prmt(prmt(t[0], t[1], sel), prmt(t[2], t[3], sel), pick);
}

// A word's eight codes n0..n7 as the bf16 level pairs (n0, n4), (n1, n5), (n2, n6), (n3, n7) (low half first).
__device__ __forceinline__ void decode_levels(uint32_t w, const uint32_t (&lv)[8], uint32_t (&pairs)[4]) {
  const uint32_t lo_a = lookup4(lv, w), hi_a = lookup4(lv + 4, w);              // low / high bytes of n0..n3
  const uint32_t lo_b = lookup4(lv, w >> 16), hi_b = lookup4(lv + 4, w >> 16);  // of n4..n7
  const uint32_t lo01 = prmt(lo_a, lo_b, 0x5140u), hi01 = prmt(hi_a, hi_b, 0x5140u);  // (n0, n4, n1, n5)
  const uint32_t lo23 = prmt(lo_a, lo_b, 0x7362u), hi23 = prmt(hi_a, hi_b, 0x7362u);  // (n2, n6, n3, n7)
  pairs[0] = prmt(lo01, hi01, 0x5140u);
  pairs[1] = prmt(lo01, hi01, 0x7362u);
  pairs[2] = prmt(lo23, hi23, 0x5140u);
  pairs[3] = prmt(lo23, hi23, 0x7362u);
}

__device__ __forceinline__ uint32_t lop3_and_or(uint32_t a, uint32_t b, uint32_t c) {
  uint32_t d;
  asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(d) : "r"(a), "r"(b), "r"(c));  // (a & b) | c
  return d;
}

__device__ __forceinline__ uint32_t lop3_and_xor(uint32_t a, uint32_t b, uint32_t c) {
  uint32_t d;
  asm("lop3.b32 %0, %1, %2, %3, 0x6A;" : "=r"(d) : "r"(a), "r"(b), "r"(c));  // (a & b) ^ c
  return d;
}

// Bytes 0 and 2 (HIGH: 1 and 3) of a word of 8-bit codes as one bf16x2 register.
template <int KIND, bool HIGH>
__device__ __forceinline__ uint32_t decode8(uint32_t w) {
  if constexpr (KIND == kInt8) {
    // u = q + 128 = 16 h + l (the byte with its sign bit flipped: the high nibble's bit 3)
    const uint32_t b = HIGH ? w >> 8 : w;
    const uint32_t lo = lop3_and_or(b, 0x000F000Fu, 0x43004300u);          // 128 + l
    const uint32_t hi = lop3_and_xor(b >> 4, 0x000F000Fu, 0x43084308u);    // 128 + h
    return bf16x2_fma(lo, 0x3F803F80u, bf16x2_fma(hi, 0x41804180u, 0xC510C510u));  // (128 + l) + (16 h - 256)
  } else {  // fp8: sign to bit 15, exponent and mantissa to bits SH..SH+6, times 2^112 (0x7780), plus -0
    constexpr int SH = KIND == kE4m3 ? 4 : 5;
    constexpr uint32_t kMag = 0x7Fu << SH | 0x7Fu << (SH + 16);
    const uint32_t v = HIGH ? lop3_and_or(w >> (8 - SH), kMag, w & 0x80008000u)
                            : lop3_and_or(w << SH, kMag, (w << 8) & 0x80008000u);
    return bf16x2_fma(v, 0x77807780u, 0x80008000u);
  }
}

__device__ __forceinline__ uint32_t bf16x2_of(float v) {
  const uint32_t h = __bfloat16_as_ushort(__float2bfloat16_rn(v));
  return h | (h << 16);
}

// f(value, index in the [m, n] output) for each accumulator element that lies inside the output:
// acc[T][j] = {(row g, col 2t), (g, 2t + 1), (g + 8, 2t), (g + 8, 2t + 1)} of tile T, column tile j (rows are
// output features, columns activation rows).
template <int TILES, int NT, typename F>
__device__ __forceinline__ void each_output(const float (&acc)[TILES][NT][4], const Params& p, int row0, int g, int t,
                                            F f) {
#pragma unroll
  for (int T = 0; T < TILES; ++T)
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int r = row0 + T * 16 + g + 8 * (e >> 1), col = j * 8 + 2 * t + (e & 1);
        if (r < p.n && col < p.m) f(acc[T][j][e], static_cast<int64_t>(col) * p.n + r);
      }
}

// Four tiles a warp: at least one program an SM (ptxas would otherwise squeeze some of them into 128 registers and
// spill); the others are left to ptxas (0: no minimum).
template <int TILES, int NT, int KIND, bool PRESCALE>
__global__ void __launch_bounds__(256, TILES == 4 ? 1 : 0) lowbit_mma_kernel(const Params p) {
  constexpr bool kSums = KIND == kAsym && !PRESCALE;  // the chunk's activation sums (post-scaled zero points)
  constexpr bool kEight = Codes<KIND>::kEight;
  constexpr int kRow = Codes<KIND>::kRow;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  constexpr int kStage = NT * 8 * kRow;  // bf16 elements per staged chunk
  __nv_bfloat16* sx = reinterpret_cast<__nv_bfloat16*>(smem_raw);                                  // [window][NT * 8][kRow]
  float* ssum = reinterpret_cast<float*>(smem_raw + p.window * kStage * sizeof(__nv_bfloat16));  // [window][NT * 8]

  const int tid = threadIdx.x, threads = blockDim.x;
  const int warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
  const int warps = threads >> 5;
  const int row0 = blockIdx.x * warps * TILES * 16 + warp * TILES * 16;
  const int n_chunks = static_cast<int>(p.kw / 16);
  const int c_begin = blockIdx.y * p.chunks_per_split;
  const int c_end = min(n_chunks, c_begin + p.chunks_per_split);
  const bool half = p.half_scales != 0;
  uint32_t lv[8];
#pragma unroll
  for (int i = 0; i < 8; ++i) lv[i] = p.levels[i];

  // Each lane's two rows per tile, clamped inside the weight (rows past N are computed, never written).
  const int32_t* wrow[TILES][2];
  int srow[TILES][2];
#pragma unroll
  for (int T = 0; T < TILES; ++T) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int r = min(row0 + T * 16 + g + 8 * h, p.n - 1);
      srow[T][h] = r;
      wrow[T][h] = p.words + r * p.kw + t * 4;
    }
  }

  float acc[TILES][NT][4];
  zero(acc);

  // Chunk c's weight words of this lane's rows.
  auto load_chunk = [&](uint4 (&w)[TILES][2], int c) {
#pragma unroll
    for (int T = 0; T < TILES; ++T)
#pragma unroll
      for (int h = 0; h < 2; ++h) w[T][h] = load_words(wrow[T][h] + c * 16);
  };

  // acc += chunk c (weights `wc`, activations in window slot `slot`).
  auto multiply = [&](const uint4 (&wc)[TILES][2], int c, int slot) {
    // Post-scaled: the chunk's group. PRESCALE: the group of this lane's block (4 c + t).
    // (The padding past a row's last group - zero codes times zero activations - takes that group's scale.)
    const int gi = min(PRESCALE ? (4 * c + t) / p.chunks_per_group : (p.chunks_per_group > 0 ? c / p.chunks_per_group : 0),
                       p.n_groups - 1);
    float sc[TILES][2], zp[TILES][2];
    uint32_t s2[TILES][2], z2[TILES][2];  // PRESCALE: scale and zero point (or -0) as bf16x2
#pragma unroll
    for (int T = 0; T < TILES; ++T)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        sc[T][h] = load_scale(p.scales, half, srow[T][h] * p.ld_scales + gi);
        zp[T][h] = KIND == kAsym ? load_scale(p.zeros, half, srow[T][h] * p.ld_scales + gi) : 0.f;
        if constexpr (PRESCALE) {
          s2[T][h] = bf16x2_of(sc[T][h]);
          z2[T][h] = KIND == kAsym ? bf16x2_of(zp[T][h]) : 0x80008000u;  // -0: the fma rounds the product alone
        }
      }

    float part[TILES][NT][4];  // post-scaled: this chunk's dots
    zero(part);

    const __nv_bfloat16* sxc = sx + slot * kStage;
    uint32_t lpairs[TILES][2][4];  // codebook formats: the level pairs of word s / 2 (decoded at even s)
#pragma unroll
    for (int s = 0; s < Codes<KIND>::kSteps; ++s) {
      uint32_t b[NT][2];
#pragma unroll
      for (int j = 0; j < NT; ++j) {
        const uint2 v = *reinterpret_cast<const uint2*>(sxc + (j * 8 + g) * kRow + s * 16 + t * 4);
        b[j][0] = v.x;
        b[j][1] = v.y;
      }
      const int l = s >> 1, o = 2 * (s & 1);  // nibble p = 2 (s % 2): shift 4p
#pragma unroll
      for (int T = 0; T < TILES; ++T) {
        uint32_t a[4];
        if constexpr (kEight) {  // word s: bytes (0, 2) and (1, 3)
          const uint32_t w0 = word_at(wc[T][0], s), w1 = word_at(wc[T][1], s);
          a[0] = decode8<KIND, false>(w0), a[1] = decode8<KIND, false>(w1);
          a[2] = decode8<KIND, true>(w0), a[3] = decode8<KIND, true>(w1);
        } else if constexpr (KIND == kLevels) {
          if (o == 0) {
            decode_levels(word_at(wc[T][0], l), lv, lpairs[T][0]);
            decode_levels(word_at(wc[T][1], l), lv, lpairs[T][1]);
          }
          a[0] = lpairs[T][0][o], a[1] = lpairs[T][1][o], a[2] = lpairs[T][0][o + 1], a[3] = lpairs[T][1][o + 1];
        } else {
          const uint32_t w0 = word_at(wc[T][0], l) >> (4 * o), w1 = word_at(wc[T][1], l) >> (4 * o);
          a[0] = decode<KIND>(w0), a[1] = decode<KIND>(w1), a[2] = decode<KIND>(w0 >> 4), a[3] = decode<KIND>(w1 >> 4);
        }
        if constexpr (PRESCALE) {  // a[0], a[2]: row g; a[1], a[3]: row g + 8
#pragma unroll
          for (int i = 0; i < 4; ++i) a[i] = bf16x2_fma(a[i], s2[T][i & 1], z2[T][i & 1]);
        }
#pragma unroll
        for (int j = 0; j < NT; ++j) {
          if constexpr (PRESCALE) mma_bf16(acc[T][j], a, b[j][0], b[j][1]);
          else mma_bf16(part[T][j], a, b[j][0], b[j][1]);
        }
      }
    }
    if constexpr (!PRESCALE) {  // sum (q s + z) x = s sum q x + z sum x (asym); sym: s sum (q - 8) x
#pragma unroll
      for (int j = 0; j < NT; ++j) {
        float xs0 = 0.f, xs1 = 0.f;
        if constexpr (kSums) {
          xs0 = ssum[slot * NT * 8 + j * 8 + 2 * t];
          xs1 = ssum[slot * NT * 8 + j * 8 + 2 * t + 1];
        }
#pragma unroll
        for (int T = 0; T < TILES; ++T) {
          acc[T][j][0] += part[T][j][0] * sc[T][0];
          acc[T][j][1] += part[T][j][1] * sc[T][0];
          acc[T][j][2] += part[T][j][2] * sc[T][1];
          acc[T][j][3] += part[T][j][3] * sc[T][1];
          if constexpr (kSums) {
            acc[T][j][0] += zp[T][0] * xs0;
            acc[T][j][1] += zp[T][0] * xs1;
            acc[T][j][2] += zp[T][1] * xs0;
            acc[T][j][3] += zp[T][1] * xs1;
          }
        }
      }
    }
  };

  // The program's chunks, a window at a time: a window's activations are staged once (a barrier after, and one
  // before the next window overwrites them), so the warps run through its chunks without waiting for each other.
  // Chunk c + 1's weights are in flight while chunk c multiplies.
  uint4 wcur[TILES][2], wnext[TILES][2];
  if (c_begin < c_end) load_chunk(wcur, c_begin);
  // Programmatic dependent launch: the first chunk's weights (which no kernel writes) are on their way while the
  // kernel before this one drains; everything an earlier kernel touches (activations, output, split partials and
  // counters) comes after the wait, and the next kernel may be scheduled from then on. Without PDL both are no-ops.
#if __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
  for (int w0 = c_begin; w0 < c_end; w0 += p.window) {
    const int w1 = min(c_end, w0 + p.window);
    if (w0 != c_begin) __syncthreads();  // every warp is done with the last window
    stage_window<NT, KIND, kSums>(p, sx, ssum, w0, w1, tid, threads);
    __syncthreads();
    for (int c = w0; c < w1; ++c) {
      if (c + 1 < c_end) load_chunk(wnext, c + 1);
      multiply(wcur, c, c - w0);
#pragma unroll
      for (int T = 0; T < TILES; ++T)
#pragma unroll
        for (int h = 0; h < 2; ++h) wcur[T][h] = wnext[T][h];
    }
  }

  if (p.split == 1) {
    each_output(acc, p, row0, g, t, [&](float v, int64_t at) { p.out[at] = __float2bfloat16(v); });
    return;
  }
  const int64_t plane = static_cast<int64_t>(p.m) * p.n;
  each_output(acc, p, row0, g, t, [&](float v, int64_t at) { p.partials[blockIdx.y * plane + at] = v; });
  __threadfence();
  __syncthreads();
  __shared__ int last;
  if (tid == 0) {
    const int arrived = atomicAdd(p.counters + blockIdx.x, 1);
    last = arrived == p.split - 1;
    if (last) p.counters[blockIdx.x] = 0;  // every other split has arrived: ready for the next call
  }
  __syncthreads();
  if (!last) return;
  __threadfence();
  each_output(acc, p, row0, g, t, [&](float, int64_t at) {
    float sum = 0.f;
    for (int sp = 0; sp < p.split; ++sp) sum += __ldcg(p.partials + sp * plane + at);
    p.out[at] = __float2bfloat16(sum);
  });
}

// Shared memory a window of activations takes: per chunk, NT * 8 staged rows and their sums.
template <int NT, int KIND>
constexpr size_t window_bytes(int window) {
  return static_cast<size_t>(window) * NT * 8 * (Codes<KIND>::kRow * sizeof(__nv_bfloat16) + sizeof(float));
}

// Chunks a window holds: the program's whole K range where it fits in 48 KB (the default limit of a program's
// shared memory; session 23 measured 24 KB no better), else as many as fit.
constexpr size_t kWindowBytes = 48 * 1024;
template <int NT, int KIND>
int window_chunks(int chunks_per_split) {
  return std::max(1, std::min(static_cast<int>(kWindowBytes / window_bytes<NT, KIND>(1)), chunks_per_split));
}

template <int TILES, int NT, int KIND, bool PRESCALE>
void launch_one(Params p, dim3 grid, int threads, cudaStream_t stream) {
  p.window = window_chunks<NT, KIND>(p.chunks_per_split);
  const size_t smem = window_bytes<NT, KIND>(p.window);
  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = dim3(threads);
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  config.attrs = attr;
  config.numAttrs = p.pdl ? 1 : 0;
  cudaLaunchKernelEx(&config, lowbit_mma_kernel<TILES, NT, KIND, PRESCALE>, p);
}

template <int TILES, int NT, int KIND>
void launch_kind(const Params& p, bool prescale, dim3 grid, int threads, cudaStream_t stream) {
  if constexpr (Codes<KIND>::kEight) {  // groups of whole chunks or one per row only (checked by the caller)
    launch_one<TILES, NT, KIND, false>(p, grid, threads, stream);
  } else {
    if (prescale) launch_one<TILES, NT, KIND, true>(p, grid, threads, stream);
    else launch_one<TILES, NT, KIND, false>(p, grid, threads, stream);
  }
}

template <int TILES, int NT>
void launch_nt(const Params& p, int kind, bool prescale, dim3 grid, int threads, cudaStream_t stream) {
  switch (kind) {
    case kSym: launch_kind<TILES, NT, kSym>(p, prescale, grid, threads, stream); break;
    case kAsym: launch_kind<TILES, NT, kAsym>(p, prescale, grid, threads, stream); break;
    case kLevels: launch_kind<TILES, NT, kLevels>(p, prescale, grid, threads, stream); break;
    case kInt8: launch_kind<TILES, NT, kInt8>(p, prescale, grid, threads, stream); break;
    case kE4m3: launch_kind<TILES, NT, kE4m3>(p, prescale, grid, threads, stream); break;
    default: launch_kind<TILES, NT, kE5m2>(p, prescale, grid, threads, stream); break;
  }
}

// Tiles x column tiles <= 8 beyond two column tiles: the two fp32 accumulators stay in registers.
template <int TILES>
bool launch_tiles(const Params& p, int nt, int kind, bool prescale, dim3 grid, int threads, cudaStream_t stream) {
  switch (nt) {
    case 1: launch_nt<TILES, 1>(p, kind, prescale, grid, threads, stream); return true;
    case 2: launch_nt<TILES, 2>(p, kind, prescale, grid, threads, stream); return true;
    case 4:
      if constexpr (TILES <= 2) { launch_nt<TILES, 4>(p, kind, prescale, grid, threads, stream); return true; }
      return false;
    case 8:
      if constexpr (TILES == 1) { launch_nt<TILES, 8>(p, kind, prescale, grid, threads, stream); return true; }
      return false;
  }
  return false;
}

}  // namespace
}  // namespace xpullm_lowbit

// Host entry: all checks are done by the Python caller (kernels/cuda/__init__.py), which passes raw pointers.
// kind: 0 sym_int4, 1 asym_int4 (zeros), 2 codebook (levels: 8 words, see Params), 3 sym_int8, 4 fp8_e4m3 (scales
// times 2^8, as the layout stores them), 5 fp8_e5m2. group_blocks (4-bit only): 1 or 2 for groups of 32 / 64 codes (scaled before
// the mma), else 0 and chunks_per_group as in Params (8-bit chunks are 64 codes, 4-bit ones 128).
// kw: words per row, a multiple of 16 (whole chunks). pdl: launch with programmatic dependent launch (sm_90+: the
// kernel may start while the one before it drains; it waits before touching anything an earlier kernel wrote).
// Returns 0, or a CUDA error code from the launch (cudaErrorInvalidValue for a tile it is not built for).
extern "C" int xpullm_lowbit_mma_launch(const void* x, int64_t ldx, const void* words, int64_t kw, const void* scales,
                                    const void* zeros, int64_t ld_scales, int n_groups, int half_scales, int kind,
                                    const uint32_t* levels, int group_blocks, int chunks_per_group, void* out,
                                    void* partials, void* counters, int m, int n, int tiles, int warps, int split,
                                    int pdl, void* stream) {
  using namespace xpullm_lowbit;
  const int nt = m <= 8 ? 1 : (m <= 16 ? 2 : (m <= 32 ? 4 : 8));
  if (warps < 4 || warps > 8 || m < 1 || m > 64 || kind < kSym || kind > kE5m2 || group_blocks < 0 ||
      group_blocks > 2 || (group_blocks > 0 && kind >= kInt8) || n_groups < 1 ||
      (kind == kLevels && levels == nullptr))
    return static_cast<int>(cudaErrorInvalidValue);
  const int n_chunks = static_cast<int>(kw / 16);
  const int cps = (n_chunks + split - 1) / split;
  const int used = (n_chunks + cps - 1) / cps;  // splits that get at least one chunk
  const bool prescale = group_blocks > 0;
  Params p{};
  p.x = static_cast<const __nv_bfloat16*>(x);
  p.ldx = ldx;
  p.words = static_cast<const int32_t*>(words);
  p.kw = kw;
  p.scales = scales;
  p.zeros = zeros;
  p.ld_scales = ld_scales;
  p.n_groups = n_groups;
  p.chunks_per_group = prescale ? group_blocks : chunks_per_group;
  p.half_scales = half_scales;
  for (int i = 0; i < 8; ++i) p.levels[i] = kind == kLevels ? levels[i] : 0u;
  p.out = static_cast<__nv_bfloat16*>(out);
  p.partials = static_cast<float*>(partials);
  p.counters = static_cast<int*>(counters);
  p.m = m, p.n = n, p.chunks_per_split = cps, p.split = used, p.pdl = pdl;
  dim3 grid((n + warps * tiles * 16 - 1) / (warps * tiles * 16), used);
  auto s = static_cast<cudaStream_t>(stream);
  bool ok = false;
  switch (tiles) {
    case 1: ok = launch_tiles<1>(p, nt, kind, prescale, grid, warps * 32, s); break;
    case 2: ok = launch_tiles<2>(p, nt, kind, prescale, grid, warps * 32, s); break;
    case 4: ok = launch_tiles<4>(p, nt, kind, prescale, grid, warps * 32, s); break;
  }
  if (!ok) return static_cast<int>(cudaErrorInvalidValue);
  return static_cast<int>(cudaGetLastError());
}
