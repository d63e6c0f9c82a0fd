// safetensors: bit-exact round trips (single file, sharded, through casts) on real checkpoints.
#include "formats/safetensors.h"

#include <gtest/gtest.h>

#include "core/pass_manager.h"
#include "formats/model_io.h"
#include "passes/registry.h"
#include "tests/pipeline_util.h"
#include "tests/test_util.h"

namespace compress {
namespace {
using testing::ExpectSameTensors;
using testing::ScratchDir;
using testing::SharedModel;

TEST(Safetensors, RealCheckpointRoundTripsBitExact) {
  const std::string src = SharedModel("pycode-llama");
  REQUIRE_SHARED(src);
  auto m = LoadModel(src);
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->tensors.size(), 57u);
  EXPECT_EQ(m->ParameterCount(), 15733632);
  EXPECT_EQ(m->arch.blocks.size(), 6u);
  EXPECT_EQ(m->arch.num_kv_heads, 2);
  ScratchDir tmp;
  auto written = SaveModel(*m, tmp / "out", {});
  ASSERT_TRUE(written.ok()) << written.status();
  auto back = LoadModel(tmp / "out");
  ASSERT_TRUE(back.ok()) << back.status();
  ExpectSameTensors(m->tensors, back->tensors);
  EXPECT_EQ(back->config, m->config);
  EXPECT_TRUE(std::filesystem::exists(tmp / "out/tokenizer.json"));
  // Nothing but the output is left in the parent folder.
  EXPECT_EQ(std::distance(std::filesystem::directory_iterator(tmp.path()), {}), 1);
}

TEST(Safetensors, ShardedRoundTripBitExact) {
  const std::string src = SharedModel("pycode-llama");
  REQUIRE_SHARED(src);
  auto m = LoadModel(src);
  ASSERT_TRUE(m.ok());
  ScratchDir tmp;
  SaveOptions opts;
  opts.max_shard_bytes = 8 << 20;
  ASSERT_TRUE(SaveModel(*m, tmp / "sharded", opts).ok());
  EXPECT_TRUE(std::filesystem::exists(tmp / "sharded/model.safetensors.index.json"));
  EXPECT_TRUE(std::filesystem::exists(tmp / "sharded/model-00001-of-00005.safetensors"));
  EXPECT_FALSE(std::filesystem::exists(tmp / "sharded/model.safetensors"));
  for (const auto& e : std::filesystem::directory_iterator(tmp / "sharded")) {
    if (e.path().extension() == ".safetensors") {
      EXPECT_LE(e.file_size(), (8u << 20) + 16384);
    }
  }
  auto back = LoadModel(tmp / "sharded");
  ASSERT_TRUE(back.ok()) << back.status();
  ExpectSameTensors(m->tensors, back->tensors);
  // And back to one file.
  ASSERT_TRUE(SaveModel(*back, tmp / "single", {}).ok());
  auto single = LoadModel(tmp / "single");
  ASSERT_TRUE(single.ok());
  ExpectSameTensors(m->tensors, single->tensors);
}

TEST(Safetensors, Bf16ToF32AndBackIsExact) {
  const std::string src = SharedModel("pycode-tiny");
  REQUIRE_SHARED(src);
  auto m = LoadModel(src);
  ASSERT_TRUE(m.ok());
  auto orig = LoadModel(src);
  ScratchDir tmp;
  for (const char* p : {"cast{dtype=f32}", "cast{dtype=bf16}"}) {
    ASSERT_TRUE(testing::RunPipeline(*m, p).ok());
    ASSERT_TRUE(SaveModel(*m, tmp / p, {}).ok());
    m = LoadModel(tmp / p);
    ASSERT_TRUE(m.ok()) << m.status();
  }
  ExpectSameTensors(orig->tensors, m->tensors);
  EXPECT_EQ(m->config["dtype"], "bfloat16");
}

TEST(Safetensors, WriterRefusesTypesItCannotHold) {
  TensorStore s;
  s.Set("q", *Tensor::FromF32(std::vector<float>{1, 2}, {2}, DType::kI4));
  ScratchDir tmp;
  auto r = WriteSafetensors(s, tmp.path().string(), {});
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(r.status().message(), "tensor 'q': dtype int4 cannot be stored in safetensors");
}

TEST(Safetensors, MetadataRoundTrips) {
  TensorStore s;
  s.Set("a", *Tensor::FromF32(std::vector<float>{1, 2, 3}, {3}, DType::kF16));
  ScratchDir tmp;
  SafetensorsWriteOptions o;
  o.metadata = {{"format", "pt"}, {"compress.pipeline", "cast{dtype=f16}"}};
  ASSERT_TRUE(WriteSafetensors(s, tmp.path().string(), o).ok());
  TensorStore back;
  std::map<std::string, std::string> md;
  ASSERT_TRUE(ReadSafetensorsFile(tmp / "model.safetensors", back, &md).ok());
  EXPECT_EQ(md, o.metadata);
  EXPECT_EQ(*back.at("a").ToF32(), (std::vector<float>{1, 2, 3}));
  // The data section starts 8-byte aligned.
  uint64_t hl;
  std::string bytes = testing::ReadFile(tmp / "model.safetensors");
  std::memcpy(&hl, bytes.data(), 8);
  EXPECT_EQ(hl % 8, 0u);
}

}  // namespace
}  // namespace compress
