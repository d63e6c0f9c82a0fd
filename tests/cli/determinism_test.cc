// Determinism: every calibrated pass writes the same bytes with --threads 1 and --threads 2
// (reductions never depend on the thread count; Eigen's own threading is off).
#include <gtest/gtest.h>

#include <filesystem>

#include "tests/test_util.h"

namespace compress {
namespace {
namespace fs = std::filesystem;

TEST(Determinism, CalibratedPassesWriteTheSameBytesWithOneAndTwoThreads) {
  const std::string model = testing::SharedModel("pycode-tiny");
  const std::string text = std::string(COMPRESS_SHARED_DIR) + "/data/pycode-dev.txt";
  REQUIRE_SHARED(model);
  REQUIRE_SHARED(text);
  const std::vector<std::string> pipelines = {
      "quantize-gptq{bits=4,group-size=32}",
      "prune-sparsegpt{sparsity=0.5}",
      "prune-obs{sparsity=0.5}",
      "prune-obs{sparsity=0.5,hessian=fisher}",
      "prune-magnitude{sparsity=0.5,score=wanda}",
      "llm-int8",
      "mixed-precision{budget=6}",
      "remove-layers-finercut{ratio=0.25,samples=4}",
      "factorize-svd{ratio=0.5,activation-aware=true}",
  };
  for (const auto& p : pipelines) {
    SCOPED_TRACE(p);
    testing::ScratchDir d;
    std::string bytes[2];
    for (int threads : {1, 2}) {
      const std::string out = d / ("t" + std::to_string(threads));
      auto r = testing::RunCompress("run '" + model + "' -q -p '" + p + "' -o '" + out + "' --calibration '" + text +
                                        "' --calib-samples 8 --calib-seqlen 128 --threads " + std::to_string(threads),
                                    d.path().string());
      ASSERT_EQ(r.exit_code, 0) << r.err;
      bytes[threads - 1] = testing::ReadFile(out + "/model.safetensors");
    }
    EXPECT_FALSE(bytes[0].empty());
    EXPECT_TRUE(bytes[0] == bytes[1]) << "different bytes with 1 and 2 threads";
  }
}

}  // namespace
}  // namespace compress
