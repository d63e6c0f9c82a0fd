// Calibration sampling is seeded and reproducible; collected statistics are consistent.
#include "calibrate/calibration.h"

#include <gtest/gtest.h>

#include <cmath>
#include <set>

#include "calibrate/stats_io.h"
#include "formats/model_io.h"
#include "tests/test_util.h"

namespace compress {
namespace {

TEST(Calibration, SeededWindowsAreReproducible) {
  const std::string src = testing::SharedModel("pycode-tiny");
  REQUIRE_SHARED(src);
  testing::ScratchDir d;
  std::string ids = "[";
  for (int i = 0; i < 5000; ++i) ids += (i ? "," : "") + std::to_string(i % 8000);
  testing::WriteFile(d / "ids.json", ids + "]");
  CalibrationOptions o{d / "ids.json", 16, 64, 42};
  auto a = LoadCalibration(o, "");
  auto b = LoadCalibration(o, "");
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->windows, b->windows);
  EXPECT_EQ(a->hash, b->hash);
  ASSERT_EQ(a->windows.size(), 16u);
  for (const auto& w : a->windows) {
    ASSERT_EQ(w.size(), 64u);
    for (size_t i = 1; i < w.size(); ++i) EXPECT_EQ(w[i], (w[i - 1] + 1) % 8000);  // contiguous
  }
  o.seed = 43;
  EXPECT_NE(LoadCalibration(o, "")->hash, a->hash);
  o.seqlen = 6000;
  EXPECT_EQ(LoadCalibration(o, "").status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(Calibration, StatisticsAreConsistent) {
  const std::string src = testing::SharedModel("pycode-tiny");
  REQUIRE_SHARED(src);
  auto m = LoadModel(src);
  ASSERT_TRUE(m.ok());
  CalibrationOptions o{std::string(COMPRESS_SHARED_DIR) + "/data/pycode-dev.txt", 4, 64, 1};
  auto data = LoadCalibration(o, src + "/tokenizer.json");
  ASSERT_TRUE(data.ok());
  int blocks_seen = 0;
  auto s =
      RunCalibration(*m, *data, {true, false}, [&](int block, const std::map<std::string, LinearStats>& st) {
        EXPECT_EQ(block, blocks_seen++);
        EXPECT_EQ(st.size(), 7u);  // q k v o gate up down
        for (const auto& [name, ls] : st) {
          EXPECT_EQ(ls.rows, 4 * 64) << name;
          const int64_t in = ls.in_features;
          for (int64_t i = 0; i < in; ++i) {
            // diag(X^T X) = sum x_i^2 <= rows * max|x_i|^2, and mean|x| <= max|x|.
            EXPECT_LE(ls.xtx[i * in + i], ls.rows * double(ls.absmax[i]) * ls.absmax[i] * (1 + 1e-6)) << name;
            EXPECT_LE(ls.mean_abs(i), ls.absmax[i] + 1e-6) << name;
            EXPECT_NEAR(ls.xtx[i * in + (in - 1 - i)], ls.xtx[(in - 1 - i) * in + i],
                        1e-6 * (1 + std::fabs(ls.xtx[i * in + (in - 1 - i)])));
          }
        }
        EXPECT_EQ(st.at("model.layers." + std::to_string(block) + ".self_attn.q_proj.weight").xtx,
                  st.at("model.layers." + std::to_string(block) + ".self_attn.k_proj.weight").xtx);
        return absl::OkStatus();
      });
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(blocks_seen, 4);
}

// DriverOptions::wanted: the driver stops after the last block holding a wanted weight, the
// wanted layers' statistics are the full run's bit for bit, and the other inputs carry no
// X^T X (their per-input sums stay).
TEST(Calibration, WantedWeightsLimitTheBlocksAndTheProducts) {
  const std::string src = testing::SharedModel("pycode-tiny");
  REQUIRE_SHARED(src);
  auto m = LoadModel(src);
  ASSERT_TRUE(m.ok());
  CalibrationOptions o{std::string(COMPRESS_SHARED_DIR) + "/data/pycode-dev.txt", 4, 64, 1};
  auto data = LoadCalibration(o, src + "/tokenizer.json");
  ASSERT_TRUE(data.ok());
  std::map<int, std::map<std::string, LinearStats>> full, part;
  auto keep = [](std::map<int, std::map<std::string, LinearStats>>& into) {
    return [&into](int block, std::map<std::string, LinearStats>& st) {
      into[block] = st;
      return absl::OkStatus();
    };
  };
  ASSERT_TRUE(RunCalibration(*m, *data, {}, keep(full)).ok());
  const std::string q1 = "model.layers.1.self_attn.q_proj.weight",
                    down0 = "model.layers.0.mlp.down_proj.weight";
  const std::set<std::string> wanted = {q1, down0};
  ASSERT_TRUE(RunCalibration(*m, *data, {.wanted = &wanted}, keep(part)).ok());
  ASSERT_EQ(full.size(), 4u);
  ASSERT_EQ(part.size(), 2u);  // blocks 0 and 1
  for (const std::string& w : wanted) {
    const int b = w == q1 ? 1 : 0;
    const LinearStats &a = full[b].at(w), &p = part[b].at(w);
    EXPECT_EQ(p.rows, a.rows) << w;
    EXPECT_FALSE(p.xtx.empty()) << w;
    EXPECT_EQ(p.xtx, a.xtx) << w;
    EXPECT_EQ(p.sum_sq, a.sum_sq) << w;
  }
  // k_proj reads q_proj's input: the shared X^T X is kept; gate / up in block 1 are not wanted.
  EXPECT_EQ(part[1].at("model.layers.1.self_attn.k_proj.weight").xtx, full[1].at(q1).xtx);
  const LinearStats& up = part[1].at("model.layers.1.mlp.up_proj.weight");
  EXPECT_TRUE(up.xtx.empty());
  EXPECT_EQ(up.sum_sq, full[1].at("model.layers.1.mlp.up_proj.weight").sum_sq);
  EXPECT_TRUE(part[0].at("model.layers.0.self_attn.o_proj.weight").xtx.empty());
}

}  // namespace
}  // namespace compress

namespace compress {
namespace {

// Statistics summed in two parts and merged (what the ranks of an MPI run do, shard by
// shard) equal one sum over all rows up to f64 rounding; counts and maxima exactly; and the
// bytes between ranks carry them unchanged.
TEST(Calibration, ShardedStatisticsMergeToTheWholeSum) {
  const int64_t rows = 96, in = 40;
  std::vector<float> x(rows * in);
  for (int64_t i = 0; i < rows * in; ++i) x[i] = std::sin(0.37 * i) * (1 + i % 7);
  LinearStats whole;
  AccumulateStats(whole, x.data(), rows, in, true);
  BlockStats a, b;
  AccumulateStats(a.layers["w"], x.data(), 40, in, true);
  AccumulateStats(b.layers["w"], x.data() + 40 * in, rows - 40, in, true);
  b.aliases["v"] = "w";
  auto bytes = SerializeStats(b);
  auto b2 = DeserializeStats(bytes);
  ASSERT_TRUE(b2.ok()) << b2.status();
  EXPECT_EQ(b2->layers.at("w").xtx, b.layers.at("w").xtx);
  EXPECT_EQ(b2->aliases, b.aliases);
  MergeStats(a, *std::move(b2));
  const LinearStats& m = a.layers.at("w");
  EXPECT_EQ(m.rows, rows);
  EXPECT_EQ(m.absmax, whole.absmax);
  EXPECT_EQ(a.aliases.at("v"), "w");
  for (int64_t i = 0; i < in * in; ++i) {
    EXPECT_NEAR(m.xtx[i], whole.xtx[i], 1e-12 * (1 + std::fabs(whole.xtx[i]))) << i;
  }
  for (int64_t i = 0; i < in; ++i) EXPECT_NEAR(m.sum_sq[i], whole.sum_sq[i], 1e-12 * whole.sum_sq[i]);
  bytes.resize(bytes.size() - 3);
  EXPECT_FALSE(DeserializeStats(bytes).ok());
}

}  // namespace
}  // namespace compress

namespace compress {
namespace {

// --calib-precision bf16's X^T X: products summed in f32 between flushes, then in f64. Each
// entry stays within the f32 summation bound of the f64 sum (n terms since the last flush:
// |error| <= 1.01 n u sum |x_i x_j|, u = 2^-24, plus one rounding of each product); the f32
// sums are added once (cleared by FlushStats) and freed by FinishStats; the per-input sums
// are the f64 path's exactly.
TEST(Calibration, F32ProductSumsStayWithinTheirRoundingBound) {
  const int64_t rows = 150, in = 200;  // two bands of 128 inputs
  std::vector<float> x(rows * in);
  for (int64_t i = 0; i < rows * in; ++i) x[i] = std::sin(0.37 * i) * (1 + i % 7) + (i % in == 5 ? 40.f : 0.f);
  LinearStats ref, f32;
  AccumulateStats(ref, x.data(), rows, in, true);
  FinishStats(ref);
  const int64_t parts[] = {0, 50, 100, 150};  // three calls, flushed after the second and third
  for (int k = 0; k < 3; ++k) {
    AccumulateStats(f32, x.data() + parts[k] * in, parts[k + 1] - parts[k], in, true, /*f32_products=*/true);
    if (k >= 1) FlushStats(f32);
    if (k == 1) {
      for (float v : f32.xtx32) ASSERT_EQ(v, 0.f);  // flushed sums are not added twice
    }
  }
  ASSERT_EQ(f32.xtx32.size(), static_cast<size_t>(in * in));
  FinishStats(f32);
  EXPECT_TRUE(f32.xtx32.empty());
  EXPECT_EQ(f32.absmax, ref.absmax);
  EXPECT_EQ(f32.sum_sq, ref.sum_sq);
  EXPECT_EQ(f32.rows, rows);
  const double u = std::ldexp(1.0, -24);
  int64_t differ = 0;
  for (int64_t i = 0; i < in; ++i) {
    for (int64_t j = 0; j < in; ++j) {
      double abs_sum = 0;
      for (int64_t t = 0; t < rows; ++t) abs_sum += std::fabs(double{x[t * in + i]} * x[t * in + j]);
      const double bound = 1.01 * (100 + 1) * u * abs_sum;  // at most 100 terms per f32 sum
      ASSERT_LE(std::fabs(f32.xtx[i * in + j] - ref.xtx[i * in + j]), bound) << i << "," << j;
      ASSERT_EQ(f32.xtx[i * in + j], f32.xtx[j * in + i]);
      differ += f32.xtx[i * in + j] != ref.xtx[i * in + j];
    }
  }
  EXPECT_GT(differ, 0);  // the f32 path was taken

  // Shards: a part that summed f32 products holds no f64 sums (4 bytes an entry); merging
  // parts adds their f32 sums to the total in f64, the same bits as flushing each part first.
  BlockStats merged, flushed;
  for (int k = 0; k < 3; ++k) {
    BlockStats part, copy;
    AccumulateStats(part.layers["w"], x.data() + parts[k] * in, parts[k + 1] - parts[k], in, true, true);
    EXPECT_TRUE(part.layers["w"].xtx.empty());
    copy = part;
    FlushStats(copy.layers["w"]);
    MergeStats(merged, std::move(part));
    MergeStats(flushed, std::move(copy));
  }
  EXPECT_TRUE(merged.layers["w"].xtx32.empty());
  EXPECT_EQ(merged.layers["w"].xtx, flushed.layers["w"].xtx);
  FinishStats(merged.layers["w"]);
  for (int64_t i = 0; i < in; ++i) {
    for (int64_t j = 0; j < in; ++j) {
      double abs_sum = 0;
      for (int64_t t = 0; t < rows; ++t) abs_sum += std::fabs(double{x[t * in + i]} * x[t * in + j]);
      ASSERT_LE(std::fabs(merged.layers["w"].xtx[i * in + j] - ref.xtx[i * in + j]), 1.01 * 51 * u * abs_sum);
    }
  }
}

}  // namespace
}  // namespace compress
