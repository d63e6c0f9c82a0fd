// AVX-512 (and AVX2) steps shared by the kernels that convert a weight and measure the change in one pass
// (core/quant.cc's quantizers, passes/quantize/cast.cc): loads of 16 stored values as f32, and
// WeightErrorChunk's sums kept in vector registers.
#pragma once

#if defined(__AVX512F__)
#include <immintrin.h>

#include <cstdint>

#include "core/dtype.h"
#include "core/weight_error.h"

namespace compress {

// 16 elements of a dense f32 / f16 / bf16 weight from element i, as f32 (LoadAs's values).
template <DType T>
inline __m512 Load16As(const uint8_t* src, int64_t i) {
  if constexpr (T == DType::kF32) {
    return _mm512_loadu_ps(src + 4 * i);
  } else if constexpr (T == DType::kF16) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + 2 * i)));
  } else {
    const __m512i h = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + 2 * i)));
    return _mm512_castsi512_ps(_mm512_slli_epi32(h, 16));
  }
}

// The low and the high 8 of 16 f32 lanes, widened to f64.
inline __m512d LowPd(__m512 f) { return _mm512_cvtps_pd(_mm512_castps512_ps256(f)); }
inline __m512d HighPd(__m512 f) {
  return _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(f), 1)));
}

// WeightErrorChunk::AddSpan for 16 elements from a multiple of 16, in registers: e holds
// max_abs, err2 and ref2 (kWeightErrorLanes = 8: each half of the 16 goes to lanes 0..7 in
// turn), with AddSpan's operations (f64 difference, |d| max, d * d and x * x added unfused).
struct ErrorLanes8 {
  __m512d max_abs, err2, ref2;
  __m512 max16 = _mm512_setzero_ps();  // Add16Exact's |d|, folded into max_abs by Store
  explicit ErrorLanes8(const WeightErrorChunk& c)
      : max_abs(_mm512_loadu_pd(c.max_abs)), err2(_mm512_loadu_pd(c.err2)), ref2(_mm512_loadu_pd(c.ref2)) {}
  void Store(WeightErrorChunk& c) const {
    _mm512_storeu_pd(c.max_abs, _mm512_max_pd(max_abs, _mm512_max_pd(LowPd(max16), HighPd(max16))));
    _mm512_storeu_pd(c.err2, err2);
    _mm512_storeu_pd(c.ref2, ref2);
  }
  void Add8(__m512d r, __m512d changed) {
    const __m512d d = _mm512_sub_pd(changed, r);
    max_abs = _mm512_max_pd(max_abs, _mm512_abs_pd(d));
    err2 = _mm512_add_pd(err2, _mm512_mul_pd(d, d));
    ref2 = _mm512_add_pd(ref2, _mm512_mul_pd(r, r));
  }
  void Add16(__m512 ref, __m512 changed) {
    Add8(LowPd(ref), LowPd(changed));
    Add8(HighPd(ref), HighPd(changed));
  }
  // Add16 given d = changed - ref computed in f32 where that subtraction is exact: the same
  // sums (d * d and ref * ref are exact in f64, so the fused additions round as the unfused
  // ones; the max of |d| is exact in any order and width).
  void Add16Exact(__m512 ref, __m512 d) {
    max16 = _mm512_max_ps(max16, _mm512_abs_ps(d));
    const __m512d dl = LowPd(d), dh = HighPd(d), rl = LowPd(ref), rh = HighPd(ref);
    err2 = _mm512_fmadd_pd(dl, dl, err2);
    err2 = _mm512_fmadd_pd(dh, dh, err2);
    ref2 = _mm512_fmadd_pd(rl, rl, ref2);
    ref2 = _mm512_fmadd_pd(rh, rh, ref2);
  }
};
static_assert(kWeightErrorLanes == 8);

}  // namespace compress

#elif defined(__AVX2__)
#include <immintrin.h>

#include <cstdint>
#include <limits>

#include "core/dtype.h"
#include "core/weight_error.h"

namespace compress {

// The AVX2 forms of the steps above: 8 elements a vector, the 8 f64 lanes of each sum in two
// registers (lanes 0-3, 4-7).

// 8 elements of a dense f32 / f16 / bf16 weight from element i, as f32 (LoadAs's values).
template <DType T>
inline __m256 Load8As(const uint8_t* src, int64_t i) {
  if constexpr (T == DType::kF32) {
    return _mm256_loadu_ps(reinterpret_cast<const float*>(src + 4 * i));
  } else if constexpr (T == DType::kF16) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 2 * i)));
  } else {
    const __m256i h = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 2 * i)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(h, 16));
  }
}

// The low and the high 4 of 8 f32 lanes, widened to f64.
inline __m256d LowPd4(__m256 f) { return _mm256_cvtps_pd(_mm256_castps256_ps128(f)); }
inline __m256d HighPd4(__m256 f) { return _mm256_cvtps_pd(_mm256_extractf128_ps(f, 1)); }
inline __m256d AbsPd4(__m256d d) { return _mm256_andnot_pd(_mm256_set1_pd(-0.0), d); }
inline __m256 AbsPs8(__m256 f) { return _mm256_andnot_ps(_mm256_set1_ps(-0.f), f); }
// All-ones lanes where |x| is finite.
inline __m256 FiniteLanes8(__m256 x) {
  return _mm256_cmp_ps(AbsPs8(x), _mm256_set1_ps(std::numeric_limits<float>::max()), _CMP_LE_OQ);
}

// WeightErrorChunk::AddSpan for 8 elements from a multiple of 8, in registers (ErrorLanes8's
// operations: element k of the 8 to lane k).
struct ErrorLanesAvx2 {
  __m256d max_abs[2], err2[2], ref2[2];
  __m256 max8 = _mm256_setzero_ps();  // Add8Exact's |d|, folded into max_abs by Store
  explicit ErrorLanesAvx2(const WeightErrorChunk& c) {
    for (int h = 0; h < 2; ++h) {
      max_abs[h] = _mm256_loadu_pd(c.max_abs + 4 * h);
      err2[h] = _mm256_loadu_pd(c.err2 + 4 * h);
      ref2[h] = _mm256_loadu_pd(c.ref2 + 4 * h);
    }
  }
  void Store(WeightErrorChunk& c) const {
    _mm256_storeu_pd(c.max_abs, _mm256_max_pd(max_abs[0], LowPd4(max8)));
    _mm256_storeu_pd(c.max_abs + 4, _mm256_max_pd(max_abs[1], HighPd4(max8)));
    for (int h = 0; h < 2; ++h) {
      _mm256_storeu_pd(c.err2 + 4 * h, err2[h]);
      _mm256_storeu_pd(c.ref2 + 4 * h, ref2[h]);
    }
  }
  void Add4(int h, __m256d r, __m256d changed) {
    const __m256d d = _mm256_sub_pd(changed, r);
    max_abs[h] = _mm256_max_pd(max_abs[h], AbsPd4(d));
    err2[h] = _mm256_add_pd(err2[h], _mm256_mul_pd(d, d));
    ref2[h] = _mm256_add_pd(ref2[h], _mm256_mul_pd(r, r));
  }
  void Add8(__m256 ref, __m256 changed) {
    Add4(0, LowPd4(ref), LowPd4(changed));
    Add4(1, HighPd4(ref), HighPd4(changed));
  }
  // Add8 given d = changed - ref computed in f32 where that subtraction is exact (see
  // ErrorLanes8::Add16Exact).
  void Add8Exact(__m256 ref, __m256 d) {
    max8 = _mm256_max_ps(max8, AbsPs8(d));
    const __m256d dl = LowPd4(d), dh = HighPd4(d), rl = LowPd4(ref), rh = HighPd4(ref);
    err2[0] = _mm256_fmadd_pd(dl, dl, err2[0]);
    err2[1] = _mm256_fmadd_pd(dh, dh, err2[1]);
    ref2[0] = _mm256_fmadd_pd(rl, rl, ref2[0]);
    ref2[1] = _mm256_fmadd_pd(rh, rh, ref2[1]);
  }
};
static_assert(kWeightErrorLanes == 8);

}  // namespace compress
#endif
