// 4-bit codebook formats: each code indexes a table of 16 values that a per-group scale
// multiplies (w' = levels[q] * s). The table and the nearest-value encoder live here; the
// quantizers that choose scales (absmax, clipping search, MX shared exponents) live in
// core/quant.h.
//
// FP4 variants are sign-magnitude minifloats with no inf/NaN, code = sign<<3 | e<<m | mantissa:
//   e2m1: bias 1, magnitudes {0, 0.5, 1, 1.5, 2, 3, 4, 6}   (OCP E2M1, the MXFP4 element)
//   e3m0: bias 3, magnitudes {0, 0.25, 0.5, 1, 2, 4, 8, 16}
//   e1m2: bias 0, magnitudes {0, 0.5, 1, 1.5, 2, 2.5, 3, 3.5}
// (an exponent bias is a power-of-two factor, which the per-group scale absorbs, so these
// three tables cover every bias LLM-FP4 searches). NF4 codes index kNF4Levels (ascending).
#pragma once

#include <array>
#include <cstdint>
#include <limits>
#include <span>
#include <string>
#include <string_view>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "absl/status/statusor.h"

namespace compress {

struct Codebook {
  std::string name;  // "fp4-e2m1", "fp4-e3m0", "fp4-e1m2", "nf4"
  std::array<float, 16> levels{};
  float max_abs = 0;  // largest |level|
  // Code of the nearest level; a tie goes to the even code (round-half-to-even for the
  // minifloat tables, as the OCP MX spec asks). NaN encodes as +0, +-inf as +-max.
  uint8_t Encode(float x) const;
  // codes[i * code_stride] = Encode(x[i * stride] / scale) for n values (non-finite x as 0):
  // counts the cuts below each value (branch-free), with the scalar tie rule only where a
  // value sits exactly on a cut.
  void EncodeScaled(const float* x, int64_t n, int64_t stride, float scale, uint8_t* codes,
                    int64_t code_stride) const;
  // The vector encoder's tables (CodebookCoder16).
  const float* cut16() const { return cut16_.data(); }
  const int32_t* ord16() const { return ord16_.data(); }
  // Its buckets: 32 equal ones from bucket_from() on, bucket_per() of them per unit; start[j]
  // = the count of cuts below bucket j's lower edge less an eighth of its width (at most 14);
  // null when some bucket, widened by that eighth on both sides, reaches two cuts.
  const int32_t* bucket_start() const { return buckets_ ? bucket_start_.data() : nullptr; }
  float bucket_from() const { return bucket_from_; }
  float bucket_per() const { return bucket_per_; }

 private:
  friend const Codebook& MakeCodebookFor(std::string_view);
  std::array<float, 15> cuts_{};     // midpoints between consecutive distinct values
  std::array<uint8_t, 16> order_{};  // codes of the distinct values, ascending
  int distinct_ = 0;
  // The vector encoder's tables: the cuts with NaN past the used ones (never below nor equal
  // to a value), and order_ widened.
  alignas(64) std::array<float, 16> cut16_{};
  alignas(64) std::array<int32_t, 16> ord16_{};
  alignas(64) std::array<int32_t, 32> bucket_start_{};
  float bucket_from_ = 0, bucket_per_ = 0;
  bool buckets_ = false;
  void Build();
  void BuildBuckets();
};

#if defined(__AVX512F__)
// Encode for 16 values at a time, the codes as int32 lanes: `val` is x / s with non-finite x
// as 0. The count of cuts below each value (the cuts ascend; the unused ones, NaN at the end,
// compare like +infinity), codes looked up in a register; a value on cut i lies between levels
// i and i + 1 and takes the even code of the two (Encode's tie rule). The count: where 32 equal
// buckets over [lowest, highest level], each widened by an eighth of its width on both sides,
// hold at most one cut (NF4: cuts at least 0.08 apart, a widened bucket 0.078 wide; E2M1, E1M2),
// the value's bucket (clamped to the first / last outside the levels' range; its float rounding
// is far inside the margin) gives the count below the bucket's widened lower edge (capped at
// 14), and one comparison with the next cut finishes it; else a binary search of four steps of
// 8, 4, 2, 1 (indices stay <= 14). Both give the count that comparing with all 15 would.
struct CodebookCoder16 {
  __m512 cutv;
  __m512i ordv;
  __m512i start_lo = _mm512_setzero_si512(), start_hi = _mm512_setzero_si512();  // Codebook::bucket_start()
  __m512 from = _mm512_setzero_ps(), per = _mm512_setzero_ps();  // bucket of v: clamp((v - from) * per, 0, 31)
  bool buckets = false;
  explicit CodebookCoder16(const Codebook& b) : cutv(_mm512_load_ps(b.cut16())), ordv(_mm512_load_si512(b.ord16())) {
    if (const int32_t* start = b.bucket_start()) {
      start_lo = _mm512_load_si512(start);
      start_hi = _mm512_load_si512(start + 16);
      from = _mm512_set1_ps(b.bucket_from());
      per = _mm512_set1_ps(b.bucket_per());
      buckets = true;
    }
  }
  __m512i Code(__m512 val) const {
    __m512i cnt = _mm512_setzero_si512();
    if (buckets) {
      const __m512 t = _mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(_mm512_sub_ps(val, from), per), _mm512_setzero_ps()),
                                     _mm512_set1_ps(31.f));
      cnt = _mm512_permutex2var_epi32(start_lo, _mm512_cvttps_epi32(t), start_hi);
      const __mmask16 up = _mm512_cmp_ps_mask(_mm512_permutexvar_ps(cnt, cutv), val, _CMP_LT_OQ);
      return CodeOfCount(_mm512_mask_add_epi32(cnt, up, cnt, _mm512_set1_epi32(1)), val);
    }
    for (int step = 8; step >= 1; step /= 2) {
      const __m512 c = _mm512_permutexvar_ps(_mm512_add_epi32(cnt, _mm512_set1_epi32(step - 1)), cutv);
      cnt = _mm512_mask_add_epi32(cnt, _mm512_cmp_ps_mask(c, val, _CMP_LT_OQ), cnt, _mm512_set1_epi32(step));
    }
    return CodeOfCount(cnt, val);
  }
  // The code of values with `cnt` cuts below them (Code's last step).
  __m512i CodeOfCount(__m512i cnt, __m512 val) const {
    const __mmask16 tie = _mm512_cmp_ps_mask(_mm512_permutexvar_ps(cnt, cutv), val, _CMP_EQ_OQ);
    __m512i code = _mm512_permutexvar_epi32(cnt, ordv);
    if (tie) {
      const __m512i up = _mm512_permutexvar_epi32(_mm512_add_epi32(cnt, _mm512_set1_epi32(1)), ordv);
      const __mmask16 odd = _mm512_test_epi32_mask(code, _mm512_set1_epi32(1));
      code = _mm512_mask_mov_epi32(code, tie & odd, up);
    }
    return code;
  }
  // EncodeScaled's codes of 16 values x at `scale`: x / scale, a non-finite x as 0.
  __m512i CodeScaled(__m512 x, __m512 scale) const {
    const __mmask16 finite =
        _mm512_cmp_ps_mask(_mm512_abs_ps(x), _mm512_set1_ps(std::numeric_limits<float>::infinity()), _CMP_LT_OQ);
    return Code(_mm512_maskz_mov_ps(finite, _mm512_div_ps(x, scale)));
  }
};
#endif

#if defined(__AVX512F__)
// CodebookCoder16::Code of an FP4 minifloat table without a table search: the magnitude
// rounded to the grid by arithmetic: below `normal` (the grid's smallest normal level), to the
// nearest even multiple of 1 / `steps` (|v| x steps to the nearest even integer, the code);
// from there the float rounded to kMantissa bits (nearest even on its bits), code = its
// exponent and mantissa bits less `offset`; clamped to 7; the sign bit for a negative value
// whose magnitude is not 0. Round to nearest even is Encode's tie rule on these grids (the even
// code is the even last bit). `val` finite.
template <int kMantissa>
inline __m512i MinifloatCode16(__m512 val, float steps, float normal, int offset) {
  constexpr int kDrop = 23 - kMantissa;
  const __m512 a = _mm512_abs_ps(val);
  const __m512i small = _mm512_cvtps_epi32(
      _mm512_roundscale_ps(_mm512_mul_ps(a, _mm512_set1_ps(steps)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  const __m512i b = _mm512_castps_si512(a);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(b, kDrop), _mm512_set1_epi32(1));
  const __m512i r = _mm512_add_epi32(_mm512_add_epi32(b, _mm512_set1_epi32((1 << (kDrop - 1)) - 1)), lsb);
  const __m512i big = _mm512_sub_epi32(_mm512_srli_epi32(r, kDrop), _mm512_set1_epi32(offset));
  const __mmask16 is_small = _mm512_cmp_ps_mask(a, _mm512_set1_ps(normal), _CMP_LT_OQ);
  const __m512i mag = _mm512_min_epi32(_mm512_mask_mov_epi32(big, is_small, small), _mm512_set1_epi32(7));
  const __mmask16 negative = _mm512_cmp_ps_mask(val, _mm512_setzero_ps(), _CMP_LT_OQ) &
                             _mm512_cmpneq_epi32_mask(mag, _mm512_setzero_si512());
  return _mm512_mask_or_epi32(mag, negative, mag, _mm512_set1_epi32(8));
}
// E2M1 (fp4-e2m1, mxfp4): 0, 0.5, 1, 1.5 in steps of 0.5, then 2, 3, 4, 6 (one mantissa bit:
// (exponent - 126) x 2 + bit gives codes 4..7).
inline __m512i E2m1Code16(__m512 val) { return MinifloatCode16<1>(val, 2.f, 2.f, 126 * 2); }
// E3M0 (fp4-e3m0): 0, then 2^-2 .. 2^4 (no mantissa bit: code = exponent + 3).
inline __m512i E3m0Code16(__m512 val) { return MinifloatCode16<0>(val, 4.f, 0.25f, 127 - 3); }
// E1M2 (fp4-e1m2): 0 .. 3.5 in steps of 0.5 (two mantissa bits from 2: codes 4..7).
inline __m512i E1m2Code16(__m512 val) { return MinifloatCode16<2>(val, 2.f, 2.f, 127 * 4); }
#endif

// The smallest power of two m <= 64 for which every level x m is an integer in [-127, 127]
// (FP4 E2M1 / MXFP4 and E1M2: 2, E3M0: 4), or 0 when there is none (NF4): such codebook
// weights run the int8 product with codes m x level and scales s / m, exactly their values,
// and such FP4 activations give integer codes with step s / m.
int IntegerLevelMultiplier(std::span<const float> levels);

// Known names: fp4-e2m1, fp4-e3m0, fp4-e1m2, nf4 (mxfp4 uses fp4-e2m1's table).
absl::StatusOr<const Codebook*> FindCodebook(std::string_view name);

}  // namespace compress
