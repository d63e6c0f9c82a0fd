// mixed-precision: the allocation fits the budget, is close to the brute-force optimum of
// the same sensitivities, and the written mixed-format checkpoint reloads exactly.
#include "analyze/plot.h"
#include "passes/precision/mixed_precision.h"

#include <gtest/gtest.h>

#include "calibrate/calibration.h"
#include "formats/model_io.h"
#include "tests/pipeline_util.h"
#include "tests/test_util.h"

namespace compress {
namespace {

TEST(MixedPrecision, FitsTheBudgetNearTheBruteForceOptimum) {
  const std::string src = testing::SharedModel("pycode-tiny");
  REQUIRE_SHARED(src);
  auto m = LoadModel(src);
  ASSERT_TRUE(m.ok());
  CalibrationOptions co{std::string(COMPRESS_SOURCE_DIR) + "/samples/eval/pycode-sample.txt", 4, 128, 1};
  auto calib = LoadCalibration(co, src + "/tokenizer.json");
  ASSERT_TRUE(calib.ok());
  const std::vector<std::string> formats = {"int8", "nf4", "int3"};
  auto report = testing::RunPipeline(
      *m, "mixed-precision{budget=5,candidates=[int8,nf4,int3],include=[model.layers.0.*]}", &*calib);
  ASSERT_TRUE(report.ok()) << report.status();
  const PassReport& p = report->passes[0];
  ASSERT_EQ(p.tensors.size(), 7u);
  EXPECT_LE(p.stats.at("bits_per_parameter"), 5.0);
  ASSERT_EQ(p.plots.count("tradeoff.svg"), 1u);
  const auto& curve = std::get<CurvePlot>(p.plots.at("tradeoff.svg"));
  EXPECT_GE(curve.points.size(), 2u);
  EXPECT_NE(PlotSvg(p.plots.at("tradeoff.svg")).find("<polyline"), std::string::npos);
  // Brute force over the 3^7 allocations with the sensitivities and sizes the pass measured.
  std::vector<std::vector<double>> d(7);
  std::vector<std::vector<int64_t>> bytes(7);
  int64_t params = 0;
  for (size_t i = 0; i < 7; ++i) {
    const TensorChange& t = p.tensors[i];
    params += NumElements(t.shape_before);
    for (const auto& f : formats) {
      d[i].push_back(t.metrics.at("sensitivity_" + f));
      // Bytes of each format for this layer, as the pass stores it.
      auto one = LoadModel(src);
      ASSERT_TRUE(
          testing::RunPipeline(
              *one, fmt::format("mixed-precision{{budget=32,candidates=[{}],include=[{}]}}", f, t.name))
              .ok());
      bytes[i].push_back(one->tensors.at(t.name).storage_bytes());
    }
  }
  const int64_t budget = static_cast<int64_t>(5.0 * params / 8);
  double best = 1e30;
  for (int code = 0; code < 2187; ++code) {
    int c = code;
    int64_t b = 0;
    double s = 0;
    for (int i = 0; i < 7; ++i, c /= 3) b += bytes[i][c % 3], s += d[i][c % 3];
    if (b <= budget) best = std::min(best, s);
  }
  EXPECT_LE(p.stats.at("summed_sensitivity"), best * 1.10) << "brute-force optimum " << best;
  EXPECT_GE(p.stats.at("summed_sensitivity"), best * (1 - 1e-9));
  // The mixed-format checkpoint round-trips.
  testing::ScratchDir dir;
  ASSERT_TRUE(SaveModel(*m, dir / "mixed", {}).ok());
  auto back = LoadModel(dir / "mixed");
  ASSERT_TRUE(back.ok()) << back.status();
  for (const auto& t : p.tensors)
    EXPECT_EQ(*back->tensors.at(t.name).ToF32(), *m->tensors.at(t.name).ToF32());
}

TEST(MixedPrecision, RefusesBudgetsBelowTheSmallestCandidates) {
  const std::string src = testing::SharedModel("pycode-tiny");
  REQUIRE_SHARED(src);
  auto m = LoadModel(src);
  auto r = testing::RunPipeline(*m, "mixed-precision{budget=2,candidates=[int8,int4]}");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(std::string(r.status().message()).find("over the budget"), std::string::npos) << r.status();
  EXPECT_FALSE(testing::RunPipeline(*m, "mixed-precision{candidates=[int9]}").ok());
}

}  // namespace
}  // namespace compress
