// Pruning: exact sparsity, exact n:m patterns, SparseGPT beats magnitude on output error.
#include "passes/prune/prune.h"

#include <gtest/gtest.h>

#include <random>

#include "formats/model_io.h"
#include "passes/math/hessian.h"
#include "tests/pipeline_util.h"

namespace compress {
namespace {

std::vector<float> RandomWeights(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.f, 0.05f);
  std::vector<float> w(n);
  for (auto& x : w) x = nd(rng);
  return w;
}

std::vector<double> CorrelatedHessian(int64_t cols, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> nd(0, 1);
  const int64_t n = 1024;
  Eigen::MatrixXd base(n, 8), mix(8, cols), x;
  for (int64_t i = 0; i < n; ++i)
    for (int k = 0; k < 8; ++k) base(i, k) = nd(rng);
  for (int k = 0; k < 8; ++k)
    for (int64_t j = 0; j < cols; ++j) mix(k, j) = nd(rng) * (j % 13 == 0 ? 3 : 1);
  x = base * mix;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < cols; ++j) x(i, j) += 0.2 * nd(rng);
  RowMatD h = x.transpose() * x;
  return std::vector<double>(h.data(), h.data() + h.size());
}

void ExpectNm(const std::vector<float>& w, int64_t rows, int64_t cols, int n, int m) {
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c0 = 0; c0 < cols; c0 += m) {
      int nz = 0;
      for (int j = 0; j < m; ++j) nz += w[r * cols + c0 + j] != 0.f;
      ASSERT_EQ(nz, n) << "row " << r << " group " << c0;
    }
  }
}

TEST(Prune, MagnitudeSparsityIsExactAndKeepsTheLargest) {
  auto w = RandomWeights(40 * 50, 1);
  auto orig = w;
  EXPECT_EQ(PruneByScore(w, 40, 50, {0.3, 0, 0}, {}), 600);
  int64_t zeros = 0;
  float max_pruned = 0, min_kept = 1e9f;
  for (size_t i = 0; i < w.size(); ++i) {
    if (w[i] == 0.f) {
      ++zeros;
      max_pruned = std::max(max_pruned, std::fabs(orig[i]));
    } else {
      min_kept = std::min(min_kept, std::fabs(orig[i]));
    }
  }
  EXPECT_EQ(zeros, 600);
  EXPECT_LE(max_pruned, min_kept);
}

TEST(Prune, NmPatternsHoldExactly) {
  for (auto [n, m] : {std::pair{2, 4}, std::pair{1, 4}, std::pair{4, 8}, std::pair{3, 8}}) {
    auto w = RandomWeights(12 * 64, 2);
    PruneByScore(w, 12, 64, {0, n, m}, {});
    ExpectNm(w, 12, 64, n, m);
  }
}

TEST(Prune, WandaComparesWithinRows) {
  const int64_t rows = 8, cols = 32;
  auto w = RandomWeights(rows * cols, 3);
  std::vector<double> norm(cols, 1.0);
  norm[3] = 1000.0;  // a hot input channel keeps its weights
  PruneByScore(w, rows, cols, {0.5, 0, 0}, norm);
  for (int64_t r = 0; r < rows; ++r) {
    int nz = 0;
    for (int64_t c = 0; c < cols; ++c) nz += w[r * cols + c] != 0.f;
    EXPECT_EQ(nz, cols / 2);
    EXPECT_NE(w[r * cols + 3], 0.f);
  }
}

TEST(SparseGpt, BeatsMagnitudeOnOutputErrorAndKeepsThePattern) {
  const int64_t rows = 24, cols = 128;
  auto w = RandomWeights(rows * cols, 4);
  auto h = CorrelatedHessian(cols, 5);
  for (SparsityPattern p : {SparsityPattern{0.5, 0, 0}, SparsityPattern{0, 2, 4}}) {
    auto s = SparseGpt(w, rows, cols, h, p, 32, 0.01);
    ASSERT_TRUE(s.ok()) << s.status();
    auto mag = w;
    PruneByScore(mag, rows, cols, p, {});
    if (p.m) {
      ExpectNm(*s, rows, cols, p.n, p.m);
    } else {
      int64_t zeros = std::count(s->begin(), s->end(), 0.f);
      EXPECT_EQ(zeros, rows * cols / 2);
    }
    const double es = RelativeOutputError(w, *s, rows, cols, h),
                 em = RelativeOutputError(w, mag, rows, cols, h);
    EXPECT_LT(es, 0.7 * em) << "sparsegpt " << es << " magnitude " << em;
  }
}

// scope=global: exactly floor(sparsity x total) weights go, and they are the smallest |w|
// over all selected layers (so layers end up with different sparsities).
TEST(Prune, GlobalMagnitudeCutsTheSmallestOverAllLayers) {
  const std::string dir = std::string(COMPRESS_SOURCE_DIR) + "/samples/pycode-tiny";
  auto orig = LoadModel(dir);
  auto m = LoadModel(dir);
  ASSERT_TRUE(orig.ok() && m.ok());
  auto r = testing::RunPipeline(*m, "prune-magnitude{sparsity=0.6,scope=global}");
  ASSERT_TRUE(r.ok()) << r.status();
  int64_t total = 0, zeros = 0;
  float max_cut = 0.f, min_kept = INFINITY;
  double lo = 1, hi = 0;
  for (const auto& ch : r->passes[0].tensors) {
    auto a = *orig->tensors.at(ch.name).ToF32(), b = *m->tensors.at(ch.name).ToF32();
    total += static_cast<int64_t>(a.size());
    int64_t z = 0;
    for (size_t i = 0; i < a.size(); ++i) {
      if (b[i] == 0.f) {
        ++z;
        max_cut = std::max(max_cut, std::fabs(a[i]));
      } else {
        EXPECT_EQ(a[i], b[i]);
        min_kept = std::min(min_kept, std::fabs(a[i]));
      }
    }
    zeros += z;
    lo = std::min(lo, static_cast<double>(z) / a.size());
    hi = std::max(hi, static_cast<double>(z) / a.size());
  }
  ASSERT_GT(total, 0);
  EXPECT_EQ(zeros, static_cast<int64_t>(std::floor(0.6 * total)));
  EXPECT_LE(max_cut, min_kept);
  EXPECT_LT(lo + 0.05, hi) << "per-layer sparsities should differ under a global threshold";
  EXPECT_FALSE(testing::RunPipeline(*m, "prune-magnitude{score=wanda,scope=global}").ok());
}

}  // namespace
}  // namespace compress
