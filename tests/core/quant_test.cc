// RTN integer quantization: per-element error within s/2, code ranges, zero points.
#include "core/quant.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <random>

#include "core/codebook.h"
#include "core/status.h"

namespace compress {
namespace {

std::vector<float> Weights(int64_t n, uint32_t seed, float offset = 0.f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(offset, 0.05f);
  std::vector<float> w(n);
  for (auto& x : w) x = nd(rng);
  w[3] = 0.9f;  // an outlier, so scales differ between groups
  return w;
}

struct Case {
  int bits;
  bool symmetric;
  int axis;
  int64_t group;
};

TEST(QuantizeRtn, ErrorWithinHalfAScaleEverywhere) {
  const int64_t rows = 24, cols = 64;
  for (int bits : {2, 3, 4, 8}) {
    for (bool sym : {true, false}) {
      for (int axis : {0, 1}) {
        for (int64_t group : {int64_t{0}, int64_t{8}}) {
          SCOPED_TRACE(testing::Message()
                       << bits << " bits sym=" << sym << " axis=" << axis << " group=" << group);
          auto w = Weights(rows * cols, 11 + bits, sym ? 0.f : 0.03f);
          auto r = QuantizeRtn(w, rows, cols, bits, sym, axis, group);
          ASSERT_TRUE(r.ok()) << r.status();
          const auto& [codes, q] = *r;
          const int64_t in = axis == 0 ? cols : rows;
          EXPECT_EQ(q.channels, axis == 0 ? rows : cols);
          EXPECT_EQ(q.groups, group == 0 ? 1 : in / group);
          std::vector<float> back(w.size());
          Dequantize(codes, rows, cols, q, back.data());
          const int lo = sym ? -((1 << (bits - 1)) - 1) : -(1 << (bits - 1)), hi = (1 << (bits - 1)) - 1;
          for (int64_t r2 = 0; r2 < rows; ++r2) {
            for (int64_t c = 0; c < cols; ++c) {
              const int64_t i = r2 * cols + c;
              ASSERT_GE(codes[i], lo);
              ASSERT_LE(codes[i], hi);
              const float s = q.scales()[q.ScaleIndex(r2, c)];
              ASSERT_LE(std::fabs(back[i] - w[i]), 0.5f * s * (1 + 1e-5f) + 1e-7f) << "at " << r2 << "," << c;
            }
          }
        }
      }
    }
  }
}

TEST(QuantizeRtn, SymmetricInt8ScaleIsAbsmaxOver127) {
  std::vector<float> w = {0.5f, -1.27f, 0.f,   0.01f,   // row 0: absmax 1.27
                          2.f,  1.f,    -0.5f, 0.25f};  // row 1: absmax 2
  auto r = QuantizeRtn(w, 2, 4, 8, true, 0, 0);
  ASSERT_TRUE(r.ok());
  EXPECT_FLOAT_EQ(r->second.scales()[0], 1.27f / 127);
  EXPECT_FLOAT_EQ(r->second.scales()[1], 2.f / 127);
  EXPECT_EQ(r->first[1], -127);
  EXPECT_EQ(r->first[4], 127);
  EXPECT_EQ(r->first[2], 0);
}

TEST(QuantizeRtn, AsymmetricRepresentsZeroExactlyAndUsesFullRange) {
  std::vector<float> w = {0.f, 0.1f, 0.2f, 0.3f, 0.4f, 0.5f, 0.6f, 0.7f};
  auto r = QuantizeRtn(w, 1, 8, 4, false, 0, 0);
  ASSERT_TRUE(r.ok());
  std::vector<float> back(8);
  Dequantize(r->first, 1, 8, r->second, back.data());
  EXPECT_EQ(back[0], 0.f);
  EXPECT_EQ(r->first[0], -8);
  EXPECT_EQ(r->first[7], 7);
  EXPECT_NEAR(back[7], 0.7f, 1e-6f);
}

TEST(QuantizeRtn, RejectsGroupsThatDoNotDivide) {
  std::vector<float> w(6 * 10, 0.1f);
  auto r = QuantizeRtn(w, 6, 10, 4, true, 0, 4);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(r.status().message(), "group size 4 does not divide the input dimension 10");
  EXPECT_EQ(QuantizeRtn(w, 6, 10, 9, true, 0, 0).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace compress

namespace compress {
namespace {

TEST(RoundScaleUp, GivesTheSmallestF16OrBf16AtLeastTheScale) {
  for (float s : {1e-7f, 3.3e-5f, 0.0123456f, 0.5f, 1.f, 1.0001f, 300.7f}) {
    for (DType t : {DType::kF16, DType::kBF16}) {
      auto r = RoundScaleUp(s, t);
      ASSERT_TRUE(r.ok());
      EXPECT_GE(*r, s);
      const bool f16 = t == DType::kF16;
      const uint16_t bits = f16 ? F32ToF16(*r) : F32ToBF16(*r);
      EXPECT_EQ(f16 ? F16ToF32(bits) : BF16ToF32(bits), *r) << "representable";
      EXPECT_LT(f16 ? F16ToF32(bits - 1) : BF16ToF32(bits - 1), s) << "smallest";
    }
  }
  EXPECT_FALSE(RoundScaleUp(1.f, DType::kI8).ok());
}

// Against the definition (round to nearest, then one encoding up when that fell below s) on
// random bit patterns of every positive exponent, f16's subnormals and overflow, and values
// that are exact in the narrower type.
TEST(RoundScaleUp, EqualsNearestThenOneUpOnEveryRange) {
  auto reference = [](float s, DType t) {
    const bool f16 = t == DType::kF16;
    uint16_t h = f16 ? F32ToF16(s) : F32ToBF16(s);
    if ((f16 ? F16ToF32(h) : BF16ToF32(h)) < s) ++h;
    return f16 ? F16ToF32(h) : BF16ToF32(h);
  };
  std::mt19937 rng(5);
  std::vector<float> values = {6e-8f, 5.9604645e-8f, 6.1035156e-5f, 65504.f, 65505.f, 65519.f, 65520.f, 1e30f,
                               std::numeric_limits<float>::max(), std::numeric_limits<float>::denorm_min()};
  for (int i = 0; i < 200000; ++i) {
    uint32_t b = rng() & 0x7FFFFFFFu;
    if (i % 4 == 0) b &= 0xFFFF0000u;  // exact in bf16
    if (i % 4 == 1) b &= 0xFFFFE000u;  // exact in f16 where f16 is normal
    float v;
    std::memcpy(&v, &b, 4);
    if (std::isfinite(v) && v > 0) values.push_back(v);
  }
  for (float s : values) {
    for (DType t : {DType::kF16, DType::kBF16}) {
      auto r = RoundScaleUp(s, t);
      ASSERT_TRUE(r.ok());
      const float want = reference(s, t);
      ASSERT_EQ(std::memcmp(&*r, &want, 4), 0) << s << " " << DTypeName(t) << " got " << *r << " want " << want;
    }
  }
}

TEST(QuantizeRtn, F16ScalesKeepTheHalfScaleBound) {
  std::vector<float> w(64 * 96);
  for (size_t i = 0; i < w.size(); ++i)
    w[i] = std::sin(0.37f * static_cast<float>(i)) * (1 + (i % 7)) * 1e-3f;
  for (int bits : {4, 8}) {
    for (bool sym : {true, false}) {
      auto r = QuantizeRtn(w, 64, 96, bits, sym, 0, 32, DType::kF16);
      ASSERT_TRUE(r.ok());
      const QuantInfo& q = r->second;
      std::vector<float> back(w.size());
      Dequantize(r->first, 64, 96, q, back.data());
      for (int64_t row = 0; row < 64; ++row) {
        for (int64_t c = 0; c < 96; ++c) {
          const float s = q.scales()[q.ScaleIndex(row, c)];
          ASSERT_EQ(F16ToF32(F32ToF16(s)), s);
          ASSERT_LE(std::fabs(back[row * 96 + c] - w[row * 96 + c]), 0.5f * s * (1 + 1e-6f));
        }
      }
    }
  }
}

// What quantize-int computed before QuantizeRtnMeasured, step by step: decode to f32,
// QuantizeRtn, Dequantize, CompareWeights and the max |w - w'| / (s/2) over scale runs.
struct Reference {
  std::vector<int8_t> codes;
  QuantInfo info;
  WeightError error;
  double worst = 0;
};
Reference Unfused(const std::vector<float>& w, int64_t rows, int64_t cols, int bits, bool sym, int axis,
                  int64_t group, DType scale_dtype) {
  auto r = QuantizeRtn(w, rows, cols, bits, sym, axis, group, scale_dtype);
  EXPECT_TRUE(r.ok()) << r.status();
  Reference ref{r->first, r->second, {}, 0};
  std::vector<float> back(w.size());
  Dequantize(ref.codes, rows, cols, ref.info, back.data());
  ref.error = CompareWeights(w, back);
  for (int64_t i = 0; i < rows * cols; ++i) {
    const double d = std::fabs(static_cast<double>(back[i]) - w[i]);
    ref.worst = std::max(ref.worst, d / (0.5 * ref.info.scales()[ref.info.ScaleIndex(i / cols, i % cols)]));
  }
  return ref;
}

// The weight stored as `t` (f32, f16 or bf16) and its values as f32.
std::vector<uint8_t> Stored(std::vector<float>& w, DType t) {
  std::vector<uint8_t> bytes(DTypeBytes(t, static_cast<int64_t>(w.size())));
  EXPECT_TRUE(EncodeFromF32(t, w.data(), static_cast<int64_t>(w.size()), bytes.data()).ok());
  EXPECT_TRUE(DecodeToF32(t, bytes.data(), static_cast<int64_t>(w.size()), w.data()).ok());
  return bytes;
}

TEST(QuantizeRtnMeasured, SameCodesScalesAndMetricsAsTheUnfusedSteps) {
  struct Shape2 {
    int64_t rows, cols, group;
  };
  // Groups cut by the 65,536-element chunks of the error sums (96 x 1000 = 96,000 elements,
  // group 40 and per channel), a per-channel group longer than a chunk, and [in, out] weights.
  // Group 32 (GGUF's blocks) takes a vector path per group, over three chunks here.
  const Shape2 shapes[] = {{96, 1000, 40}, {96, 1000, 0}, {3, 70000, 0}, {2, 70000, 14000}, {40, 64, 8}, {7, 5, 0},
                           {130, 1024, 32}, {70, 1024, 64}, {70, 1024, 128},
                           // per channel in vector steps: rows whole in a chunk, and rows of 3072
                           // cut by the chunks (those take the general loop)
                           {96, 1024, 0}, {50, 3072, 0}, {40, 1024, 256}};
  for (const Shape2& sh : shapes) {
    for (DType t : {DType::kF32, DType::kF16, DType::kBF16}) {
      for (int axis : {0, 1}) {
        for (auto [bits, sym, scale] : {std::tuple{4, true, DType::kF16}, std::tuple{3, false, DType::kBF16},
                                        std::tuple{8, true, DType::kF32}}) {
          const int64_t in = axis == 0 ? sh.cols : sh.rows;
          if (sh.group > 0 && in % sh.group != 0) continue;
          SCOPED_TRACE(testing::Message() << sh.rows << "x" << sh.cols << " group " << sh.group << " "
                                          << DTypeName(t) << " axis " << axis << " bits " << bits);
          std::vector<float> w = Weights(sh.rows * sh.cols, 5 + bits, sym ? 0.f : 0.02f);
          const std::vector<uint8_t> bytes = Stored(w, t);
          const Reference ref = Unfused(w, sh.rows, sh.cols, bits, sym, axis, sh.group, scale);
          auto m = QuantizeRtnMeasured(t, bytes, sh.rows, sh.cols, bits, sym, axis, sh.group, scale, "w");
          ASSERT_TRUE(m.ok()) << m.status();
          ASSERT_EQ(m->codes->size(), ref.codes.size());
          EXPECT_EQ(std::memcmp(m->codes->data(), ref.codes.data(), ref.codes.size()), 0);
          EXPECT_EQ(m->info.scales(), ref.info.scales());
          EXPECT_EQ(m->info.zero_points(), ref.info.zero_points());
          EXPECT_EQ(m->info.groups, ref.info.groups);
          EXPECT_EQ(m->error.max_abs, ref.error.max_abs);  // bit for bit: the same sums in the same order
          EXPECT_EQ(m->error.rel_fro, ref.error.rel_fro);
          EXPECT_EQ(m->max_error_over_half_scale, ref.worst);
          // s/2, up to the f32 rounding of (q - z) * s: 2^-24 of max|w| = 2^-24 * 2^bits s/2 at most
          EXPECT_LE(m->max_error_over_half_scale, 1.0 + std::ldexp(1.0, bits - 23));
          // Without codes: the same scales and metrics; the codes made again from the scales
          // (a pass past the memory budget) are the same bytes.
          auto bare = QuantizeRtnMeasured(t, bytes, sh.rows, sh.cols, bits, sym, axis, sh.group, scale, "w", false);
          ASSERT_TRUE(bare.ok()) << bare.status();
          EXPECT_EQ(bare->codes, nullptr);
          EXPECT_EQ(bare->info.scales(), ref.info.scales());
          EXPECT_EQ(bare->info.zero_points(), ref.info.zero_points());
          EXPECT_EQ(bare->error.rel_fro, ref.error.rel_fro);
          EXPECT_EQ(bare->max_error_over_half_scale, ref.worst);
          auto again = RtnCodes(t, bytes, sh.rows, sh.cols, bare->info);
          ASSERT_TRUE(again.ok()) << again.status();
          ASSERT_EQ((*again)->size(), ref.codes.size());
          EXPECT_EQ(std::memcmp((*again)->data(), ref.codes.data(), ref.codes.size()), 0);
        }
      }
    }
  }
}

// Groups of 32 (64, 128: the first two / four of these together) with signed zeros, all zeros, subnormals, one value, ties at half a step and
// large values: the vector paths (16 symmetric groups at a time, one group at a time) give the unfused
// steps' codes, scales and metrics.
TEST(QuantizeRtnMeasured, GroupsOf32AtTheEdges) {
  const int64_t rows = 8, cols = 256;
  std::vector<float> w = Weights(rows * cols, 9, 0.01f);
  for (int64_t k = 0; k < 32; ++k) {
    w[k] = -0.f;                                    // group 0: all -0
    w[32 + k] = 0.f;                                // group 1: all +0
    w[64 + k] = k % 2 ? 1e-40f : -3e-39f;           // group 2: subnormals
    w[96 + k] = k == 5 ? -0.25f : 0.f;              // group 3: one value
    w[128 + k] = static_cast<float>(k - 16) * 0.5f;  // group 4: halves, ties at 7 levels
    w[160 + k] = k % 3 ? 3.0e4f : -6.0e4f;          // group 5: near f16's largest
    // group 6: 7 (4-bit scale 1) and a float either side of each tie k + 1/2, both signs: where
    // the vector path's f32 difference y - x must still be exact
    const float tie = static_cast<float>(k % 7) + 0.5f;
    const float near = k % 2 ? std::nextafter(tie, 0.f) : std::nextafter(tie, 8.f);
    w[192 + k] = k == 0 ? 7.f : (k % 4 < 2 ? near : -near);
  }
  for (DType t : {DType::kF32, DType::kF16, DType::kBF16}) {
    for (auto [bits, sym, scale] : {std::tuple{4, true, DType::kF16}, std::tuple{4, false, DType::kF32},
                                    std::tuple{8, true, DType::kBF16}, std::tuple{3, false, DType::kF16},
                                    std::tuple{4, true, DType::kF32}, std::tuple{2, true, DType::kBF16}}) {
      SCOPED_TRACE(testing::Message() << DTypeName(t) << " bits " << bits << (sym ? " symmetric" : " asymmetric"));
      std::vector<float> v = w;
      const std::vector<uint8_t> bytes = Stored(v, t);  // every value fits f16 (65504)
      bool finite = true;
      for (float x : v) finite = finite && std::isfinite(x);
      for (int64_t group : {int64_t{32}, int64_t{64}, int64_t{128}, int64_t{0}}) {  // 0: rows of 256 in vector steps
        auto m = QuantizeRtnMeasured(t, bytes, rows, cols, bits, sym, 0, group, scale, "w");
        if (!finite) {
          EXPECT_FALSE(m.ok());
          continue;
        }
        const Reference ref = Unfused(v, rows, cols, bits, sym, 0, group, scale);
        ASSERT_TRUE(m.ok()) << m.status();
        EXPECT_EQ(std::memcmp(m->codes->data(), ref.codes.data(), ref.codes.size()), 0);
        EXPECT_EQ(m->info.scales(), ref.info.scales());
        EXPECT_EQ(m->info.zero_points(), ref.info.zero_points());
        EXPECT_EQ(m->error.max_abs, ref.error.max_abs);
        EXPECT_EQ(m->error.rel_fro, ref.error.rel_fro);
        EXPECT_EQ(m->max_error_over_half_scale, ref.worst);
      }
    }
  }
}

// f16 scales hold at most 65504: a group past 65504 x 7 (4 bits) is refused with its place.
TEST(QuantizeRtnMeasured, AScalePastItsTypeIsAnError) {
  std::vector<float> w(4 * 64, 0.5f);
  w[2 * 64 + 40] = 1e6f;  // channel 2, the group at input 32
  const std::vector<uint8_t> bytes = Stored(w, DType::kF32);
  auto m = QuantizeRtnMeasured(DType::kF32, bytes, 4, 64, 4, true, 0, 32, DType::kF16, "layer.weight");
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.status().message(),
            "tensor 'layer.weight': the group of 32 inputs at channel 2, input 32 needs a scale past f16's largest "
            "value; use scale-dtype=f32");
  EXPECT_TRUE(QuantizeRtnMeasured(DType::kF32, bytes, 4, 64, 4, true, 0, 32, DType::kF32, "layer.weight").ok());
}

TEST(QuantizeRtnMeasured, NamesTheFirstNonFiniteWeightInElementOrder) {
  const int64_t rows = 40, cols = 4000;  // 160,000 elements: three chunks
  std::vector<float> w = Weights(rows * cols, 3);
  w[150000] = std::numeric_limits<float>::infinity();  // in the last chunk
  w[70001] = std::numeric_limits<float>::quiet_NaN();  // row 17, column 2001, in the second chunk
  const std::vector<uint8_t> bytes = Stored(w, DType::kF32);
  for (int axis : {0, 1}) {
    for (int64_t group : {int64_t{0}, int64_t{32}}) {
      if (axis == 1 && group > 0) continue;  // 40 inputs
      auto m = QuantizeRtnMeasured(DType::kF32, bytes, rows, cols, 4, true, axis, group, DType::kF32, "layer.weight");
      ASSERT_FALSE(m.ok());
      EXPECT_EQ(m.status().message(),
                "tensor 'layer.weight' holds nan at [17, 2001]; fix the checkpoint or exclude the tensor");
    }
  }
}

TEST(QuantizeCodebookMeasured, SameCodesScalesSumsAndMetricsAsTheUnfusedSteps) {
  struct Case {
    int64_t rows, cols, group;
    std::vector<std::string> formats;
    CodebookOptions::Scale scale;
    bool weighted;
  };
  using S = CodebookOptions::Scale;
  const std::vector<std::string> fp4 = {"fp4-e2m1", "fp4-e3m0", "fp4-e1m2"};
  // Groups cut by the 65,536-element chunks (96 x 1000 = 96,000 elements; group 40 and per
  // channel), per channel rows of 70,000 > a chunk (not this path: checked to be refused),
  // every scale rule, several formats at once, and calibration weights.
  const Case cases[] = {{96, 1000, 40, {"nf4"}, S::kAbsmax, false},   {96, 1000, 0, {"nf4"}, S::kAbsmax, false},
                        {96, 1000, 40, fp4, S::kSearch, true},        {96, 1000, 200, fp4, S::kAbsmax, false},
                        {70, 960, 32, {"mxfp4"}, S::kE8M0, false},    {7, 64, 32, {"fp4-e2m1"}, S::kSearch, false},
                        {96, 1000, 0, {"fp4-e1m2", "nf4"}, S::kSearch, true}};
  for (const Case& c : cases) {
    for (DType t : {DType::kF32, DType::kF16, DType::kBF16}) {
      SCOPED_TRACE(testing::Message() << c.rows << "x" << c.cols << " group " << c.group << " " << DTypeName(t)
                                      << " " << c.formats[0] << " scale " << static_cast<int>(c.scale));
      std::vector<float> w = Weights(c.rows * c.cols, 17, 0.01f);
      const std::vector<uint8_t> bytes = Stored(w, t);
      std::vector<double> h;
      if (c.weighted) {
        for (int64_t k = 0; k < c.cols; ++k) h.push_back(0.25 + (k % 7) * 0.5);
      }
      CodebookOptions o;
      o.group_size = c.group;
      o.scale = c.scale;
      o.input_weight = h;
      ASSERT_TRUE(CodebookMeasuredLayout(c.cols, o));
      auto ref = QuantizeCodebookBest(w, c.rows, c.cols, c.formats, o);
      ASSERT_TRUE(ref.ok()) << ref.status();
      auto m = QuantizeCodebookMeasured(t, bytes, c.rows, c.cols, c.formats, o, "w");
      ASSERT_TRUE(m.ok()) << m.status();
      ASSERT_EQ(m->codes->size(), ref->codes.size());
      EXPECT_EQ(std::memcmp(m->codes->data(), ref->codes.data(), ref->codes.size()), 0);
      EXPECT_EQ(m->info.format(), ref->info.format());
      EXPECT_EQ(m->info.scales(), ref->info.scales());
      EXPECT_EQ(m->info.levels(), ref->info.levels());
      EXPECT_EQ(m->info.groups, ref->info.groups);
      EXPECT_EQ(m->info.group_size, ref->info.group_size);
      // Without codes (codes made at write time): the same scales and sums, and the codes
      // CodebookCodes makes from those scales are the same bytes.
      auto bare = QuantizeCodebookMeasured(t, bytes, c.rows, c.cols, c.formats, o, "w", false);
      ASSERT_TRUE(bare.ok()) << bare.status();
      EXPECT_EQ(bare->codes, nullptr);
      EXPECT_EQ(bare->info.format(), ref->info.format());
      EXPECT_EQ(bare->info.scales(), ref->info.scales());
      EXPECT_EQ(bare->weighted_sse, m->weighted_sse);
      EXPECT_EQ(bare->error.rel_fro, m->error.rel_fro);
      auto again = CodebookCodes(t, bytes, c.rows, c.cols, bare->info);
      ASSERT_TRUE(again.ok()) << again.status();
      ASSERT_EQ((*again)->size(), ref->codes.size());
      EXPECT_EQ(std::memcmp((*again)->data(), ref->codes.data(), ref->codes.size()), 0);
      std::vector<float> back(w.size());
      Dequantize(ref->codes, c.rows, c.cols, ref->info, back.data());
      const WeightError e = CompareWeights(w, back);
      EXPECT_EQ(m->error.max_abs, e.max_abs);
      EXPECT_EQ(m->error.rel_fro, e.rel_fro);
      const bool plain = !c.weighted && c.scale != S::kSearch;
      if (plain) {
        // Unweighted: the weighted sums are the error sums of the stored values (the chosen
        // format's), within f32 rounding of the group sums' figure.
        EXPECT_EQ(m->weighted_sse, e.err2);
        EXPECT_EQ(m->weighted_norm, e.ref2);
        EXPECT_NEAR(m->weighted_sse, ref->weighted_sse, 1e-6 * ref->weighted_sse);
        EXPECT_NEAR(m->weighted_norm, ref->weighted_norm, 1e-12 * ref->weighted_norm);
      } else {
        EXPECT_EQ(m->weighted_sse, ref->weighted_sse);  // bit for bit: the same sums in the same order
        EXPECT_EQ(m->weighted_norm, ref->weighted_norm);
      }
      // Unweighted, the sums measure what CompareWeights does, up to the f32 rounding of each
      // dequantized value (the sums take level x scale in f64): 2^-24 relative.
      if (!c.weighted) {
        EXPECT_NEAR(std::sqrt(m->weighted_sse / m->weighted_norm), e.rel_fro, e.rel_fro * 1e-6);
      }
    }
  }
  CodebookOptions per_channel;
  EXPECT_FALSE(CodebookMeasuredLayout(70000, per_channel));  // a group longer than a chunk
  per_channel.channel_axis = 1;
  EXPECT_FALSE(CodebookMeasuredLayout(64, per_channel));  // [in, out]
}

// Whole groups of 32 / 64 / 128 with one format and no search run in vector registers
// (core/quant.cc CodebookGroupV): the same codes, scales and sums as the unfused steps at the
// edges (signed zeros, subnormals, values on the cuts, a lone value, the largest values),
// across chunk boundaries (96 x 1024: a chunk ends mid-row), and a non-finite group in the
// middle of whole ones is still named.
TEST(QuantizeCodebookMeasured, WholeGroupsAtTheEdges) {
  const int64_t rows = 96, cols = 1024;
  std::vector<float> w = Weights(rows * cols, 21, 0.02f);
  for (int64_t k = 0; k < 128; ++k) {
    w[k] = -0.f;                                           // all -0
    w[128 + k] = 0.f;                                      // all +0
    w[256 + k] = k % 2 ? 1e-40f : -3e-39f;                 // subnormals
    w[384 + k] = k == 5 ? -0.25f : 0.f;                    // one value
    w[512 + k] = static_cast<float>(k % 32 - 16) * 0.25f;  // quarters: ties on the fp4 cuts
    w[640 + k] = k % 3 ? 3.0e4f : -6.0e4f;                 // large (f16 holds them)
  }
  // Groups of 32 with a float either side of every midpoint between neighbouring positive
  // levels of each table (0 and the smallest level included), both signs, at a scale that is
  // not a power of two: where the vector path's f32 difference levels[c] s - x must still be
  // exact (FP4 grids), or is checked to be (NF4).
  for (const auto& [name, g] :
       {std::pair<std::string, int64_t>{"fp4-e2m1", 0}, {"fp4-e3m0", 1}, {"fp4-e1m2", 2}, {"nf4", 3}}) {
    const Codebook* book = *FindCodebook(name);
    std::vector<float> pos;
    for (float l : book->levels)
      if (l > 0) pos.push_back(l);
    std::sort(pos.begin(), pos.end());
    const float amax = 0.37f * pos.back(), s = amax / pos.back();
    float* grp = &w[(1 + g) * cols];
    grp[0] = amax;
    int64_t k = 1;
    for (size_t i = 0; i < pos.size() && k + 4 <= 32; ++i) {
      const float mid = (i == 0 ? pos[0] / 2 : (pos[i - 1] + pos[i]) / 2) * s;
      for (float x : {std::nextafter(mid, 0.f), std::nextafter(mid, 1.f)}) {
        grp[k++] = x;
        grp[k++] = -x;
      }
    }
  }
  using S = CodebookOptions::Scale;
  for (DType t : {DType::kF32, DType::kF16, DType::kBF16}) {
    std::vector<float> v = w;
    const std::vector<uint8_t> bytes = Stored(v, t);  // v: the stored values
    const std::vector<std::string> fp4 = {"fp4-e2m1", "fp4-e3m0", "fp4-e1m2"};
    for (auto [formats, scale] : {std::pair<std::vector<std::string>, S>{{"nf4"}, S::kAbsmax},
                                  {{"mxfp4"}, S::kE8M0},
                                  {{"fp4-e2m1"}, S::kAbsmax},
                                  {{"fp4-e3m0"}, S::kAbsmax},
                                  {fp4, S::kAbsmax},
                                  {{"nf4", "fp4-e1m2"}, S::kAbsmax}}) {
      for (int64_t group : {int64_t{32}, int64_t{64}, int64_t{128}}) {
        SCOPED_TRACE(testing::Message() << DTypeName(t) << " " << formats[0] << " of " << formats.size() << " group "
                                        << group);
        CodebookOptions o;
        o.group_size = group;
        o.scale = scale;
        auto ref = QuantizeCodebookBest(v, rows, cols, formats, o);
        ASSERT_TRUE(ref.ok()) << ref.status();
        auto m = QuantizeCodebookMeasured(t, bytes, rows, cols, formats, o, "w");
        ASSERT_TRUE(m.ok()) << m.status();
        EXPECT_EQ(std::memcmp(m->codes->data(), ref->codes.data(), ref->codes.size()), 0);
        EXPECT_EQ(m->info.format(), ref->info.format());
        EXPECT_EQ(m->info.scales(), ref->info.scales());
        auto again = CodebookCodes(t, bytes, rows, cols, m->info);
        ASSERT_TRUE(again.ok()) << again.status();
        EXPECT_EQ(std::memcmp((*again)->data(), ref->codes.data(), ref->codes.size()), 0);
        std::vector<float> back(v.size());
        Dequantize(ref->codes, rows, cols, ref->info, back.data());
        const WeightError e = CompareWeights(v, back);
        EXPECT_EQ(m->error.max_abs, e.max_abs);
        EXPECT_EQ(m->error.err2, e.err2);
        EXPECT_EQ(m->error.ref2, e.ref2);
        // Unweighted, no search: the error sums of the stored values (the chosen format's).
        EXPECT_EQ(m->weighted_sse, e.err2);
        EXPECT_EQ(m->weighted_norm, e.ref2);
      }
    }
    std::vector<float> bad = w;  // stays non-finite when stored
    bad[70 * cols + 96 + 3] = -std::numeric_limits<float>::infinity();  // inside a whole group of 32
    bad[80 * cols + 5] = std::numeric_limits<float>::quiet_NaN();
    CodebookOptions o;
    o.group_size = 32;
    o.scale = S::kE8M0;
    auto m = QuantizeCodebookMeasured(t, Stored(bad, t), rows, cols, {"mxfp4"}, o, "layer.weight");
    ASSERT_FALSE(m.ok());
    EXPECT_EQ(m.status().message(),
              "tensor 'layer.weight' holds -inf at [70, 99]; fix the checkpoint or exclude the tensor");
  }
}

TEST(MxSharedScale, UsesTheExactBinaryExponent) {
  // Just below a power of two the exponent is the smaller one (log2 in float rounds
  // 0.12499999 up to -3; OCP's floor(log2) of it is -4).
  const float below = std::nextafter(0.125f, 0.f);
  EXPECT_EQ(FloorLog2(below), -4);
  EXPECT_EQ(FloorLog2(0.125f), -3);
  EXPECT_EQ(MxSharedScale(below, 2), std::ldexp(1.f, -6));
  EXPECT_EQ(MxSharedScale(6.f, 2), 1.f);
  EXPECT_EQ(FloorLog2(std::numeric_limits<float>::denorm_min()), -149);
  EXPECT_EQ(FloorLog2(std::numeric_limits<float>::max()), 127);
  // E8M0's range: 2^-127 (a subnormal f32) at the bottom, 2^127 at the top.
  EXPECT_EQ(MxSharedScale(std::ldexp(1.f, -125), 2), std::ldexp(1.f, -127));
  EXPECT_EQ(MxSharedScale(std::numeric_limits<float>::denorm_min(), 2), std::ldexp(1.f, -127));
  EXPECT_EQ(MxSharedScale(std::ldexp(1.f, -124), 2), std::ldexp(1.f, -126));
  EXPECT_EQ(MxSharedScale(std::numeric_limits<float>::max(), 0), std::ldexp(1.f, 127));
  for (int e = -149; e <= 127; ++e) {
    const float x = std::ldexp(1.f, e);
    EXPECT_EQ(FloorLog2(x), e);
    if (e > -149) {
      EXPECT_EQ(FloorLog2(std::nextafter(x, 0.f)), e - 1) << e;
    }
  }
}

namespace {

constexpr int64_t kChoiceRows = 96, kChoiceCols = 768;  // past one chunk: the threads share the groups
constexpr int kChoiceShapes = 7;
constexpr float kMidpointAmax = 1.8f;

// Weights for the format choice: normal, uniform, heavy-tailed, a few distinct values, all zero,
// below f32's normal range, and (shape 6) near the grids' midpoints: every 16th weight 1.8 (each
// group's absmax), the others fl(m s_f) moved by up to two ulps for a midpoint m between
// neighbouring levels of a format f and that format's scale s_f, where x / s may code differently
// from the x * (1 / s) the estimate takes.
std::vector<float> ChoiceTestWeights(int shape, std::mt19937& rng) {
  std::vector<std::pair<float, std::vector<float>>> midpoints;  // (s_f, midpoints of f's levels)
  for (const char* f : {"fp4-e2m1", "fp4-e3m0", "fp4-e1m2", "nf4"}) {
    const Codebook& book = **FindCodebook(f);
    std::vector<float> lv(book.levels.begin(), book.levels.end());
    std::sort(lv.begin(), lv.end());
    std::vector<float> mids;
    for (size_t i = 1; i < lv.size(); ++i) {
      if (lv[i] > lv[i - 1]) mids.push_back(0.5f * (lv[i] + lv[i - 1]));
    }
    midpoints.emplace_back(kMidpointAmax / book.max_abs, mids);
  }
  std::vector<float> w(kChoiceRows * kChoiceCols);
  std::normal_distribution<float> nd(0.f, 0.02f);
  std::uniform_real_distribution<float> ud(-1.f, 1.f);
  std::student_t_distribution<float> td(2.f);
  for (size_t i = 0; i < w.size(); ++i) {
    switch (shape) {
      case 0: w[i] = nd(rng); break;
      case 1: w[i] = ud(rng); break;
      case 2: w[i] = 0.01f * td(rng); break;
      case 3: w[i] = static_cast<float>(static_cast<int>(ud(rng) * 4)) * 0.5f; break;  // few values
      case 4: w[i] = 0.f; break;
      case 5: w[i] = std::ldexp(ud(rng), -140); break;  // below f32's normal range
      case 6: {
        if (i % 16 == 0) {
          w[i] = kMidpointAmax;
          break;
        }
        const auto& [sf, mids] = midpoints[rng() % midpoints.size()];
        float x = mids[rng() % mids.size()] * sf;
        for (int k = static_cast<int>(rng() % 5) - 2; k != 0; k += k > 0 ? -1 : 1) {
          x = std::nextafter(x, k > 0 ? 2 * kMidpointAmax : -2 * kMidpointAmax);
        }
        w[i] = x;
        break;
      }
    }
  }
  return w;
}

// Runs check(shape, t, bytes, o, formats) for every weight shape of ChoiceTestWeights (drawn in
// order from one generator seeded `seed`), stored type, group size of `groups`, scale rule
// (absmax, E8M0) and format list of `sets`, under a trace that names them.
template <typename Check>
void ForEachChoiceCase(uint32_t seed, std::initializer_list<int64_t> groups,
                       const std::vector<std::vector<std::string>>& sets, Check check) {
  std::mt19937 rng(seed);
  for (int shape = 0; shape < kChoiceShapes; ++shape) {
    std::vector<float> w = ChoiceTestWeights(shape, rng);
    for (DType t : {DType::kF32, DType::kBF16, DType::kF16}) {
      const std::vector<uint8_t> bytes = Stored(w, t);
      for (int64_t group : groups) {
        for (auto scale : {CodebookOptions::Scale::kAbsmax, CodebookOptions::Scale::kE8M0}) {
          for (const auto& formats : sets) {
            SCOPED_TRACE(testing::Message() << "shape " << shape << " " << DTypeName(t) << " group " << group << " "
                                            << formats[0] << " of " << formats.size() << " scale "
                                            << static_cast<int>(scale));
            CodebookOptions o;
            o.group_size = group;
            o.scale = scale;
            check(shape, t, bytes, o, formats);
          }
        }
      }
    }
  }
}

}  // namespace

// Near the grids' midpoints (ChoiceTestWeights' shape 6), x / s and the estimate's x * (1 / s)
// do code some weights differently: the case EstimateCodebookErrors' slack covers occurs in the
// tests below.
TEST(ChooseCodebookFormat, MidpointWeightsCodeDifferentlyFromTheReciprocal) {
  std::mt19937 rng(5);
  const std::vector<float> w = ChoiceTestWeights(6, rng);
  int differ = 0;
  for (const char* f : {"fp4-e2m1", "fp4-e3m0", "fp4-e1m2", "nf4"}) {
    const Codebook& book = **FindCodebook(f);
    const float sf = kMidpointAmax / book.max_abs, r = 1.f / sf;
    for (float x : w) differ += book.Encode(x / sf) != book.Encode(x * r);
  }
  EXPECT_GT(differ, 0);
}

// ChooseCodebookFormat picks the format QuantizeCodebookMeasured picks, from estimates where
// the bounds separate the formats and from the f64 sums where they overlap: every weight shape
// of ChoiceTestWeights, every group size it takes, each stored type, the formats in every order;
// ties (a format listed twice, all-zero weights) go to the first, as QuantizeCodebookMeasured's
// do. Each group's own scale rule (absmax, E8M0) on the same grids.
TEST(ChooseCodebookFormat, PicksWhatTheF64SumsPick) {
  const std::vector<std::vector<std::string>> orders = {{"fp4-e2m1", "fp4-e3m0", "fp4-e1m2"},
                                                        {"fp4-e1m2", "fp4-e2m1", "fp4-e3m0"},
                                                        {"fp4-e3m0", "fp4-e1m2"},
                                                        {"fp4-e2m1", "fp4-e2m1", "fp4-e1m2"},
                                                        {"nf4", "fp4-e2m1"}};
  int estimated = 0, exact = 0, cases = 0;
  std::map<std::string, int> winners;
  ForEachChoiceCase(5, {16, 32, 64, 128, 96, 0}, orders,
                    [&](int shape, DType t, const std::vector<uint8_t>& bytes, const CodebookOptions& o,
                        const std::vector<std::string>& formats) {
                      if (t == DType::kF16 && shape == 5) return;  // f16 flushes them to zero: shape 4 again
                      auto want = QuantizeCodebookMeasured(t, bytes, kChoiceRows, kChoiceCols, formats, o, "w", false);
                      ASSERT_TRUE(want.ok()) << want.status();
                      auto got = ChooseCodebookFormat(t, bytes, kChoiceRows, kChoiceCols, formats, o, "w");
                      ASSERT_TRUE(got.ok()) << got.status();
                      ASSERT_LT(got->index, formats.size());
                      EXPECT_EQ(formats[got->index], want->info.format());
                      // The first of equals: a repeated format never wins at its second place.
                      if (formats[0] == formats[1]) {
                        EXPECT_NE(got->index, 1u);
                      }
                      if (shape == 4) {
                        EXPECT_EQ(got->index, 0u) << "all zero: every format's error is 0";
                      }
                      ++(got->exact ? exact : estimated);
                      ++winners[formats[got->index]];
                      ++cases;
                    });
  // Both ways decided some: the estimate most (on AVX-512), the f64 sums at least the ties. The
  // AVX2 estimate leaves NF4's table (a fifth of the cases here) to the f64 sums.
  EXPECT_GT(exact, 0);
#if defined(__AVX512F__)
  EXPECT_GT(estimated, cases / 2);
#elif defined(__AVX2__)
  EXPECT_GT(estimated, cases * 2 / 5);
#endif
  EXPECT_GE(winners.size(), 3u) << "the weights favour different formats";
  // With a clipping search or input weights, the f64 sums choose.
  std::vector<float> w = Weights(8 * 256, 9);
  const std::vector<uint8_t> bytes = Stored(w, DType::kF32);
  CodebookOptions search;
  search.group_size = 32;
  search.scale = CodebookOptions::Scale::kSearch;
  auto s = ChooseCodebookFormat(DType::kF32, bytes, 8, 256, orders[0], search, "w");
  ASSERT_TRUE(s.ok());
  EXPECT_TRUE(s->exact);
  auto sw = QuantizeCodebookMeasured(DType::kF32, bytes, 8, 256, orders[0], search, "w", false);
  ASSERT_TRUE(sw.ok());
  EXPECT_EQ(orders[0][s->index], sw->info.format());
}

// EstimateCodebookErrors' bounds hold the stored values' error sum (QuantizeCodebookMeasured's
// err2 for one format, plain scales) for every weight shape, stored type, group size and scale
// rule, each format alone and the three FP4 formats together (the branch-free grid loop), and
// they are tight where the weights are normal numbers: a wrong grid value would move a sum by
// far more than the bounds' width.
TEST(EstimateCodebookErrors, BoundsHoldTheStoredValuesErrorSums) {
  const std::vector<std::vector<std::string>> sets = {
      {"fp4-e2m1"}, {"fp4-e3m0"}, {"fp4-e1m2"}, {"nf4"}, {"fp4-e3m0", "fp4-e1m2", "fp4-e2m1"}};
  int checked = 0;
  ForEachChoiceCase(11, {16, 32, 128, 0}, sets,
                    [&](int shape, DType t, const std::vector<uint8_t>& bytes, const CodebookOptions& o,
                        const std::vector<std::string>& formats) {
                      const auto e = EstimateCodebookErrors(t, bytes, kChoiceRows, kChoiceCols, formats, o);
#if defined(__AVX512F__)
                      ASSERT_TRUE(e.has_value());
#elif defined(__AVX2__)
                      // The AVX2 estimate covers the FP4 grids; NF4's table takes the exact path.
                      if (std::find(formats.begin(), formats.end(), "nf4") != formats.end()) {
                        ASSERT_FALSE(e.has_value());
                        return;
                      }
                      ASSERT_TRUE(e.has_value());
#else
                      ASSERT_FALSE(e.has_value());
                      return;
#endif
                      ASSERT_EQ(e->sums.size(), formats.size());
                      for (size_t f = 0; f < formats.size(); ++f) {
                        auto m = QuantizeCodebookMeasured(t, bytes, kChoiceRows, kChoiceCols, {formats[f]}, o, "w",
                                                          false);
                        ASSERT_TRUE(m.ok()) << m.status();
                        const double exact = m->weighted_sse;
                        EXPECT_EQ(exact, m->error.err2);
                        EXPECT_LE(e->lower[f], exact) << formats[f];
                        EXPECT_GE(e->upper[f], exact) << formats[f];
                        if (shape != 4 && shape != 5 && exact > 0) {
                          EXPECT_LT(e->upper[f] - e->lower[f], 1e-2 * exact) << formats[f];
                        }
                        ++checked;
                      }
                    });
#if defined(__AVX512F__)
  EXPECT_EQ(checked, kChoiceShapes * 3 * 4 * 2 * 7);
#elif defined(__AVX2__)
  EXPECT_EQ(checked, kChoiceShapes * 3 * 4 * 2 * 6);  // all but nf4's
#endif
  // A weighted or searched quantization, or a NaN, is not estimated.
  std::vector<float> good = Weights(8 * 256, 9);
  const std::vector<uint8_t> bytes = Stored(good, DType::kF32);
  CodebookOptions search;
  search.group_size = 32;
  search.scale = CodebookOptions::Scale::kSearch;
  EXPECT_FALSE(EstimateCodebookErrors(DType::kF32, bytes, 8, 256, sets[4], search).has_value());
  std::vector<float> bad = Weights(8 * 256, 9);
  bad[300] = std::numeric_limits<float>::quiet_NaN();
  CodebookOptions plain;
  plain.group_size = 32;
  EXPECT_FALSE(EstimateCodebookErrors(DType::kF32, Stored(bad, DType::kF32), 8, 256, sets[4], plain).has_value());
}

TEST(QuantizeCodebookMeasured, NamesTheFirstNonFiniteWeightInElementOrder) {
  const int64_t rows = 40, cols = 4000;  // three chunks
  std::vector<float> w = Weights(rows * cols, 3);
  w[150000] = std::numeric_limits<float>::infinity();
  w[70001] = -std::numeric_limits<float>::infinity();  // row 17, column 2001
  const std::vector<uint8_t> bytes = Stored(w, DType::kBF16);
  CodebookOptions o;
  o.group_size = 40;
  auto m = QuantizeCodebookMeasured(DType::kBF16, bytes, rows, cols, {"nf4"}, o, "layer.weight");
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.status().message(),
            "tensor 'layer.weight' holds -inf at [17, 2001]; fix the checkpoint or exclude the tensor");
  // ChooseCodebookFormat too (its estimate stops at the bad group; the exact path names the first).
  o.group_size = 32;
  auto c = ChooseCodebookFormat(DType::kBF16, bytes, rows, cols, {"fp4-e2m1", "fp4-e3m0", "fp4-e1m2"}, o,
                                "layer.weight");
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().message(), m.status().message());
}

}  // namespace
}  // namespace compress

namespace compress {
namespace {

// A deferred quantization of a fixed 4 x 8 weight whose production counts its runs.
struct DeferredCase {
  std::vector<float> w = std::vector<float>(32);
  std::shared_ptr<int> runs = std::make_shared<int>(0), again = std::make_shared<int>(0);
  QuantInfo info;
  explicit DeferredCase(bool fail = false) {
    for (int i = 0; i < 32; ++i) w[i] = std::sin(0.37f * static_cast<float>(i)) * (1 + i % 5);
    QuantInfo meta = *RtnInfo(4, 8, 4, false, 0, 4, DType::kF32);
    auto wp = std::make_shared<std::vector<float>>(w);
    info = DeferredQuant::MakeDeferred(
        meta,
        [wp, runs = runs, fail](bool want_codes) -> absl::StatusOr<DeferredQuant::Produced> {
          ++*runs;
          if (fail) return InvalidArgument("tensor 'w' holds nan at [0, 0]");
          ASSIGN_OR_RETURN(auto r, QuantizeRtn(*wp, 4, 8, 4, false, 0, 4));
          std::shared_ptr<const Buffer> codes;
          if (want_codes) {
            auto b = std::make_shared<OwnedBuffer>(r.first.size());
            std::memcpy(b->mutable_data(), r.first.data(), r.first.size());
            codes = b;
          }
          return DeferredQuant::Produced{codes, std::move(r.second)};
        },
        [wp, again = again](const QuantInfo& full) -> absl::StatusOr<std::shared_ptr<const Buffer>> {
          ++*again;
          auto r = *QuantizeRtn(*wp, 4, 8, 4, false, 0, 4);
          EXPECT_EQ(full.scales(), r.second.scales());
          auto b = std::make_shared<OwnedBuffer>(r.first.size());
          std::memcpy(b->mutable_data(), r.first.data(), r.first.size());
          return std::shared_ptr<const Buffer>(b);
        });
  }
};

TEST(DeferredQuant, CodesFirstProduceEverythingOnceAndTheValuesAfterCostNothing) {
  DeferredCase c;
  const auto want = *QuantizeRtn(c.w, 4, 8, 4, false, 0, 4);
  EXPECT_TRUE(c.info.deferred());
  EXPECT_EQ(c.info.channels * c.info.groups, 8);
  EXPECT_EQ(*c.runs, 0) << "nothing runs before it is asked";
  auto codes = DeferredQuant::Codes(c.info);
  ASSERT_TRUE(codes.ok()) << codes.status();
  ASSERT_EQ((*codes)->size(), 32u);
  EXPECT_EQ(std::memcmp((*codes)->data(), want.first.data(), 32), 0);
  const QuantInfo copy = c.info;  // copies share the production
  EXPECT_EQ(copy.scales(), want.second.scales());
  EXPECT_EQ(copy.zero_points(), want.second.zero_points());
  EXPECT_TRUE(copy.Resolve().ok());
  EXPECT_EQ(*c.runs, 1);
  EXPECT_EQ(*c.again, 0);
  ASSERT_TRUE(DeferredQuant::Codes(c.info).ok());  // asked again: made again from the scales
  EXPECT_EQ(*c.runs, 1);
  EXPECT_EQ(*c.again, 1);
}

TEST(DeferredQuant, ValuesFirstProduceWithoutCodesAndTheCodesAreMadeFromThem) {
  DeferredCase c;
  const auto want = *QuantizeRtn(c.w, 4, 8, 4, false, 0, 4);
  EXPECT_EQ(c.info.scales(), want.second.scales());
  EXPECT_EQ(*c.runs, 1);
  auto codes = DeferredQuant::Codes(c.info);
  ASSERT_TRUE(codes.ok());
  EXPECT_EQ(std::memcmp((*codes)->data(), want.first.data(), 32), 0);
  EXPECT_EQ(*c.runs, 1);
  EXPECT_EQ(*c.again, 1);
  // A writable copy stops sharing: its own values, the original's untouched.
  QuantInfo own = c.info;
  own.mutable_scales()[0] = 7.f;
  EXPECT_FALSE(own.deferred());
  EXPECT_EQ(own.scales()[0], 7.f);
  EXPECT_EQ(c.info.scales()[0], want.second.scales()[0]);
}

TEST(DeferredQuant, AFailedProductionIsReturnedByEveryLaterAskAndRunsOnce) {
  DeferredCase c(/*fail=*/true);
  auto codes = DeferredQuant::Codes(c.info);
  ASSERT_FALSE(codes.ok());
  EXPECT_EQ(codes.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(codes.status().message().find("tensor 'w'"), std::string::npos);
  EXPECT_EQ(c.info.Resolve().code(), absl::StatusCode::kInvalidArgument);
  ASSERT_EQ(c.info.scales().size(), 8u);  // sized, NaN: a reader indexing them stays in bounds
  EXPECT_TRUE(std::isnan(c.info.scales()[3]));
  EXPECT_EQ(c.info.zero_points().size(), 8u);
  EXPECT_FALSE(DeferredQuant::Codes(c.info).ok());
  EXPECT_EQ(*c.runs, 1);
  EXPECT_EQ(*c.again, 0);
}

// quantize-fp4's format=auto on a weight read from a file: the production chooses the format.
// Before it runs, the quantization is known to be a 4-bit codebook with plain scales (what the
// writer plans by) without running it; format() and levels() run it; a writable copy keeps the
// chosen format; a failed production leaves the meta's format; and a production that chose
// anything but a codebook of the promised bits with plain scales is an internal error.
TEST(DeferredQuant, AFormatLeftToTheProductionIsKnownOnceItRan) {
  std::vector<float> w(4 * 32);
  for (size_t i = 0; i < w.size(); ++i) w[i] = std::sin(0.71f * static_cast<float>(i)) * (1 + i % 7);
  CodebookOptions co;
  co.group_size = 32;
  auto make = [&](const std::string& chosen, std::shared_ptr<int> runs, bool fail = false) {
    QuantInfo meta = *CodebookParameters(4, 32, "fp4-e2m1", co);
    meta.LeaveFormatToProduction();
    auto wp = std::make_shared<std::vector<float>>(w);
    return DeferredQuant::MakeDeferred(
        meta,
        [wp, co, chosen, runs, fail](bool want_codes) -> absl::StatusOr<DeferredQuant::Produced> {
          ++*runs;
          if (fail) return InvalidArgument("tensor 'w' holds nan at [0, 0]");
          ASSIGN_OR_RETURN(CodebookResult r, QuantizeCodebookBest(*wp, 4, 32, {chosen}, co));
          auto b = std::make_shared<OwnedBuffer>(r.codes.size());
          std::memcpy(b->mutable_data(), r.codes.data(), r.codes.size());
          return DeferredQuant::Produced{want_codes ? b : nullptr, std::move(r.info)};
        },
        [](const QuantInfo&) -> absl::StatusOr<std::shared_ptr<const Buffer>> {
          return Internal("not asked in this test");
        });
  };
  auto runs = std::make_shared<int>(0);
  QuantInfo q = make("fp4-e3m0", runs);
  EXPECT_TRUE(q.format_pending());
  EXPECT_TRUE(q.codebook());
  EXPECT_FALSE(q.e8m0_scales());
  EXPECT_FALSE(q.fp8());
  EXPECT_EQ(q.bits, 4);
  EXPECT_EQ(*runs, 0) << "what the writer plans by runs nothing";
  const QuantInfo copy = q;  // e.g. the pass's record for its report
  auto codes = DeferredQuant::Codes(q);
  ASSERT_TRUE(codes.ok()) << codes.status();
  EXPECT_EQ(*runs, 1);
  EXPECT_FALSE(copy.format_pending());
  EXPECT_EQ(copy.format(), "fp4-e3m0");
  const Codebook* e3m0 = *FindCodebook("fp4-e3m0");
  EXPECT_EQ(copy.levels(), std::vector<float>(e3m0->levels.begin(), e3m0->levels.end()));
  QuantInfo own = copy;
  own.mutable_scales()[0] *= 2;
  EXPECT_FALSE(own.deferred());
  EXPECT_EQ(own.format(), "fp4-e3m0");
  EXPECT_EQ(own.levels(), copy.levels());
  EXPECT_EQ(*runs, 1);

  // Asking the format first runs the production without codes.
  auto runs2 = std::make_shared<int>(0);
  QuantInfo q2 = make("fp4-e1m2", runs2);
  EXPECT_EQ(q2.format(), "fp4-e1m2");
  EXPECT_EQ(*runs2, 1);

  auto runs3 = std::make_shared<int>(0);
  QuantInfo failed = make("fp4-e3m0", runs3, /*fail=*/true);
  EXPECT_EQ(failed.Resolve().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(failed.format(), "fp4-e2m1");
  EXPECT_EQ(failed.levels().size(), 16u);

  auto runs4 = std::make_shared<int>(0);
  QuantInfo wrong = make("mxfp4", runs4);
  EXPECT_EQ(wrong.Resolve().code(), absl::StatusCode::kInternal);
}

}  // namespace
}  // namespace compress
