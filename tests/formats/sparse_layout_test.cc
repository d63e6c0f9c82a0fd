// N:M compressed sparse storage (compress's N:M form, and compressed-tensors'
// sparse-24-bitmask for 2:4): round trips bit-exactly, shrinks the file, leaves weights that
// are not n:m dense, and refuses lying indices.
#include "formats/sparse_layout.h"

#include <cstring>

#include <gtest/gtest.h>

#include <filesystem>

#include "formats/model_io.h"
#include "formats/safetensors.h"
#include "formats/sparse24_bitmask.h"
#include "tests/pipeline_util.h"
#include "tests/test_util.h"

namespace compress {
namespace {

TEST(SparseNM, CompressedStorageRoundTripsExactly) {
  const std::string src = testing::SharedModel("pycode-tiny");
  REQUIRE_SHARED(src);
  for (auto [n, m] : {std::pair{1, 4}, std::pair{4, 8}}) {
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
  ASSERT_TRUE(testing::RunPipeline(*model, "prune-nm{n=1,m=4}").ok());
  testing::ScratchDir d;
  SaveOptions so;
  so.sparse_n = 1, so.sparse_m = 4;
  ASSERT_TRUE(SaveModel(*model, d / "s", so).ok());
  auto cfg = nlohmann::json::parse(testing::ReadFile(d / "s/config.json"));
  cfg["compress_sparse_nm"]["m"] = 8;  // index rows now have the wrong width
  testing::WriteFile(d / "s/config.json", cfg.dump());
  auto r = LoadModel(d / "s");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(std::string(r.status().message()).find("weight_nm_index"), std::string::npos) << r.status();
}

// 2:4 is written as compressed-tensors sparse-24-bitmask (the form vLLM loads): linear
// weights only, the file smaller by exactly the dropped halves minus the bitmasks, read back
// bit for bit, alone and under int8 codes.
TEST(Sparse24Bitmask, TwoFourWeightsRoundTripInTheCompressedTensorsForm) {
  const std::string src = testing::SharedModel("pycode-tiny");
  REQUIRE_SHARED(src);
  for (const std::string pipeline : {"prune-nm{n=2,m=4,exclude=[*down_proj*]}", "prune-nm{n=2,m=4},quantize-int8"}) {
    SCOPED_TRACE(pipeline);
    auto model = LoadModel(src);
    ASSERT_TRUE(testing::RunPipeline(*model, pipeline).ok());
    testing::ScratchDir d;
    SaveOptions so;
    so.sparse_n = 2, so.sparse_m = 4;
    ASSERT_TRUE(SaveModel(*model, d / "s", so).ok());
    ASSERT_TRUE(SaveModel(*model, d / "dense", {}).ok());
    auto cfg = nlohmann::json::parse(testing::ReadFile(d / "s/config.json"));
    ASSERT_TRUE(cfg.contains("quantization_config")) << cfg.dump();
    EXPECT_FALSE(cfg.contains("compress_sparse_nm"));
    const auto& sc = cfg["quantization_config"]["sparsity_config"];
    EXPECT_EQ(sc["format"], "sparse-24-bitmask");
    EXPECT_EQ(sc["sparsity_structure"], "2:4");
    const bool quantized = pipeline.find("quantize") != std::string::npos;
    EXPECT_EQ(sc["targets"].size(), quantized ? 28u : 24u) << "down_proj stays dense when not pruned";
    EXPECT_EQ(cfg["quantization_config"].contains("format"), quantized);
    TensorStore h;
    ASSERT_TRUE(ReadSafetensorsFile(d / "s/model.safetensors", h, nullptr).ok());
    int64_t saved = 0;
    for (const auto& b : sc["targets"]) {
      const std::string base = b.get<std::string>();
      const Tensor& t = model->tensors.at(base + ".weight");
      const int64_t rows = t.shape()[0], cols = t.shape()[1], es = quantized ? 1 : 2;
      ASSERT_TRUE(h.contains(base + ".compressed") && h.contains(base + ".bitmask") && h.contains(base + ".shape"))
          << base;
      EXPECT_FALSE(h.contains(base + ".weight"));
      EXPECT_EQ(h.at(base + ".compressed").shape(), (Shape{rows, cols / 2}));
      EXPECT_EQ(h.at(base + ".compressed").dtype(), quantized ? DType::kI8 : t.dtype());
      EXPECT_EQ(h.at(base + ".bitmask").shape(), (Shape{rows, (cols + 7) / 8}));
      EXPECT_EQ(h.at(base + ".shape").shape(), (Shape{2, 1}));
      saved += rows * cols * es / 2 - rows * ((cols + 7) / 8) - 16;
    }
    const int64_t dense_size = std::filesystem::file_size(d / "dense/model.safetensors");
    const int64_t sparse_size = std::filesystem::file_size(d / "s/model.safetensors");
    EXPECT_NEAR(static_cast<double>(dense_size - sparse_size), static_cast<double>(saved), 16384.0);
    auto back = LoadModel(d / "s");
    ASSERT_TRUE(back.ok()) << back.status();
    EXPECT_EQ(back->tensors.names(), model->tensors.names());
    EXPECT_EQ(back->sparse_stored.size(), sc["targets"].size());
    for (const auto& name : model->tensors.names()) {
      const Tensor& a = model->tensors.at(name);
      const Tensor& b = back->tensors.at(name);
      EXPECT_EQ(b.dtype(), a.dtype()) << name;
      EXPECT_EQ(static_cast<bool>(b.quant()), static_cast<bool>(a.quant())) << name;
      auto ab = a.Data(), bb = b.Data();
      ASSERT_TRUE(ab.ok() && bb.ok());
      ASSERT_EQ((*ab)->size(), (*bb)->size()) << name;
      EXPECT_EQ(std::memcmp((*ab)->data(), (*bb)->data(), (*ab)->size()), 0) << name;
      EXPECT_EQ(*b.ToF32(), *a.ToF32()) << name;
    }
  }
}

// The exact bytes: kept values in input order, a group with fewer than 2 non-zeros keeps its
// lowest zero positions, -0.0 is a value, little-endian bits; weights that are not 2:4 (or
// whose rows are not whole groups, or that the caller does not name) stay as they are.
TEST(Sparse24Bitmask, ExactLayoutOfOneWeight) {
  const float nz = -0.0f;
  // rows of 8 inputs: groups {0, 2.5, 0, -1} {0, 0, 0, 0} / {nz, 0, 0, 3} {7, 0, 0, 0}
  std::vector<float> w = {0, 2.5f, 0, -1, 0, 0, 0, 0, nz, 0, 0, 3, 7, 0, 0, 0};
  TensorStore ts;
  ts.Set("a.weight", *Tensor::FromF32(w, {2, 8}, DType::kF32));
  ts.Set("dense3.weight", *Tensor::FromF32(std::vector<float>{1, 2, 3, 0}, {1, 4}, DType::kF32));
  ts.Set("odd.weight", *Tensor::FromF32(std::vector<float>{1, 0, 0, 0, 0, 0}, {1, 6}, DType::kF32));
  ts.Set("embed.weight", *Tensor::FromF32(std::vector<float>{1, 0, 0, 0}, {1, 4}, DType::kF32));
  auto sc = ExpandSparse24Bitmask(ts, [](const std::string& n) { return n != "embed.weight"; });
  ASSERT_TRUE(sc.ok()) << sc.status();
  EXPECT_EQ((*sc)["targets"], nlohmann::json::array({"a"}));
  EXPECT_DOUBLE_EQ((*sc)["global_sparsity"].get<double>(), (11.0 + 1 + 5) / (16 + 4 + 6));
  EXPECT_EQ(ts.names(), (std::vector<std::string>{"a.compressed", "a.bitmask", "a.shape", "dense3.weight",
                                                  "odd.weight", "embed.weight"}));
  EXPECT_EQ(*ts.at("a.compressed").ToF32(), (std::vector<float>{2.5f, -1, 0, 0, nz, 3, 7, 0}));
  EXPECT_TRUE(std::signbit((*ts.at("a.compressed").ToF32())[4]));
  auto mask = ts.at("a.bitmask").Data();
  ASSERT_TRUE(mask.ok());
  // row 0: group 0 keeps inputs 1, 3 (0b1010), group 1 inputs 0, 1 (0b0011); row 1: 0, 3 and 0, 1
  EXPECT_EQ(std::vector<uint8_t>((*mask)->data(), (*mask)->data() + 2), (std::vector<uint8_t>{0x3A, 0x39}));
  EXPECT_EQ(*ts.at("a.shape").ToF32(), (std::vector<float>{2, 8}));

  Model m;
  m.tensors = ts;
  ASSERT_TRUE(CollapseSparse24Bitmask(m, *sc, "x/config.json").ok());
  auto back = m.tensors.at("a.weight").Data();
  ASSERT_TRUE(back.ok());
  ASSERT_EQ((*back)->size(), w.size() * 4);
  EXPECT_EQ(std::memcmp((*back)->data(), w.data(), w.size() * 4), 0);
  EXPECT_EQ(m.tensors.names().front(), "a.weight");
}

TEST(Sparse24Bitmask, BitmaskThatDisagreesWithTheValuesIsRejected) {
  TensorStore ts;
  ts.Set("a.weight", *Tensor::FromF32(std::vector<float>{0, 1, 0, 2, 3, 0, 0, 0}, {2, 4}, DType::kBF16));
  auto sc = ExpandSparse24Bitmask(ts, [](const std::string&) { return true; });
  ASSERT_TRUE(sc.ok());
  Model m;
  m.tensors = ts;
  m.tensors.Set("a.bitmask", Tensor(DType::kU8, {2, 1}, std::make_shared<OwnedBuffer>(std::vector<uint8_t>{0x0A, 0x07})));
  auto st = CollapseSparse24Bitmask(m, *sc, "x/config.json");
  ASSERT_FALSE(st.ok());
  EXPECT_NE(std::string(st.message()).find("x/config.json: 'a.bitmask' marks 5 elements but 'a.compressed' holds 4"),
            std::string::npos)
      << st;
  m.tensors.Set("a.bitmask", Tensor(DType::kU8, {1, 2}, std::make_shared<OwnedBuffer>(std::vector<uint8_t>{0, 0})));
  EXPECT_FALSE(CollapseSparse24Bitmask(m, *sc, "x/config.json").ok());
  EXPECT_FALSE(CollapseSparse24Bitmask(m, nlohmann::json{{"format", "sparse-bitmask"}}, "x/config.json").ok());
}

// --sparse-storage bitmask: compressed-tensors' unstructured sparse-bitmask, on every linear
// weight it makes smaller; read back bit for bit; row offsets that disagree with the bitmask are
// refused.
TEST(SparseBitmask, UnstructuredWeightsRoundTripAndShrink) {
  const std::string src = testing::SharedModel("pycode-tiny");
  REQUIRE_SHARED(src);
  auto model = LoadModel(src);
  ASSERT_TRUE(testing::RunPipeline(*model, "prune-magnitude{sparsity=0.6}").ok());
  testing::ScratchDir d;
  SaveOptions so;
  so.sparse_bitmask = true;
  ASSERT_TRUE(SaveModel(*model, d / "s", so).ok());
  ASSERT_TRUE(SaveModel(*model, d / "dense", {}).ok());
  auto cfg = nlohmann::json::parse(testing::ReadFile(d / "s/config.json"));
  const auto& sc = cfg["quantization_config"]["sparsity_config"];
  EXPECT_EQ(sc["format"], "sparse-bitmask");
  EXPECT_EQ(sc["sparsity_structure"], "unstructured");
  EXPECT_EQ(sc["targets"].size(), 28u);
  EXPECT_NEAR(sc["global_sparsity"].get<double>(), 0.6, 1e-3);
  TensorStore h;
  ASSERT_TRUE(ReadSafetensorsFile(d / "s/model.safetensors", h, nullptr).ok());
  int64_t saved = 0;
  for (const auto& b : sc["targets"]) {
    const std::string base = b.get<std::string>();
    const Tensor& t = model->tensors.at(base + ".weight");
    const int64_t rows = t.shape()[0], cols = t.shape()[1];
    int64_t nnz = 0;  // elements whose bytes are not all zero (-0.0 is kept as a value)
    ASSERT_EQ(t.dtype(), DType::kBF16);
    auto raw = t.Data();
    ASSERT_TRUE(raw.ok());
    for (int64_t i = 0; i < t.numel(); ++i) {
      uint16_t u;
      std::memcpy(&u, (*raw)->data() + 2 * i, 2);
      nnz += u != 0;
    }
    EXPECT_EQ(h.at(base + ".compressed").shape(), (Shape{nnz}));
    EXPECT_EQ(h.at(base + ".bitmask").shape(), (Shape{rows, (cols + 7) / 8}));
    EXPECT_EQ(h.at(base + ".row_offsets").shape(), (Shape{rows}));
    EXPECT_EQ(h.at(base + ".shape").shape(), (Shape{2}));
    saved += t.nbytes() - (nnz * 2 + rows * ((cols + 7) / 8) + rows * 8 + 16);
  }
  const int64_t dense_size = std::filesystem::file_size(d / "dense/model.safetensors");
  const int64_t sparse_size = std::filesystem::file_size(d / "s/model.safetensors");
  EXPECT_NEAR(static_cast<double>(dense_size - sparse_size), static_cast<double>(saved), 16384.0);
  auto back = LoadModel(d / "s");
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->tensors.names(), model->tensors.names());
  for (const auto& name : model->tensors.names()) {
    auto a = model->tensors.at(name).Data(), b = back->tensors.at(name).Data();
    ASSERT_TRUE(a.ok() && b.ok());
    ASSERT_EQ((*a)->size(), (*b)->size()) << name;
    EXPECT_EQ(std::memcmp((*a)->data(), (*b)->data(), (*a)->size()), 0) << name;
  }
  // Row offsets that disagree with the bitmask: a one-line error naming the file.
  Model m;
  TensorStore ts;
  ts.Set("a.weight", *Tensor::FromF32(std::vector<float>{0, 1, 0, 2, 3, 0, 0, 0}, {2, 4}, DType::kBF16));
  auto sc2 = ExpandSparseBitmask(ts, [](const std::string&) { return true; });
  ASSERT_TRUE(sc2.ok() && sc2->is_null()) << "an 8-element weight is not made smaller";
  std::vector<float> big(64 * 64, 0.f);
  for (int i = 0; i < 64; ++i) big[i * 64 + i] = 1.f + i;
  ts.Set("b.weight", *Tensor::FromF32(big, {64, 64}, DType::kBF16));
  sc2 = ExpandSparseBitmask(ts, [](const std::string& n) { return n == "b.weight"; });
  ASSERT_TRUE(sc2.ok() && !sc2->is_null());
  m.tensors = ts;
  ASSERT_TRUE(CollapseSparse24Bitmask(m, *sc2, "x/config.json").ok());
  EXPECT_EQ(*m.tensors.at("b.weight").ToF32(), big);
  m.tensors = ts;
  std::vector<uint8_t> wrong(64 * 8, 0);
  m.tensors.Set("b.row_offsets", Tensor(DType::kI64, {64}, std::make_shared<OwnedBuffer>(std::move(wrong))));
  auto st = CollapseSparse24Bitmask(m, *sc2, "x/config.json");
  ASSERT_FALSE(st.ok());
  EXPECT_NE(std::string(st.message()).find("x/config.json: 'b.row_offsets'[1] is 0, the bitmask says 1"),
            std::string::npos)
      << st;
}

}  // namespace
}  // namespace compress
