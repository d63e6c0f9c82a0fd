// 4-bit codebooks and codebook quantization: tables, round-to-nearest-even encoding, the
// OCP MXFP4 encoding, and per-element error bounds for every scaling rule.
#include "core/codebook.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <limits>
#include <random>

#include "core/codebook_avx2.h"
#include "core/dtype.h"
#include "core/quant.h"

namespace compress {
namespace {

std::vector<float> Magnitudes(const Codebook& b) {
  std::vector<float> m;
  for (int c = 0; c < 8; ++c) m.push_back(b.levels[c]);
  return m;
}

TEST(Codebook, Fp4TablesHoldTheirMinifloatValues) {
  EXPECT_EQ(Magnitudes(**FindCodebook("fp4-e2m1")), (std::vector<float>{0, 0.5, 1, 1.5, 2, 3, 4, 6}));
  EXPECT_EQ(Magnitudes(**FindCodebook("fp4-e3m0")), (std::vector<float>{0, 0.25, 0.5, 1, 2, 4, 8, 16}));
  EXPECT_EQ(Magnitudes(**FindCodebook("fp4-e1m2")), (std::vector<float>{0, 0.5, 1, 1.5, 2, 2.5, 3, 3.5}));
  for (const char* name : {"fp4-e2m1", "fp4-e3m0", "fp4-e1m2"}) {
    const Codebook& b = **FindCodebook(name);
    for (int c = 0; c < 8; ++c) EXPECT_EQ(b.levels[c + 8], -b.levels[c]) << name << " code " << c;
  }
  EXPECT_FALSE(FindCodebook("fp4-e4m3").ok());
}

TEST(Codebook, Nf4UsesTheSixteenPublishedLevels) {
  const Codebook& b = **FindCodebook("nf4");
  // kNF4Levels is checked against the published table in dtype_test.cc.
  for (int c = 0; c < 16; ++c) EXPECT_EQ(b.levels[c], kNF4Levels[c]) << c;
  EXPECT_EQ(b.Encode(0.5626170039176941f), 13);
  EXPECT_EQ(b.Encode(-2.f), 0);
  EXPECT_EQ(b.Encode(0.01f), 7);
}

TEST(Codebook, E2M1EncodingEqualsTheOcpRoundToNearestEven) {
  const Codebook& b = **FindCodebook("fp4-e2m1");
  // Every midpoint is a tie that must go to the even mantissa, plus a dense sweep.
  std::vector<float> xs = {0.25f, 0.75f, 1.25f, 1.75f, 2.5f, 3.5f, 5.f, -0.25f, -2.5f, -5.f, 7.f, -100.f};
  for (int i = -4000; i <= 4000; ++i) xs.push_back(i * 0.00173f);
  for (float x : xs) {
    const float ours = b.levels[b.Encode(x)];
    const float ref = MiniFloatDecode(MiniFloatEncode(x, kE2M1, /*saturate=*/true), kE2M1);
    EXPECT_EQ(ours == 0.f ? 0.f : ours, ref == 0.f ? 0.f : ref) << x;
  }
  EXPECT_EQ(b.levels[b.Encode(2.5f)], 2.f);
  EXPECT_EQ(b.levels[b.Encode(5.f)], 4.f);
  EXPECT_EQ(b.levels[b.Encode(0.25f)], 0.f);
  EXPECT_EQ(b.levels[b.Encode(0.75f)], 1.f);
}

// EncodeScaled (vector lanes, and 16 at a time on AVX-512 builds) against Encode element by
// element: values on cuts (the tie rule), past the table, non-finite (coded as 0), tiny scales,
// every length around the vector width, contiguous and strided.
TEST(Codebook, EncodeScaledEqualsEncodeOfEveryValue) {
  std::mt19937 rng(11);
  std::normal_distribution<float> nd(0.f, 1.f);
  for (const char* name : {"fp4-e2m1", "fp4-e3m0", "fp4-e1m2", "nf4"}) {
    const Codebook& b = **FindCodebook(name);
    std::vector<float> cuts;
    for (int i = 0; i < 16; ++i)
      for (int j = 0; j < 16; ++j)
        if (b.levels[i] < b.levels[j]) cuts.push_back(0.5f * (b.levels[i] + b.levels[j]));
    for (float scale : {1.f, 0.37f, 1e-30f}) {  // scales are > 0 (an all-zero group gets 1)
      for (int64_t n : {1, 15, 16, 17, 63, 64, 65, 200}) {
        std::vector<float> x(n);
        for (int64_t i = 0; i < n; ++i) {
          switch (rng() % 8) {
            case 0: x[i] = cuts[rng() % cuts.size()] * scale; break;  // on a cut (when exact)
            case 1: x[i] = std::numeric_limits<float>::infinity() * (rng() % 2 ? 1.f : -1.f); break;
            case 2: x[i] = std::numeric_limits<float>::quiet_NaN(); break;
            case 3: x[i] = 40.f * nd(rng); break;
            default: x[i] = 2.f * nd(rng) * scale;
          }
        }
        for (int64_t stride : {1, 3}) {
          std::vector<float> xs(n * stride, 9.f);
          for (int64_t i = 0; i < n; ++i) xs[i * stride] = x[i];
          std::vector<uint8_t> got(n * stride, 0xAA);
          b.EncodeScaled(xs.data(), n, stride, scale, got.data(), stride);
          for (int64_t i = 0; i < n; ++i) {
            const float v = std::isfinite(x[i]) ? x[i] / scale : 0.f;
            ASSERT_EQ(got[i * stride], b.Encode(v))
                << name << " scale " << scale << " n " << n << " stride " << stride << " x " << x[i];
          }
        }
      }
    }
  }
}

// Every cut, the floats on either side of it, every level, every edge of the vector coder's 32
// buckets with its neighbours and the extremes, 16 at a time (the AVX-512 lanes' count of cuts
// below a value: by bucket and two comparisons where the table allows, as for NF4; else by
// binary search, as for E3M0's crowded cuts near 0) and one at a time.
TEST(Codebook, EncodeScaledAroundEveryCut) {
  EXPECT_NE((**FindCodebook("nf4")).bucket_start(), nullptr);
  EXPECT_EQ((**FindCodebook("fp4-e3m0")).bucket_start(), nullptr);
  for (const char* name : {"fp4-e2m1", "fp4-e3m0", "fp4-e1m2", "nf4", "mxfp4"}) {
    const Codebook& b = **FindCodebook(name);
    std::vector<float> x = {0.f, -0.f, 1e30f, -1e30f, std::numeric_limits<float>::max(),
                            -std::numeric_limits<float>::max()};
    const float lo = *std::min_element(b.levels.begin(), b.levels.end());
    const float hi = *std::max_element(b.levels.begin(), b.levels.end());
    for (int j = 0; j <= 32; ++j) {
      const float e = lo + static_cast<float>(j) * (hi - lo) / 32.f;
      for (float v : {std::nextafter(e, -INFINITY), e, std::nextafter(e, INFINITY)}) x.push_back(v);
    }
    for (int i = 0; i < 16; ++i) {
      x.push_back(b.levels[i]);
      for (int j = 0; j < 16; ++j) {
        if (!(b.levels[i] < b.levels[j])) continue;
        const float c = 0.5f * (b.levels[i] + b.levels[j]);
        for (float v : {std::nextafter(c, -INFINITY), c, std::nextafter(c, INFINITY)}) x.push_back(v);
      }
    }
    while (x.size() % 16) x.push_back(0.25f);
    std::vector<uint8_t> got(x.size());
    b.EncodeScaled(x.data(), static_cast<int64_t>(x.size()), 1, 1.f, got.data(), 1);
    for (size_t i = 0; i < x.size(); ++i) ASSERT_EQ(got[i], b.Encode(x[i])) << name << " x " << x[i];
  }
}

#if defined(__AVX2__)
// E2m1Code16 / E3m0Code16 / E1m2Code16 (AVX-512) or their AVX2 forms E2m1Code8 ... (arithmetic
// rounding) give Encode's codes: every cut and its neighbours, every level, both zeros, the
// small-region boundaries, huge and tiny values, and 4 million random values over the grids'
// ranges and past them, of both signs.
TEST(Codebook, MinifloatArithmeticCodesEqualTheTableSearch) {
 for (const char* name : {"fp4-e2m1", "fp4-e3m0", "fp4-e1m2"}) {
  SCOPED_TRACE(name);
  const Codebook& b = **FindCodebook(name);
#if defined(__AVX512F__)
  constexpr size_t kWidth = 16;
  auto codes = [&](const float* v, int32_t* out) {
    const __m512 x = _mm512_loadu_ps(v);
    _mm512_storeu_si512(out, b.name == "fp4-e2m1"   ? E2m1Code16(x)
                             : b.name == "fp4-e3m0" ? E3m0Code16(x)
                                                    : E1m2Code16(x));
  };
#else
  constexpr size_t kWidth = 8;
  auto codes = [&](const float* v, int32_t* out) {
    const __m256 x = _mm256_loadu_ps(v);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), b.name == "fp4-e2m1"   ? E2m1Code8(x)
                                                         : b.name == "fp4-e3m0" ? E3m0Code8(x)
                                                                                : E1m2Code8(x));
  };
#endif
  std::vector<float> x = {0.f, -0.f, 1e-45f, -1e-45f, 1e-38f, 2.f, std::nextafter(2.f, 0.f), -2.f, 8.f, 7.99f,
                          0.25f, std::nextafter(0.25f, 0.f), 24.f, 32.f, 1e30f, -1e30f,
                          std::numeric_limits<float>::max(), -std::numeric_limits<float>::max()};
  for (int i = 0; i < 16; ++i) {
    for (float l : {b.levels[i], std::nextafter(b.levels[i], -INFINITY), std::nextafter(b.levels[i], INFINITY)})
      x.push_back(l);
    for (int j = 0; j < 16; ++j) {
      if (!(b.levels[i] < b.levels[j])) continue;
      const float c = 0.5f * (b.levels[i] + b.levels[j]);
      for (float v : {std::nextafter(c, -INFINITY), c, std::nextafter(c, INFINITY)}) x.push_back(v);
    }
  }
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> wide(-40.f, 40.f);
  std::uniform_int_distribution<uint32_t> bits(0, 0x42200000u);  // every float in [0, 40]
  for (int i = 0; i < 2'000'000; ++i) {
    x.push_back(wide(rng));
    const float v = std::bit_cast<float>(bits(rng));
    x.push_back(i % 2 ? v : -v);
  }
  while (x.size() % kWidth) x.push_back(0.25f);
  for (size_t i = 0; i < x.size(); i += kWidth) {
    int32_t got[kWidth];
    codes(x.data() + i, got);
    for (size_t k = 0; k < kWidth; ++k) ASSERT_EQ(got[k], b.Encode(x[i + k])) << "x " << x[i + k];
  }
#if defined(__AVX2__) && !defined(__AVX512F__)
  // The levels format=auto's estimate takes without the codes: for |x| and +inf, bit for bit the
  // level of the coder's code, and for finite x the table search's level; for a NaN (0 / 0) a
  // finite level.
  for (float& v : x) v = std::fabs(v);
  x.push_back(INFINITY);
  for (int i = 0; i < 8; ++i) x.push_back(std::numeric_limits<float>::quiet_NaN());
  while (x.size() % kWidth) x.push_back(0.25f);
  for (size_t i = 0; i < x.size(); i += kWidth) {
    const __m256 v = _mm256_loadu_ps(x.data() + i);
    int32_t got[kWidth];
    float level[kWidth];
    codes(x.data() + i, got);
    _mm256_storeu_ps(level, b.name == "fp4-e2m1"   ? E2m1Level8(v)
                            : b.name == "fp4-e3m0" ? E3m0Level8(v)
                                                   : E1m2Level8(v));
    for (size_t k = 0; k < kWidth; ++k) {
      if (std::isnan(x[i + k])) {
        ASSERT_TRUE(std::isfinite(level[k]));
        continue;
      }
      ASSERT_EQ(std::bit_cast<uint32_t>(level[k]), std::bit_cast<uint32_t>(b.levels[got[k]]))
          << "x " << x[i + k];
      if (std::isfinite(x[i + k])) {
        ASSERT_EQ(got[k], b.Encode(x[i + k])) << "x " << x[i + k];
      }
    }
  }
#endif
 }
}
#endif

TEST(Mxfp4, SharedScaleAndElementsFollowTheOcpSpec) {
  // One block of 32: max |w| = 5 -> shared exponent floor(log2 5) - emax(E2M1)=2 -> 2^0.
  std::vector<float> w(64, 0.f);
  w[0] = 5.f;     // tie between 4 and 6 -> 4 (even)
  w[1] = -0.25f;  // tie between 0 and 0.5 -> 0
  w[2] = 2.9f;    // -> 3
  w[3] = 0.74f;   // -> 0.5
  // Second block: max |w| = 7.9 -> 2^(2-2) = 1, 7.9 saturates to 6; 0.1 rounds to 0.
  w[32] = 7.9f;
  w[33] = 0.1f;
  w[34] = -1.3f;  // -> -1.5
  CodebookOptions o;
  o.format = "mxfp4";
  o.group_size = 32;
  o.scale = CodebookOptions::Scale::kE8M0;
  auto r = QuantizeCodebook(w, 1, 64, o);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->info.scales(), (std::vector<float>{1.f, 1.f}));
  std::vector<float> back(64);
  Dequantize(r->codes, 1, 64, r->info, back.data());
  EXPECT_EQ(back[0], 4.f);
  EXPECT_EQ(back[1], 0.f);
  EXPECT_EQ(back[2], 3.f);
  EXPECT_EQ(back[3], 0.5f);
  EXPECT_EQ(back[32], 6.f);
  EXPECT_EQ(back[33], 0.f);
  EXPECT_EQ(back[34], -1.5f);
  // Small magnitudes: max |w| = 0.01 -> 2^(floor(log2 0.01) - 2) = 2^-9.
  std::vector<float> tiny(32, 0.f);
  tiny[5] = 0.01f;
  auto t = QuantizeCodebook(tiny, 1, 32, o);
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(t->info.scales()[0], std::ldexp(1.f, -9));
  EXPECT_EQ(t->info.levels()[t->codes[5]] * t->info.scales()[0], 6.f * std::ldexp(1.f, -9));  // 5.12 -> 6
}

// Largest gap between consecutive distinct levels: nearest rounding errs at most half of it.
float MaxGap(const Codebook& b) {
  std::vector<float> v(b.levels.begin(), b.levels.end());
  std::sort(v.begin(), v.end());
  float g = 0;
  for (size_t i = 1; i < v.size(); ++i) g = std::max(g, v[i] - v[i - 1]);
  return g;
}

TEST(QuantizeCodebook, ErrorWithinTheFormatsBoundInEveryGroup) {
  const int64_t rows = 64, cols = 64;
  std::mt19937 rng(7);
  std::normal_distribution<float> nd(0.f, 0.05f);
  std::vector<float> w(rows * cols);
  for (auto& x : w) x = nd(rng);
  w[17] = 0.8f;
  using S = CodebookOptions::Scale;
  struct Case {
    const char* format;
    S scale;
    int64_t group;
  };
  for (Case c :
       {Case{"fp4-e2m1", S::kAbsmax, 32}, Case{"fp4-e3m0", S::kAbsmax, 0}, Case{"fp4-e1m2", S::kSearch, 16},
        Case{"fp4-e2m1", S::kSearch, 0}, Case{"nf4", S::kAbsmax, 64}, Case{"mxfp4", S::kE8M0, 32}}) {
    for (int axis : {0, 1}) {
      SCOPED_TRACE(testing::Message() << c.format << " scale " << static_cast<int>(c.scale) << " group "
                                      << c.group << " axis " << axis);
      CodebookOptions o;
      o.format = c.format;
      o.channel_axis = axis;
      o.group_size = c.group;
      o.scale = c.scale;
      auto r = QuantizeCodebook(w, rows, cols, o);
      ASSERT_TRUE(r.ok()) << r.status();
      const Codebook& b = **FindCodebook(c.format);
      const QuantInfo& q = r->info;
      std::vector<float> back(w.size());
      Dequantize(r->codes, rows, cols, q, back.data());
      // Per group: rounding error <= s * gap / 2 inside the representable range, plus what
      // clipping or saturation cuts off above s * max|level|.
      std::vector<float> amax(q.scales().size(), 0.f);
      for (int64_t i = 0; i < rows; ++i)
        for (int64_t j = 0; j < cols; ++j)
          amax[q.ScaleIndex(i, j)] = std::max(amax[q.ScaleIndex(i, j)], std::fabs(w[i * cols + j]));
      double sse = 0;
      for (int64_t i = 0; i < rows; ++i) {
        for (int64_t j = 0; j < cols; ++j) {
          const int64_t si = q.ScaleIndex(i, j);
          const float s = q.scales()[si];
          const double bound = std::max<double>(s * MaxGap(b) / 2, amax[si] - s * b.max_abs) * (1 + 1e-6);
          const double err = std::fabs(back[i * cols + j] - w[i * cols + j]);
          ASSERT_LE(err, bound) << "element " << i << "," << j;
          sse += err * err;
        }
      }
      EXPECT_NEAR(r->weighted_sse, sse, 1e-6 * sse);
      if (c.scale == S::kAbsmax) {
        for (size_t g = 0; g < q.scales().size(); ++g) EXPECT_FLOAT_EQ(q.scales()[g] * b.max_abs, amax[g]);
      }
    }
  }
}

TEST(QuantizeCodebook, ClippingSearchNeverLosesToAbsmaxAndUsesInputWeights) {
  const int64_t rows = 32, cols = 256;
  std::mt19937 rng(3);
  std::student_t_distribution<float> heavy(3.f);  // heavy tails: clipping pays off
  std::vector<float> w(rows * cols);
  for (auto& x : w) x = 0.02f * heavy(rng);
  std::vector<double> h(cols);
  for (int64_t k = 0; k < cols; ++k) h[k] = k % 7 == 0 ? 50.0 : 1.0;
  for (const char* f : {"fp4-e2m1", "fp4-e3m0", "fp4-e1m2"}) {
    CodebookOptions o;
    o.format = f;
    o.group_size = 64;
    o.input_weight = h;
    o.scale = CodebookOptions::Scale::kAbsmax;
    auto plain = QuantizeCodebook(w, rows, cols, o);
    o.scale = CodebookOptions::Scale::kSearch;
    auto searched = QuantizeCodebook(w, rows, cols, o);
    ASSERT_TRUE(plain.ok() && searched.ok());
    EXPECT_LT(searched->weighted_sse, plain->weighted_sse) << f;
  }
}

}  // namespace
}  // namespace compress
