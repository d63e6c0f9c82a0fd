// GPTQ: equals RTN when inputs are uncorrelated, beats RTN on correlated inputs, stays on
// the grid; the pass refuses to run without calibration data.
#include "passes/quantize/gptq.h"

#include <gtest/gtest.h>

#include <Eigen/LU>
#include <cstring>
#include <random>

#include "calibrate/calibration.h"
#include "calibrate/imatrix.h"
#include "core/block_quant.h"
#include "core/pass_manager.h"
#include "formats/imatrix.h"
#include "formats/model_io.h"
#include "passes/layer_walk.h"
#include "passes/registry.h"
#include "tests/calibrate/imatrix_golden.h"
#include "tests/pipeline_util.h"
#include "tests/test_util.h"

namespace compress {
namespace {

std::vector<float> RandomWeights(int64_t rows, int64_t cols, uint32_t seed) {
  return testing::RandomNormal(rows, cols, seed, 0.05f);
}

TEST(Gptq, EqualsRtnWhenTheHessianIsDiagonalAndUniform) {
  const int64_t rows = 16, cols = 64;
  auto w = RandomWeights(rows, cols, 1);
  std::vector<double> h(cols * cols, 0.0);
  for (int64_t i = 0; i < cols; ++i) h[i * cols + i] = 5.0;
  for (int64_t group : {int64_t{0}, int64_t{16}}) {
    for (bool sym : {true, false}) {
      GptqOptions o{4, sym, group, 32, 0.01};
      auto g = GptqQuantize(w, rows, cols, h, o);
      ASSERT_TRUE(g.ok()) << g.status();
      auto r = QuantizeRtn(w, rows, cols, 4, sym, 0, group);
      ASSERT_TRUE(r.ok());
      EXPECT_EQ(g->first, r->first) << "group " << group << " sym " << sym;
      EXPECT_EQ(g->second.scales(), r->second.scales());
    }
  }
}

// X^T X of n inputs with strongly correlated channels (`factors` shared sources) and a few
// large ones (every `big`-th channel 4x), row-major [cols, cols].
std::vector<double> CorrelatedXtx(int64_t n, int64_t cols, int factors, int big, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> nd(0, 1);
  Eigen::MatrixXd base(n, factors), mix(factors, cols);
  for (int64_t i = 0; i < n; ++i)
    for (int k = 0; k < factors; ++k) base(i, k) = nd(rng);
  for (int k = 0; k < factors; ++k)
    for (int64_t j = 0; j < cols; ++j) mix(k, j) = nd(rng) * (j % big == 0 ? 4 : 1);
  Eigen::MatrixXd x = base * mix;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < cols; ++j) x(i, j) += 0.1 * nd(rng);
  Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> h = x.transpose() * x;
  return std::vector<double>(h.data(), h.data() + h.size());
}

TEST(Gptq, BeatsRtnOnCorrelatedInputs) {
  const int64_t rows = 32, cols = 128;
  auto w = RandomWeights(rows, cols, 2);
  const std::vector<double> xtx = CorrelatedXtx(2048, cols, 8, 17, 3);
  for (int bits : {3, 4}) {
    GptqOptions o{bits, true, 32, 32, 0.01};
    auto g = GptqQuantize(w, rows, cols, xtx, o);
    ASSERT_TRUE(g.ok());
    auto r = QuantizeRtn(w, rows, cols, bits, true, 0, 32);
    std::vector<float> gw(w.size()), rw(w.size());
    Dequantize(g->first, rows, cols, g->second, gw.data());
    Dequantize(r->first, rows, cols, r->second, rw.data());
    const double eg = RelativeOutputError(w, gw, rows, cols, xtx),
                 er = RelativeOutputError(w, rw, rows, cols, xtx);
    EXPECT_LT(eg, 0.7 * er) << bits << " bits: gptq " << eg << " rtn " << er;
    const int qmax = (1 << (bits - 1)) - 1;
    for (int8_t c : g->first) {
      ASSERT_LE(c, qmax);
      ASSERT_GE(c, -qmax);
    }
  }
  // 4-bit codebook grids: same error feedback, codes are table indices, MX scales powers of 2.
  for (const char* format : {"fp4", "nf4", "mxfp4"}) {
    GptqOptions o{4, true, 32, 32, 0.01, format};
    auto g = GptqQuantize(w, rows, cols, xtx, o);
    ASSERT_TRUE(g.ok()) << g.status();
    CodebookOptions co;
    co.format = g->second.format();
    co.group_size = 32;
    co.scale = std::string(format) == "mxfp4" ? CodebookOptions::Scale::kE8M0 : CodebookOptions::Scale::kAbsmax;
    auto r = QuantizeCodebook(w, rows, cols, co);
    ASSERT_TRUE(r.ok());
    std::vector<float> gw(w.size()), rw(w.size());
    Dequantize(g->first, rows, cols, g->second, gw.data());
    Dequantize(r->codes, rows, cols, r->info, rw.data());
    const double eg = RelativeOutputError(w, gw, rows, cols, xtx),
                 er = RelativeOutputError(w, rw, rows, cols, xtx);
    EXPECT_LT(eg, 0.7 * er) << format << ": gptq " << eg << " rtn " << er;
    EXPECT_EQ(g->second.levels().size(), 16u) << format;
    for (int8_t c : g->first) ASSERT_TRUE(c >= 0 && c < 16) << format;
    if (std::string(format) == "mxfp4") {
      for (float sc : g->second.scales()) EXPECT_EQ(sc, std::ldexp(1.f, std::ilogb(sc))) << "power of two";
    }
  }
}

// Inputs whose energies span orders of magnitude: act-order quantizes the loud ones first,
// while the most columns remain to absorb their error. Its group scales are the RTN ones
// (static groups), and with a uniform diagonal Hessian it is plain GPTQ.
TEST(Gptq, ActOrderHelpsWhenInputEnergiesDiffer) {
  const int64_t rows = 48, cols = 128, n = 4096;
  auto w = RandomWeights(rows, cols, 5);
  std::mt19937 rng(6);
  std::normal_distribution<double> nd(0, 1);
  Eigen::MatrixXd base(n, 16), mix(16, cols);
  for (int64_t i = 0; i < n; ++i)
    for (int k = 0; k < 16; ++k) base(i, k) = nd(rng);
  for (int k = 0; k < 16; ++k)
    for (int64_t j = 0; j < cols; ++j) mix(k, j) = nd(rng);
  Eigen::MatrixXd x = base * mix;
  for (int64_t j = 0; j < cols; ++j) x.col(j) *= std::exp(3.0 * std::sin(0.7 * j));  // scales e^-3 .. e^3
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < cols; ++j) x(i, j) += 0.05 * nd(rng);
  Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> h = x.transpose() * x;
  std::vector<double> xtx(h.data(), h.data() + h.size());
  for (int bits : {3, 4}) {
    GptqOptions plain{bits, true, 32, 32, 0.01};
    GptqOptions act = plain;
    act.act_order = true;
    auto a = GptqQuantize(w, rows, cols, xtx, act);
    auto p = GptqQuantize(w, rows, cols, xtx, plain);
    ASSERT_TRUE(a.ok() && p.ok());
    std::vector<float> aw(w.size()), pw(w.size());
    Dequantize(a->first, rows, cols, a->second, aw.data());
    Dequantize(p->first, rows, cols, p->second, pw.data());
    const double ea = RelativeOutputError(w, aw, rows, cols, xtx), ep = RelativeOutputError(w, pw, rows, cols, xtx);
    EXPECT_LT(ea, 0.9 * ep) << bits << " bits: act-order " << ea << " plain " << ep;
    auto r = QuantizeRtn(w, rows, cols, bits, true, 0, 32);
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(a->second.scales(), r->second.scales()) << "static groups take the RTN scales";
  }
  std::vector<double> flat(cols * cols, 0.0);
  for (int64_t i = 0; i < cols; ++i) flat[i * cols + i] = 5.0;
  GptqOptions act{4, true, 32, 32, 0.01};
  act.act_order = true;
  auto a = GptqQuantize(w, rows, cols, flat, act);
  auto r = QuantizeRtn(w, rows, cols, 4, true, 0, 32);
  ASSERT_TRUE(a.ok() && r.ok());
  EXPECT_EQ(a->first, r->first) << "uniform diagonal H: act-order is the identity order, GPTQ = RTN";
}

TEST(Gptq, DeadInputsGetZeroWeight) {
  const int64_t rows = 4, cols = 32;
  auto w = RandomWeights(rows, cols, 4);
  std::vector<double> h(cols * cols, 0.0);
  for (int64_t i = 0; i < cols; ++i) h[i * cols + i] = i == 5 ? 0.0 : 2.0;
  auto g = GptqQuantize(w, rows, cols, h, {4, true, 0, 32, 0.01});
  ASSERT_TRUE(g.ok());
  for (int64_t r = 0; r < rows; ++r) EXPECT_EQ(g->first[r * cols + 5], 0);
}

TEST(GptqPass, NeedsCalibrationData) {
  Model m;
  auto s = testing::RunPipeline(m, "quantize-gptq").status();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(s.message(), "pass 'quantize-gptq' needs calibration data; give --calibration FILE");
}

TEST(GptqPass, QuantizesPycodeTinyBetterThanRtnLayerByLayer) {
  const std::string src = testing::SharedModel("pycode-tiny");
  REQUIRE_SHARED(src);
  auto m = LoadModel(src);
  ASSERT_TRUE(m.ok());
  CalibrationOptions co{std::string(COMPRESS_SHARED_DIR) + "/data/pycode-dev.txt", 8, 256, 7};
  auto calib = LoadCalibration(co, src + "/tokenizer.json");
  ASSERT_TRUE(calib.ok()) << calib.status();
  auto r = testing::RunPipeline(*m, "quantize-gptq{bits=3,group-size=32}", &*calib);
  ASSERT_TRUE(r.ok()) << r.status();
  const auto& tensors = r->passes[0].tensors;
  ASSERT_EQ(tensors.size(), 28u);
  double g = 0, rt = 0;
  for (const auto& t : tensors) {
    g += t.metrics.at("rel_output_error");
    rt += t.metrics.at("rel_output_error_rtn");
    EXPECT_EQ(t.metrics.at("calibration_tokens"), 8 * 256);
    EXPECT_NE(m->tensors.at(t.name).quant(), nullptr);
  }
  EXPECT_LT(g, 0.8 * rt) << "summed relative output error, GPTQ vs RTN";
}

}  // namespace
}  // namespace compress

namespace compress {
namespace {

TEST(Hessian, FactorIsTheUpperCholeskyOfTheDampedInverse) {
  const int64_t n = 48;
  Eigen::MatrixXd x = Eigen::MatrixXd::Random(200, n);
  RowMatD h = x.transpose() * x;
  std::vector<double> xtx(h.data(), h.data() + h.size());
  MatD w = MatD::Zero(3, n);
  auto u = InverseHessianFactor(xtx, n, 0.01, w);
  ASSERT_TRUE(u.ok());
  EXPECT_TRUE(u->isUpperTriangular(1e-12));
  for (int64_t i = 0; i < n; ++i) EXPECT_GT((*u)(i, i), 0.0);
  MatD hd = h;
  double mean = 0;
  for (int64_t i = 0; i < n; ++i) mean += hd(i, i) / n;
  hd.diagonal().array() += 0.01 * mean;
  const MatD inv = hd.inverse();
  EXPECT_LT(((u->transpose() * *u) - inv).cwiseAbs().maxCoeff(), 1e-9 * inv.cwiseAbs().maxCoeff());
}

}  // namespace
}  // namespace compress

namespace compress {
namespace {

// GPTQ onto ggml block grids: on correlated inputs its output error is below the weighted
// block search's (the rtn of quantize-gguf), for every family of block types, with each block's
// grid fitted when the sweep reaches it and with act-order (static grids, columns by H_ii).
TEST(GptqBlocks, BeatsTheBlockSearchOnCorrelatedInputs) {
  const int64_t rows = 32, cols = 512, n = 4096;
  auto w = testing::RandomNormal(rows, cols, 5, 0.05f);
  const std::vector<double> xtx = CorrelatedXtx(n, cols, 16, 23, 6);
  std::vector<float> imp(cols);
  for (int64_t j = 0; j < cols; ++j) imp[j] = static_cast<float>(xtx[j * cols + j] / n);
  for (DType t : {DType::kQ2_K, DType::kQ3_K, DType::kQ4_K, DType::kQ5_K, DType::kQ6_K, DType::kIQ4_XS, DType::kQ4_0,
                  DType::kQ5_1, DType::kIQ4_NL}) {
    for (bool act_order : {false, true}) {
      SCOPED_TRACE(std::string(DTypeName(t)) + (act_order ? " act-order" : ""));
      auto g = GptqQuantizeBlocks(w, rows, cols, xtx, t, 0.01, imp, act_order);
      ASSERT_TRUE(g.ok()) << g.status();
      ASSERT_EQ(static_cast<int64_t>(g->size()), rows * DTypeBytes(t, cols));
      std::vector<uint8_t> r(g->size());
      const int64_t rb = DTypeBytes(t, cols);
      for (int64_t row = 0; row < rows; ++row)
        EncodeBlocks(t, w.data() + row * cols, cols, imp.data(), r.data() + row * rb);
      std::vector<float> gw(w.size()), rw(w.size());
      ASSERT_TRUE(DecodeToF32(t, g->data(), rows * cols, gw.data()).ok());
      ASSERT_TRUE(DecodeToF32(t, r.data(), rows * cols, rw.data()).ok());
      const double eg = RelativeOutputError(w, gw, rows, cols, xtx), er = RelativeOutputError(w, rw, rows, cols, xtx);
      EXPECT_LT(eg, er) << "gptq " << eg << " block search " << er;
    }
  }
  auto bad = GptqQuantizeBlocks(w, rows, 100, xtx, DType::kQ4_K, 0.01, {});
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace compress

namespace compress {
namespace {

TEST(QuantizeGgufPass, GptqWithCalibrationRtnOtherwise) {
  const std::string src = testing::SharedModel("pycode-tiny");
  REQUIRE_SHARED(src);
  CalibrationOptions co{std::string(COMPRESS_SHARED_DIR) + "/data/pycode-dev.txt", 8, 256, 7};
  auto calib = LoadCalibration(co, src + "/tokenizer.json");
  ASSERT_TRUE(calib.ok()) << calib.status();
  {
    auto m = LoadModel(src);
    ASSERT_TRUE(m.ok());
    auto r = testing::RunPipeline(*m, "quantize-gguf{type=Q4_0}", &*calib);
    ASSERT_TRUE(r.ok()) << r.status();
    int gptq = 0;
    for (const auto& t : r->passes[0].tensors) {
      if (t.method.find(" gptq") == std::string::npos) continue;
      ++gptq;
      EXPECT_LT(t.metrics.at("rel_output_error"), 0.05) << t.name;  // 4.5 bits per weight
      EXPECT_EQ(m->tensors.at(t.name).dtype(), DType::kQ4_0);
    }
    EXPECT_EQ(gptq, 28) << "every linear layer; the tied embedding / head stays rtn";
  }
  {
    auto m = LoadModel(src);
    ASSERT_TRUE(m.ok());
    // The IQ4 mixes take GPTQ too (onto the non-uniform IQ4 grid), and method=rtn keeps the search.
    auto r = testing::RunPipeline(*m, "quantize-gguf{type=IQ4_NL}", &*calib);
    ASSERT_TRUE(r.ok()) << r.status();
    int gptq = 0;
    for (const auto& t : r->passes[0].tensors) {
      if (t.method.find(" gptq") == std::string::npos) continue;
      ++gptq;
      EXPECT_EQ(m->tensors.at(t.name).dtype(), DType::kIQ4_NL) << t.name;
    }
    EXPECT_EQ(gptq, 28);
    auto m2 = LoadModel(src);
    ASSERT_TRUE(m2.ok());
    auto rtn = testing::RunPipeline(*m2, "quantize-gguf{type=IQ4_NL,method=rtn}", &*calib);
    ASSERT_TRUE(rtn.ok()) << rtn.status();
    for (const auto& t : rtn->passes[0].tensors) EXPECT_EQ(t.method.find(" gptq"), std::string::npos) << t.name;
  }
  auto m = LoadModel(src);
  ASSERT_TRUE(m.ok());
  auto s = testing::RunPipeline(*m, "quantize-gguf{type=Q4_K_M,method=gptq}").status();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(s.message().find("--calibration"), std::string::npos) << s.message();
}

}  // namespace
}  // namespace compress

namespace compress {
namespace {

TEST(QuantizeGgufPass, WeightsBeyondF16ScalesAreRefusedNotWrittenAsNan) {
  const std::string src = testing::SharedModel("pycode-tiny");
  REQUIRE_SHARED(src);
  auto m = LoadModel(src);
  ASSERT_TRUE(m.ok());
  const std::string name = "model.layers.1.mlp.up_proj.weight";
  auto w = m->tensors.at(name).ToF32();
  ASSERT_TRUE(w.ok());
  for (float& v : *w) v *= 1e9f;
  auto big = Tensor::FromF32(*w, m->tensors.at(name).shape(), DType::kF32);
  ASSERT_TRUE(big.ok());
  m->tensors.Set(name, std::move(*big));
  auto r = testing::RunPipeline(*m, "quantize-gguf{type=Q4_0}");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find(name), std::string::npos) << r.status();
  EXPECT_NE(r.status().message().find("f16 block scales"), std::string::npos) << r.status();
}

}  // namespace
}  // namespace compress

namespace compress {
namespace {

// llama-imatrix's matrix (tests/golden/ggml/make_imatrix.sh: pycode-tiny, 4 chunks of 128
// tokens) drives the block search as our own calibration of the same tokens does.
TEST(QuantizeGgufPass, LlamaImatrixWeightsTheSearchLikeOurCalibration) {
  const std::string src = testing::SharedModel("pycode-tiny");
  REQUIRE_SHARED(src);
  const std::string golden = testing::ImatrixGolden();
  const CalibrationData calib = testing::ImatrixGoldenWindows(src);
  ASSERT_EQ(calib.windows.size(), 4u);

  auto run = [&](const std::string& pipeline, const CalibrationData* data, RunReport* report) {
    auto m = LoadModel(src);
    EXPECT_TRUE(m.ok());
    auto r = testing::RunPipeline(*m, pipeline, data);
    EXPECT_TRUE(r.ok()) << r.status();
    if (r.ok() && report) *report = *r;
    return *std::move(m);
  };
  RunReport with_file;
  const Model ours = run("quantize-gguf{type=Q4_K_M,method=rtn}", &calib, nullptr);
  const Model file = run("quantize-gguf{type=Q4_K_M,imatrix=" + golden + "}", nullptr, &with_file);
  const Model plain = run("quantize-gguf{type=Q4_K_M}", nullptr, nullptr);
  int linear = 0, differ_from_plain = 0;
  for (const auto& name : ours.tensors.names()) {
    if (name.find("layers.") == std::string::npos || ours.tensors.at(name).shape().size() != 2) continue;
    ++linear;
    const auto a = ours.tensors.at(name).Data(), b = file.tensors.at(name).Data(), c = plain.tensors.at(name).Data();
    ASSERT_TRUE(a.ok() && b.ok() && c.ok());
    ASSERT_EQ(ours.tensors.at(name).dtype(), file.tensors.at(name).dtype()) << name;
    const size_t n = (*a)->size();
    ASSERT_EQ((*b)->size(), n);
    size_t same = 0;
    for (size_t i = 0; i < n; ++i) same += (*a)->data()[i] == (*b)->data()[i];
    // Block 0 sees the same inputs in both (the importance agrees to ~1e-6); later blocks' own
    // calibration is sequential (inputs from the already quantized blocks before them), the
    // file's is from the original model: measured 96.8-98.9% of bytes equal there.
    EXPECT_GE(static_cast<double>(same) / n, name.find("layers.0.") != std::string::npos ? 0.999 : 0.95) << name;
    differ_from_plain += std::memcmp((*b)->data(), (*c)->data(), n) != 0;
  }
  EXPECT_EQ(linear, 28);
  EXPECT_EQ(differ_from_plain, 28);
  bool noted = false;
  for (const auto& note : with_file.passes[0].notes) noted = noted || note.find("importance matrix") != std::string::npos;
  EXPECT_TRUE(noted);

  auto m = LoadModel(src);
  ASSERT_TRUE(m.ok());
  auto missing = testing::RunPipeline(*m, "quantize-gguf{imatrix=/nonexistent/imatrix.gguf}");
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("no such file"), std::string::npos) << missing.status();
}

}  // namespace
}  // namespace compress

namespace compress {
namespace {

// Mixture of experts: compress's importance matrix holds each block's experts as one merged
// entry (n_mat = experts); quantize-gguf{imatrix=} gives each expert weight its own matrix of it,
// so block 0's experts come out as with our own calibration of the same tokens (same inputs in
// both), and differ from the unweighted search.
TEST(QuantizeGgufPass, ImatrixWeightsEveryExpertWithItsOwnMatrix) {
  const std::string src = std::string(COMPRESS_SOURCE_DIR) + "/tests/golden/families/qwen3_moe";
  auto base = LoadModel(src);
  ASSERT_TRUE(base.ok()) << base.status();
  ASSERT_GT(base->arch.num_experts, 1);
  CalibrationData calib;
  calib.options.samples = 4;
  calib.options.seqlen = 64;
  calib.options.min_expert_tokens = 1;
  std::mt19937 rng(7);
  for (int w = 0; w < 4; ++w) {
    calib.windows.emplace_back();
    for (int t = 0; t < 64; ++t) calib.windows.back().push_back(static_cast<int32_t>(rng() % base->arch.vocab_size));
  }
  auto im = CollectImatrix(*base, calib, "random");
  ASSERT_TRUE(im.ok()) << im.status();
  const auto& merged = im->matrix.entries.at("blk.0.ffn_down_exps.weight");
  EXPECT_EQ(merged.n_mat(), base->arch.num_experts);
  testing::ScratchDir dir;
  ASSERT_TRUE(WriteImatrix(im->matrix, dir / "imatrix.gguf").ok());

  auto run = [&](const std::string& pipeline, const CalibrationData* data) {
    auto m = LoadModel(src);
    EXPECT_TRUE(m.ok());
    auto r = testing::RunPipeline(*m, pipeline, data);
    EXPECT_TRUE(r.ok()) << r.status();
    return *std::move(m);
  };
  const Model ours = run("quantize-gguf{type=Q4_0,method=rtn}", &calib);
  const Model file = run("quantize-gguf{type=Q4_0,imatrix=" + (dir / "imatrix.gguf") + "}", nullptr);
  const Model plain = run("quantize-gguf{type=Q4_0}", nullptr);
  int experts = 0, differ_from_plain = 0;
  for (const auto& name : ours.tensors.names()) {
    // down_proj's 24 inputs are no whole block: it stays dense, as llama-quantize leaves it
    if (name.find("layers.0.mlp.experts.") == std::string::npos || !IsBlockType(plain.tensors.at(name).dtype())) continue;
    ++experts;
    const auto a = ours.tensors.at(name).Data(), b = file.tensors.at(name).Data(), c = plain.tensors.at(name).Data();
    ASSERT_TRUE(a.ok() && b.ok() && c.ok());
    const size_t n = (*a)->size();
    ASSERT_EQ((*b)->size(), n);
    size_t same = 0;
    for (size_t i = 0; i < n; ++i) same += (*a)->data()[i] == (*b)->data()[i];
    EXPECT_GE(static_cast<double>(same) / n, 0.999) << name;
    differ_from_plain += std::memcmp((*b)->data(), (*c)->data(), n) != 0;
  }
  EXPECT_EQ(experts, 2 * base->arch.num_experts);  // gate_proj and up_proj of every expert
  EXPECT_EQ(differ_from_plain, experts);
}

// VisitBlockLayers visits one block's layers narrowest input first (pycode-tiny: the six of
// width 128 in name order, then down_proj of width 384) and frees each layer's X^T X once its
// visit returns, so when down_proj's visit runs no other X^T X of the block is held.
TEST(GptqPass, BlockLayersAreSolvedNarrowFirstAndTheirStatisticsFreed) {
  REQUIRE_SHARED(testing::SharedModel("pycode-tiny"));
  auto m = LoadModel(testing::SharedModel("pycode-tiny"));
  ASSERT_TRUE(m.ok()) << m.status();
  std::map<std::string, LinearStats> stats;
  std::vector<std::string> names;
  for (const Block& b : m->arch.blocks) {
    if (b.index != 1) continue;
    for (const auto* list : {&b.attention, &b.mlp}) {
      for (const LinearLayer& l : *list) {
        LinearStats& st = stats[l.weight];
        st.in_features = l.in_features;
        st.xtx.assign(l.in_features * l.in_features, 1.0);
        names.push_back(l.weight);
      }
    }
  }
  ASSERT_EQ(names.size(), 7u);
  PassReport report;
  std::vector<std::string> order;
  auto st = VisitBlockLayers(*m, report, names, stats, [&](const std::string& name, const LinearStats& s) -> absl::Status {
    EXPECT_EQ(s.xtx.size(), static_cast<size_t>(s.in_features * s.in_features)) << name;
    for (const std::string& seen : order) EXPECT_TRUE(stats.at(seen).xtx.empty()) << seen << " still held at " << name;
    order.push_back(name);
    return absl::OkStatus();
  }, nullptr);
  ASSERT_TRUE(st.ok()) << st;
  ASSERT_EQ(order.size(), 7u);
  EXPECT_NE(order.back().find("down_proj"), std::string::npos);
  EXPECT_TRUE(std::is_sorted(order.begin(), order.end() - 1));  // equal widths: name order
  for (const auto& [name, s] : stats) EXPECT_TRUE(s.xtx.empty()) << name;
}

}  // namespace
}  // namespace compress
