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

// A model whose quantized codes exceed the result memory budget (COMPRESS_MEMORY_BUDGET, a
// quarter of RAM by default) keeps only the scales and produces the codes again while
// writing: the same bytes as holding them, for the compressed-tensors and GGUF writers. The
// weights are made in memory first (cast to f32): weights read from a file are quantized while
// writing whatever the budget, so they do not count against it (and the report does not say so).
TEST(Determinism, QuantizersPastTheMemoryBudgetWriteTheSameBytes) {
  const std::string model = testing::SharedModel("pycode-tiny");
  REQUIRE_SHARED(model);
  testing::ScratchDir d;
  // quantize-int to compressed-tensors and GGUF; the codebook quantizers (fp4 picking among
  // three formats, mxfp4) to the compress layout.
  const std::pair<std::string, std::string> runs[] = {
      {"quantize-int{bits=4,group-size=32,scale-dtype=f16}", ""},
      {"quantize-int{bits=4,group-size=32,scale-dtype=f16}", ".gguf"},
      {"quantize-int{bits=3,symmetric=false,group-size=0}", ""},
      {"quantize-fp4{search=false}", ""},
      {"quantize-mxfp4", ""}};
  int run = 0;
  for (const auto& [quantizer, ext] : runs) {
    for (const std::string& first : {std::string("cast{dtype=f32},"), std::string()}) {
      const std::string pipeline = first + quantizer;
      SCOPED_TRACE(pipeline + ext);
      ++run;
      std::string bytes[2], report;
      for (int lazy : {0, 1}) {
        if (lazy) setenv("COMPRESS_MEMORY_BUDGET", "0", 1);
        const std::string out = d / ("q" + std::to_string(lazy) + "-" + std::to_string(run) + ext);
        auto r = testing::RunCompress("run '" + model + "' -q -p '" + pipeline + "' -o '" + out + "' --report '" +
                                          out + ".json'",
                                      d.path().string());
        unsetenv("COMPRESS_MEMORY_BUDGET");
        ASSERT_EQ(r.exit_code, 0) << r.err;
        bytes[lazy] = testing::ReadFile(ext.empty() ? out + "/model.safetensors" : out);
        report = testing::ReadFile(out + ".json");
      }
      EXPECT_GT(bytes[0].size(), 100000u);
      EXPECT_TRUE(bytes[0] == bytes[1]) << "codes produced while writing differ from codes held in memory";
      const bool noted = report.find("exceed the result memory budget") != std::string::npos;
      if (first.empty()) {
        EXPECT_FALSE(noted) << "weights read from the file are never held: nothing exceeds the budget";
        EXPECT_NE(report.find("quantized while writing"), std::string::npos);
      } else {
        EXPECT_TRUE(noted) << "the lazy run says so";
      }
    }
  }
}

}  // namespace
}  // namespace compress
