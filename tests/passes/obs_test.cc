// OBS / Optimal BERT Surgeon: the one-weight step equals the brute-force optimum, sparsity
// is exact per row (and per group with block > 1), and OBS's output error is at most
// SparseGPT's and well below magnitude pruning's on a correlated Hessian.
#include "passes/obs.h"

#include <gtest/gtest.h>

#include <Eigen/LU>
#include <random>

#include "passes/hessian.h"
#include "passes/prune.h"

namespace compress {
namespace {

struct Layer {
  int64_t rows, cols;
  std::vector<float> w;
  std::vector<double> h;
};

Layer Make(int64_t rows, int64_t cols, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> nd(0, 1);
  Layer l{rows, cols, std::vector<float>(rows * cols), {}};
  for (auto& v : l.w) v = static_cast<float>(0.05 * nd(rng));
  const int64_t tokens = 512;
  MatD x(tokens, cols), mix(6, cols), base(tokens, 6);
  for (int64_t t = 0; t < tokens; ++t)
    for (int k = 0; k < 6; ++k) base(t, k) = nd(rng);
  for (int k = 0; k < 6; ++k)
    for (int64_t j = 0; j < cols; ++j) mix(k, j) = nd(rng) * (j % 5 == 0 ? 3 : 1);
  x = base * mix;
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t j = 0; j < cols; ++j) x(t, j) += 0.3 * nd(rng);
  RowMatD h = x.transpose() * x;
  l.h.assign(h.data(), h.data() + h.size());
  return l;
}

TEST(Obs, SingleRemovalIsTheBruteForceOptimum) {
  Layer l = Make(1, 6, 3);
  auto pruned = ObsPrune(l.w, 1, 6, l.h, 1.0 / 6, 1, 0.0);
  ASSERT_TRUE(pruned.ok()) << pruned.status();
  const MatD H = Eigen::Map<const RowMatD>(l.h.data(), 6, 6);
  const MatD Hinv = H.inverse();
  auto err = [&](const std::vector<float>& a) {
    Eigen::VectorXd d(6);
    for (int i = 0; i < 6; ++i) d(i) = static_cast<double>(a[i]) - l.w[i];
    return d.dot(H * d);
  };
  double best = 1e30;
  for (int q = 0; q < 6; ++q) best = std::min(best, static_cast<double>(l.w[q]) * l.w[q] / Hinv(q, q));
  EXPECT_EQ(std::count(pruned->begin(), pruned->end(), 0.f), 1);
  EXPECT_NEAR(err(*pruned), best, 1e-5 * best);
}

TEST(Obs, ExactSparsityAndBetterThanSparseGptAndMagnitude) {
  Layer l = Make(16, 64, 5);
  auto obs = ObsPrune(l.w, l.rows, l.cols, l.h, 0.5, 1, 0.01);
  ASSERT_TRUE(obs.ok()) << obs.status();
  for (int64_t r = 0; r < l.rows; ++r) {
    EXPECT_EQ(std::count(obs->begin() + r * l.cols, obs->begin() + (r + 1) * l.cols, 0.f), 32) << "row " << r;
  }
  SparsityPattern p;
  p.sparsity = 0.5;
  auto sgpt = SparseGpt(l.w, l.rows, l.cols, l.h, p, 128, 0.01);
  ASSERT_TRUE(sgpt.ok());
  std::vector<float> mag = l.w;
  PruneByScore(mag, l.rows, l.cols, p, {});
  const double e_obs = RelativeOutputError(l.w, *obs, l.rows, l.cols, l.h);
  const double e_sgpt = RelativeOutputError(l.w, *sgpt, l.rows, l.cols, l.h);
  const double e_mag = RelativeOutputError(l.w, mag, l.rows, l.cols, l.h);
  EXPECT_LE(e_obs, e_sgpt * 1.001) << e_obs << " vs SparseGPT " << e_sgpt;
  EXPECT_LT(e_obs, 0.5 * e_mag) << e_obs << " vs magnitude " << e_mag;
}

TEST(Obs, BlockVariantPrunesWholeGroups) {
  Layer l = Make(8, 64, 7);
  auto obs = ObsPrune(l.w, l.rows, l.cols, l.h, 0.5, 4, 0.01);
  ASSERT_TRUE(obs.ok()) << obs.status();
  for (int64_t r = 0; r < l.rows; ++r) {
    int zero_groups = 0;
    for (int64_t g = 0; g < 16; ++g) {
      int zeros = 0;
      for (int i = 0; i < 4; ++i) zeros += (*obs)[r * l.cols + g * 4 + i] == 0.f;
      EXPECT_TRUE(zeros == 0 || zeros == 4) << "row " << r << " group " << g;
      zero_groups += zeros == 4;
    }
    EXPECT_EQ(zero_groups, 8);
  }
  EXPECT_FALSE(ObsPrune(l.w, l.rows, l.cols, l.h, 0.5, 5, 0.01).ok()) << "block must divide in_features";
}

}  // namespace
}  // namespace compress
