// Importance matrices: llama-imatrix's files (tests/golden/ggml/make_imatrix.sh) read in both
// forms, compress's calibration statistics equal to llama.cpp's sums on the same tokens, and
// compress's files read back exactly.
#include "calibrate/imatrix.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "formats/gguf_container.h"
#include "formats/imatrix.h"
#include "formats/model_io.h"
#include "tests/calibrate/imatrix_golden.h"
#include "tests/test_util.h"

namespace compress {
namespace {

const std::string kGolden = std::string(COMPRESS_SOURCE_DIR) + "/tests/golden/ggml/imatrix-pycode-tiny";  // .gguf / .dat

TEST(Imatrix, ReadsLlamaImatrixInBothForms) {
  auto g = LoadImatrix(kGolden + ".gguf");
  ASSERT_TRUE(g.ok()) << g.status();
  EXPECT_EQ(g->chunk_count, 4u);
  EXPECT_EQ(g->chunk_size, 128u);
  ASSERT_EQ(g->datasets, std::vector<std::string>{"pycode-dev.txt"});
  ASSERT_EQ(g->entries.size(), 28u);  // 4 blocks x q k v o gate up down
  const ImatrixEntry& down = g->entries.at("blk.2.ffn_down.weight");
  EXPECT_EQ(down.n_per_row, 384);
  EXPECT_EQ(down.counts, std::vector<float>{512.f});
  EXPECT_EQ(g->entries.at("blk.0.attn_q.weight").n_per_row, 128);

  auto d = LoadImatrix(kGolden + ".dat");
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->chunk_count, 4u);
  EXPECT_EQ(d->datasets, g->datasets);
  ASSERT_EQ(d->entries.size(), g->entries.size());
  for (const auto& [name, e] : g->entries) {
    ASSERT_TRUE(d->entries.count(name)) << name;
    const std::vector<float> a = e.MeanSquares(), b = d->entries.at(name).MeanSquares();
    ASSERT_EQ(a.size(), b.size()) << name;
    for (size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(a[i], b[i], 1e-6 * std::fabs(a[i])) << name << " " << i;
  }
}

TEST(Imatrix, OurCalibrationSumsEqualLlamaCpps) {
  const std::string src = testing::SharedModel("pycode-tiny");
  REQUIRE_SHARED(src);
  auto model = LoadModel(src);
  ASSERT_TRUE(model.ok()) << model.status();
  const CalibrationData data = testing::ImatrixGoldenWindows(src);
  ASSERT_EQ(data.windows.size(), 4u);
  auto ours = CollectImatrix(*model, data, "pycode-dev.txt");
  ASSERT_TRUE(ours.ok()) << ours.status();
  EXPECT_TRUE(ours->skipped.empty());
  auto theirs = LoadImatrix(kGolden + ".gguf");
  ASSERT_TRUE(theirs.ok());
  ASSERT_EQ(ours->matrix.entries.size(), theirs->entries.size());
  double worst = 0;
  std::string worst_name;
  for (const auto& [name, t] : theirs->entries) {
    ASSERT_TRUE(ours->matrix.entries.count(name)) << name;
    const ImatrixEntry& o = ours->matrix.entries.at(name);
    ASSERT_EQ(o.n_per_row, t.n_per_row) << name;
    EXPECT_EQ(o.counts, t.counts) << name;
    float top = 0;
    for (float v : t.sums) top = std::max(top, v);
    for (size_t i = 0; i < t.sums.size(); ++i) {
      const double diff = std::fabs(o.sums[i] - t.sums[i]) / top;
      if (diff > worst) worst = diff, worst_name = name;
    }
  }
  // Both runtimes compute in f32, in different summation orders: measured 1.2e-6 (the golden
  // is made with llama.cpp's flash attention off; its CPU flash attention rounds to f16, 4e-4).
  EXPECT_LT(worst, 1e-5) << worst_name;
  RecordProperty("max_rel_diff", std::to_string(worst));
}

TEST(Imatrix, WrittenFilesReadBackExactlyAndMatchLlamaCppsBytes) {
  auto g = LoadImatrix(kGolden + ".gguf");
  ASSERT_TRUE(g.ok());
  testing::ScratchDir d;
  ASSERT_TRUE(WriteImatrix(*g, d / "m.gguf").ok());
  auto back = LoadImatrix(d / "m.gguf");
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->datasets, g->datasets);
  EXPECT_EQ(back->chunk_count, g->chunk_count);
  EXPECT_EQ(back->chunk_size, g->chunk_size);
  for (const auto& [name, e] : g->entries) {
    EXPECT_EQ(back->entries.at(name).sums, e.sums) << name;
    EXPECT_EQ(back->entries.at(name).counts, e.counts) << name;
  }
  // Same metadata order and tensor order (by name) as llama-imatrix: the same bytes.
  EXPECT_TRUE(testing::ReadFile(d / "m.gguf") == testing::ReadFile(kGolden + ".gguf"));
}

TEST(Imatrix, MalformedFilesAreRefusedWithTheEntryNamed) {
  testing::ScratchDir d;
  auto g = LoadImatrix(kGolden + ".gguf");
  ASSERT_TRUE(g.ok());
  // A sums tensor without its counts.
  {
    gguf::Metadata md;
    md.Str("general.type", "imatrix");
    md.U32("imatrix.chunk_count", 1);
    md.U32("imatrix.chunk_size", 8);
    std::vector<gguf::OutTensor> t = {{"blk.0.attn_q.weight.in_sum2", {4, 1}, gguf::TensorType::kF32}};
    ASSERT_TRUE(gguf::WriteContainer(d / "nocounts.gguf", md, t, [](size_t) {
                  return absl::StatusOr<std::shared_ptr<const Buffer>>(
                      std::make_shared<OwnedBuffer>(std::vector<uint8_t>(16, 0)));
                }).ok());
    auto r = LoadImatrix(d / "nocounts.gguf");
    ASSERT_FALSE(r.ok());
    EXPECT_NE(r.status().message().find("blk.0.attn_q.weight"), std::string::npos) << r.status();
  }
  // A NaN sum.
  {
    Imatrix m = *g;
    m.entries.at("blk.1.ffn_up.weight").sums[3] = std::nanf("");
    ASSERT_TRUE(WriteImatrix(m, d / "nan.gguf").ok());
    auto r = LoadImatrix(d / "nan.gguf");
    ASSERT_FALSE(r.ok());
    EXPECT_NE(r.status().message().find("blk.1.ffn_up.weight"), std::string::npos) << r.status();
  }
  // A model GGUF is not an importance matrix; a truncated legacy file is refused.
  {
    gguf::Metadata md;
    md.Str("general.architecture", "llama");
    ASSERT_TRUE(gguf::WriteContainer(d / "model.gguf", md, {}, nullptr).ok());
    auto r = LoadImatrix(d / "model.gguf");
    ASSERT_FALSE(r.ok());
    EXPECT_NE(r.status().message().find("not an importance matrix"), std::string::npos) << r.status();
    const std::string dat = testing::ReadFile(kGolden + ".dat");
    testing::WriteFile(d / "cut.dat", dat.substr(0, dat.size() / 2));
    auto c = LoadImatrix(d / "cut.dat");
    ASSERT_FALSE(c.ok());
    EXPECT_NE(c.status().message().find("truncated"), std::string::npos) << c.status();
  }
}

}  // namespace
}  // namespace compress
