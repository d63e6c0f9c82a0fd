// OBS / Optimal BERT Surgeon: the one-weight step equals the brute-force optimum, sparsity
// is exact per row (and per group with block > 1), and OBS's output error is at most
// SparseGPT's and well below magnitude pruning's on a correlated Hessian. The empirical-Fisher
// variant reduces to it with one full block, predicts its own loss increase, and prunes
// pycode-tiny better than magnitude pruning.
#include "passes/prune/obs.h"

#include <gtest/gtest.h>

#include <Eigen/LU>
#include <random>

#include "analyze/perplexity.h"
#include "formats/model_io.h"
#include "passes/math/hessian.h"
#include "passes/prune/prune.h"
#include "runtime/tokenizer.h"
#include "tests/pipeline_util.h"
#include "tests/test_util.h"

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

namespace compress {
namespace {

// Sums of g g^T over `n` correlated random "gradients" of a [rows, cols] layer.
FisherBlocks RandomFisher(int64_t rows, int64_t cols, int64_t block, int n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0, 1);
  FisherBlocks f = MakeFisherBlocks(rows, cols, block);
  for (int s = 0; s < n; ++s) {
    RowMatrix g(rows, cols);
    for (int64_t r = 0; r < rows; ++r) {
      const float common = nd(rng);
      for (int64_t c = 0; c < cols; ++c) g(r, c) = 0.7f * common * (c % 3 == 0 ? 2.f : 1.f) + 0.5f * nd(rng);
    }
    AccumulateFisher(g, f);
  }
  return f;
}

// 1/2 sum over rows and blocks of d^T (F / N + lambda I) d for d = after - before.
double FisherQuadratic(const FisherBlocks& f, std::span<const float> before, std::span<const float> after,
                       double lambda) {
  const int64_t B = f.block;
  double q = 0;
  for (int64_t r = 0; r < f.rows; ++r) {
    for (int64_t j = 0; j < f.cols / B; ++j) {
      const auto fb = f.Block(r, j);
      for (int64_t a = 0; a < B; ++a) {
        const double da = after[r * f.cols + j * B + a] - before[r * f.cols + j * B + a];
        for (int64_t b = 0; b < B; ++b) {
          const double db = after[r * f.cols + j * B + b] - before[r * f.cols + j * B + b];
          q += da * db * (fb[a * B + b] / f.samples + (a == b ? lambda : 0.0));
        }
      }
    }
  }
  return 0.5 * q;
}

double MeanDiagonal(const FisherBlocks& f) {
  double d = 0;
  for (int64_t r = 0; r < f.rows; ++r)
    for (int64_t j = 0; j < f.cols / f.block; ++j)
      for (int64_t a = 0; a < f.block; ++a) d += f.Block(r, j)[a * f.block + a];
  return d / (static_cast<double>(f.rows * f.cols) * f.samples);
}

TEST(ObsFisher, AccumulatesOuterProductsOfRowRuns) {
  RowMatrix g(2, 4);
  g << 1, 2, 3, 4, 5, 6, 7, 8;
  FisherBlocks f = MakeFisherBlocks(2, 4, 2);
  AccumulateFisher(g, f);
  AccumulateFisher(g, f);
  EXPECT_EQ(f.samples, 2);
  // Row 1, second run (7, 8): 2 x [[49, 56], [56, 64]].
  const auto b = f.Block(1, 1);
  EXPECT_EQ(std::vector<float>(b.begin(), b.end()), (std::vector<float>{98, 112, 112, 128}));
}

TEST(ObsFisher, TokenSamplesAreThePerPositionTerms) {
  std::mt19937 rng(5);
  std::normal_distribution<float> nd(0, 1);
  const int64_t T = 7, rows = 3, cols = 8;
  RowMatrix dy(T, rows), x(T, cols);
  for (int64_t i = 0; i < dy.size(); ++i) dy.data()[i] = nd(rng);
  for (int64_t i = 0; i < x.size(); ++i) x.data()[i] = nd(rng);
  FisherBlocks tokens = MakeFisherBlocks(rows, cols, 4), each = MakeFisherBlocks(rows, cols, 4);
  AccumulateFisherTokens(dy, x, 2.f, tokens);
  for (int64_t t = 0; t < T; ++t) AccumulateFisher(RowMatrix(2.f * dy.row(t).transpose() * x.row(t)), each);
  EXPECT_EQ(tokens.samples, T);
  EXPECT_EQ(each.samples, T);
  for (size_t i = 0; i < tokens.sums.size(); ++i) EXPECT_NEAR(tokens.sums[i], each.sums[i], 1e-4) << i;
}

TEST(ObsFisher, OneFullBlockIsExactObsWithThatHessian) {
  // With one block spanning the row and F = H for every row, Fisher-OBS is the X^T X OBS.
  Layer l = Make(6, 32, 11);
  FisherBlocks f = MakeFisherBlocks(l.rows, l.cols, l.cols);
  for (int64_t r = 0; r < l.rows; ++r)
    for (int64_t i = 0; i < l.cols * l.cols; ++i)
      f.sums[r * l.cols * l.cols + i] = static_cast<float>(l.h[i]);
  f.samples = 1;
  std::vector<double> h32(l.h.size());
  for (size_t i = 0; i < h32.size(); ++i) h32[i] = static_cast<float>(l.h[i]);
  for (int64_t block : {1, 4}) {
    auto xtx = ObsPrune(l.w, l.rows, l.cols, h32, 0.5, block, 0.01);
    auto fisher = ObsPruneFisher(l.w, f, 0.5, block, 0.01);
    ASSERT_TRUE(xtx.ok() && fisher.ok()) << fisher.status();
    double worst = 0;
    for (size_t i = 0; i < xtx->size(); ++i) {
      EXPECT_EQ((*xtx)[i] == 0.f, fisher->weights[i] == 0.f) << "mask differs at " << i;
      worst = std::max(worst, static_cast<double>(std::abs((*xtx)[i] - fisher->weights[i])));
    }
    EXPECT_LT(worst, 1e-5) << "block " << block;
  }
}

TEST(ObsFisher, BlockDiagonalPruningPredictsItsLossAndBeatsMagnitude) {
  const int64_t rows = 8, cols = 64, B = 16;
  Layer l = Make(rows, cols, 13);
  FisherBlocks f = RandomFisher(rows, cols, B, 48, 17);
  const double lambda = 0.01 * MeanDiagonal(f);
  for (int64_t block : {1, 4}) {
    SCOPED_TRACE(block);
    auto r = ObsPruneFisher(l.w, f, 0.5, block, 0.01);
    ASSERT_TRUE(r.ok()) << r.status();
    for (int64_t row = 0; row < rows; ++row) {
      int zeros = 0;
      for (int64_t g = 0; g < cols / block; ++g) {
        int z = 0;
        for (int64_t i = 0; i < block; ++i) z += r->weights[row * cols + g * block + i] == 0.f;
        EXPECT_TRUE(z == 0 || z == block);
        zeros += z;
      }
      EXPECT_EQ(zeros, cols / 2) << "row " << row;
    }
    // The summed greedy OBS losses are the quadratic form of the final change, computed in f64
    // (the returned weights are f32).
    const double q = FisherQuadratic(f, l.w, r->weights, lambda);
    EXPECT_NEAR(r->predicted_loss, q, 1e-4 * q);
    // Magnitude pruning at the same sparsity (same group structure) costs more.
    std::vector<float> mag = l.w;
    SparsityPattern p;
    p.sparsity = 0.5;
    if (block == 1) {
      PruneByScore(mag, rows, cols, p, {});
      EXPECT_LT(q, 0.5 * FisherQuadratic(f, l.w, mag, lambda));
    }
  }
  EXPECT_FALSE(ObsPruneFisher(l.w, f, 0.5, 3, 0.01).ok()) << "block must divide fisher-block";
}

TEST(ObsFisher, PrunesPycodeTinyBetterThanMagnitude) {
  const std::string src = testing::SharedModel("pycode-tiny");
  REQUIRE_SHARED(src);
  CalibrationOptions co{std::string(COMPRESS_SHARED_DIR) + "/data/pycode-dev.txt", 16, 256, 3};
  auto calib = LoadCalibration(co, src + "/tokenizer.json");
  ASSERT_TRUE(calib.ok()) << calib.status();
  auto tok = Tokenizer::FromFile(src + "/tokenizer.json");
  ASSERT_TRUE(tok.ok());
  auto ids = (*tok)->Encode(testing::ReadFile(std::string(COMPRESS_SHARED_DIR) + "/data/pycode-dev.txt"));
  ASSERT_TRUE(ids.ok());
  const std::span<const int32_t> eval = std::span<const int32_t>(*ids).first(4096);
  auto ppl = [&](const std::string& pipeline, RunReport* report) {
    auto m = LoadModel(src);
    EXPECT_TRUE(m.ok());
    auto r = testing::RunPipeline(*m, pipeline, &*calib);
    EXPECT_TRUE(r.ok()) << r.status();
    if (report && r.ok()) *report = *r;
    auto rt = LlamaRuntime::Create(*m);
    EXPECT_TRUE(rt.ok());
    return Perplexity(**rt, eval, 256, 256)->perplexity;
  };
  RunReport fr, split;
  const double magnitude = ppl("prune-magnitude{sparsity=0.5}", nullptr);
  const double fisher =
      ppl("prune-obs{sparsity=0.5,hessian=fisher,fisher-samples=window,fisher-block=16,damp=1}", &fr);
  EXPECT_LT(fisher, 0.8 * magnitude) << "Fisher-OBS " << fisher << " vs magnitude " << magnitude;
  const auto& pass = fr.passes[0];
  ASSERT_EQ(pass.tensors.size(), 28u);
  EXPECT_EQ(pass.stats.at("fisher_gradient_passes"), 1);
  EXPECT_GT(pass.stats.at("fisher_loss_increase"), 0);
  for (const auto& t : pass.tensors) EXPECT_NEAR(t.metrics.at("sparsity"), 0.5, 1e-9) << t.name;
  // A Fisher budget smaller than the model: several gradient passes, each on the model as
  // pruned so far; the result stays close.
  const double budget = ppl(
      "prune-obs{sparsity=0.5,hessian=fisher,fisher-samples=window,fisher-block=16,damp=1,fisher-memory=16}",
      &split);
  EXPECT_GT(split.passes[0].stats.at("fisher_gradient_passes"), 2);
  EXPECT_LT(budget, 0.8 * magnitude) << budget;
  // Per-position samples (the default): 16 x 256 samples instead of 16, a better Fisher.
  const double token = ppl("prune-obs{sparsity=0.5,hessian=fisher,fisher-block=16}", nullptr);
  EXPECT_LT(token, 0.9 * fisher) << "token samples " << token << " vs window samples " << fisher;
  std::printf(
      "pycode-tiny 50%%: magnitude %.3f, Fisher-OBS per window %.3f (with %g gradient passes %.3f), "
      "per token %.3f\n",
      magnitude, fisher, split.passes[0].stats.at("fisher_gradient_passes"), budget, token);
}

TEST(ObsFisher, RefusesOnnxModels) {
  Model m;
  m.format = ModelFormat::kOnnx;
  CalibrationData data;
  data.windows = {{1, 2, 3}};
  auto r = testing::RunPipeline(m, "prune-obs{hessian=fisher}", &data);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnimplemented) << r.status();
}

}  // namespace
}  // namespace compress
