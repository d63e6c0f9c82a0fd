// AVX2 forms of core/codebook.h's vector coders (CodebookCoder16, MinifloatCode16) for CPUs
// without AVX-512: 8 values a vector, the same codes. Included by the quantizers' sources only.
#pragma once

#include "core/codebook.h"

#if defined(__AVX2__) && !defined(__AVX512F__)
#include <immintrin.h>

#include <limits>

namespace compress {

// CodebookCoder16's codes for 8 values at a time with AVX2: the count of cuts below each
// value from its bucket where the codebook has them (CodebookCoder16 says why that count is
// the one comparing with all 15 gives; the 32 bucket starts, at most 14, as bytes looked up by
// PSHUFB), else by comparing with all 15 (the unused ones NaN, never below); then the first cut
// not below it (the only one it can equal) and the codes looked up in registers, ties to the
// even code of the two levels around the cut (Encode's rule).
struct CodebookCoder8 {
  __m256 cut_lo, cut_hi, cut[15];
  __m256i ord_lo, ord_hi;
  __m256i start_lo = _mm256_setzero_si256(), start_hi = _mm256_setzero_si256();  // bucket starts 0-15, 16-31
  __m256 from = _mm256_setzero_ps(), per = _mm256_setzero_ps();
  bool buckets = false;
  explicit CodebookCoder8(const Codebook& b)
      : cut_lo(_mm256_load_ps(b.cut16())),
        cut_hi(_mm256_load_ps(b.cut16() + 8)),
        ord_lo(_mm256_load_si256(reinterpret_cast<const __m256i*>(b.ord16()))),
        ord_hi(_mm256_load_si256(reinterpret_cast<const __m256i*>(b.ord16() + 8))) {
    for (int c = 0; c < 15; ++c) cut[c] = _mm256_set1_ps(b.cut16()[c]);
    if (const int32_t* start = b.bucket_start()) {
      alignas(32) int8_t lo[32], hi[32];  // each 16-byte table in both halves (PSHUFB looks up per half)
      for (int j = 0; j < 32; ++j) {
        lo[j] = static_cast<int8_t>(start[j % 16]);
        hi[j] = static_cast<int8_t>(start[16 + j % 16]);
      }
      start_lo = _mm256_load_si256(reinterpret_cast<const __m256i*>(lo));
      start_hi = _mm256_load_si256(reinterpret_cast<const __m256i*>(hi));
      from = _mm256_set1_ps(b.bucket_from());
      per = _mm256_set1_ps(b.bucket_per());
      buckets = true;
    }
  }
  // The count of cuts below each of 8 values, and where a value equals the first cut not below
  // it (Code's first step). With buckets that cut is the start's one: a value above it has the
  // next cut past its bucket's widened upper edge (BuildBuckets), so strictly above the value.
  __m256i Count(__m256 val, __m256* tie) const {
    __m256i cnt = _mm256_setzero_si256();
    __m256 next;  // the first cut not below the value, or (buckets) the start's
    if (buckets) {
      // bucket clamp((v - from) * per, 0, 31) (a NaN to 0, as no cut is below it); its start: the
      // low byte of each lane indexes the table (its other bytes pick table bytes, masked off)
      const __m256i j = _mm256_cvttps_epi32(
          _mm256_min_ps(_mm256_max_ps(_mm256_mul_ps(_mm256_sub_ps(val, from), per), _mm256_setzero_ps()),
                        _mm256_set1_ps(31.f)));
      const __m256i start = _mm256_and_si256(
          _mm256_blendv_epi8(_mm256_shuffle_epi8(start_lo, j), _mm256_shuffle_epi8(start_hi, j),
                             _mm256_cmpgt_epi32(j, _mm256_set1_epi32(15))),
          _mm256_set1_epi32(0xFF));
      next = _mm256_castsi256_ps(Lookup(_mm256_castps_si256(cut_lo), _mm256_castps_si256(cut_hi), start));
      cnt = _mm256_sub_epi32(start, _mm256_castps_si256(_mm256_cmp_ps(next, val, _CMP_LT_OQ)));
    } else {
      for (int c = 0; c < 15; ++c) {
        cnt = _mm256_sub_epi32(cnt, _mm256_castps_si256(_mm256_cmp_ps(cut[c], val, _CMP_LT_OQ)));
      }
      next = _mm256_castsi256_ps(Lookup(_mm256_castps_si256(cut_lo), _mm256_castps_si256(cut_hi), cnt));
    }
    *tie = _mm256_cmp_ps(next, val, _CMP_EQ_OQ);
    return cnt;
  }
  // Entry idx (0..15) of a 16-entry table held as two registers.
  static __m256i Lookup(__m256i lo, __m256i hi, __m256i idx) {
    const __m256 high = _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28));  // bit 3 to the sign
    return _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(_mm256_permutevar8x32_epi32(lo, idx)),
                                                _mm256_castsi256_ps(_mm256_permutevar8x32_epi32(hi, idx)),
                                                high));
  }
  // The codes (int32 lanes) of 8 values x / s (non-finite x as 0).
  __m256i Code(__m256 val) const {
    __m256 tie;
    const __m256i cnt = Count(val, &tie);
    __m256i code = Lookup(ord_lo, ord_hi, cnt);
    // On a cut (then cnt <= 14): the upper level's code where the lower's is odd.
    if (!_mm256_testz_ps(tie, tie)) {
      const __m256i up = Lookup(ord_lo, ord_hi, _mm256_add_epi32(cnt, _mm256_set1_epi32(1)));
      const __m256i odd =
          _mm256_cmpeq_epi32(_mm256_and_si256(code, _mm256_set1_epi32(1)), _mm256_set1_epi32(1));
      code = _mm256_blendv_epi8(code, up, _mm256_and_si256(_mm256_castps_si256(tie), odd));
    }
    return code;
  }
  // EncodeScaled's codes of 8 values x at `scale`: x / scale, a non-finite x as 0.
  __m256i CodeScaled(__m256 x, __m256 scale) const {
    const __m256 finite = _mm256_cmp_ps(_mm256_andnot_ps(_mm256_set1_ps(-0.f), x),
                                        _mm256_set1_ps(std::numeric_limits<float>::max()), _CMP_LE_OQ);
    return Code(_mm256_and_ps(finite, _mm256_div_ps(x, scale)));
  }
};

// The two roundings of a magnitude a >= 0 both minifloat steps below share: a x steps to the
// nearest even integer (below `normal`), and a's bits with the mantissa rounded to kMantissa
// bits, nearest even (from there; the bits below them are left for the caller to drop).
inline __m256 MinifloatSmall8(__m256 a, float steps) {
  return _mm256_round_ps(_mm256_mul_ps(a, _mm256_set1_ps(steps)),
                         _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}
template <int kMantissa>
inline __m256i MinifloatRoundedBits8(__m256 a) {
  constexpr int kDrop = 23 - kMantissa;
  const __m256i b = _mm256_castps_si256(a);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(b, kDrop), _mm256_set1_epi32(1));
  return _mm256_add_epi32(_mm256_add_epi32(b, _mm256_set1_epi32((1 << (kDrop - 1)) - 1)), lsb);
}

// MinifloatCode16 for 8 values (the same steps with AVX2).
template <int kMantissa>
inline __m256i MinifloatCode8(__m256 val, float steps, float normal, int offset) {
  constexpr int kDrop = 23 - kMantissa;
  const __m256 a = _mm256_andnot_ps(_mm256_set1_ps(-0.f), val);
  const __m256i small = _mm256_cvtps_epi32(MinifloatSmall8(a, steps));
  const __m256i big = _mm256_sub_epi32(_mm256_srli_epi32(MinifloatRoundedBits8<kMantissa>(a), kDrop),
                                       _mm256_set1_epi32(offset));
  const __m256 is_small = _mm256_cmp_ps(a, _mm256_set1_ps(normal), _CMP_LT_OQ);
  const __m256i mag = _mm256_min_epi32(
      _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(big), _mm256_castsi256_ps(small), is_small)),
      _mm256_set1_epi32(7));
  const __m256i negative =
      _mm256_andnot_si256(_mm256_cmpeq_epi32(mag, _mm256_setzero_si256()),
                          _mm256_castps_si256(_mm256_cmp_ps(val, _mm256_setzero_ps(), _CMP_LT_OQ)));
  return _mm256_or_si256(mag, _mm256_and_si256(negative, _mm256_set1_epi32(8)));
}
inline __m256i E2m1Code8(__m256 val) { return MinifloatCode8<1>(val, 2.f, 2.f, 126 * 2); }
inline __m256i E3m0Code8(__m256 val) { return MinifloatCode8<0>(val, 4.f, 0.25f, 127 - 3); }
inline __m256i E1m2Code8(__m256 val) { return MinifloatCode8<2>(val, 2.f, 2.f, 127 * 4); }

// The level (not the code) MinifloatCode8 chooses for 8 values a >= 0 or +inf (the top level, as
// the code 7 it gets), by the same roundings without the code: below `normal` round(a x steps) /
// steps (steps is a power of two: exact), else a's rounded bits cleared below kMantissa, at most `top`
// (_mm256_min_ps returns its second operand for a NaN first). Six fewer steps than the code and a
// table lookup: format=auto's estimate needs only the level of |x| / s. A NaN (the estimate's 0 / 0
// when s underflows to 0) gives the top level or, for E3M0, -0: finite either way, so level x 0 - 0
// is a zero as with the code's level.
template <int kMantissa>
inline __m256 MinifloatLevel8(__m256 a, float steps, float normal, float top) {
  constexpr int kDrop = 23 - kMantissa;
  const __m256 small = _mm256_mul_ps(MinifloatSmall8(a, steps), _mm256_set1_ps(1.f / steps));
  const __m256 big = _mm256_castsi256_ps(
      _mm256_and_si256(MinifloatRoundedBits8<kMantissa>(a), _mm256_set1_epi32(~((1 << kDrop) - 1))));
  const __m256 is_small = _mm256_cmp_ps(a, _mm256_set1_ps(normal), _CMP_LT_OQ);
  return _mm256_min_ps(_mm256_blendv_ps(big, small, is_small), _mm256_set1_ps(top));
}
inline __m256 E2m1Level8(__m256 a) { return MinifloatLevel8<1>(a, 2.f, 2.f, 6.f); }
inline __m256 E3m0Level8(__m256 a) { return MinifloatLevel8<0>(a, 4.f, 0.25f, 16.f); }
inline __m256 E1m2Level8(__m256 a) { return MinifloatLevel8<2>(a, 2.f, 2.f, 3.5f); }
}  // namespace compress
#endif
