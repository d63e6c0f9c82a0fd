// Quantized checkpoints: compressed-tensors int-quantized round trip, decompress, bad files.
#include "formats/compressed_tensors.h"

#include <gtest/gtest.h>

#include "core/pass_manager.h"
#include "formats/model_io.h"
#include "formats/safetensors.h"
#include "passes/registry.h"
#include "tests/pipeline_util.h"
#include "tests/test_util.h"

namespace compress {
namespace {
using testing::ScratchDir;
using testing::SharedModel;

absl::Status RunPipeline(Model& m, const std::string& text) { return testing::RunPipeline(m, text).status(); }

TEST(CompressedTensors, QuantizedCheckpointRoundTripsExactly) {
  REQUIRE_SHARED(SharedModel("pycode-tiny"));
  for (const char* p : {"quantize-int8", "quantize-int{bits=4,group-size=32,symmetric=false}"}) {
    SCOPED_TRACE(p);
    auto m = LoadModel(SharedModel("pycode-tiny"));
    ASSERT_TRUE(m.ok());
    ASSERT_TRUE(RunPipeline(*m, p).ok());
    ScratchDir d;
    ASSERT_TRUE(SaveModel(*m, d / "q", {}).ok());
    auto back = LoadModel(d / "q");
    ASSERT_TRUE(back.ok()) << back.status();
    EXPECT_FALSE(back->config.contains("quantization_config")) << "folded into the tensors";
    ASSERT_EQ(back->tensors.names(), m->tensors.names());
    int quantized = 0;
    for (const auto& n : m->tensors.names()) {
      const Tensor& a = m->tensors.at(n);
      const Tensor& b = back->tensors.at(n);
      ASSERT_EQ(a.quant() != nullptr, b.quant() != nullptr) << n;
      if (a.quant()) {
        ++quantized;
        EXPECT_EQ(a.quant()->bits, b.quant()->bits);
        EXPECT_EQ(a.quant()->group_size, b.quant()->group_size);
        EXPECT_EQ(a.quant()->scales, b.quant()->scales);
        EXPECT_EQ(a.quant()->zero_points, b.quant()->zero_points);
      }
      EXPECT_EQ(*a.ToF32(), *b.ToF32()) << n;
    }
    EXPECT_EQ(quantized, 28);
    // The written config describes every quantized layer for compressed-tensors loaders.
    auto cfg = nlohmann::json::parse(testing::ReadFile(d / "q/config.json"));
    const auto& qc = cfg["quantization_config"];
    EXPECT_EQ(qc["quant_method"], "compressed-tensors");
    EXPECT_EQ(qc["format"], "int-quantized");
    EXPECT_EQ(qc["config_groups"]["group_0"]["targets"].size(), 28u);
    // decompress: dense bf16 equal to bf16(dequantized values).
    ASSERT_TRUE(RunPipeline(*back, "dequantize").ok());
    ASSERT_TRUE(SaveModel(*back, d / "dense", {}).ok());
    auto dense = LoadModel(d / "dense");
    ASSERT_TRUE(dense.ok());
    EXPECT_FALSE(
        nlohmann::json::parse(testing::ReadFile(d / "dense/config.json")).contains("quantization_config"));
    for (const auto& n : m->tensors.names()) {
      const Tensor& t = dense->tensors.at(n);
      EXPECT_EQ(t.dtype(), DType::kBF16) << n;
      auto want = *m->tensors.at(n).ToF32();
      auto got = *t.ToF32();
      for (size_t i = 0; i < want.size(); ++i) ASSERT_EQ(got[i], BF16ToF32(F32ToBF16(want[i]))) << n;
    }
  }
}

TEST(CompressedTensors, CodesOutsideTheDeclaredRangeAreRejected) {
  REQUIRE_SHARED(SharedModel("pycode-tiny"));
  auto m = LoadModel(SharedModel("pycode-tiny"));
  ASSERT_TRUE(RunPipeline(*m, "quantize-int8").ok());
  ScratchDir d;
  ASSERT_TRUE(SaveModel(*m, d / "q", {}).ok());
  // Claim 4 bits while the codes use the int8 range.
  std::string cfg = testing::ReadFile(d / "q/config.json");
  auto j = nlohmann::json::parse(cfg);
  j["quantization_config"]["config_groups"]["group_0"]["weights"]["num_bits"] = 4;
  testing::WriteFile(d / "q/config.json", j.dump());
  auto bad = LoadModel(d / "q");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(bad.status().message().find("outside the 4-bit range [-7, 7]"), std::string::npos)
      << bad.status();
}

TEST(CompressedTensors, DequantizeWithoutQuantizedWeightsFails) {
  REQUIRE_SHARED(SharedModel("pycode-tiny"));
  auto m = LoadModel(SharedModel("pycode-tiny"));
  auto s = RunPipeline(*m, "dequantize");
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
}

TEST(CompressedTensors, GroupSizeMustDivideInFeatures) {
  REQUIRE_SHARED(SharedModel("stories260K"));
  auto m = LoadModel(SharedModel("stories260K"));
  ASSERT_TRUE(m.ok());
  auto s = RunPipeline(*m, "quantize-int{group-size=128}");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("tensor 'model.layers.0.mlp.down_proj.weight': in_features 172 is not a "
                             "multiple of group-size 128"),
            std::string::npos)
      << s;
}

}  // namespace
}  // namespace compress
