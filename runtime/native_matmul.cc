#include "runtime/native_matmul.h"

#include <cpuid.h>
#include <immintrin.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <bit>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <type_traits>

#include "core/block_quant.h"
#include "core/dtype.h"
#include "core/quant.h"
#include "core/tensor.h"
#include "core/vector_math.h"

namespace compress {
namespace {

using RowMatrix = PackedWeight::RowMatrix;

constexpr int64_t kLanes = 16;  // output rows per group (one 512-bit vector of f32 / int32)
constexpr int64_t kBlock = 32;  // int8: input positions per scale
constexpr int kRowTile = 4;     // activation rows per tile
constexpr int kInt8Groups = 2;  // row groups per int8 tile
constexpr int kBf16Groups = 4;  // row groups per bf16 (and f16 / f32) tile
constexpr int64_t kRowChunk = 128;  // activation rows per task

// VDPBF16PS reads subnormal bf16 inputs as zero and flushes subnormal results to zero.
inline float Daz(uint16_t b) { return (b & 0x7F80) == 0 ? 0.f : BF16ToF32(b); }
inline float Ftz(float v) { return std::fpclassify(v) == FP_SUBNORMAL ? std::copysign(0.f, v) : v; }

// Activations prepared for one product.
struct Int8Acts {
  std::vector<int8_t> q;     // [m, in]
  std::vector<float> d;      // [m, in / 32]
  std::vector<int32_t> c;    // [m, in / 32]: -128 x the block's code sum (weights are stored + 128)
  // Per half block (16 inputs), for grouped weights: -128 x the half's code sum, and d x that sum.
  std::vector<int32_t> c16;  // [m, in / 16]
  std::vector<float> ds16;   // [m, in / 16]
};

// Activations rounded to int8 per block of 32 with step max|x| / 127, or, given `steps`, with
// the steps of an activation quantization already applied to x (x = code x step: dividing
// gives the codes back exactly).
Int8Acts QuantizeActs(const RowMatrix& x, bool halves, const PackedWeight::ActSteps* steps = nullptr) {
  const int64_t m = x.rows(), in = x.cols(), nb = in / kBlock;
  Int8Acts a{std::vector<int8_t>(m * in), std::vector<float>(m * nb), std::vector<int32_t>(m * nb), {}, {}};
  if (halves) {
    a.c16.assign(m * nb * 2, 0);
    a.ds16.assign(m * nb * 2, 0.f);
  }
#pragma omp parallel for schedule(static) if (m * in > 65536)
  for (int64_t r = 0; r < m; ++r) {
    for (int64_t b = 0; b < nb; ++b) {
      const float* v = x.data() + r * in + b * kBlock;
      float amax = 0;
      int bad = 0;
#pragma omp simd reduction(max : amax) reduction(| : bad)
      for (int64_t i = 0; i < kBlock; ++i) {
        const float m = std::fabs(v[i]);
        amax = std::max(amax, m);
        bad |= !IsFiniteValue(m);
      }
      int8_t* q = a.q.data() + r * in + b * kBlock;
      int32_t sum = 0;
      float d = NAN;  // a NaN or infinite activation makes its outputs NaN
      const float step = steps ? steps->steps[r * (in / steps->group) + b * kBlock / steps->group] : 0.f;
      if (!bad && steps && !(step > 0 && step < INFINITY)) {
        // A zero step holds only zeros (x = code x step); a step without quotients (NaN,
        // negative, infinite) makes the outputs NaN.
        d = step == 0 ? 0.f : NAN;
        std::fill(q, q + kBlock, int8_t{0});
      } else if (!bad && steps) {
        d = step;
#pragma omp simd reduction(+ : sum)
        for (int64_t i = 0; i < kBlock; ++i) {
          float t = (v[i] / d + 12582912.f) - 12582912.f;  // round half to even
          t = t > 127.f ? 127.f : t;
          t = t < -128.f ? -128.f : t;
          const int32_t c = static_cast<int32_t>(t);
          q[i] = static_cast<int8_t>(c);
          sum += c;
        }
      } else if (!bad) {
        d = amax / 127.f;
        const float id = d > 0 ? 1.f / d : 0.f;
        auto codes = [&](auto scaled) {
          int32_t total = 0;
#pragma omp simd reduction(+ : total)
          for (int64_t i = 0; i < kBlock; ++i) {
            float t = (scaled(v[i]) + 12582912.f) - 12582912.f;  // round half to even
            t = t > 127.f ? 127.f : t;
            t = t < -127.f ? -127.f : t;
            const int32_t c = static_cast<int32_t>(t);
            q[i] = static_cast<int8_t>(c);
            total += c;
          }
          return total;
        };
        // A block whose step is below 2^-128 has no finite reciprocal (x * inf would be inf or
        // NaN, and NaN has no int conversion): its codes come from x / d instead.
        sum =
            std::isinf(id) ? codes([d](float x) { return x / d; }) : codes([id](float x) { return x * id; });
      } else {
        std::fill(q, q + kBlock, int8_t{0});
      }
      a.d[r * nb + b] = d;
      a.c[r * nb + b] = -128 * sum;
      if (halves) {
        for (int half = 0; half < 2; ++half) {
          int32_t s = 0;
          for (int64_t i = 0; i < 16; ++i) s += q[half * 16 + i];
          a.c16[(r * nb + b) * 2 + half] = -128 * s;
          a.ds16[(r * nb + b) * 2 + half] = d * static_cast<float>(s);
        }
      }
    }
  }
  return a;
}

std::vector<uint16_t> RoundActsBf16(const RowMatrix& x, int64_t steps) {
  const int64_t m = x.rows(), in = x.cols(), ld = 2 * steps;
  std::vector<uint16_t> b(m * ld, 0);
  if (ld == in) {
    (void)EncodeFromF32(DType::kBF16, x.data(), m * in, reinterpret_cast<uint8_t*>(b.data()));
  } else {
    for (int64_t r = 0; r < m; ++r)
      (void)EncodeFromF32(DType::kBF16, x.data() + r * in, in, reinterpret_cast<uint8_t*>(b.data() + r * ld));
  }
  return b;
}

// Stores lanes [0, n) of one group's 16 outputs.
inline void StoreLanes(float* y, const float* v, int64_t n) { std::memcpy(y, v, sizeof(float) * n); }

// ---- portable loops: the same sums in the same order as the vector kernels ----

void Int8TilePortable(const uint8_t* w, const float* s, int64_t nb, int64_t g, const Int8Acts& a, int64_t in,
                      int64_t r, float* y, int64_t ldy, int64_t out) {
  float f[kLanes] = {};
  const int8_t* q = a.q.data() + r * in;
  for (int64_t b = 0; b < nb; ++b) {
    int32_t acc[kLanes];
    for (int64_t l = 0; l < kLanes; ++l) acc[l] = a.c[r * nb + b];
    const uint8_t* wb = w + (g * nb + b) * 8 * 64;
    for (int64_t quad = 0; quad < 8; ++quad)
      for (int64_t l = 0; l < kLanes; ++l)
        for (int64_t e = 0; e < 4; ++e) acc[l] += wb[quad * 64 + l * 4 + e] * q[b * kBlock + quad * 4 + e];
    const float dx = a.d[r * nb + b];
    for (int64_t l = 0; l < kLanes; ++l) f[l] = std::fma(static_cast<float>(acc[l]), s[(g * nb + b) * kLanes + l] * dx, f[l]);
  }
  StoreLanes(y + r * ldy + g * kLanes, f, std::min(kLanes, out - g * kLanes));
}

void GroupedTilePortable(const uint8_t* w, const float* s, const float* o, int64_t nb, int64_t g, const Int8Acts& a,
                         int64_t in, int64_t r, float* y, int64_t ldy, int64_t out) {
  float f[kLanes] = {};
  const int8_t* q = a.q.data() + r * in;
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* wb = w + (g * nb + b) * 8 * 64;
    const float dx = a.d[r * nb + b];
    for (int half = 0; half < 2; ++half) {
      int32_t acc[kLanes];
      for (int64_t l = 0; l < kLanes; ++l) acc[l] = a.c16[(r * nb + b) * 2 + half];
      for (int64_t quad = 4 * half; quad < 4 * half + 4; ++quad)
        for (int64_t l = 0; l < kLanes; ++l)
          for (int64_t e = 0; e < 4; ++e) acc[l] += wb[quad * 64 + l * 4 + e] * q[b * kBlock + quad * 4 + e];
      const int64_t si = ((g * nb + b) * 2 + half) * kLanes;
      for (int64_t l = 0; l < kLanes; ++l) f[l] = std::fma(static_cast<float>(acc[l]), s[si + l] * dx, f[l]);
      if (o) {
        const float ds = a.ds16[(r * nb + b) * 2 + half];
        for (int64_t l = 0; l < kLanes; ++l) f[l] = std::fma(o[si + l], ds, f[l]);
      }
    }
  }
  StoreLanes(y + r * ldy + g * kLanes, f, std::min(kLanes, out - g * kLanes));
}

void Bf16TilePortable(const uint8_t* w, int64_t steps, int64_t g, const uint16_t* xb, int64_t r, float* y,
                      int64_t ldy, int64_t out) {
  float f[kLanes] = {};
  const uint16_t* a = xb + r * 2 * steps;
  const uint16_t* wg = reinterpret_cast<const uint16_t*>(w) + g * steps * 2 * kLanes;
  for (int64_t p = 0; p < steps; ++p) {
    const float a0 = Daz(a[2 * p]), a1 = Daz(a[2 * p + 1]);
    for (int64_t l = 0; l < kLanes; ++l) {
      const uint16_t* wl = wg + (p * kLanes + l) * 2;
      f[l] = Ftz(f[l] + a1 * Daz(wl[1]));  // exact products: one rounding per addition
      f[l] = Ftz(f[l] + a0 * Daz(wl[0]));
    }
  }
  StoreLanes(y + r * ldy + g * kLanes, f, std::min(kLanes, out - g * kLanes));
}

// f16 / f32 weights: each output lane sums x_k w_k with one fused multiply-add per input, in
// input order (the f16 -> f32 widening is exact).
template <typename E>
void WideTilePortable(const uint8_t* w, int64_t steps, int64_t g, const float* x, int64_t r, float* y, int64_t ldy,
                      int64_t out) {
  float f[kLanes] = {};
  const float* a = x + r * steps;
  const E* wg = reinterpret_cast<const E*>(w) + g * steps * kLanes;
  for (int64_t k = 0; k < steps; ++k) {
    for (int64_t l = 0; l < kLanes; ++l) {
      if constexpr (std::is_same_v<E, float>) {
        f[l] = std::fma(a[k], wg[k * kLanes + l], f[l]);
      } else {
        f[l] = std::fma(a[k], F16ToF32(wg[k * kLanes + l]), f[l]);
      }
    }
  }
  StoreLanes(y + r * ldy + g * kLanes, f, std::min(kLanes, out - g * kLanes));
}

// 16-level codes: each output lane sums x_k (levels[c_k] x s) with one fused multiply-add per
// input, in input order (the weight value rounded to f32 first, as the decoder does).
void LevelsTilePortable(const uint8_t* w, const float* s, const float* levels, int64_t steps, int64_t group,
                        int64_t g, const float* x, int64_t r, float* y, int64_t ldy, int64_t out) {
  float f[kLanes] = {};
  const float* a = x + r * steps;
  const uint8_t* wg = w + g * (steps / 2) * kLanes;
  const float* sg = s + g * (steps / group) * kLanes;
  for (int64_t k = 0; k < steps; ++k) {
    for (int64_t l = 0; l < kLanes; ++l) {
      const uint8_t b = wg[(k / 2) * kLanes + l];
      const float v = levels[k % 2 ? b >> 4 : b & 15] * sg[(k / group) * kLanes + l];
      f[l] = std::fma(a[k], v, f[l]);
    }
  }
  StoreLanes(y + r * ldy + g * kLanes, f, std::min(kLanes, out - g * kLanes));
}

// ---- AVX-512 kernels ----

#define COMPRESS_AVX512_NATIVE __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx512bf16")))

// acc[r][j] += the integer dot products of quads [q0, q1) of block b (4 inputs each) of
// activation row r0 + r and the 16 weight rows of group g0 + j.
template <int RM, int RN>
COMPRESS_AVX512_NATIVE inline __attribute__((always_inline)) void DotQuads(__m512i (&acc)[RM][RN], const uint8_t* w,
                                                                           int64_t nb, int64_t g0, int64_t b,
                                                                           const Int8Acts& a, int64_t in, int64_t r0,
                                                                           int q0, int q1) {
  for (int quad = q0; quad < q1; ++quad) {
    __m512i wv[RN];
    for (int j = 0; j < RN; ++j) wv[j] = _mm512_loadu_si512(w + ((g0 + j) * nb + b) * 512 + quad * 64);
    for (int r = 0; r < RM; ++r) {
      int32_t four;
      std::memcpy(&four, a.q.data() + (r0 + r) * in + b * kBlock + quad * 4, 4);
      const __m512i av = _mm512_set1_epi32(four);
      for (int j = 0; j < RN; ++j) acc[r][j] = _mm512_dpbusd_epi32(acc[r][j], wv[j], av);
    }
  }
}

// Stores the tile's outputs: row r0 + r, the valid lanes of group g0 + j.
template <int RM, int RN>
COMPRESS_AVX512_NATIVE inline __attribute__((always_inline)) void StoreTile(const __m512 (&f)[RM][RN], float* y,
                                                                            int64_t ldy, int64_t r0, int64_t g0,
                                                                            int64_t out) {
  for (int r = 0; r < RM; ++r)
    for (int j = 0; j < RN; ++j) {
      const int64_t n = std::min(kLanes, out - (g0 + j) * kLanes);
      _mm512_mask_storeu_ps(y + (r0 + r) * ldy + (g0 + j) * kLanes, static_cast<__mmask16>((1u << n) - 1), f[r][j]);
    }
}

template <int RM, int RN>
COMPRESS_AVX512_NATIVE void Int8Tile(const uint8_t* w, const float* s, int64_t nb, int64_t g0, const Int8Acts& a,
                                     int64_t in, int64_t r0, float* y, int64_t ldy, int64_t out) {
  __m512 f[RM][RN];
  for (int r = 0; r < RM; ++r)
    for (int j = 0; j < RN; ++j) f[r][j] = _mm512_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    __m512i acc[RM][RN];
    for (int r = 0; r < RM; ++r) {
      const __m512i c = _mm512_set1_epi32(a.c[(r0 + r) * nb + b]);
      for (int j = 0; j < RN; ++j) acc[r][j] = c;
    }
    DotQuads<RM, RN>(acc, w, nb, g0, b, a, in, r0, 0, 8);
    for (int j = 0; j < RN; ++j) {
      const __m512 sv = _mm512_loadu_ps(s + ((g0 + j) * nb + b) * kLanes);
      for (int r = 0; r < RM; ++r) {
        const __m512 scale = _mm512_mul_ps(sv, _mm512_set1_ps(a.d[(r0 + r) * nb + b]));
        f[r][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[r][j]), scale, f[r][j]);
      }
    }
  }
  StoreTile<RM, RN>(f, y, ldy, r0, g0, out);
}

template <int RM, int RN>
COMPRESS_AVX512_NATIVE void GroupedTile(const uint8_t* w, const float* s, const float* o, int64_t nb, int64_t g0,
                                        const Int8Acts& a, int64_t in, int64_t r0, float* y, int64_t ldy, int64_t out) {
  __m512 f[RM][RN];
  for (int r = 0; r < RM; ++r)
    for (int j = 0; j < RN; ++j) f[r][j] = _mm512_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    for (int half = 0; half < 2; ++half) {
      __m512i acc[RM][RN];
      for (int r = 0; r < RM; ++r) {
        const __m512i c = _mm512_set1_epi32(a.c16[((r0 + r) * nb + b) * 2 + half]);
        for (int j = 0; j < RN; ++j) acc[r][j] = c;
      }
      DotQuads<RM, RN>(acc, w, nb, g0, b, a, in, r0, 4 * half, 4 * half + 4);
      for (int j = 0; j < RN; ++j) {
        const int64_t si = (((g0 + j) * nb + b) * 2 + half) * kLanes;
        const __m512 sv = _mm512_loadu_ps(s + si);
        for (int r = 0; r < RM; ++r) {
          const __m512 scale = _mm512_mul_ps(sv, _mm512_set1_ps(a.d[(r0 + r) * nb + b]));
          f[r][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[r][j]), scale, f[r][j]);
        }
        if (o) {
          const __m512 ov = _mm512_loadu_ps(o + si);
          for (int r = 0; r < RM; ++r)
            f[r][j] = _mm512_fmadd_ps(ov, _mm512_set1_ps(a.ds16[((r0 + r) * nb + b) * 2 + half]), f[r][j]);
        }
      }
    }
  }
  StoreTile<RM, RN>(f, y, ldy, r0, g0, out);
}

template <int RM, int RN>
COMPRESS_AVX512_NATIVE void Bf16Tile(const uint8_t* w, int64_t steps, int64_t g0, const uint16_t* xb, int64_t r0,
                                     float* y, int64_t ldy, int64_t out) {
  __m512 f[RM][RN];
  for (int r = 0; r < RM; ++r)
    for (int j = 0; j < RN; ++j) f[r][j] = _mm512_setzero_ps();
  for (int64_t p = 0; p < steps; ++p) {
    __m512i wv[RN];
    for (int j = 0; j < RN; ++j) wv[j] = _mm512_loadu_si512(w + ((g0 + j) * steps + p) * 64);
    for (int r = 0; r < RM; ++r) {
      int32_t two;
      std::memcpy(&two, xb + (r0 + r) * 2 * steps + 2 * p, 4);
      const __m512i av = _mm512_set1_epi32(two);
      for (int j = 0; j < RN; ++j) f[r][j] = _mm512_dpbf16_ps(f[r][j], (__m512bh)av, (__m512bh)wv[j]);
    }
  }
  StoreTile<RM, RN>(f, y, ldy, r0, g0, out);
}

template <typename E, int RM, int RN>
COMPRESS_AVX512_NATIVE void WideTile(const uint8_t* w, int64_t steps, int64_t g0, const float* x, int64_t r0, float* y,
                                     int64_t ldy, int64_t out) {
  __m512 f[RM][RN];
  for (int r = 0; r < RM; ++r)
    for (int j = 0; j < RN; ++j) f[r][j] = _mm512_setzero_ps();
  for (int64_t k = 0; k < steps; ++k) {
    __m512 wv[RN];
    for (int j = 0; j < RN; ++j) {
      const uint8_t* at = w + ((g0 + j) * steps + k) * kLanes * sizeof(E);
      if constexpr (std::is_same_v<E, float>) {
        wv[j] = _mm512_loadu_ps(at);
      } else {
        wv[j] = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(at)));
      }
    }
    for (int r = 0; r < RM; ++r) {
      const __m512 av = _mm512_set1_ps(x[(r0 + r) * steps + k]);
      for (int j = 0; j < RN; ++j) f[r][j] = _mm512_fmadd_ps(av, wv[j], f[r][j]);
    }
  }
  StoreTile<RM, RN>(f, y, ldy, r0, g0, out);
}

// 16-level codes: per pair of inputs, 16 bytes of codes widened to 32-bit lanes, each nibble
// looked up in the level table (VPERMPS reads the low 4 bits of an index), times the lane
// scales, then one FMA per activation row.
template <int RM, int RN>
COMPRESS_AVX512_NATIVE void LevelsTile(const uint8_t* w, const float* s, const float* levels, int64_t steps,
                                       int64_t group, int64_t g0, const float* x, int64_t r0, float* y, int64_t ldy,
                                       int64_t out) {
  __m512 f[RM][RN];
  for (int r = 0; r < RM; ++r)
    for (int j = 0; j < RN; ++j) f[r][j] = _mm512_setzero_ps();
  const __m512 table = _mm512_loadu_ps(levels);
  const int64_t pairs = steps / 2, ngroups = steps / group;
  for (int64_t gi = 0; gi < ngroups; ++gi) {
    __m512 sv[RN];
    for (int j = 0; j < RN; ++j) sv[j] = _mm512_loadu_ps(s + ((g0 + j) * ngroups + gi) * kLanes);
    for (int64_t p = gi * group / 2; p < (gi + 1) * group / 2; ++p) {
      __m512 w0[RN], w1[RN];
      for (int j = 0; j < RN; ++j) {
        const __m512i c = _mm512_cvtepu8_epi32(
            _mm_loadu_si128(reinterpret_cast<const __m128i*>(w + ((g0 + j) * pairs + p) * kLanes)));
        w0[j] = _mm512_mul_ps(_mm512_permutexvar_ps(c, table), sv[j]);
        w1[j] = _mm512_mul_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(c, 4), table), sv[j]);
      }
      for (int r = 0; r < RM; ++r) {
        const __m512 a0 = _mm512_set1_ps(x[(r0 + r) * steps + 2 * p]);
        for (int j = 0; j < RN; ++j) f[r][j] = _mm512_fmadd_ps(a0, w0[j], f[r][j]);
        const __m512 a1 = _mm512_set1_ps(x[(r0 + r) * steps + 2 * p + 1]);
        for (int j = 0; j < RN; ++j) f[r][j] = _mm512_fmadd_ps(a1, w1[j], f[r][j]);
      }
    }
  }
  StoreTile<RM, RN>(f, y, ldy, r0, g0, out);
}

// ---- AVX2 kernels (CPUs without AVX-512: 8 lanes per vector, a group of 16 outputs is two
// vectors; tiles of 4-6 activation rows x 1 group, CoverAvx2, in 16 registers) ----

#define COMPRESS_AVX2_NATIVE __attribute__((target("avx2,fma,f16c")))

// An empty asm that takes and gives back `v` in a register: GCC otherwise reassociates the
// unrolled integer sums into a tree of all the products, spilled to the stack.
COMPRESS_AVX2_NATIVE inline __attribute__((always_inline)) void KeepInRegister(__m256i& v) {
  asm("" : "+x"(v));
}

template <int RM>
COMPRESS_AVX2_NATIVE inline __attribute__((always_inline)) void StoreTileAvx2(const __m256 (&f)[RM][2],
                                                                              float* y, int64_t ldy,
                                                                              int64_t r0, int64_t g,
                                                                              int64_t out) {
  const int64_t n = std::min(kLanes, out - g * kLanes);
  for (int r = 0; r < RM; ++r) {
    float* yr = y + (r0 + r) * ldy + g * kLanes;
    if (n == kLanes) {
      _mm256_storeu_ps(yr, f[r][0]);
      _mm256_storeu_ps(yr + 8, f[r][1]);
    } else {
      alignas(32) float v[kLanes];
      _mm256_store_ps(v, f[r][0]);
      _mm256_store_ps(v + 8, f[r][1]);
      StoreLanes(yr, v, n);
    }
  }
}

template <int RM>
COMPRESS_AVX2_NATIVE inline void StoreTileAvx2(const float (&fm)[RM][kLanes], float* y, int64_t ldy,
                                               int64_t r0, int64_t g, int64_t out) {
  const int64_t n = std::min(kLanes, out - g * kLanes);
  for (int r = 0; r < RM; ++r) StoreLanes(y + (r0 + r) * ldy + g * kLanes, fm[r], n);
}

// The end of one part (block, or half block when Grouped) of an integer tile: each row's exact
// integer sums times scale x the activations' step, added to its f32 sums `fm` (as the portable
// loop: one FMA per part), then the offsets times the half's activation sum. `fm` stays in
// memory between parts: 4 rows x 2 halves of f32 sums in registers would leave too few for the
// integer sums, and GCC spills those instead (inside the quad loop).
template <int RM, bool Grouped>
COMPRESS_AVX2_NATIVE inline __attribute__((always_inline)) void AddPartAvx2(
    float (&fm)[RM][kLanes], const __m256i (&acc)[RM][2], const float* s, const float* o, int64_t nb, int64_t g,
    int64_t b, int part, const Int8Acts& a, int64_t r0) {
  const int64_t si = Grouped ? ((g * nb + b) * 2 + part) * kLanes : (g * nb + b) * kLanes;
  for (int h = 0; h < 2; ++h) {
    const __m256 sv = _mm256_loadu_ps(s + si + 8 * h);
    for (int r = 0; r < RM; ++r) {
      const __m256 scale = _mm256_mul_ps(sv, _mm256_set1_ps(a.d[(r0 + r) * nb + b]));
      _mm256_store_ps(fm[r] + 8 * h,
                      _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[r][h]), scale, _mm256_load_ps(fm[r] + 8 * h)));
    }
    if (Grouped && o) {
      const __m256 ov = _mm256_loadu_ps(o + si + 8 * h);
      for (int r = 0; r < RM; ++r)
        _mm256_store_ps(fm[r] + 8 * h, _mm256_fmadd_ps(ov, _mm256_set1_ps(a.ds16[((r0 + r) * nb + b) * 2 + part]),
                                                       _mm256_load_ps(fm[r] + 8 * h)));
    }
  }
  asm volatile("" : : "r"(&fm[0][0]) : "memory");  // keep fm in memory
}

// The int8 forms without VPDPBUSD: VPMADDUBSW multiplies unsigned by signed bytes and adds
// pairs in 16 bits with saturation, so it takes |w| (the signed code's magnitude, at most 128)
// and the activation with w's sign (at most 127 in magnitude: the caller sends activations
// holding a -128 code to the portable loop): each pair of products is at most 2 x 128 x 127 =
// 32,512 < 2^15, exact. VPMADDWD by ones then sums the pairs of each 4-byte quad into the
// lane's 32 bits. The integer sums are the portable loop's (exact); the f32 steps are the
// same operations in the same order. `Grouped`: a scale (and offset) per 16 inputs.
template <int RM, bool Grouped>
COMPRESS_AVX2_NATIVE void Int8TileAvx2(const uint8_t* w, const float* s, const float* o, int64_t nb,
                                       int64_t g, const Int8Acts& a, int64_t in, int64_t r0, float* y,
                                       int64_t ldy, int64_t out) {
  alignas(32) float fm[RM][kLanes] = {};  // f32 sums, in memory between parts (AddPartAvx2)
  const __m256i flip = _mm256_set1_epi8(static_cast<char>(0x80));
  const __m256i ones = _mm256_set1_epi16(1);
  constexpr int kParts = Grouped ? 2 : 1;
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* wb = w + (g * nb + b) * 512;
    for (int part = 0; part < kParts; ++part) {
      __m256i acc[RM][2];
      for (int r = 0; r < RM; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_si256();
      for (int quad = part * 8 / kParts; quad < (part + 1) * 8 / kParts; ++quad) {
        __m256i ws[2], wa[2];
        for (int h = 0; h < 2; ++h) {
          ws[h] = _mm256_xor_si256(
              _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb + quad * 64 + h * 32)), flip);
          wa[h] = _mm256_abs_epi8(ws[h]);
        }
        for (int r = 0; r < RM; ++r) {
          int32_t four;
          std::memcpy(&four, a.q.data() + (r0 + r) * in + b * kBlock + quad * 4, 4);
          const __m256i av = _mm256_set1_epi32(four);
          for (int h = 0; h < 2; ++h) {
            const __m256i pairs = _mm256_maddubs_epi16(wa[h], _mm256_sign_epi8(av, ws[h]));
            acc[r][h] = _mm256_add_epi32(acc[r][h], _mm256_madd_epi16(pairs, ones));
            KeepInRegister(acc[r][h]);
          }
        }
      }
      AddPartAvx2<RM, Grouped>(fm, acc, s, o, nb, g, b, part, a, r0);
    }
  }
  StoreTileAvx2<RM>(fm, y, ldy, r0, g, out);
}

// The int8 forms for weights whose codes are small (|code| <= 64, e.g. 4-bit types): the
// activations go in as unsigned bytes q + 128 (`qu`, 0..255) and the signed codes as VPMADDUBSW's
// signed operand, so each pair of products is at most 2 x 255 x max|code|; the 16-bit pair sums
// of K quads are added in 16 bits (K x 510 x max|code| < 2^15, no saturation: the caller picks
// K) before VPMADDWD widens them. The 128 x code sum of each part (`sums`, per half block) is
// then taken off: the portable loop's exact integers again. Any activation code, -128 included.
template <int RM, bool Grouped, int K>
COMPRESS_AVX2_NATIVE void SmallCodeTileAvx2(const uint8_t* w, const float* s, const float* o,
                                            const int16_t* sums, int64_t nb, int64_t g, const Int8Acts& a,
                                            const uint8_t* qu, int64_t in, int64_t r0, float* y, int64_t ldy,
                                            int64_t out) {
  alignas(32) float fm[RM][kLanes] = {};  // f32 sums, in memory between parts (AddPartAvx2)
  const __m256i flip = _mm256_set1_epi8(static_cast<char>(0x80));
  const __m256i ones = _mm256_set1_epi16(1);
  constexpr int kParts = Grouped ? 2 : 1, kQuads = 8 / kParts;
  static_assert(kQuads % K == 0);
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* wb = w + (g * nb + b) * 512;
    for (int part = 0; part < kParts; ++part) {
      __m256i acc[RM][2];
      for (int r = 0; r < RM; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_si256();
      for (int q0 = part * kQuads; q0 < (part + 1) * kQuads; q0 += K) {
        __m256i acc16[RM][2];
        for (int r = 0; r < RM; ++r) acc16[r][0] = acc16[r][1] = _mm256_setzero_si256();
        for (int quad = q0; quad < q0 + K; ++quad) {
          __m256i ws[2];
          for (int h = 0; h < 2; ++h)
            ws[h] = _mm256_xor_si256(
                _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb + quad * 64 + h * 32)), flip);
          for (int r = 0; r < RM; ++r) {
            int32_t four;
            std::memcpy(&four, qu + (r0 + r) * in + b * kBlock + quad * 4, 4);
            const __m256i av = _mm256_set1_epi32(four);
            for (int h = 0; h < 2; ++h) {
              acc16[r][h] = _mm256_add_epi16(acc16[r][h], _mm256_maddubs_epi16(av, ws[h]));
              KeepInRegister(acc16[r][h]);
            }
          }
        }
        for (int r = 0; r < RM; ++r)
          for (int h = 0; h < 2; ++h)
            acc[r][h] = _mm256_add_epi32(acc[r][h], _mm256_madd_epi16(acc16[r][h], ones));
      }
      // 128 x the codes' sum over the part, per lane.
      __m256i shift[2];
      for (int h = 0; h < 2; ++h) {
        const int16_t* sp = sums + ((g * nb + b) * 2) * kLanes + 8 * h;
        auto load = [](const int16_t* at) COMPRESS_AVX2_NATIVE {
          return _mm256_cvtepi16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(at)));
        };
        __m256i sum = load(sp + (Grouped ? part * kLanes : 0));
        if (!Grouped) sum = _mm256_add_epi32(sum, load(sp + kLanes));
        shift[h] = _mm256_slli_epi32(sum, 7);
      }
      for (int r = 0; r < RM; ++r)
        for (int h = 0; h < 2; ++h) acc[r][h] = _mm256_sub_epi32(acc[r][h], shift[h]);
      AddPartAvx2<RM, Grouped>(fm, acc, s, o, nb, g, b, part, a, r0);
    }
  }
  StoreTileAvx2<RM>(fm, y, ldy, r0, g, out);
}

// bf16 weights times bf16-rounded activations, both widened to f32 (`xf`: the activations with
// Daz applied), f += a1 w1 then f += a0 w0 with FMA. The caller runs this only where
// BF16FmaIsExact holds for the weight and the activations: then every product is exact and
// normal (or zero) and every partial sum is zero or normal, so FMA rounds as the portable
// loop's add of the exact product and its flushes to zero never apply.
template <int RM>
COMPRESS_AVX2_NATIVE void Bf16TileAvx2(const uint8_t* w, int64_t steps, int64_t g, const float* xf,
                                       int64_t r0, float* y, int64_t ldy, int64_t out) {
  __m256 f[RM][2];
  for (int r = 0; r < RM; ++r) f[r][0] = f[r][1] = _mm256_setzero_ps();
  const __m256i high = _mm256_set1_epi32(static_cast<int32_t>(0xFFFF0000u));
  for (int64_t p = 0; p < steps; ++p) {
    __m256 w0[2], w1[2];
    for (int h = 0; h < 2; ++h) {
      const __m256i v =
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + (g * steps + p) * 64 + h * 32));
      w1[h] = _mm256_castsi256_ps(_mm256_and_si256(v, high));
      w0[h] = _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
    }
    for (int r = 0; r < RM; ++r) {
      const __m256 a1 = _mm256_set1_ps(xf[(r0 + r) * 2 * steps + 2 * p + 1]);
      const __m256 a0 = _mm256_set1_ps(xf[(r0 + r) * 2 * steps + 2 * p]);
      for (int h = 0; h < 2; ++h) {
        f[r][h] = _mm256_fmadd_ps(a1, w1[h], f[r][h]);
        f[r][h] = _mm256_fmadd_ps(a0, w0[h], f[r][h]);
      }
    }
  }
  StoreTileAvx2<RM>(f, y, ldy, r0, g, out);
}

template <typename E, int RM>
COMPRESS_AVX2_NATIVE void WideTileAvx2(const uint8_t* w, int64_t steps, int64_t g, const float* x, int64_t r0,
                                       float* y, int64_t ldy, int64_t out) {
  __m256 f[RM][2];
  for (int r = 0; r < RM; ++r) f[r][0] = f[r][1] = _mm256_setzero_ps();
  for (int64_t k = 0; k < steps; ++k) {
    __m256 wv[2];
    const uint8_t* at = w + (g * steps + k) * kLanes * sizeof(E);
    for (int h = 0; h < 2; ++h) {
      if constexpr (std::is_same_v<E, float>) {
        wv[h] = _mm256_loadu_ps(reinterpret_cast<const float*>(at) + 8 * h);
      } else {
        wv[h] = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(at) + h));
      }
    }
    for (int r = 0; r < RM; ++r) {
      const __m256 av = _mm256_set1_ps(x[(r0 + r) * steps + k]);
      for (int h = 0; h < 2; ++h) f[r][h] = _mm256_fmadd_ps(av, wv[h], f[r][h]);
    }
  }
  StoreTileAvx2<RM>(f, y, ldy, r0, g, out);
}

// 16-level codes: each nibble looks up both halves of the table (VPERMPS reads 3 index bits)
// and bit 3, shifted to the sign, picks one; times the lane scales, then one FMA per row.
template <int RM>
COMPRESS_AVX2_NATIVE void LevelsTileAvx2(const uint8_t* w, const float* s, const float* levels, int64_t steps,
                                         int64_t group, int64_t g, const float* x, int64_t r0, float* y,
                                         int64_t ldy, int64_t out) {
  __m256 f[RM][2];
  for (int r = 0; r < RM; ++r) f[r][0] = f[r][1] = _mm256_setzero_ps();
  const __m256 lo = _mm256_loadu_ps(levels), hi = _mm256_loadu_ps(levels + 8);
  auto look = [&](__m256i c) COMPRESS_AVX2_NATIVE {
    return _mm256_blendv_ps(_mm256_permutevar8x32_ps(lo, c), _mm256_permutevar8x32_ps(hi, c),
                            _mm256_castsi256_ps(_mm256_slli_epi32(c, 28)));
  };
  const int64_t pairs = steps / 2, ngroups = steps / group;
  for (int64_t gi = 0; gi < ngroups; ++gi) {
    __m256 sv[2];
    for (int h = 0; h < 2; ++h) sv[h] = _mm256_loadu_ps(s + (g * ngroups + gi) * kLanes + 8 * h);
    for (int64_t p = gi * group / 2; p < (gi + 1) * group / 2; ++p) {
      __m256 w0[2], w1[2];
      for (int h = 0; h < 2; ++h) {
        const __m256i c = _mm256_cvtepu8_epi32(
            _mm_loadl_epi64(reinterpret_cast<const __m128i*>(w + (g * pairs + p) * kLanes + 8 * h)));
        w0[h] = _mm256_mul_ps(look(c), sv[h]);
        w1[h] = _mm256_mul_ps(look(_mm256_srli_epi32(c, 4)), sv[h]);
      }
      for (int r = 0; r < RM; ++r) {
        const __m256 a0 = _mm256_set1_ps(x[(r0 + r) * steps + 2 * p]);
        for (int h = 0; h < 2; ++h) f[r][h] = _mm256_fmadd_ps(a0, w0[h], f[r][h]);
        const __m256 a1 = _mm256_set1_ps(x[(r0 + r) * steps + 2 * p + 1]);
        for (int h = 0; h < 2; ++h) f[r][h] = _mm256_fmadd_ps(a1, w1[h], f[r][h]);
      }
    }
  }
  StoreTileAvx2<RM>(f, y, ldy, r0, g, out);
}

// Calls tile.template operator()<M, N>(r, g) for runtime sizes rm in 1..RM and rn in 1..RN.
template <int RM, int RN, class Tile>
void DispatchTile(int rm, int rn, Tile& tile, int64_t r, int64_t g) {
  if constexpr (RN > 1) {
    if (rn < RN) return DispatchTile<RM, RN - 1>(rm, rn, tile, r, g);
  }
  if constexpr (RM > 1) {
    if (rm < RM) return DispatchTile<RM - 1, RN>(rm, rn, tile, r, g);
  }
  tile.template operator()<RM, RN>(r, g);
}

// Runs the tile kernel over rows [r0, r1) and groups [g0, g1) with the largest tiles that fit
// (kRowTile x RN at most, smaller at the edges).
template <int RN, class Tile>
void Cover(int64_t r0, int64_t r1, int64_t g0, int64_t g1, Tile&& tile) {
  for (int64_t g = g0; g < g1; g += RN) {
    const int rn = static_cast<int>(std::min<int64_t>(RN, g1 - g));
    for (int64_t r = r0; r < r1; r += kRowTile)
      DispatchTile<kRowTile, RN>(static_cast<int>(std::min<int64_t>(kRowTile, r1 - r)), rn, tile, r, g);
  }
}

// The AVX2 kernels one group at a time, `Rows` activation rows per tile (6 for the f32 FMA
// kernels: 12 sums in flight cover FMA's latency; 4 for the integer ones).
template <int Rows, class Tile>
void CoverAvx2(int64_t r0, int64_t r1, int64_t g0, int64_t g1, Tile&& tile) {
  static_assert(Rows >= 4 && Rows <= 6);
  for (int64_t g = g0; g < g1; ++g) {
    for (int64_t r = r0; r < r1; r += Rows)
      DispatchTile<Rows, 1>(static_cast<int>(std::min<int64_t>(Rows, r1 - r)), 1, tile, r, g);
  }
}

enum class Isa { kPortable = 0, kAvx2 = 1, kAvx512 = 2 };

Isa CpuIsa() {
  static const Isa isa = [] {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni") &&
        __builtin_cpu_supports("avx512bf16"))
      return Isa::kAvx512;
    // F16C from CPUID leaf 1 (ECX bit 29): clang 14's __builtin_cpu_supports does not name it.
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    const bool f16c = __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & bit_F16C) != 0;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && f16c) return Isa::kAvx2;
    return Isa::kPortable;
  }();
  return isa;
}

// The widest kernels allowed (SetNativeMatmulIsa; COMPRESS_MATMUL_ISA at start).
std::atomic<int>& IsaCap() {
  static std::atomic<int> cap = [] {
    const char* e = std::getenv("COMPRESS_MATMUL_ISA");
    const std::string_view v = e ? e : "";
    return v == "portable" ? 0 : v == "avx2" ? 1 : 2;
  }();
  return cap;
}

Isa ActiveIsa() { return static_cast<Isa>(std::min(static_cast<int>(CpuIsa()), IsaCap().load())); }

// Whether FMA on the widened values gives the portable bf16 loop's bits: every nonzero product
// of an activation (a normal bf16 value; subnormal ones read as 0) and a weight is a multiple
// of 2^(lo_a + lo_w - 254 - 14) >= 2^-126 (so every partial sum is zero or normal and the
// flushes never apply) and below 2^128 (finite, exact in f32). Subnormal, infinite or NaN
// weights, and infinite or NaN activations, take the portable loop.
// The exponent range of bf16 values `b` [n] in one branch-free pass, and (when `widened` is
// given) the values widened to f32 with subnormals read as 0, as Daz does.
template <bool kWiden>
Bf16Exponents ScanBf16Into(const uint16_t* b, int64_t n, float* widened) {
  int lo = 255, hi = 0, subnormal = 0, special = 0;
#pragma omp simd reduction(min : lo) reduction(max : hi) reduction(| : subnormal, special)
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t v = b[i];
    const int e = static_cast<int>((v >> 7) & 0xFF);
    lo = std::min(lo, e == 0 || e == 255 ? 255 : e);
    hi = std::max(hi, e == 255 ? 0 : e);
    subnormal |= e == 0 && (v & 0x7F) != 0;
    special |= e == 255;
    if constexpr (kWiden) widened[i] = std::bit_cast<float>(e == 0 ? 0u : v << 16);
  }
  return {lo, hi, subnormal != 0, special != 0};
}
Bf16Exponents ScanBf16(const uint16_t* b, int64_t n, float* widened) {
  return widened ? ScanBf16Into<true>(b, n, widened) : ScanBf16Into<false>(b, n, nullptr);
}

bool BF16FmaIsExact(const Bf16Exponents& w, const Bf16Exponents& a) {
  if (w.subnormal || w.special || a.special) return false;
  if (w.hi == 0 || a.hi == 0) return true;  // every product is 0
  return a.lo + w.lo >= 142 && a.hi + w.hi <= 379;
}

}  // namespace

MatmulMode MatmulModeNamed(std::string_view name) {
  return name == "native" ? MatmulMode::kNative : name == "bf16" ? MatmulMode::kBf16 : MatmulMode::kF32;
}

bool NativeMatmulAccelerated() { return ActiveIsa() != Isa::kPortable; }

std::string NativeMatmulIsa() {
  switch (ActiveIsa()) {
    case Isa::kAvx512:
      return "avx512";
    case Isa::kAvx2:
      return "avx2";
    default:
      return "portable";
  }
}

bool SetNativeMatmulIsa(std::string_view name) {
  const int cap = name == "portable" ? 0 : name == "avx2" ? 1 : name == "avx512" ? 2 : -1;
  if (cap < 0 || cap > static_cast<int>(CpuIsa())) return false;
  IsaCap().store(cap);
  return true;
}

PackedWeight PackedWeight::FromBf16(const uint16_t* w, int64_t out, int64_t in) {
  PackedWeight p;
  p.kind_ = Kind::kBf16;
  p.out_ = out, p.in_ = in;
  p.groups_ = (out + kLanes - 1) / kLanes;
  p.steps_ = (in + 1) / 2;
  p.data_.assign(p.groups_ * p.steps_ * 64, 0);
  uint16_t* d = reinterpret_cast<uint16_t*>(p.data_.data());
#pragma omp parallel for schedule(static) if (out * in > (int64_t{1} << 20))
  for (int64_t n = 0; n < out; ++n) {
    const int64_t g = n / kLanes, l = n % kLanes;
    for (int64_t k = 0; k < in; ++k) d[((g * p.steps_ + k / 2) * kLanes + l) * 2 + k % 2] = w[n * in + k];
  }
  p.bf16_exponents_ = ScanBf16(w, out * in, nullptr);
  return p;
}

namespace {
// [group][input][16 lanes] elements of type E (f16 bits or f32) from a row-major [out, in] weight.
template <typename E>
void PackWide(const E* w, int64_t out, int64_t in, int64_t groups, std::vector<uint8_t>& data) {
  data.resize(groups * in * kLanes * sizeof(E));
  E* d = reinterpret_cast<E*>(data.data());
  // Group by group: 16 rows read in step, the packed group written in order.
#pragma omp parallel for schedule(static) if (out * in > (int64_t{1} << 20))
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t lanes = std::min(kLanes, out - g * kLanes);
    E* dg = d + g * in * kLanes;
    for (int64_t k = 0; k < in; ++k) {
      for (int64_t l = 0; l < lanes; ++l) dg[k * kLanes + l] = w[(g * kLanes + l) * in + k];
      for (int64_t l = lanes; l < kLanes; ++l) dg[k * kLanes + l] = E{};  // padding rows: +0
    }
  }
}
}  // namespace

template <typename E>
PackedWeight PackedWeight::FromWide(Kind kind, const E* w, int64_t out, int64_t in) {
  PackedWeight p;
  p.kind_ = kind;
  p.out_ = out, p.in_ = in;
  p.groups_ = (out + kLanes - 1) / kLanes;
  p.steps_ = in;
  PackWide(w, out, in, p.groups_, p.data_);
  return p;
}

PackedWeight PackedWeight::FromF16(const uint16_t* w, int64_t out, int64_t in) {
  return FromWide(Kind::kF16, w, out, in);
}
PackedWeight PackedWeight::FromF32(const float* w, int64_t out, int64_t in) { return FromWide(Kind::kF32, w, out, in); }

namespace {
// The dense types with a native product (f32 / f16: f32 activations; bf16: bf16 activations).
bool DenseNative(DType t) { return t == DType::kF32 || t == DType::kF16 || t == DType::kBF16; }

// Packs the [out, in] elements `w` of a dense type DenseNative accepts.
PackedWeight FromDense(DType t, const uint8_t* w, int64_t out, int64_t in) {
  if (t == DType::kF32) return PackedWeight::FromF32(reinterpret_cast<const float*>(w), out, in);
  const uint16_t* h = reinterpret_cast<const uint16_t*>(w);
  return t == DType::kF16 ? PackedWeight::FromF16(h, out, in) : PackedWeight::FromBf16(h, out, in);
}
// FromDense, with f32 / f16 values rounded to bf16 (to nearest even) when `as_bf16` and the
// input width is even (MatmulMode::kBf16).
PackedWeight FromDenseAs(DType t, const uint8_t* w, int64_t out, int64_t in, bool as_bf16) {
  if (!as_bf16 || t == DType::kBF16 || in % 2 != 0) return FromDense(t, w, out, in);
  const int64_t n = out * in;
  std::vector<float> wide;  // f16 widened first (exactly)
  const float* f = reinterpret_cast<const float*>(w);
  if (t == DType::kF16) {
    wide.resize(n);
    (void)DecodeToF32(t, w, n, wide.data());  // f16 and bf16 always decode
    f = wide.data();
  }
  std::vector<uint16_t> b(n);
  (void)EncodeFromF32(DType::kBF16, f, n, reinterpret_cast<uint8_t*>(b.data()));
  return PackedWeight::FromBf16(b.data(), out, in);
}
}  // namespace

PackedWeight PackedWeight::FromCodes(const int8_t* codes, const float* scales, int64_t out, int64_t in) {
  PackedWeight p;
  p.kind_ = Kind::kInt8;
  p.out_ = out, p.in_ = in;
  p.groups_ = (out + kLanes - 1) / kLanes;
  p.steps_ = in / kBlock;
  p.data_.assign(p.groups_ * p.steps_ * 512, 128);  // padding rows: code 0
  p.scales_.assign(p.groups_ * p.steps_ * kLanes, 0.f);
#pragma omp parallel for schedule(static) if (out * in > (int64_t{1} << 20))
  for (int64_t n = 0; n < out; ++n) {
    const int64_t g = n / kLanes, l = n % kLanes;
    for (int64_t b = 0; b < p.steps_; ++b) {
      p.scales_[(g * p.steps_ + b) * kLanes + l] = scales[n * p.steps_ + b];
      uint8_t* blk = p.data_.data() + (g * p.steps_ + b) * 512;
      for (int64_t i = 0; i < kBlock; ++i)
        blk[(i / 4) * 64 + l * 4 + i % 4] = static_cast<uint8_t>(codes[n * in + b * kBlock + i] + 128);
    }
  }
  p.SumCodes();
  return p;
}

void PackedWeight::SumCodes() {
  code_sums_.assign(groups_ * steps_ * 2 * kLanes, 0);
  int max_abs = 0;
  for (int64_t gb = 0; gb < groups_ * steps_; ++gb) {
    const uint8_t* blk = data_.data() + gb * 512;
    for (int64_t i = 0; i < kBlock; ++i)
      for (int64_t l = 0; l < kLanes; ++l) {
        const int c = static_cast<int>(blk[(i / 4) * 64 + l * 4 + i % 4]) - 128;
        code_sums_[(gb * 2 + i / 16) * kLanes + l] += static_cast<int16_t>(c);  // |sum| <= 2048
        max_abs = std::max(max_abs, c < 0 ? -c : c);
      }
  }
  max_abs_code_ = max_abs;
}

PackedWeight PackedWeight::FromGroupedCodes(const int8_t* codes, const float* scales, const float* offsets,
                                            int64_t out, int64_t in) {
  std::vector<float> ones(out * (in / kBlock), 1.0f);
  PackedWeight p = FromCodes(codes, ones.data(), out, in);  // the codes' layout
  p.kind_ = Kind::kInt8Grouped;
  p.scales_.assign(p.groups_ * p.steps_ * 2 * kLanes, 0.f);
  if (offsets) p.offsets_.assign(p.scales_.size(), 0.f);
  for (int64_t n = 0; n < out; ++n) {
    const int64_t g = n / kLanes, l = n % kLanes;
    for (int64_t h = 0; h < 2 * p.steps_; ++h) {
      const int64_t i = (g * p.steps_ * 2 + h) * kLanes + l;
      p.scales_[i] = scales[n * (in / 16) + h];
      if (offsets) p.offsets_[i] = offsets[n * (in / 16) + h];
    }
  }
  return p;
}

PackedWeight PackedWeight::FromLevelCodes(const uint8_t* codes, const float* levels, const float* scales, int64_t out,
                                          int64_t in, int64_t group) {
  PackedWeight p;
  p.kind_ = Kind::kLevels16;
  p.out_ = out, p.in_ = in;
  p.groups_ = (out + kLanes - 1) / kLanes;
  p.steps_ = in;
  p.level_group_ = group;
  p.levels_.assign(levels, levels + 16);
  const int64_t pairs = in / 2, ngroups = in / group;
  p.data_.assign(p.groups_ * pairs * kLanes, 0);
  p.scales_.assign(p.groups_ * ngroups * kLanes, 0.f);  // padding rows: level x 0
#pragma omp parallel for schedule(static) if (out * in > (int64_t{1} << 20))
  for (int64_t g = 0; g < p.groups_; ++g) {
    const int64_t lanes = std::min(kLanes, out - g * kLanes);
    for (int64_t l = 0; l < lanes; ++l) {
      const int64_t n = g * kLanes + l;
      for (int64_t gi = 0; gi < ngroups; ++gi) p.scales_[(g * ngroups + gi) * kLanes + l] = scales[n * ngroups + gi];
      for (int64_t q = 0; q < pairs; ++q) {
        p.data_[(g * pairs + q) * kLanes + l] =
            static_cast<uint8_t>((codes[n * in + 2 * q] & 15) | (codes[n * in + 2 * q + 1] & 15) << 4);
      }
    }
  }
  return p;
}

std::optional<PackedWeight> PackedWeight::PackBlocks(const Tensor& t, int64_t row0, int64_t rows, std::string* why) {
  const DType type = t.dtype();
  const int64_t in = t.shape()[1], be = BlockElements(type), bb = BlockBytes(type);
  if (in % be != 0 || in % kBlock != 0) {
    if (why) *why = "rows are not whole blocks";
    return std::nullopt;
  }
  auto data = t.Data();
  if (!data.ok() || (*data)->size() != static_cast<size_t>(DTypeBytes(type, t.shape()[0] * in))) {
    if (why) *why = "unreadable blocks";
    return std::nullopt;
  }
  const int64_t row_bytes = DTypeBytes(type, in), per = ScaleGroupElements(type);
  std::vector<int8_t> codes(rows * in);
  std::vector<float> scales(rows * (in / 16)), offsets(rows * (in / 16));
  bool any_offset = false;
#pragma omp parallel for schedule(static) reduction(|| : any_offset) if (rows * in > (int64_t{1} << 20))
  for (int64_t r = 0; r < rows; ++r) {
    const uint8_t* row = (*data)->data() + (row0 + r) * row_bytes;
    for (int64_t k = 0; k < in; ++k) {
      const LinearCode lc = LinearCodeOf(type, row + (k / be) * bb, static_cast<int>(k % be));
      codes[r * in + k] = static_cast<int8_t>(lc.code);
      if (k % 16 == 0) {
        scales[r * (in / 16) + k / 16] = lc.scale;
        offsets[r * (in / 16) + k / 16] = lc.offset;
        any_offset = any_offset || lc.offset != 0;
      }
    }
  }
  if (per == 32 && !any_offset) {  // one scale per 32, no offsets: the plain int8 product
    std::vector<float> s32(rows * (in / kBlock));
    for (size_t i = 0; i < s32.size(); ++i) s32[i] = scales[2 * i];
    return FromCodes(codes.data(), s32.data(), rows, in);
  }
  return FromGroupedCodes(codes.data(), scales.data(), any_offset ? offsets.data() : nullptr, rows, in);
}

std::optional<PackedWeight> PackedWeight::Pack(const Tensor& t, int64_t row0, int64_t rows, std::string* why,
                                               bool dense_as_bf16) {
  auto no = [&](const char* reason) -> std::optional<PackedWeight> {
    if (why) *why = reason;
    return std::nullopt;
  };
  if (t.shape().size() != 2) return no("not 2-D");
  if (t.factors()) return no("low-rank");
  const int64_t n = t.shape()[0], in = t.shape()[1];
  if (row0 < 0 || rows < 0 || row0 + rows > n) return no("rows out of range");
  const QuantInfo* qi = t.quant();
  if (!qi && IsBlockType(t.dtype())) return PackBlocks(t, row0, rows, why);
  if (!qi) {
    const DType dt = t.dtype();
    if (!DenseNative(dt)) return no("only f32, bf16, f16, int 4/8-bit g32 and GGUF block weights have native products");
    auto data = t.Data();
    if (!data.ok() || (*data)->size() != static_cast<size_t>(DTypeBytes(dt, n * in))) return no("unreadable data");
    return FromDenseAs(dt, (*data)->data() + DTypeBytes(dt, row0 * in), rows, in, dense_as_bf16);
  }
  if (qi->fp8()) return PackFp8(t, row0, rows, why);
  int level_mult = 0;  // codebooks: levels x level_mult are the int8 codes
  if (qi->codebook()) {
    level_mult = IntegerLevelMultiplier(qi->levels());
  } else if (qi->format() != "int" || qi->fp8()) {
    return no("not an integer or 4-bit floating-point format");
  }
  if (!qi->outlier_inputs.empty() && qi->codebook()) return no("a codebook with outlier features");
  if (qi->channel_axis != 0) return no("[in, out] layout");
  if (qi->codebook() && !level_mult) return PackLevels(t, row0, rows, why);
  const int64_t nout = static_cast<int64_t>(qi->outlier_inputs.size());
  if (nout) {
    if (qi->outlier_values.size() != static_cast<size_t>(n * nout)) return no("outlier values do not cover the weight");
    for (int64_t j = 0; j < nout; ++j) {
      const int64_t k = qi->outlier_inputs[j];
      if (k < 0 || k >= in || (j > 0 && k <= qi->outlier_inputs[j - 1])) return no("outlier inputs out of order");
    }
  }
  if (qi->bits > 8) return no("more than 8 bits");
  if (in % kBlock != 0 || qi->group_size <= 0 || qi->group_size % kBlock != 0) return no("groups not a multiple of 32");
  auto data = t.Data();
  if (!data.ok() || (*data)->size() != static_cast<size_t>(n * in)) return no("unreadable codes");
  const int8_t* q = reinterpret_cast<const int8_t*>((*data)->data());
  const int64_t nb = in / kBlock;
  std::vector<int8_t> codes(rows * in);
  std::vector<float> scales(rows * nb);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t b = 0; b < nb; ++b) {
      const int64_t idx = qi->ScaleIndex(row0 + r, b * kBlock);
      if (idx < 0 || idx >= static_cast<int64_t>(qi->scales().size())) return no("scales do not cover the weight");
      if (level_mult) {
        // s x level = (s / m) x (m x level): both factors exact (m a power of two, s / m
        // normal), so the packed values are the dequantized ones bit for bit.
        const float s = qi->scales()[idx] / static_cast<float>(level_mult);
        if (s * static_cast<float>(level_mult) != qi->scales()[idx]) return no("a scale too small to divide exactly");
        scales[r * nb + b] = s;
        for (int64_t i = 0; i < kBlock; ++i) {
          const uint8_t c = static_cast<uint8_t>(q[(row0 + r) * in + b * kBlock + i]);
          if (c >= qi->levels().size()) return no("codes outside the codebook");
          codes[r * in + b * kBlock + i] = static_cast<int8_t>(qi->levels()[c] * static_cast<float>(level_mult));
        }
        continue;
      }
      const int z = qi->zero_points().empty() ? 0 : qi->zero_points()[idx];
      scales[r * nb + b] = qi->scales()[idx];
      for (int64_t i = 0; i < kBlock; ++i) {
        const int v = q[(row0 + r) * in + b * kBlock + i] - z;
        if (v < -128 || v > 127) return no("codes minus zero points leave int8");
        codes[r * in + b * kBlock + i] = static_cast<int8_t>(v);
      }
    }
  }
  PackedWeight p = FromCodes(codes.data(), scales.data(), rows, in);
  if (nout) {
    p.outlier_inputs_ = qi->outlier_inputs;
    p.outlier_values_.resize(nout * rows);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t j = 0; j < nout; ++j) p.outlier_values_[j * rows + r] = qi->outlier_values[(row0 + r) * nout + j];
  }
  return p;
}

namespace {
// Whether a codebook of `levels` with groups of `group` inputs of `in` packs as kLevels16.
bool LevelsPackable(const std::vector<float>& levels, int64_t group, int64_t in) {
  return levels.size() <= 16 && group > 0 && group % 2 == 0 && in % group == 0;
}

// Whether quantization `qi` of a weight with `in` inputs has a native product (the axis aside).
bool QuantHasNativeForm(const QuantInfo& qi, int64_t in) {
  if (qi.fp8()) return qi.group_size == in && qi.outlier_inputs.empty();
  if (!qi.outlier_inputs.empty() && qi.codebook()) return false;
  if (qi.codebook() && IntegerLevelMultiplier(qi.levels()) == 0) return LevelsPackable(qi.levels(), qi.group_size, in);
  const bool format = qi.codebook() || (qi.format() == "int" && !qi.fp8());
  return format && qi.bits <= 8 && in % kBlock == 0 && qi.group_size > 0 && qi.group_size % kBlock == 0;
}
}  // namespace

std::optional<PackedWeight> PackedWeight::PackLevels(const Tensor& t, int64_t row0, int64_t rows, std::string* why) {
  auto no = [&](const char* reason) -> std::optional<PackedWeight> {
    if (why) *why = reason;
    return std::nullopt;
  };
  const QuantInfo& qi = *t.quant();
  const int64_t n = t.shape()[0], in = t.shape()[1], group = qi.group_size;
  if (!LevelsPackable(qi.levels(), group, in)) {
    return no("a codebook of more than 16 levels, or groups that are odd or do not divide the input width");
  }
  auto data = t.Data();
  if (!data.ok() || (*data)->size() != static_cast<size_t>(n * in)) return no("unreadable codes");
  const uint8_t* q = (*data)->data() + row0 * in;
  const int64_t ngroups = in / group;
  std::vector<float> scales(rows * ngroups);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t gi = 0; gi < ngroups; ++gi) {
      const int64_t idx = qi.ScaleIndex(row0 + r, gi * group);
      if (idx < 0 || idx >= static_cast<int64_t>(qi.scales().size())) return no("scales do not cover the weight");
      scales[r * ngroups + gi] = qi.scales()[idx];
    }
  }
  for (int64_t i = 0; i < rows * in; ++i)
    if (q[i] >= qi.levels().size()) return no("codes outside the codebook");
  float levels[16] = {};
  std::copy(qi.levels().begin(), qi.levels().end(), levels);
  return FromLevelCodes(q, levels, scales.data(), rows, in, group);
}

std::optional<PackedWeight> PackedWeight::PackFp8(const Tensor& t, int64_t row0, int64_t rows, std::string* why) {
  auto no = [&](const char* reason) -> std::optional<PackedWeight> {
    if (why) *why = reason;
    return std::nullopt;
  };
  const QuantInfo& qi = *t.quant();
  const int64_t n = t.shape()[0], in = t.shape()[1];
  if (qi.channel_axis != 0 || qi.group_size != in || qi.scales().size() != static_cast<size_t>(n) ||
      !qi.outlier_inputs.empty()) {
    return no("fp8 weights with other than one scale per output row");
  }
  auto data = t.Data();
  if (!data.ok() || (*data)->size() != static_cast<size_t>(n * in)) return no("unreadable codes");
  // e4m3 magnitudes are 2^-9 .. 448 with 4 significant bits: f16 (2^-24 .. 65504, 11 bits)
  // holds each exactly.
  std::array<uint16_t, 256> half{};
  for (int c = 0; c < 256; ++c) {
    const float v = MiniFloatDecode(static_cast<uint8_t>(c), kE4M3);
    half[c] = std::isnan(v) ? 0 : F32ToF16(v);
  }
  const uint8_t* q = (*data)->data() + row0 * in;
  std::vector<uint16_t> w(rows * in);
  for (int64_t i = 0; i < rows * in; ++i) {
    if ((q[i] & 0x7F) == 0x7F) return no("an e4m3 NaN code");
    w[i] = half[q[i]];
  }
  PackedWeight p = FromF16(w.data(), rows, in);
  p.row_scales_.assign(qi.scales().begin() + row0, qi.scales().begin() + row0 + rows);
  return p;
}

std::optional<PackedWeight> PackedWeight::PackTransposed(const Tensor& t, std::string* why, bool dense_as_bf16) {
  auto no = [&](const char* reason) -> std::optional<PackedWeight> {
    if (why) *why = reason;
    return std::nullopt;
  };
  if (t.shape().size() != 2 || t.factors()) return no("not a dense 2-D weight");
  const int64_t in = t.shape()[0], out = t.shape()[1];
  const QuantInfo* qi = t.quant();
  const DType dt = t.dtype();
  if (!qi && !DenseNative(dt)) return no("only f32, bf16, f16 and quantized [in, out] weights have native products");
  if (qi && qi->channel_axis != 1) return no("quantized along another axis");
  if (qi ? !QuantHasNativeForm(*qi, in) : dt == DType::kBF16 && in % 2 != 0) return no("no native form");
  auto data = t.Data();
  if (!data.ok() || (*data)->size() != static_cast<size_t>(qi ? in * out : DTypeBytes(dt, in * out)))
    return no("unreadable data");
  // The [out, in] transpose of the stored elements, in tiles of 64 x 64.
  auto transposed = [&]<typename E>(std::vector<E>& dst) {
    dst.resize(in * out);
    const auto* src = reinterpret_cast<const E*>((*data)->data());
    constexpr int64_t kTile = 64;
    for (int64_t i0 = 0; i0 < in; i0 += kTile)
      for (int64_t o0 = 0; o0 < out; o0 += kTile)
        for (int64_t i = i0; i < std::min(in, i0 + kTile); ++i)
          for (int64_t o = o0; o < std::min(out, o0 + kTile); ++o) dst[o * in + i] = src[i * out + o];
    t.ReleasePages();
  };
  if (!qi && dt == DType::kF32) {
    std::vector<float> f;
    transposed(f);
    return FromDenseAs(dt, reinterpret_cast<const uint8_t*>(f.data()), out, in, dense_as_bf16);
  }
  if (!qi) {
    std::vector<uint16_t> h;
    transposed(h);
    return FromDenseAs(dt, reinterpret_cast<const uint8_t*>(h.data()), out, in, dense_as_bf16);
  }
  // channel_axis 1 scales are [out channels][groups along in]: the transposed weight's
  // channel_axis 0 layout, the same vector.
  QuantInfo q = *qi;
  q.channel_axis = 0;
  std::vector<int8_t> codes;
  transposed(codes);
  return Pack(Tensor::Quantized({out, in}, std::move(codes), std::move(q)), 0, out, why);
}

bool HasNativeForm(const Tensor& t, int out_axis) {
  if (t.shape().size() != 2 || t.factors()) return false;
  const QuantInfo* qi = t.quant();
  if (out_axis == 1) {  // PackTransposed's forms
    if (!qi) return DenseNative(t.dtype()) && (t.dtype() != DType::kBF16 || t.shape()[0] % 2 == 0);
    return qi->channel_axis == 1 && !qi->fp8() && QuantHasNativeForm(*qi, t.shape()[0]);  // fp8: Pack only
  }
  if (!qi) return IsBlockType(t.dtype()) || DenseNative(t.dtype());
  return qi->channel_axis == 0 && QuantHasNativeForm(*qi, t.shape()[1]);
}

bool NativeFormTakesF32Acts(const Tensor& t, int out_axis) {
  if (t.shape().size() != 2 || t.factors() || !HasNativeForm(t, out_axis)) return false;
  const QuantInfo* qi = t.quant();
  if (!qi) return t.dtype() == DType::kF32 || t.dtype() == DType::kF16;
  return out_axis == 0 && (qi->fp8() || (qi->codebook() && IntegerLevelMultiplier(qi->levels()) == 0));
}

RowMatrix PackedWeight::Apply(const RowMatrix& x) const { return Run(x, false); }
RowMatrix PackedWeight::ApplyPortable(const RowMatrix& x) const { return Run(x, true); }

bool PackedWeight::TakesCodedActs(int64_t group) const {
  return (kind_ == Kind::kInt8 || kind_ == Kind::kInt8Grouped) && group > 0 && group % kBlock == 0 &&
         in_ % group == 0;
}

RowMatrix PackedWeight::ApplyCodedActs(const RowMatrix& xq, std::span<const float> steps, int64_t group,
                                       bool portable) const {
  const ActSteps as{steps.data(), group};
  return Run(xq, portable, &as);
}

RowMatrix PackedWeight::Run(const RowMatrix& x, bool portable, const ActSteps* steps) const {
  if (!row_scales_.empty()) {  // fp8: each row's sum times its scale
    RowMatrix y = RunPacked(x, portable, steps);
    const float* rs = row_scales_.data();
    for (int64_t r = 0; r < y.rows(); ++r) {
      float* yr = y.row(r).data();
#pragma omp simd
      for (int64_t n = 0; n < out_; ++n) yr[n] *= rs[n];
    }
    return y;
  }
  if (outlier_inputs_.empty()) return RunPacked(x, portable, steps);
  RowMatrix xm = x;  // the codes' share: outlier features out of the int8 blocks
  for (int64_t k : outlier_inputs_) xm.col(k).setZero();
  RowMatrix y = RunPacked(xm, portable, steps);
  const int64_t m = x.rows(), nout = static_cast<int64_t>(outlier_inputs_.size());
#pragma omp parallel for schedule(static) if (m * out_ * nout > (int64_t{1} << 20))
  for (int64_t r = 0; r < m; ++r) {
    float* yr = y.row(r).data();
    for (int64_t j = 0; j < nout; ++j) {
      const float a = x(r, outlier_inputs_[j]);
      const float* wj = outlier_values_.data() + j * out_;
#pragma omp simd
      for (int64_t n = 0; n < out_; ++n) yr[n] = std::fma(a, wj[n], yr[n]);
    }
  }
  return y;
}

RowMatrix PackedWeight::RunPacked(const RowMatrix& x, bool portable, const ActSteps* steps) const {
  const int64_t m = x.rows();
  RowMatrix y(m, out_);
  if (m == 0 || out_ == 0) return y;
  Isa isa = portable ? Isa::kPortable : ActiveIsa();
  const int64_t chunks = (m + kRowChunk - 1) / kRowChunk;
  const int per_tile = kind_ == Kind::kInt8 || kind_ == Kind::kInt8Grouped ? kInt8Groups : kBf16Groups;
  const int64_t tiles = (groups_ + per_tile - 1) / per_tile;
  const double work = static_cast<double>(m) * static_cast<double>(in_) * static_cast<double>(out_);
  auto each_task = [&](auto&& body) {
#pragma omp parallel for collapse(2) schedule(dynamic, 1) if (work > 4e6 && chunks * tiles > 1)
    for (int64_t c = 0; c < chunks; ++c)
      for (int64_t t = 0; t < tiles; ++t)
        body(c * kRowChunk, std::min(m, (c + 1) * kRowChunk), t * per_tile, std::min(groups_, (t + 1) * per_tile));
  };
  // Runs `tile` (the portable loop, one row and group at a time), `avx2` (CoverAvx2, `Rows`
  // activation rows per tile) or `avx512` (Cover<RN>) over each task.
  auto run = [&]<int RN, int Rows>(auto&& tile, auto&& avx2, auto&& avx512) {
    each_task([&](int64_t r0, int64_t r1, int64_t g0, int64_t g1) {
      if (isa == Isa::kAvx512) return Cover<RN>(r0, r1, g0, g1, avx512);
      if (isa == Isa::kAvx2) return CoverAvx2<Rows>(r0, r1, g0, g1, avx2);
      for (int64_t g = g0; g < g1; ++g)
        for (int64_t r = r0; r < r1; ++r) tile(r, g);
    });
  };
  float* yd = y.data();
  const uint8_t* w = data_.data();
  const float* s = scales_.data();
  if (kind_ == Kind::kInt8Grouped || kind_ == Kind::kInt8) {
    const bool grouped = kind_ == Kind::kInt8Grouped;
    const Int8Acts a = QuantizeActs(x, grouped, steps);
    const float* o = offsets_.empty() ? nullptr : offsets_.data();
    const int64_t nb = steps_;
    // Small codes: quads whose 16-bit pair sums can be added before widening (SmallCodeTileAvx2).
    const int64_t fit = max_abs_code_ > 0 ? 32767 / (510 * max_abs_code_) : 8;
    const int k = fit >= 8 ? 8 : fit >= 4 ? 4 : fit >= 2 ? 2 : 1;
    if (isa == Isa::kAvx2 && k >= 2) {
      std::vector<uint8_t> qu(a.q.size());
      for (size_t i = 0; i < qu.size(); ++i) qu[i] = static_cast<uint8_t>(a.q[i] ^ 0x80);
      const int16_t* sums = code_sums_.data();
      auto small = [&]<bool G, int K>() {
        run.template operator()<kInt8Groups, 4>(
            [](int64_t, int64_t) {},
            [&]<int M, int N>(int64_t r, int64_t g) {
              SmallCodeTileAvx2<M, G, K>(w, s, o, sums, nb, g, a, qu.data(), in_, r, yd, out_, out_);
            },
            []<int M, int N>(int64_t, int64_t) {});
      };
      if (grouped) {
        k >= 4 ? small.template operator()<true, 4>() : small.template operator()<true, 2>();
      } else {
        k >= 8   ? small.template operator()<false, 8>()
        : k >= 4 ? small.template operator()<false, 4>()
                 : small.template operator()<false, 2>();
      }
      return y;
    }
    // The sign trick needs activation codes of at most 127 in magnitude (Int8TileAvx2).
    if (isa == Isa::kAvx2 && steps && std::find(a.q.begin(), a.q.end(), int8_t{-128}) != a.q.end())
      isa = Isa::kPortable;
    if (grouped) {
      run.template operator()<kInt8Groups, 4>(
          [&](int64_t r, int64_t g) { GroupedTilePortable(w, s, o, nb, g, a, in_, r, yd, out_, out_); },
          [&]<int M, int N>(int64_t r, int64_t g) {
            Int8TileAvx2<M, true>(w, s, o, nb, g, a, in_, r, yd, out_, out_);
          },
          [&]<int M, int N>(int64_t r, int64_t g) {
            GroupedTile<M, N>(w, s, o, nb, g, a, in_, r, yd, out_, out_);
          });
    } else {
      run.template operator()<kInt8Groups, 4>(
          [&](int64_t r, int64_t g) { Int8TilePortable(w, s, nb, g, a, in_, r, yd, out_, out_); },
          [&]<int M, int N>(int64_t r, int64_t g) {
            Int8TileAvx2<M, false>(w, s, nullptr, nb, g, a, in_, r, yd, out_, out_);
          },
          [&]<int M, int N>(int64_t r, int64_t g) {
            Int8Tile<M, N>(w, s, nb, g, a, in_, r, yd, out_, out_);
          });
    }
  } else if (kind_ == Kind::kLevels16) {
    const float* lv = levels_.data();
    const float* xd = x.data();
    const int64_t st = steps_, lg = level_group_;
    run.template operator()<kBf16Groups, 6>(
        [&](int64_t r, int64_t g) { LevelsTilePortable(w, s, lv, st, lg, g, xd, r, yd, out_, out_); },
        [&]<int M, int N>(int64_t r, int64_t g) {
          LevelsTileAvx2<M>(w, s, lv, st, lg, g, xd, r, yd, out_, out_);
        },
        [&]<int M, int N>(int64_t r, int64_t g) {
          LevelsTile<M, N>(w, s, lv, st, lg, g, xd, r, yd, out_, out_);
        });
  } else if (kind_ == Kind::kF16 || kind_ == Kind::kF32) {
    const float* xd = x.data();
    const int64_t st = steps_;
    auto wide = [&]<typename E>() {
      run.template operator()<kBf16Groups, 6>(
          [&](int64_t r, int64_t g) { WideTilePortable<E>(w, st, g, xd, r, yd, out_, out_); },
          [&]<int M, int N>(int64_t r, int64_t g) { WideTileAvx2<E, M>(w, st, g, xd, r, yd, out_, out_); },
          [&]<int M, int N>(int64_t r, int64_t g) { WideTile<E, M, N>(w, st, g, xd, r, yd, out_, out_); });
    };
    if (kind_ == Kind::kF16) {
      wide.template operator()<uint16_t>();
    } else {
      wide.template operator()<float>();
    }
  } else {
    const std::vector<uint16_t> xb = RoundActsBf16(x, steps_);
    std::vector<float> xf;  // AVX2: the activations widened, subnormals read as 0
    if (isa == Isa::kAvx2) {
      xf.resize(xb.size());
      if (!BF16FmaIsExact(bf16_exponents_, ScanBf16(xb.data(), static_cast<int64_t>(xb.size()), xf.data())))
        isa = Isa::kPortable;
    }
    const int64_t st = steps_;
    run.template operator()<kBf16Groups, 5>(
        [&](int64_t r, int64_t g) { Bf16TilePortable(w, st, g, xb.data(), r, yd, out_, out_); },
        [&]<int M, int N>(int64_t r, int64_t g) { Bf16TileAvx2<M>(w, st, g, xf.data(), r, yd, out_, out_); },
        [&]<int M, int N>(int64_t r, int64_t g) { Bf16Tile<M, N>(w, st, g, xb.data(), r, yd, out_, out_); });
  }
  return y;
}

float PackedWeight::PackedValue(int64_t n, int64_t k) const {
  const int64_t g = n / kLanes, l = n % kLanes;
  if (kind_ == Kind::kBf16) {
    const uint16_t* d = reinterpret_cast<const uint16_t*>(data_.data());
    return BF16ToF32(d[((g * steps_ + k / 2) * kLanes + l) * 2 + k % 2]);
  }
  if (kind_ == Kind::kF16) return F16ToF32(reinterpret_cast<const uint16_t*>(data_.data())[(g * steps_ + k) * kLanes + l]);
  if (kind_ == Kind::kF32) return reinterpret_cast<const float*>(data_.data())[(g * steps_ + k) * kLanes + l];
  if (kind_ == Kind::kLevels16) {
    const uint8_t b = data_[(g * (steps_ / 2) + k / 2) * kLanes + l];
    return levels_[k % 2 ? b >> 4 : b & 15] * scales_[(g * (steps_ / level_group_) + k / level_group_) * kLanes + l];
  }
  const int64_t b = k / kBlock, i = k % kBlock;
  const int code = static_cast<int>(data_[(g * steps_ + b) * 512 + (i / 4) * 64 + l * 4 + i % 4]) - 128;
  if (kind_ == Kind::kInt8) return static_cast<float>(code) * scales_[(g * steps_ + b) * kLanes + l];
  const int64_t si = ((g * steps_ + b) * 2 + i / 16) * kLanes + l;
  const float v = static_cast<float>(code) * scales_[si];
  return offsets_.empty() ? v : v + offsets_[si];
}

bool PackedWeight::KeepInputsApart(std::span<const int64_t> features) {
  if (features.empty()) return true;
  if (kind_ != Kind::kInt8 && kind_ != Kind::kInt8Grouped) return false;
  for (size_t j = 0; j < features.size(); ++j)
    if (features[j] < 0 || features[j] >= in_ || (j > 0 && features[j] <= features[j - 1])) return false;
  std::vector<int64_t> merged;
  std::set_union(outlier_inputs_.begin(), outlier_inputs_.end(), features.begin(), features.end(),
                 std::back_inserter(merged));
  std::vector<float> values(merged.size() * out_);
  size_t old = 0;
  for (size_t j = 0; j < merged.size(); ++j) {
    float* vj = values.data() + j * out_;
    if (old < outlier_inputs_.size() && outlier_inputs_[old] == merged[j]) {  // already apart
      std::copy_n(outlier_values_.data() + old++ * out_, out_, vj);
      continue;
    }
    for (int64_t n = 0; n < out_; ++n) vj[n] = PackedValue(n, merged[j]);
  }
  outlier_inputs_ = std::move(merged);
  outlier_values_ = std::move(values);
  return true;
}

std::vector<double> PackedWeight::CodedRowSums() const {
  std::vector<uint8_t> apart(in_, 0);
  for (int64_t k : outlier_inputs_) apart[k] = 1;
  std::vector<double> sums(out_, 0.0);
#pragma omp parallel for schedule(static) if (out_ * in_ > (int64_t{1} << 20))
  for (int64_t n = 0; n < out_; ++n) {
    double s = 0;
    for (int64_t k = 0; k < in_; ++k)
      if (!apart[k]) s += PackedValue(n, k);
    sums[n] = s;
  }
  return sums;
}

RowMatrix PackedWeight::ToF32() const {
  RowMatrix w(out_, in_);
  for (int64_t n = 0; n < out_; ++n)
    for (int64_t k = 0; k < in_; ++k) w(n, k) = PackedValue(n, k);
  for (size_t j = 0; j < outlier_inputs_.size(); ++j)
    for (int64_t n = 0; n < out_; ++n) w(n, outlier_inputs_[j]) = outlier_values_[j * out_ + n];
  for (size_t n = 0; n < row_scales_.size(); ++n) w.row(n) *= row_scales_[n];
  return w;
}

bool PackedWeight::IsZero() const {
  if (out_ == 0 || in_ == 0) return false;
  if (kind_ == Kind::kBf16 || kind_ == Kind::kF16) {  // both: the sign is the top bit
    const uint16_t* d = reinterpret_cast<const uint16_t*>(data_.data());
    for (size_t i = 0; i < data_.size() / 2; ++i)
      if ((d[i] & 0x7FFF) != 0) return false;
    return true;
  }
  if (kind_ == Kind::kF32) {
    const uint32_t* d = reinterpret_cast<const uint32_t*>(data_.data());
    for (size_t i = 0; i < data_.size() / 4; ++i)
      if ((d[i] & 0x7FFFFFFFu) != 0) return false;
    return true;
  }
  const RowMatrix w = ToF32();  // the codes
  return (w.array() == 0.f).all();
}

}  // namespace compress
