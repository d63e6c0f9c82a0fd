// N:M compressed sparse storage: round trips bit-exactly, shrinks the file, leaves weights
// that are not n:m dense, and refuses lying indices.
#include "formats/sparse_layout.h"

#include <gtest/gtest.h>

#include <filesystem>

#include "formats/model_io.h"
#include "formats/safetensors.h"
#include "tests/pipeline_util.h"
#include "tests/test_util.h"

namespace compress {
namespace {

TEST(SparseNM, CompressedStorageRoundTripsExactly) {
  const std::string src = testing::SharedModel("pycode-tiny");
  REQUIRE_SHARED(src);
  for (auto [n, m] : {std::pair{2, 4}, std::pair{1, 4}, std::pair{4, 8}}) {
    SCOPED_TRACE(::testing::Message() << n << ":" << m);
    auto model = LoadModel(src);
    ASSERT_TRUE(
        testing::RunPipeline(*model, fmt::format("prune-nm{{n={},m={},exclude=[*down_proj*]}}", n, m)).ok());
    testing::ScratchDir d;
    SaveOptions so;
    so.sparse_n = n, so.sparse_m = m;
    ASSERT_TRUE(SaveModel(*model, d / "s", so).ok());
    ASSERT_TRUE(SaveModel(*model, d / "dense", {}).ok());
    auto cfg = nlohmann::json::parse(testing::ReadFile(d / "s/config.json"));
    ASSERT_TRUE(cfg.contains("compress_sparse_nm"));
    EXPECT_EQ(cfg["compress_sparse_nm"]["layers"].size(), 24u) << "down_proj stays dense: not n:m";
    auto back = LoadModel(d / "s");
    ASSERT_TRUE(back.ok()) << back.status();
    EXPECT_EQ(back->tensors.names(), model->tensors.names());
    for (const auto& name : model->tensors.names()) {
      EXPECT_EQ(back->tensors.at(name).dtype(), model->tensors.at(name).dtype()) << name;
      EXPECT_EQ(*back->tensors.at(name).ToF32(), *model->tensors.at(name).ToF32()) << name;
    }
    // The 24 sparse weights shrink to n/m of their bf16 bytes plus ceil(log2 m)-bit indices.
    int64_t saved = 0;
    for (const auto& b : cfg["compress_sparse_nm"]["layers"]) {
      const Tensor& t = model->tensors.at(b.get<std::string>() + ".weight");
      const int64_t kept = t.numel() / m * n, bits = m == 8 ? 3 : 2;
      saved += t.nbytes() - (kept * 2 + t.shape()[0] * ((kept / t.shape()[0] * bits + 7) / 8));
    }
    const int64_t dense_size = std::filesystem::file_size(d / "dense/model.safetensors");
    const int64_t sparse_size = std::filesystem::file_size(d / "s/model.safetensors");
    EXPECT_NEAR(static_cast<double>(dense_size - sparse_size), static_cast<double>(saved), 8192.0);
    EXPECT_LT(std::filesystem::file_size(d / "s/model.safetensors"),
              std::filesystem::file_size(d / "dense/model.safetensors"));
  }
}

TEST(SparseNM, LyingIndicesAreRejected) {
  const std::string src = testing::SharedModel("pycode-tiny");
  REQUIRE_SHARED(src);
  auto model = LoadModel(src);
  ASSERT_TRUE(testing::RunPipeline(*model, "prune-nm{n=2,m=4}").ok());
  testing::ScratchDir d;
  SaveOptions so;
  so.sparse_n = 2, so.sparse_m = 4;
  ASSERT_TRUE(SaveModel(*model, d / "s", so).ok());
  auto cfg = nlohmann::json::parse(testing::ReadFile(d / "s/config.json"));
  cfg["compress_sparse_nm"]["m"] = 8;  // index rows now have the wrong width
  testing::WriteFile(d / "s/config.json", cfg.dump());
  auto r = LoadModel(d / "s");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(std::string(r.status().message()).find("weight_nm_index"), std::string::npos) << r.status();
}

}  // namespace
}  // namespace compress
