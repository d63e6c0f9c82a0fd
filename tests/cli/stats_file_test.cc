// `run --stats FILE`: the calibration-statistics analysis is saved, reused by a run with the
// same model state and calibration (same bytes out, the report says it was read), computed
// again when either differs, and a file that is not a statistics file is refused untouched.
#include <gtest/gtest.h>

#include <filesystem>

#include "nlohmann/json.hpp"
#include "tests/test_util.h"

namespace compress {
namespace {
namespace fs = std::filesystem;

std::string AnalysisNotes(const std::string& report) {
  std::string out;
  const nlohmann::json j = nlohmann::json::parse(testing::ReadFile(report));  // outlives the loop
  for (const auto& p : j.at("passes")) {
    for (const auto& n : p.at("notes")) {
      const std::string s = n.get<std::string>();
      if (s.find("analysis 'calibration-statistics'") != std::string::npos) out += s + "\n";
    }
  }
  return out;
}

TEST(StatsFile, SavedStatisticsAreReusedOnlyForTheSameModelAndCalibration) {
  const std::string model = testing::SharedModel("pycode-tiny");
  const std::string text = std::string(COMPRESS_SHARED_DIR) + "/data/pycode-dev.txt";
  REQUIRE_SHARED(model);
  REQUIRE_SHARED(text);
  testing::ScratchDir d;
  const std::string stats = d / "stats.bin";
  auto run = [&](const std::string& pipeline, const std::string& out, const std::string& samples) {
    return testing::RunCompress("run '" + model + "' -q -p '" + pipeline + "' -o '" + out + "' --report '" + out +
                                    ".json' --calibration '" + text + "' --calib-samples " + samples +
                                    " --calib-seqlen 128 --stats '" + stats + "'",
                                d.path().string());
  };
  const std::string wanda = "prune-structured{target=neurons,ratio=0.25,score=wanda}";
  auto r = run(wanda, d / "a", "8");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(AnalysisNotes(d / "a.json").find("saved analysis"), std::string::npos);
  ASSERT_TRUE(fs::exists(stats));

  r = run(wanda, d / "b", "8");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(AnalysisNotes(d / "b.json").find("read analysis"), std::string::npos) << AnalysisNotes(d / "b.json");
  EXPECT_TRUE(testing::ReadFile(d / "a/model.safetensors") == testing::ReadFile(d / "b/model.safetensors"));

  // Other calibration, or another model state before the analysis: computed again.
  r = run(wanda, d / "c", "6");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(AnalysisNotes(d / "c.json").find("saved analysis"), std::string::npos);
  r = run("cast{dtype=f16}," + wanda, d / "e", "8");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(AnalysisNotes(d / "e.json").find("saved analysis"), std::string::npos) << AnalysisNotes(d / "e.json");
  // The first entry is still there.
  r = run(wanda, d / "f", "8");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(AnalysisNotes(d / "f.json").find("read analysis"), std::string::npos);

  // Not a statistics file: exit 2 before any work, the file unchanged.
  testing::WriteFile(d / "mine.txt", "my notes\n");
  r = testing::RunCompress("run '" + model + "' -q -p '" + wanda + "' -o '" + (d / "g") + "' --calibration '" + text +
                               "' --calib-samples 8 --calib-seqlen 128 --stats '" + (d / "mine.txt") + "'",
                           d.path().string());
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("not a compress statistics file"), std::string::npos) << r.err;
  EXPECT_EQ(testing::ReadFile(d / "mine.txt"), "my notes\n");
  EXPECT_FALSE(fs::exists(d / "g"));
}

}  // namespace
}  // namespace compress
