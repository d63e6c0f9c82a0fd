// Elementary functions written so that loops calling them vectorize (no libm call, no
// branch), with the same results on every machine and libm version: a finiteness test, e^x
// for x <= 0 (the form softmax and log-sum-exp use after subtracting the maximum), rounding.
// Without AVX-512's masks GCC vectorizes their selects only under -fno-trapping-math (set on
// the files whose loops call them).
#pragma once

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>

namespace compress {

// std::isfinite(v) as a comparison that vectorizes (GCC keeps std::isfinite a call or a
// branch in loops): NaN and +-inf fail it.
inline bool IsFiniteValue(float v) { return std::fabs(v) <= std::numeric_limits<float>::max(); }

// e^x for x <= 0 within 2 ulp (0 below -87.5, where it underflows), NaN for NaN.
// Cody-Waite reduction x = n ln2 + r, |r| <= ln2 / 2, and a degree-7 Taylor polynomial of e^r.
inline float ExpNonPositive(float x) {
  const float xc = x < -87.5f ? -87.5f
                   : x > 88.f ? 88.f
                              : x;  // NaN stays NaN; past the contract, no overflow of n
  float n = (xc * 1.44269504088896341f + 12582912.f) - 12582912.f;  // round to nearest
  n = n == n ? n : 0.f;
  const float r = (xc - n * 0.693145751953125f) - n * 1.42860682030941723e-6f;
  float p = 1.f / 5040.f;
  p = p * r + 1.f / 720.f;
  p = p * r + 1.f / 120.f;
  p = p * r + 1.f / 24.f;
  p = p * r + 1.f / 6.f;
  p = p * r + 0.5f;
  p = p * r + 1.f;
  p = p * r + 1.f;
  const int32_t e = static_cast<int32_t>(n);  // >= -126: xc >= -87.5
  const float scale = std::bit_cast<float>(static_cast<uint32_t>(e + 127) << 23);
  const float y = x < -87.5f ? 0.f : p * scale;
  return x == x ? y : x;
}

// e^x for x <= 0 in f64 within 2 ulp (0 below -708.5, where it underflows), NaN for NaN.
inline double ExpNonPositive(double x) {
  const double xc = x < -708.5  ? -708.5
                    : x > 709.0 ? 709.0
                                : x;  // (x > 0 is past the contract: no overflow of n)
  double n = (xc * 1.4426950408889634074 + 6755399441055744.0) - 6755399441055744.0;
  n = n == n ? n : 0.0;
  const double r = (xc - n * 0.693147180369123816490) - n * 1.90821492927058770002e-10;
  double p = 1.0 / 6227020800.0;                 // 1 / 13!
  p = p * r + 1.0 / 479001600.0;                 // 1 / 12!
  p = p * r + 1.0 / 39916800.0;
  p = p * r + 1.0 / 3628800.0;
  p = p * r + 1.0 / 362880.0;
  p = p * r + 1.0 / 40320.0;
  p = p * r + 1.0 / 5040.0;
  p = p * r + 1.0 / 720.0;
  p = p * r + 1.0 / 120.0;
  p = p * r + 1.0 / 24.0;
  p = p * r + 1.0 / 6.0;
  p = p * r + 0.5;
  p = p * r + 1.0;
  p = p * r + 1.0;
  // n >= -1022 (xc >= -708.5): an int32 conversion, which AVX2 has for doubles (int64 needs AVX-512).
  const int64_t e = static_cast<int32_t>(n);
  const double scale = std::bit_cast<double>(static_cast<uint64_t>(e + 1023) << 52);
  const double y = x < -708.5 ? 0.0 : p * scale;
  return x == x ? y : x;
}

// roundf(v) (half away from zero) as an int for |v| <= 128, in operations that vectorize
// (std::trunc / std::round do not, under GCC's default trapping math): v + copysign(0.5 - 2^-25, v),
// truncated by the conversion. Checked for every float of that range (tests/core/vector_math_test.cc).
inline int32_t RoundHalfAwaySmall(float v) { return static_cast<int32_t>(v + std::copysign(0.49999997f, v)); }

}  // namespace compress
