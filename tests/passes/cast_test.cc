// The cast pass: converted bytes and error metrics against element-by-element references
// (F32ToF16 / F32ToBF16 and WeightErrorChunk::Add), over values that take the vector steps and
// values that leave them (NaN, infinities, overflow, subnormals), chunk boundaries and a tail.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>

#include "core/dtype.h"
#include "core/weight_error.h"
#include "tests/pipeline_util.h"

namespace compress {
namespace {

TEST(Cast, EveryElementAndMetricEqualsTheElementwiseReference) {
  const int64_t n = 2 * kWeightErrorChunk + 3 * 2048 + 21;
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.f, 1.f);
  std::uniform_int_distribution<int> exponent(-30, 17);
  std::vector<float> v(n);
  for (auto& x : v) x = normal(rng) * std::ldexp(1.f, exponent(rng));
  const float inf = std::numeric_limits<float>::infinity();
  const std::vector<std::pair<int64_t, float>> specials = {
      {100, std::nanf("")}, {2048 * 5 + 37, 70000.f}, {2048 * 7 + 3, -inf}, {kWeightErrorChunk - 1, 65519.f},
      {kWeightErrorChunk + 16, 65520.f}, {kWeightErrorChunk + 17, std::numeric_limits<float>::max()},
      {kWeightErrorChunk + 40, 1e-8f}, {kWeightErrorChunk + 41, 1e-40f}, {kWeightErrorChunk + 42, -0.f},
      {2 * kWeightErrorChunk + 5000, inf}, {n - 3, std::nanf("")}, {n - 1, -70000.f}};
  for (const auto& [i, x] : specials) v[i] = x;
  for (DType from : {DType::kF32, DType::kF16, DType::kBF16}) {
    for (DType to : {DType::kF16, DType::kBF16}) {
      if (from == to) continue;
      SCOPED_TRACE(std::string(DTypeName(from)) + " -> " + std::string(DTypeName(to)));
      std::vector<uint8_t> bytes(DTypeBytes(from, n));
      ASSERT_TRUE(EncodeFromF32(from, v.data(), n, bytes.data()).ok());
      std::vector<float> x(n);
      ASSERT_TRUE(DecodeToF32(from, bytes.data(), n, x.data()).ok());
      Model m;
      m.tensors.Set("w", Tensor(from, {n}, std::make_shared<OwnedBuffer>(std::move(bytes))));
      auto report = testing::RunPipeline(m, fmt::format("cast{{dtype={}}}", DTypeName(to)));
      ASSERT_TRUE(report.ok()) << report.status();
      auto out = m.tensors.at("w").Data();
      ASSERT_TRUE(out.ok());
      ASSERT_TRUE(ResolvePendingMetrics(*report).ok());
      // The reference: each element rounded on its own, measured one at a time.
      std::vector<WeightErrorChunk> chunks((n + kWeightErrorChunk - 1) / kWeightErrorChunk);
      int64_t overflowed = 0, wrong = 0;
      for (int64_t i = 0; i < n; ++i) {
        const uint16_t want = to == DType::kF16 ? F32ToF16(x[i]) : F32ToBF16(x[i]);
        uint16_t got;
        std::memcpy(&got, (*out)->data() + 2 * i, 2);
        if (got != want && ++wrong < 5) ADD_FAILURE() << "element " << i << " (" << x[i] << "): " << got << " != " << want;
        const float back = to == DType::kF16 ? F16ToF32(want) : BF16ToF32(want);
        const bool in_finite = std::isfinite(x[i]), out_finite = std::isfinite(back);
        overflowed += in_finite && !out_finite;
        const bool measured = in_finite && out_finite;
        chunks[i / kWeightErrorChunk].Add(i, measured ? x[i] : 0.f, measured ? back : 0.f);
      }
      EXPECT_EQ(wrong, 0);
      const WeightError e = CombineWeightErrorChunks(chunks);
      ASSERT_EQ(report->passes.size(), 1u);
      ASSERT_EQ(report->passes[0].tensors.size(), 1u);
      const auto& metrics = report->passes[0].tensors[0].metrics;
      EXPECT_EQ(metrics.at("max_abs_error"), e.max_abs);
      EXPECT_EQ(metrics.at("rel_fro_error"), e.rel_fro);
      EXPECT_EQ(metrics.count("overflowed_to_inf") ? metrics.at("overflowed_to_inf") : 0.0,
                static_cast<double>(overflowed));
      if (from != DType::kF16) {
        EXPECT_GT(overflowed, 0);  // (f16 values all fit bf16)
      }
    }
  }
}

}  // namespace
}  // namespace compress
