// precision-align: the chosen bit widths meet the alignment criterion on the calibration
// statistics for at least `coverage` of each layer's (row, group)s, budgets are respected,
// and bf16-precision outputs need more than 8 bits (16-bit kept).
#include "passes/precision/precision_align.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "calibrate/calibration.h"
#include "formats/model_io.h"
#include "tests/pipeline_util.h"
#include "tests/test_util.h"

namespace compress {
namespace {

struct Fixture {
  std::string src = testing::SharedModel("pycode-tiny");
  CalibrationData calib;
  std::map<std::string, std::vector<double>> rms;  // block-0 input RMS per layer
  bool Load() {
    if (!std::filesystem::exists(src)) return false;
    CalibrationOptions co{std::string(COMPRESS_SOURCE_DIR) + "/samples/eval/pycode-sample.txt", 4, 128, 2};
    calib = *LoadCalibration(co, src + "/tokenizer.json");
    auto m = LoadModel(src);
    EXPECT_TRUE(RunCalibration(*m, calib, {false, false},
                               [&](int block, const std::map<std::string, LinearStats>& st) {
                                 if (block != 0) return absl::OkStatus();
                                 for (const auto& [n, s] : st) {
                                   std::vector<double> a;
                                   for (double v : s.sum_sq) a.push_back(std::sqrt(v / s.rows));
                                   rms[n] = a;
                                 }
                                 return absl::OkStatus();
                               })
                    .ok());
    return true;
  }
  // The model after `pipeline`; `dense` gets the block-0 layers' weights from before it.
  Model Run(const std::string& pipeline, std::map<std::string, std::vector<float>>& dense) {
    auto m = LoadModel(src);
    for (const auto& [n, _] : rms) dense[n] = *m->tensors.at(n).ToF32();
    auto r = testing::RunPipeline(*m, pipeline, &calib);
    EXPECT_TRUE(r.ok()) << r.status();
    return *std::move(m);
  }
};

TEST(PrecisionAlign, ChosenBitsMeetTheCriterionOnBlockZero) {
  Fixture f;
  if (!f.Load()) GTEST_SKIP() << "no ../shared";
  std::map<std::string, std::vector<float>> dense;
  const Model m = f.Run("precision-align{output-bits=4,coverage=0.9,group-size=32,error=addend}", dense);
  const double p = 4, coverage = 0.9;
  for (const auto& [name, a] : f.rms) {
    SCOPED_TRACE(name);
    const Tensor& t = m.tensors.at(name);
    ASSERT_NE(t.quant(), nullptr);
    const auto& w = dense[name];
    const auto back = *t.ToF32();
    const int64_t rows = t.shape()[0], cols = t.shape()[1], g = t.quant()->group_size;
    int64_t met = 0, total = 0;
    for (int64_t j = 0; j < rows; ++j) {
      double big = 0;
      for (int64_t k = 0; k < cols; ++k) big = std::max(big, std::fabs(w[j * cols + k]) * a[k]);
      const double ulp =
          std::ldexp(1.0, static_cast<int>(std::floor(std::log2(big))) - static_cast<int>(p) + 1);
      for (int64_t g0 = 0; g0 < cols; g0 += g, ++total) {
        bool ok = true;
        for (int64_t k = g0; k < g0 + g; ++k)
          ok &= std::fabs(back[j * cols + k] - w[j * cols + k]) * a[k] <= ulp / 2 * (1 + 1e-5);
        met += ok;
      }
    }
    EXPECT_GE(static_cast<double>(met) / total, coverage) << met << " of " << total;
  }
}

// error=sum (the default): the bits are chosen so that each row's modelled rounding error,
// sqrt(sum_g s_g^2 / 12 * sum_{k in g} a_k^2), stays within half the output's last kept bit
// for at least `coverage` of the rows. Round-to-nearest errs by at most s_g / 2 per element,
// so on those rows the realized error sqrt(sum_k (dW_jk a_k)^2) is at most sqrt(3) times
// that: the coverage quantile of realized / (ulp / 2) is bounded by sqrt(3).
TEST(PrecisionAlign, SummedRowErrorsMeetTheCriterionOnBlockZero) {
  Fixture f;
  if (!f.Load()) GTEST_SKIP() << "no ../shared";
  std::map<std::string, std::vector<float>> dense;
  const Model m = f.Run("precision-align{output-bits=4,coverage=0.9,group-size=32}", dense);
  const double p = 4, coverage = 0.9;
  double worst = 0;
  for (const auto& [name, a] : f.rms) {
    SCOPED_TRACE(name);
    const Tensor& t = m.tensors.at(name);
    ASSERT_NE(t.quant(), nullptr);
    const auto& w = dense[name];
    const auto back = *t.ToF32();
    const int64_t rows = t.shape()[0], cols = t.shape()[1];
    std::vector<double> ratio;
    for (int64_t j = 0; j < rows; ++j) {
      double big = 0, e2 = 0;
      for (int64_t k = 0; k < cols; ++k) {
        big = std::max(big, std::fabs(w[j * cols + k]) * a[k]);
        const double d = (back[j * cols + k] - w[j * cols + k]) * a[k];
        e2 += d * d;
      }
      const double ulp = std::ldexp(1.0, static_cast<int>(std::floor(std::log2(big))) - static_cast<int>(p) + 1);
      ratio.push_back(std::sqrt(e2) / (ulp / 2));
    }
    std::sort(ratio.begin(), ratio.end());
    const double q = ratio[static_cast<size_t>(std::floor(coverage * (ratio.size() - 1)))];
    worst = std::max(worst, q);
    EXPECT_LE(q, std::sqrt(3.0) + 1e-9) << "the coverage quantile of row error / (ulp / 2)";
  }
  std::printf("worst layer's %.0f%% quantile of row error / (ulp / 2): %.3f\n", 100 * coverage, worst);
}

TEST(PrecisionAlign, Bf16OutputsNeedMoreThanEightBitsAndBudgetsFit) {
  Fixture f;
  if (!f.Load()) GTEST_SKIP() << "no ../shared";
  auto m = LoadModel(f.src);
  auto plan = testing::RunPipeline(*m, "precision-align{apply=false}", &f.calib);
  ASSERT_TRUE(plan.ok()) << plan.status();
  for (const auto& t : plan->passes[0].tensors) EXPECT_GT(t.metrics.at("needed_int_bits"), 8) << t.name;
  EXPECT_EQ(m->tensors.at("model.layers.0.mlp.up_proj.weight").quant(), nullptr)
      << "apply=false changes nothing";
  bool kv = false;
  for (const auto& n : plan->passes[0].notes) kv |= n.starts_with("kv plan block 0: K needs");
  EXPECT_TRUE(kv);
  auto fit = testing::RunPipeline(*m, "precision-align{budget=4.5}", &f.calib);
  ASSERT_TRUE(fit.ok()) << fit.status();
  EXPECT_LE(fit->passes[0].stats.at("bits_per_parameter"), 4.5);
  double bits = 0, params = 0;
  for (const auto& t : fit->passes[0].tensors) {
    bits += 8.0 * t.bytes_after;
    params += NumElements(t.shape_after);
  }
  EXPECT_LE(bits / params, 4.5 + 1e-9) << "stored bytes agree with the plan";
}

}  // namespace
}  // namespace compress
