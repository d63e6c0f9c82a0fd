// Low-rank factorization: truncation error equals the discarded singular-value energy on
// matrices with known spectra (exact, randomized, whitened), and factorized checkpoints
// round-trip, decompress and evaluate.
#include "passes/factorize/factorize.h"

#include <gtest/gtest.h>

#include <Eigen/QR>
#include <filesystem>
#include <random>
#include <set>

#include "formats/model_io.h"
#include "passes/math/svd.h"
#include "runtime/llama.h"
#include "tests/pipeline_util.h"
#include "tests/test_util.h"

namespace compress {
namespace {

MatD RandomOrthonormal(int64_t n, int64_t k, std::mt19937_64& rng) {
  std::normal_distribution<double> nd;
  MatD g(n, k);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < k; ++j) g(i, j) = nd(rng);
  Eigen::HouseholderQR<MatD> qr(g);
  return qr.householderQ() * MatD::Identity(n, k);
}

// W = U diag(s) V^T with s_i = 0.9^i.
MatD KnownSpectrum(int64_t m, int64_t n, Eigen::VectorXd& s) {
  std::mt19937_64 rng(42);
  const int64_t k = std::min(m, n);
  s.resize(k);
  for (int64_t i = 0; i < k; ++i) s(i) = std::pow(0.9, static_cast<double>(i));
  return RandomOrthonormal(m, k, rng) * s.asDiagonal() * RandomOrthonormal(n, k, rng).transpose();
}

TEST(Svd, TruncationErrorEqualsDiscardedEnergy) {
  Eigen::VectorXd s;
  const MatD w = KnownSpectrum(120, 200, s);
  const Svd exact = ExactSvd(w);
  for (int64_t r : {1, 10, 40, 119}) {
    const double discarded = s.tail(s.size() - r).squaredNorm();
    MatD a, b;
    TruncatedFactors(exact, r, nullptr, a, b);
    EXPECT_NEAR((w - a * b).squaredNorm(), discarded, 1e-4 * discarded + 1e-12) << "exact rank " << r;
    const Svd rnd = RandomizedSvd(w, r, 10, 3);
    TruncatedFactors(rnd, r, nullptr, a, b);
    EXPECT_NEAR((w - a * b).squaredNorm(), discarded, 1e-4 * discarded + 1e-12) << "randomized rank " << r;
  }
  EXPECT_EQ(RankForEnergy(s, 1 - std::pow(0.81, 10)), 10);
  EXPECT_EQ(RankForRatio(100, 300, 0.5), 37);  // 37 * 400 <= 15000 < 38 * 400
}

TEST(Svd, WhitenedTruncationMinimisesOutputError) {
  std::mt19937_64 rng(9);
  std::normal_distribution<double> nd;
  const int64_t m = 48, n = 64, tokens = 2000;
  MatD x(tokens, n), mix(n, n);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j) mix(i, j) = nd(rng) * (j < 6 ? 4.0 : 0.3);
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t j = 0; j < n; ++j) x(t, j) = nd(rng);
  x = x * mix;
  const RowMatD h = x.transpose() * x;
  Eigen::VectorXd s;
  const MatD w = KnownSpectrum(m, n, s);
  auto l = WhiteningFactor(std::span<const double>(h.data(), h.size()), n, 0.0);
  ASSERT_TRUE(l.ok()) << l.status();
  const Svd white = ExactSvd(w * *l);
  const int64_t r = 8;
  MatD a, b;
  TruncatedFactors(white, r, &*l, a, b);
  const double discarded = white.S.tail(white.S.size() - r).squaredNorm();
  EXPECT_NEAR(((w - a * b) * *l).squaredNorm(), discarded, 1e-6 * discarded);
  EXPECT_NEAR((x * (w - a * b).transpose()).squaredNorm(), discarded, 1e-6 * discarded) << "= output error";
  MatD pa, pb;
  TruncatedFactors(ExactSvd(w), r, nullptr, pa, pb);
  EXPECT_LT((x * (w - a * b).transpose()).squaredNorm(), 0.5 * (x * (w - pa * pb).transpose()).squaredNorm());
}

TEST(FactorizeSvd, CheckpointRoundTripsAndDecompresses) {
  const std::string src = testing::SharedModel("pycode-tiny");
  REQUIRE_SHARED(src);
  auto m = LoadModel(src);
  ASSERT_TRUE(m.ok());
  auto report = testing::RunPipeline(*m, "factorize-svd{ratio=0.5}");
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->passes[0].stats.at("layers_factorized"), 28);
  for (const auto& t : report->passes[0].tensors) {
    EXPECT_LE(t.metrics.at("rank") * (t.shape_before[0] + t.shape_before[1]),
              0.5 * t.shape_before[0] * t.shape_before[1]);
    EXPECT_LT(t.bytes_after, t.bytes_before);
  }
  testing::ScratchDir d;
  ASSERT_TRUE(SaveModel(*m, d / "lr", {}).ok());
  auto back = LoadModel(d / "lr");
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->tensors.names(), m->tensors.names());
  for (const auto& n : m->tensors.names()) {
    const Tensor &a = m->tensors.at(n), &b = back->tensors.at(n);
    ASSERT_EQ(a.factors() != nullptr, b.factors() != nullptr) << n;
    if (a.factors()) {
      EXPECT_EQ(a.factors()->a, b.factors()->a) << n;
      EXPECT_EQ(a.factors()->b, b.factors()->b) << n;
    }
    EXPECT_EQ(*a.ToF32(), *b.ToF32()) << n;
  }
  const int64_t dense = std::filesystem::file_size(src + "/model.safetensors");
  const int64_t small = std::filesystem::file_size(d / "lr/model.safetensors");
  EXPECT_LT(small, dense);
  // decompress: a dense checkpoint without the low-rank entry, equal to the products.
  ASSERT_TRUE(testing::RunPipeline(*back, "dequantize").ok());
  ASSERT_TRUE(SaveModel(*back, d / "dense", {}).ok());
  auto dense_back = LoadModel(d / "dense");
  ASSERT_TRUE(dense_back.ok());
  EXPECT_FALSE(dense_back->config.contains("compress_low_rank"));
  const std::string q = "model.layers.0.self_attn.q_proj.weight";
  EXPECT_EQ(dense_back->tensors.at(q).factors(), nullptr);
  EXPECT_EQ(*dense_back->tensors.at(q).ToF32(), *m->tensors.at(q).ToF32());
}

TEST(FactorizeSvd, NeedsExactlyOneRankRule) {
  const std::string src = testing::SharedModel("pycode-tiny");
  REQUIRE_SHARED(src);
  auto m = LoadModel(src);
  EXPECT_FALSE(testing::RunPipeline(*m, "factorize-svd").ok());
  EXPECT_FALSE(testing::RunPipeline(*m, "factorize-svd{rank=4,ratio=0.5}").ok());
  EXPECT_FALSE(testing::RunPipeline(*m, "factorize-svd{energy=0.9,method=randomized}").ok());
}

// The runtime runs factorized layers as two products; logits equal the dense product's.
TEST(FactorizeSvd, RuntimeRunsFactorsAsTwoProducts) {
  const std::string src = testing::SharedModel("pycode-tiny");
  REQUIRE_SHARED(src);
  auto m = LoadModel(src);
  ASSERT_TRUE(m.ok());
  ASSERT_TRUE(testing::RunPipeline(*m, "factorize-svd{ratio=0.5}").ok());
  // Reference: every factorized weight replaced by its f32 product A x B (Tensor::ToF32 would
  // round the product to the weight's bf16 dtype).
  Model dense = *m;
  for (const auto& name : m->tensors.names()) {
    const Tensor& t = m->tensors.at(name);
    const LowRankFactors* f = t.factors();
    if (!f) continue;
    const int64_t out = t.shape()[0], in = t.shape()[1];
    using RowF = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
    RowF w = Eigen::Map<const RowF>(f->a.data(), out, f->rank) * Eigen::Map<const RowF>(f->b.data(), f->rank, in);
    dense.tensors.Set(name, *Tensor::FromF32(std::vector<float>(w.data(), w.data() + w.size()), t.shape(), DType::kF32));
  }
  auto a = LlamaRuntime::Create(*m), b = LlamaRuntime::Create(dense);
  ASSERT_TRUE(a.ok() && b.ok());
  std::vector<int32_t> ids;
  for (int i = 0; i < 48; ++i) ids.push_back((i * 37 + 11) % 8000);
  auto la = (*a)->Forward(ids), lb = (*b)->Forward(ids);
  ASSERT_TRUE(la.ok() && lb.ok());
  const double diff = (*la - *lb).cwiseAbs().maxCoeff(), scale = lb->cwiseAbs().maxCoeff();
  EXPECT_LT(diff, 1e-4 * scale) << "max |diff| " << diff << " of max |logit| " << scale;
}

// budget=: ranks chosen across layers keep the parameter budget and lose less relative energy
// in total than the same budget spread as one ratio over every layer.
TEST(FactorizeSvd, GlobalBudgetBeatsAUniformRatio) {
  const std::string src = testing::SharedModel("pycode-tiny");
  REQUIRE_SHARED(src);
  auto discarded = [](const RunReport& r) {
    double sum = 0;
    for (const auto& t : r.passes[0].tensors) sum += t.metrics.at("discarded_energy_fraction");
    return sum;
  };
  auto a = LoadModel(src), b = LoadModel(src);
  ASSERT_TRUE(a.ok() && b.ok());
  auto global = testing::RunPipeline(*a, "factorize-svd{budget=0.5}");
  auto uniform = testing::RunPipeline(*b, "factorize-svd{ratio=0.5}");
  ASSERT_TRUE(global.ok() && uniform.ok()) << global.status();
  const auto& g = global->passes[0];
  EXPECT_LE(g.stats.at("parameter_fraction_kept"), 0.5);
  EXPECT_GT(g.stats.at("parameter_fraction_kept"), 0.45);
  std::set<double> ranks;
  for (const auto& t : g.tensors) ranks.insert(t.metrics.at("rank"));
  EXPECT_GT(ranks.size(), 3u) << "ranks should differ across layers";
  // Layers the budget keeps dense discard nothing, so the sums cover the same 28 layers.
  EXPECT_LT(discarded(*global), 0.9 * discarded(*uniform));
  std::printf("relative discarded energy summed over layers: global %.4f (%zu layers), uniform %.4f (%zu)\n",
              discarded(*global), g.tensors.size(), discarded(*uniform), uniform->passes[0].tensors.size());
}

}  // namespace
}  // namespace compress
