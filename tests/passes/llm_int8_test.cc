// LLM.int8(): outlier inputs are found (weight rule and calibration rule), kept exactly in
// f16, and the rest is vector-wise int8 within half a scale.
#include "passes/quantize/llm_int8.h"

#include <gtest/gtest.h>

#include <cmath>
#include <set>

#include "calibrate/calibration.h"
#include "formats/model_io.h"
#include "tests/pipeline_util.h"
#include "tests/test_util.h"

namespace compress {
namespace {

// Checks one decomposed weight against its dense original.
void ExpectDecomposition(const std::vector<float>& w, const Tensor& t) {
  const QuantInfo& q = *t.quant();
  const int64_t rows = t.shape()[0], cols = t.shape()[1];
  const std::set<int64_t> out(q.outlier_inputs.begin(), q.outlier_inputs.end());
  auto back = *t.ToF32();
  auto codes = *t.Data();
  for (int64_t r = 0; r < rows; ++r) {
    float amax = 0;
    for (int64_t c = 0; c < cols; ++c) {
      if (!out.count(c)) amax = std::max(amax, std::fabs(w[r * cols + c]));
    }
    ASSERT_FLOAT_EQ(q.scales()[r], amax / 127) << "row " << r << ": absmax of the int8 part";
    for (int64_t c = 0; c < cols; ++c) {
      const float v = w[r * cols + c], got = back[r * cols + c];
      if (out.count(c)) {
        ASSERT_EQ(got, F16ToF32(F32ToF16(v))) << r << "," << c;
        ASSERT_EQ(static_cast<int8_t>(codes->data()[r * cols + c]), 0);
      } else {
        // half a scale, plus the f32 rounding of (q * s) next to values up to 127 s
        ASSERT_LE(std::fabs(got - v), q.scales()[r] / 2 + 2.4e-7f * std::fabs(v)) << r << "," << c;
      }
    }
  }
}

TEST(LlmInt8, WeightRuleFindsPlantedOutlierColumns) {
  const std::string src = testing::SharedModel("pycode-tiny");
  REQUIRE_SHARED(src);
  auto m = LoadModel(src);
  ASSERT_TRUE(m.ok());
  const std::string name = "model.layers.1.self_attn.q_proj.weight";
  Tensor t = m->tensors.at(name);
  auto w = *t.ToF32();
  const int64_t rows = t.shape()[0], cols = t.shape()[1];
  for (int64_t r = 0; r < rows; ++r) {
    w[r * cols + 7] *= 40.f;
    w[r * cols + 90] *= 25.f;
  }
  m->tensors.Set(name, *Tensor::FromF32(w, t.shape(), DType::kF32));
  auto report = testing::RunPipeline(*m, "llm-int8");
  ASSERT_TRUE(report.ok()) << report.status();
  const QuantInfo& q = *m->tensors.at(name).quant();
  EXPECT_EQ(q.outlier_inputs, (std::vector<int64_t>{7, 90}));
  ExpectDecomposition(w, m->tensors.at(name));
  bool listed = false;
  for (const auto& n : report->passes[0].notes) listed |= n == name + ": outlier inputs [7, 90]";
  EXPECT_TRUE(listed) << "the report lists each layer's outlier inputs";
  // The decomposition beats plain vector-wise int8 on this weight by a wide margin.
  auto plain = *QuantizeRtn(w, rows, cols, 8, true, 0, 0);
  std::vector<float> plain_back(w.size());
  Dequantize(plain.first, rows, cols, plain.second, plain_back.data());
  EXPECT_LT(CompareWeights(w, *m->tensors.at(name).ToF32()).rel_fro,
            0.5 * CompareWeights(w, plain_back).rel_fro);
}

TEST(LlmInt8, CalibrationRuleUsesActivationMagnitudes) {
  const std::string src = testing::SharedModel("pycode-tiny");
  REQUIRE_SHARED(src);
  auto m = LoadModel(src);
  ASSERT_TRUE(m.ok());
  CalibrationOptions co{std::string(COMPRESS_SOURCE_DIR) + "/samples/eval/pycode-sample.txt", 8, 128, 3};
  auto calib = LoadCalibration(co, src + "/tokenizer.json");
  ASSERT_TRUE(calib.ok()) << calib.status();
  // Block 0 sees the same inputs whether or not anything was quantized before it.
  std::map<std::string, std::vector<float>> absmax;
  auto probe = LoadModel(src);
  ASSERT_TRUE(RunCalibration(*probe, *calib, {false, false},
                             [&](int block, const std::map<std::string, LinearStats>& stats) {
                               if (block == 0)
                                 for (const auto& [n, st] : stats) absmax[n] = st.absmax;
                               return absl::OkStatus();
                             })
                  .ok());
  const double threshold = 1.5;
  std::map<std::string, std::vector<float>> dense;
  for (const auto& [n, _] : absmax) dense[n] = *m->tensors.at(n).ToF32();
  auto report = testing::RunPipeline(*m, fmt::format("llm-int8{{threshold={}}}", threshold), &*calib);
  ASSERT_TRUE(report.ok()) << report.status();
  int64_t found = 0;
  for (const auto& [n, am] : absmax) {
    std::vector<int64_t> want;
    for (size_t k = 0; k < am.size(); ++k)
      if (am[k] >= threshold) want.push_back(static_cast<int64_t>(k));
    EXPECT_EQ(m->tensors.at(n).quant()->outlier_inputs, want) << n;
    ExpectDecomposition(dense[n], m->tensors.at(n));
    found += static_cast<int64_t>(want.size());
  }
  EXPECT_GT(found, 0) << "the threshold should catch some inputs of block 0";
}

}  // namespace
}  // namespace compress
