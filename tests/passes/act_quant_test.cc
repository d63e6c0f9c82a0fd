// Activation and KV-cache quantization: the element rules (bounds, exact grids), the
// runtime applying them, the passes (quantize-w8a8, llm-int8's activation half,
// quantize-kv), what they cost in perplexity, and the safetensors round trips.
#include "core/act_quant.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <fstream>
#include <limits>
#include <random>

#include "analyze/perplexity.h"
#include "calibrate/calibration.h"
#include "calibrate/stats_analysis.h"
#include "core/codebook.h"
#include "core/dtype.h"
#include "formats/model_io.h"
#include "formats/safetensors.h"
#include "runtime/llama_internal.h"
#include "runtime/tokenizer.h"
#include "tests/pipeline_util.h"
#include "tests/test_util.h"

namespace compress {
namespace {

using testing::ScratchDir;

std::vector<float> RandomRows(int64_t rows, int64_t cols, uint32_t seed) {
  return testing::RandomNormal(rows, cols, seed, 1.f);
}

TEST(ActQuant, Int8PerTokenStaysOnItsGridWithinHalfAScale) {
  const int64_t rows = 16, cols = 96;
  std::vector<float> x = RandomRows(rows, cols, 1);
  x[5 * cols + 3] = 40.f;  // one large value: its row's scale grows, the others' do not
  std::vector<float> q = x;
  ActivationQuant spec;  // int8 dynamic per token
  FakeQuantize(spec, {}, q.data(), rows, cols);
  for (int64_t r = 0; r < rows; ++r) {
    float amax = 0;
    for (int64_t c = 0; c < cols; ++c) amax = std::max(amax, std::fabs(x[r * cols + c]));
    const float s = amax / 127;
    for (int64_t c = 0; c < cols; ++c) {
      const float code = q[r * cols + c] / s;
      ASSERT_NEAR(code, std::nearbyint(code), 1e-4) << "on the int8 grid of its row";
      ASSERT_LE(std::fabs(code), 127.0001f);
      ASSERT_LE(std::fabs(q[r * cols + c] - x[r * cols + c]), s / 2 * (1 + 1e-5f)) << r << "," << c;
    }
  }
  EXPECT_NEAR(q[5 * cols + 3], 40.f, 1e-5f) << "the row maximum is a code (127)";
}

// Dynamic per-tensor inputs with a zero point (ONNX's DynamicQuantizeLinear): one scale
// (max(x, 0) - min(x, 0)) / 255 over every row, values on the uint8 grid around the zero point,
// errors within half a scale, zero exact; an all-zero tensor stays zero.
TEST(ActQuant, ZeroPointPerTensorIsDynamicQuantizeLinear) {
  const int64_t rows = 16, cols = 96;
  std::vector<float> x = RandomRows(rows, cols, 3);
  for (float& v : x) v = std::fabs(v) - 0.25f;  // skewed: a zero point pays off
  x[7] = 0.f;
  std::vector<float> q = x;
  ActivationQuant spec;
  spec.granularity = ActivationQuant::Granularity::kTensor;
  spec.zero_point = true;
  ASSERT_TRUE(spec.Validate(cols).ok());
  FakeQuantize(spec, {}, q.data(), rows, cols);
  const float lo = std::min(0.f, *std::min_element(x.begin(), x.end()));
  const float hi = std::max(0.f, *std::max_element(x.begin(), x.end()));
  const float s = (hi - lo) / 255.f, zp = std::nearbyint(-lo / s);
  for (size_t i = 0; i < x.size(); ++i) {
    const float code = q[i] / s + zp;
    ASSERT_NEAR(code, std::nearbyint(code), 1e-3) << i;
    ASSERT_GE(code, -1e-3f);
    ASSERT_LE(code, 255.001f);
    ASSERT_LE(std::fabs(q[i] - x[i]), s / 2 * (1 + 1e-4f)) << i;
  }
  EXPECT_EQ(q[7], 0.f) << "zero is a code";
  std::vector<float> zeros(rows * cols, 0.f);
  FakeQuantize(spec, {}, zeros.data(), rows, cols);
  for (float v : zeros) ASSERT_EQ(v, 0.f);
  ActivationQuant bad = spec;
  bad.dynamic = false, bad.scale = 1;
  EXPECT_FALSE(bad.Validate(cols).ok()) << "zero points are for dynamic inputs only";
}

TEST(ActQuant, F16OutliersBypassAndLeaveTheScaleAlone) {
  const int64_t rows = 4, cols = 64;
  std::vector<float> x = RandomRows(rows, cols, 2);
  for (int64_t r = 0; r < rows; ++r) x[r * cols + 10] = 100.f + 0.123456f * r;
  ActivationQuant spec;
  spec.f16_outliers = true;
  const std::vector<int64_t> keep{10};
  std::vector<float> q = x;
  FakeQuantize(spec, keep, q.data(), rows, cols);
  for (int64_t r = 0; r < rows; ++r) {
    EXPECT_EQ(q[r * cols + 10], F16ToF32(F32ToF16(x[r * cols + 10])));
    float amax = 0;
    for (int64_t c = 0; c < cols; ++c)
      if (c != 10) amax = std::max(amax, std::fabs(x[r * cols + c]));
    for (int64_t c = 0; c < cols; ++c) {
      if (c != 10) {
        ASSERT_LE(std::fabs(q[r * cols + c] - x[r * cols + c]), amax / 127 / 2 * (1 + 1e-5f));
      }
    }
  }
}

TEST(ActQuant, Fp8AndStaticScalesClipAtTheFormatMaximum) {
  const int64_t rows = 8, cols = 32;
  std::vector<float> x = RandomRows(rows, cols, 3);
  ActivationQuant fp8;
  fp8.format = ActFormat::kFp8E4M3;
  std::vector<float> q = x;
  FakeQuantize(fp8, {}, q.data(), rows, cols);
  for (int64_t r = 0; r < rows; ++r) {
    float amax = 0;
    for (int64_t c = 0; c < cols; ++c) amax = std::max(amax, std::fabs(x[r * cols + c]));
    const float s = amax / 448;
    for (int64_t c = 0; c < cols; ++c) {
      const float v = q[r * cols + c] / s;
      // on the e4m3 grid: re-encoding is exact, and the error is at most half a step (2^-4 relative)
      ASSERT_NEAR(MiniFloatDecode(MiniFloatEncode(v, kE4M3), kE4M3), v, 1e-3f * std::fabs(v) + 1e-6f);
      ASSERT_LE(std::fabs(q[r * cols + c] - x[r * cols + c]), std::fabs(x[r * cols + c]) / 16 + s * 0x1p-9f * 1.01f);
    }
  }
  ActivationQuant st;
  st.granularity = ActivationQuant::Granularity::kTensor;
  st.dynamic = false;
  st.scale = 0.01f;  // codes reach -1.28 .. 1.27
  ASSERT_TRUE(st.Validate(cols).ok());
  std::vector<float> y{5.f, -5.f, 0.004f, 0.006f};
  FakeQuantize(st, {}, y.data(), 1, 4);
  EXPECT_FLOAT_EQ(y[0], 1.27f);
  EXPECT_FLOAT_EQ(y[1], -1.28f);  // int8 saturates at -128 (ONNX QuantizeLinear, vLLM)
  EXPECT_FLOAT_EQ(y[2], 0.f);
  EXPECT_FLOAT_EQ(y[3], 0.01f);
  st.granularity = ActivationQuant::Granularity::kToken;
  EXPECT_FALSE(st.Validate(cols).ok()) << "static scales are per tensor";
}

// The fp8 element rule takes no library calls: the same value as MiniFloatDecode(MiniFloatEncode)
// for every code's value, the midpoints between neighbouring codes (ties to even) and the floats
// just beside them, subnormals, zeros, values past 448, infinities and NaN, and a sweep of
// bit patterns from 2^-12 to 2^10.
TEST(ActQuant, Fp8ElementRuleEqualsTheMiniFloatCodec) {
  auto ref = [](float x) { return MiniFloatDecode(MiniFloatEncode(x, kE4M3, true), kE4M3); };
  auto same = [&](float x) {
    const float a = FakeQuantValue(ActFormat::kFp8E4M3, 8, x, 1.f), b = ref(x);
    if (std::isnan(b)) return std::isnan(a);
    return std::bit_cast<uint32_t>(a) == std::bit_cast<uint32_t>(b);
  };
  std::vector<float> probes = {0.f, -0.f, 448.f, -448.f, 449.f, 464.f, 480.f, 1e30f, -1e30f,
                               std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity(),
                               std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::denorm_min(),
                               std::ldexp(1.f, -10), std::ldexp(1.f, -9), std::ldexp(3.f, -11), std::ldexp(1.f, -6)};
  std::vector<float> values;
  for (int c = 0; c < 256; ++c) {
    const float v = MiniFloatDecode(static_cast<uint8_t>(c), kE4M3);
    if (!std::isnan(v)) values.push_back(v);
  }
  std::sort(values.begin(), values.end());
  for (size_t i = 0; i < values.size(); ++i) {
    probes.push_back(values[i]);
    if (i + 1 < values.size()) {
      const float mid = 0.5f * (values[i] + values[i + 1]);
      probes.insert(probes.end(), {mid, std::nextafter(mid, -1e9f), std::nextafter(mid, 1e9f)});
    }
  }
  for (float x : probes) EXPECT_TRUE(same(x)) << x;
  int64_t checked = 0;
  for (uint32_t b = std::bit_cast<uint32_t>(std::ldexp(1.f, -12)); b < std::bit_cast<uint32_t>(1024.f); b += 61) {
    const float x = std::bit_cast<float>(b);
    ASSERT_TRUE(same(x)) << x;
    ASSERT_TRUE(same(-x)) << -x;
    ++checked;
  }
  EXPECT_GT(checked, 2000000);
  EXPECT_EQ(FakeQuantValue(ActFormat::kFp8E4M3, 8, 3.3f, 0.5f), 6.5f * 0.5f);  // 6.6 -> 6.5, times the scale
}

// FP4 inputs (W4A4) take 16 values at a time in vector registers: every element is still
// levels[Encode(x / s)] x s, bit for bit (values on each cut and next to it, both zeros, NaN,
// infinities, rows whose width is not a multiple of 16; dynamic per-token and static scales
// with channel exponents; all three tables).
TEST(ActQuant, Fp4InputsAreTheCodebookRuleElementByElement) {
  const float inf = std::numeric_limits<float>::infinity();
  for (const char* table : {"fp4-e2m1", "fp4-e3m0", "fp4-e1m2"}) {
    SCOPED_TRACE(table);
    const Codebook& cb = **FindCodebook(table);
    std::vector<float> probes = {0.f, -0.f, inf, -inf, std::numeric_limits<float>::quiet_NaN(), 1e30f, -1e30f};
    std::vector<float> lv(cb.levels.begin(), cb.levels.end());
    std::sort(lv.begin(), lv.end());
    for (size_t i = 0; i + 1 < lv.size(); ++i) {
      const float mid = 0.5f * (lv[i] + lv[i + 1]);
      probes.insert(probes.end(), {lv[i], mid, std::nextafter(mid, -1e9f), std::nextafter(mid, 1e9f)});
    }
    std::mt19937 rng(5);
    std::normal_distribution<float> nd(0.f, 2.f);
    for (int i = 0; i < 400; ++i) probes.push_back(nd(rng));
    for (const int64_t cols : {int64_t{16}, int64_t{37}, static_cast<int64_t>(probes.size())}) {
      const int64_t rows = static_cast<int64_t>(probes.size()) / cols;
      ActivationQuant dyn, stat;
      dyn.format = stat.format = ActFormat::kFp4;
      dyn.bits = stat.bits = 4;
      dyn.fp4_format = stat.fp4_format = table;
      stat.granularity = ActivationQuant::Granularity::kTensor;
      stat.dynamic = false;
      stat.scale = 0.75f;
      stat.channel_exp.resize(cols);
      for (int64_t c = 0; c < cols; ++c) stat.channel_exp[c] = static_cast<int8_t>(c % 4 - 1);
      for (const ActivationQuant* q : {&dyn, &stat}) {
        std::vector<float> x(probes.begin(), probes.begin() + rows * cols);
        if (q == &dyn)  // the dynamic scale of a row with an infinity is 1; keep some rows finite
          for (int64_t i = 0; i < rows * cols; ++i)
            if (!std::isfinite(x[i]) && (i / cols) % 2) x[i] = 0.5f;
        std::vector<float> want = x;
        for (int64_t r = 0; r < rows; ++r) {
          float* row = want.data() + r * cols;
          float amax = 0;
          for (int64_t c = 0; c < cols; ++c) amax = std::max(amax, std::fabs(row[c]));
          const float sd = amax > 0 && std::isfinite(amax) ? amax / cb.max_abs : 1.f;
          for (int64_t c = 0; c < cols; ++c) {
            const float sc = q->dynamic ? sd : std::ldexp(q->scale, q->channel_exp[c]);
            row[c] = cb.levels[cb.Encode(row[c] / sc)] * sc;
          }
        }
        FakeQuantize(*q, {}, x.data(), rows, cols);
        for (int64_t i = 0; i < rows * cols; ++i)
          ASSERT_EQ(std::bit_cast<uint32_t>(x[i]), std::bit_cast<uint32_t>(want[i]))
              << (q->dynamic ? "dynamic" : "static") << " cols " << cols << " element " << i << ": " << x[i] << " vs "
              << want[i];
      }
    }
  }
}

TEST(ActQuant, KvPerHeadScalesAreIndependent) {
  const int64_t rows = 5, hd = 8, heads = 3, cols = hd * heads;
  std::vector<float> x = RandomRows(rows, cols, 4);
  for (int64_t r = 0; r < rows; ++r) x[r * cols + hd + 1] = 50.f;  // head 1 only
  KvCacheQuant kv;
  kv.k = KvCacheQuant::Granularity::kHead;
  kv.bits = 4;
  ASSERT_TRUE(kv.Validate(1, cols).ok());
  std::vector<float> q = x;
  FakeQuantizeKv(kv, true, 0, hd, q.data(), rows, cols);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t h = 0; h < heads; ++h) {
      float amax = 0;
      for (int64_t c = h * hd; c < (h + 1) * hd; ++c) amax = std::max(amax, std::fabs(x[r * cols + c]));
      for (int64_t c = h * hd; c < (h + 1) * hd; ++c)
        ASSERT_LE(std::fabs(q[r * cols + c] - x[r * cols + c]), amax / 7 / 2 * (1 + 1e-5f)) << r << "," << c;
    }
  kv.k = KvCacheQuant::Granularity::kChannel;
  EXPECT_FALSE(kv.Validate(1, cols).ok()) << "per-channel K needs static scales";
  kv.scales[0].k.assign(cols, 0.5f);
  EXPECT_TRUE(kv.Validate(1, cols).ok());
}

TEST(ActQuant, KvChannelGroupsQuantizeCompleteTokenGroupsOnly) {
  const int64_t rows = 70, cols = 6;
  std::vector<float> x = RandomRows(rows, cols, 7);
  x[10 * cols + 2] = 30.f;  // raises channel 2's scale in the first group only
  KvCacheQuant kv;
  kv.k = KvCacheQuant::Granularity::kChannelGroup;
  kv.token_group = 32;
  kv.bits = 4;
  ASSERT_TRUE(kv.Validate(1, cols).ok());
  std::vector<float> q = x;
  FakeQuantizeKv(kv, true, 0, 2, q.data(), rows, cols);
  for (int64_t c = 0; c < cols; ++c) {
    for (int64_t g = 0; g < 2; ++g) {
      float amax = 0;
      for (int64_t r = g * 32; r < (g + 1) * 32; ++r) amax = std::max(amax, std::fabs(x[r * cols + c]));
      for (int64_t r = g * 32; r < (g + 1) * 32; ++r) {
        ASSERT_LE(std::fabs(q[r * cols + c] - x[r * cols + c]), amax / 7 / 2 * (1 + 1e-5f)) << r << "," << c;
      }
    }
    for (int64_t r = 64; r < rows; ++r) ASSERT_EQ(q[r * cols + c], x[r * cols + c]) << "the residual stays exact";
  }
}

TEST(ActQuant, RuntimeLinearQuantizesItsInputFirst) {
  const int64_t rows = 6, in = 40, out = 12;
  llama_detail::Linear l;
  l.w = Eigen::Map<const RowMatrix>(RandomRows(out, in, 5).data(), out, in);
  RowMatrix x = Eigen::Map<const RowMatrix>(RandomRows(rows, in, 6).data(), rows, in);
  const RowMatrix plain = l.Apply(x);
  l.act = ActivationQuant{};
  RowMatrix xq = x;
  FakeQuantize(*l.act, {}, xq.data(), rows, in);
  const RowMatrix want = xq * l.w.transpose();
  const RowMatrix got = l.Apply(x);
  EXPECT_LT((got - want).cwiseAbs().maxCoeff(), 1e-5f);
  EXPECT_GT((got - plain).cwiseAbs().maxCoeff(), 1e-4f) << "the input really was quantized";
}

struct Eval {
  std::vector<int32_t> ids;
  double Ppl(const Model& m) const {
    auto rt = LlamaRuntime::Create(m);
    EXPECT_TRUE(rt.ok()) << rt.status();
    if (!rt.ok()) return 0;
    auto r = Perplexity(**rt, ids, 128, 128);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? r->perplexity : 0;
  }
};

Eval PycodeEval(const std::string& model_dir) {
  auto tok = Tokenizer::FromFile(model_dir + "/tokenizer.json");
  EXPECT_TRUE(tok.ok());
  Eval e;
  auto ids = (*tok)->Encode(testing::ReadFile(std::string(COMPRESS_SOURCE_DIR) + "/samples/eval/pycode-sample.txt"));
  EXPECT_TRUE(ids.ok());
  e.ids = *ids;
  if (e.ids.size() > 1024) e.ids.resize(1024);
  return e;
}

CalibrationData Calib(const std::string& model_dir) {
  CalibrationOptions co{std::string(COMPRESS_SOURCE_DIR) + "/samples/eval/pycode-sample.txt", 8, 128, 3};
  auto c = LoadCalibration(co, model_dir + "/tokenizer.json");
  EXPECT_TRUE(c.ok()) << c.status();
  return *c;
}

nlohmann::json ReadConfig(const std::string& dir) {
  return nlohmann::json::parse(testing::ReadFile(dir + "/config.json"));
}

// pycode-tiny with its evaluation windows, dense perplexity and calibration data.
class PycodeTiny : public ::testing::Test {
 protected:
  void SetUp() override {
    src = testing::SharedModel("pycode-tiny");
    if (!std::filesystem::exists(src)) GTEST_SKIP() << "missing " << src;
    auto m = LoadModel(src);
    ASSERT_TRUE(m.ok()) << m.status();
    dense = *std::move(m);
    ev = PycodeEval(src);
    base = ev.Ppl(dense);
    calib = Calib(src);
  }
  std::string src;
  Model dense;
  Eval ev;
  double base = 0;
  CalibrationData calib;
};

TEST_F(PycodeTiny, QuantizeW8A8DynamicInt8CostsLittleAndRoundTripsAsCompressedTensors) {
  Model w8 = dense, w8a8 = dense;
  ASSERT_TRUE(testing::RunPipeline(w8, "quantize-int8").ok());
  auto rep = testing::RunPipeline(w8a8, "quantize-w8a8");
  ASSERT_TRUE(rep.ok()) << rep.status();
  EXPECT_EQ(w8a8.input_quant.size(), w8a8.arch.AllLinears().size());
  const double p8 = ev.Ppl(w8), p88 = ev.Ppl(w8a8);
  EXPECT_NE(p8, p88) << "activations are simulated";
  EXPECT_LT(p88, base * 1.02) << "W8A8 int8 dynamic per token: base " << base << ", w8 " << p8;
  ScratchDir d;
  ASSERT_TRUE(SaveModel(w8a8, d / "q", {}).ok());
  const nlohmann::json qc = ReadConfig(d / "q")["quantization_config"];
  EXPECT_EQ(qc["format"], "int-quantized");
  const nlohmann::json ia = qc["config_groups"]["group_0"]["input_activations"];
  EXPECT_EQ(ia["num_bits"], 8);
  EXPECT_EQ(ia["type"], "int");
  EXPECT_EQ(ia["strategy"], "token");
  EXPECT_EQ(ia["dynamic"], true);
  auto back = LoadModel(d / "q");
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->input_quant, w8a8.input_quant);
  EXPECT_EQ(ev.Ppl(*back), p88) << "the written model computes what the pass simulated";
}

// granularity=tensor: ONNX Runtime's dynamic inputs on a checkpoint, written as
// compressed-tensors' asymmetric per-tensor dynamic int8 (the same values) and read back.
TEST_F(PycodeTiny, QuantizeW8A8DynamicPerTensorWritesAsymmetricInputs) {
  Model m = dense;
  auto rep = testing::RunPipeline(m, "quantize-w8a8{granularity=tensor}");
  ASSERT_TRUE(rep.ok()) << rep.status();
  ASSERT_FALSE(m.input_quant.empty());
  EXPECT_TRUE(m.input_quant.begin()->second.zero_point);
  const double p = ev.Ppl(m);
  EXPECT_LT(p, base * 1.05) << "base " << base;
  EXPECT_NE(p, base);
  ScratchDir d;
  ASSERT_TRUE(SaveModel(m, d / "q", {}).ok());
  const nlohmann::json ia = ReadConfig(d / "q")["quantization_config"]["config_groups"]["group_0"]["input_activations"];
  EXPECT_EQ(ia["strategy"], "tensor");
  EXPECT_EQ(ia["dynamic"], true);
  EXPECT_EQ(ia["symmetric"], false);
  auto back = LoadModel(d / "q");
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->input_quant, m.input_quant);
  EXPECT_EQ(ev.Ppl(*back), p);
  Model bad = dense;
  EXPECT_FALSE(testing::RunPipeline(bad, "quantize-w8a8{type=fp8,granularity=tensor}").ok());
}

TEST_F(PycodeTiny, QuantizeW8A8Fp8StaticWritesFloatQuantizedWithInputScales) {
  Model* m = &dense;
  EXPECT_FALSE(testing::RunPipeline(*m, "quantize-w8a8{activations=static}").ok()) << "static needs calibration";
  auto rep = testing::RunPipeline(*m, "quantize-w8a8{type=fp8,activations=static}", &calib);
  ASSERT_TRUE(rep.ok()) << rep.status();
  for (const auto& [w, spec] : m->input_quant) {
    ASSERT_FALSE(spec.dynamic) << w;
    ASSERT_GT(spec.scale, 0.f) << w;
  }
  EXPECT_GT(rep->passes[0].tensors[0].metrics.count("act_scale"), 0u);
  for (const TensorChange& c : rep->passes[0].tensors) {
    // the report's per-layer output errors: quantizing the inputs adds to the weights' error
    ASSERT_GT(c.metrics.count("output_rel_error"), 0u) << c.name;
    EXPECT_GE(c.metrics.at("output_rel_error"), 0.5 * c.metrics.at("output_rel_error_weights_only")) << c.name;
    EXPECT_LT(c.metrics.at("output_rel_error"), 0.2) << c.name;
  }
  const double p = ev.Ppl(*m);
  EXPECT_LT(p, base * 1.03) << "fp8 W8A8 static: base " << base;
  ScratchDir d;
  ASSERT_TRUE(SaveModel(*m, d / "q", {}).ok());
  const nlohmann::json qc = ReadConfig(d / "q")["quantization_config"];
  EXPECT_EQ(qc["format"], "float-quantized");
  EXPECT_EQ(qc["config_groups"]["group_0"]["weights"]["type"], "float");
  EXPECT_EQ(qc["config_groups"]["group_0"]["input_activations"]["dynamic"], false);
  {
    TensorStore t;
    ASSERT_TRUE(ReadSafetensorsFile((d / "q/model.safetensors"), t, nullptr).ok());
    EXPECT_EQ(t.at("model.layers.0.self_attn.q_proj.weight").dtype(), DType::kF8E4M3);
    EXPECT_EQ(t.at("model.layers.0.self_attn.q_proj.input_scale").numel(), 1);
  }
  auto back = LoadModel(d / "q");
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->input_quant, m->input_quant);
  EXPECT_EQ(ev.Ppl(*back), p);
  EXPECT_FALSE(SaveModel(*m, d / "q.gguf", {}).ok()) << "GGUF cannot carry activation quantization";
}

// A checkpoint laid out as llm-compressor's FP8 scheme writes it, not by us: per-tensor FP8
// weights with 0-D scales, static per-tensor FP8 inputs, an fp8 kv_cache_scheme with 0-D
// k_scale / v_scale, one config group targeting "Linear" and lm_head ignored.
TEST_F(PycodeTiny, ReadsAForeignPerTensorFp8Checkpoint) {
  TensorStore t;
  auto scalar = [](float v) { return *Tensor::FromF32(std::vector<float>{v}, {}, DType::kF32); };
  for (const std::string& name : dense.tensors.names()) {
    const Tensor& src = dense.tensors.at(name);
    if (!dense.arch.LayerOfWeight(name)) {
      t.Set(name, src);
      continue;
    }
    std::vector<float> w = *src.ToF32();
    float amax = 0;
    for (float x : w) amax = std::max(amax, std::fabs(x));
    const float s = amax / 448;
    std::vector<uint8_t> codes(w.size());
    for (size_t i = 0; i < w.size(); ++i) codes[i] = MiniFloatEncode(w[i] / s, kE4M3);
    const std::string base = name.substr(0, name.size() - 7);
    t.Set(name, Tensor(DType::kF8E4M3, src.shape(), std::make_shared<OwnedBuffer>(std::move(codes))));
    t.Set(base + ".weight_scale", scalar(s));
    t.Set(base + ".input_scale", scalar(0.05f));
  }
  for (const Block& b : dense.arch.blocks) {
    t.Set(fmt::format("model.layers.{}.self_attn.k_scale", b.index), scalar(0.02f));
    t.Set(fmt::format("model.layers.{}.self_attn.v_scale", b.index), scalar(0.01f));
  }
  const nlohmann::json args = {{"num_bits", 8}, {"type", "float"}, {"symmetric", true}, {"strategy", "tensor"},
                               {"dynamic", false}, {"group_size", nullptr}, {"observer", "minmax"}};
  nlohmann::json cfg = dense.config;
  cfg["quantization_config"] = {
      {"quant_method", "compressed-tensors"},
      {"format", "float-quantized"},
      {"quantization_status", "compressed"},
      {"config_groups", {{"group_0", {{"targets", {"Linear"}}, {"weights", args}, {"input_activations", args}}}}},
      {"kv_cache_scheme", args},
      {"ignore", {"lm_head"}}};
  ScratchDir d;
  std::filesystem::create_directories(d / "fp8");
  ASSERT_TRUE(WriteSafetensors(t, d / "fp8", {}).ok());
  testing::WriteFile(d / "fp8/config.json", cfg.dump());
  std::filesystem::copy_file(src + "/tokenizer.json", d / "fp8/tokenizer.json");
  auto m = LoadModel(d / "fp8");
  ASSERT_TRUE(m.ok()) << m.status();
  const std::string q = "model.layers.0.self_attn.q_proj.weight";
  ASSERT_TRUE(m->tensors.at(q).quant());
  EXPECT_TRUE(m->tensors.at(q).quant()->fp8());
  EXPECT_EQ(m->tensors.at(q).quant()->scales().size(), static_cast<size_t>(m->tensors.at(q).shape()[0]));
  ASSERT_EQ(m->input_quant.size(), m->arch.AllLinears().size());
  EXPECT_EQ(m->input_quant.at(q).scale, 0.05f);
  EXPECT_EQ(m->input_quant.at(q).format, ActFormat::kFp8E4M3);
  ASSERT_TRUE(m->kv_cache);
  EXPECT_EQ(m->kv_cache->k, KvCacheQuant::Granularity::kTensor);
  EXPECT_EQ(m->kv_cache->scales.at(0).k, std::vector<float>{0.02f});
  EXPECT_FALSE(m->tensors.contains("model.layers.0.self_attn.k_scale"));
  const double p = ev.Ppl(*m);
  EXPECT_GT(p, base * 0.9);
  EXPECT_LT(p, base * 3) << "runs with every scale applied (the hand-picked input scales clip)";
}

TEST_F(PycodeTiny, StaticScaleEstimatorsClipBelowTheMaximum) {
  std::map<std::string, float> scale;
  std::map<std::string, double> ppl;
  for (const char* e : {"minmax", "percentile", "entropy", "mse"}) {
    Model m = dense;
    ASSERT_TRUE(testing::RunPipeline(m, fmt::format("quantize-w8a8{{activations=static,estimator={}}}", e), &calib).ok()) << e;
    scale[e] = m.input_quant.at("model.layers.1.mlp.down_proj.weight").scale;
    ppl[e] = ev.Ppl(m);
    std::printf("static inputs, %s: perplexity %.4f (base %.4f)\n", e, ppl[e], base);
  }
  for (const char* e : {"minmax", "percentile", "mse"}) EXPECT_LT(ppl[e], base * 1.1) << e;
  // TensorRT's KL threshold clips the few outlier features LLM inputs carry (they matter:
  // LLM.int8(), SmoothQuant): measured 18% above the dense perplexity here (the others: under
  // 1.5%), and smoothing first did not change that (20.20 vs 20.23). It suits CNN-like
  // activations; the option exists for parity with ONNX Runtime and TensorRT.
  EXPECT_GT(ppl["entropy"], ppl["mse"]);
  EXPECT_LT(ppl["entropy"], base * 1.3);
  EXPECT_LE(scale["percentile"], scale["minmax"]);
  EXPECT_LE(scale["mse"], scale["minmax"]);
  EXPECT_LE(scale["entropy"], scale["minmax"]);
  EXPECT_GE(scale["mse"], 0.3f * scale["minmax"] * 0.999f) << "the clipping search stays in its range";
  Model f = dense;
  auto fp8 = testing::RunPipeline(f, "quantize-w8a8{type=fp8,activations=static,estimator=entropy}", &calib);
  ASSERT_FALSE(fp8.ok());
  EXPECT_NE(fp8.status().message().find("estimator=entropy models int8"), std::string::npos) << fp8.status();
}

// The KL threshold by hand on a 4-bin histogram with 2 levels, and its behaviour on a uniform
// distribution (nothing to clip) and on a Gaussian with a few far outliers (clip them).
TEST(ActQuant, EntropyThresholdFollowsTheKlRule) {
  // |x| = 0.1 four times and 1.0 once: bins of 0.25 hold [4, 0, 0, 1]. Edges 2 and 3 leave
  // the tail's mass where Q has none (KL about 4.9); edge 4 gives Q = P (KL 0): keep the max.
  const std::vector<float> v = {0.1f, -0.1f, 0.1f, 0.1f, 1.0f};
  EXPECT_FLOAT_EQ(EntropyThreshold(v, 2, 4), 1.0f);
  // Clipping pays when merging misrepresents the spread-out tail: N(0, 1) with 20 values at
  // |x| = 100, 2048 bins, int8's 128 levels.
  std::mt19937 rng(7);
  std::normal_distribution<float> n(0.f, 1.f);
  std::vector<float> g(200000);
  for (float& x : g) x = n(rng);
  for (int k = 0; k < 20; ++k) g[k * 1000] = 100.f * (k % 2 ? 1 : -1);
  const float t = EntropyThreshold(g, 128);
  EXPECT_GT(t, 2.5f) << "keeps the bulk of N(0, 1)";
  EXPECT_LT(t, 10.f) << "clips the 20 outliers at |x| = 100";
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  std::vector<float> flat(200000);
  for (float& x : flat) x = u(rng);
  EXPECT_GT(EntropyThreshold(flat, 128), 0.95f) << "a uniform distribution has nothing worth clipping";
  EXPECT_EQ(EntropyThreshold(std::vector<float>(10, 0.f), 128), 0.f);
}

TEST_F(PycodeTiny, LlmInt8ActivationHalfIsOnByDefaultAndSurvivesWriting) {
  Model wonly = dense, full = dense;
  ASSERT_TRUE(testing::RunPipeline(wonly, "llm-int8{activations=none,threshold=2}", &calib).ok());
  EXPECT_TRUE(wonly.input_quant.empty());
  ASSERT_TRUE(testing::RunPipeline(full, "llm-int8{threshold=2}", &calib).ok());
  ASSERT_EQ(full.input_quant.size(), full.arch.AllLinears().size());
  int with_outliers = 0;
  for (const auto& [w, spec] : full.input_quant) {
    EXPECT_EQ(spec.f16_outliers, !full.tensors.at(w).quant()->outlier_inputs.empty()) << w;
    with_outliers += spec.f16_outliers;
  }
  EXPECT_GT(with_outliers, 0);
  const double p = ev.Ppl(full);
  EXPECT_NE(p, ev.Ppl(wonly));
  EXPECT_LT(p, base * 1.02);
  ScratchDir d;
  ASSERT_TRUE(SaveModel(full, d / "q", {}).ok());
  auto back = LoadModel(d / "q");
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->input_quant, full.input_quant);
  EXPECT_EQ(ev.Ppl(*back), p);
}

TEST_F(PycodeTiny, QuantizeKvInt8CostsLittleInt4MoreAndScalesRoundTrip) {
  Model k8 = dense, k4 = dense, kdyn = dense, kfp8 = dense;
  EXPECT_FALSE(testing::RunPipeline(k8, "quantize-kv{k=channel}").ok()) << "static K needs calibration";
  ASSERT_TRUE(testing::RunPipeline(kdyn, "quantize-kv").ok());
  EXPECT_EQ(kdyn.kv_cache->k, KvCacheQuant::Granularity::kHead) << "auto without calibration";
  auto rep = testing::RunPipeline(k8, "quantize-kv", &calib);
  ASSERT_TRUE(rep.ok()) << rep.status();
  EXPECT_EQ(k8.kv_cache->k, KvCacheQuant::Granularity::kChannel);
  EXPECT_EQ(rep->passes[0].stats.at("kv_bits"), 8);
  ASSERT_TRUE(testing::RunPipeline(k4, "quantize-kv{type=int4}", &calib).ok());
  ASSERT_TRUE(testing::RunPipeline(kfp8, "quantize-kv{type=fp8,k=tensor,v=tensor}", &calib).ok());
  Model kg = dense;
  ASSERT_TRUE(testing::RunPipeline(kg, "quantize-kv{type=int4,k=channel-group,token-group=16}").ok());
  EXPECT_LT(ev.Ppl(kg), base * 1.10);
  {
    ScratchDir g;
    ASSERT_TRUE(SaveModel(kg, g / "kg", {}).ok());
    auto back = LoadModel(g / "kg");
    ASSERT_TRUE(back.ok()) << back.status();
    ASSERT_TRUE(back->kv_cache);
    EXPECT_EQ(back->kv_cache->k, KvCacheQuant::Granularity::kChannelGroup);
    EXPECT_EQ(back->kv_cache->token_group, 16);
    EXPECT_EQ(ev.Ppl(*back), ev.Ppl(kg));
  }
  const double p8 = ev.Ppl(k8), p4 = ev.Ppl(k4), pd = ev.Ppl(kdyn), pf = ev.Ppl(kfp8);
  EXPECT_LT(p8, base * 1.005) << "int8 cache";
  EXPECT_LT(pd, base * 1.005) << "int8 dynamic cache";
  EXPECT_LT(pf, base * 1.02) << "fp8 per-tensor cache";
  EXPECT_GT(p4, p8) << "int4 costs more than int8";
  EXPECT_LT(p4, base * 1.10) << "int4 cache with per-channel K";
  // int8 weights + the cache: compressed-tensors with compress's own cache key (K per channel,
  // V per token and head has no kv_cache_scheme form).
  ASSERT_TRUE(testing::RunPipeline(k8, "quantize-int8").ok());
  const double pq = ev.Ppl(k8);
  ScratchDir d;
  ASSERT_TRUE(SaveModel(k8, d / "a", {}).ok());
  nlohmann::json qc = ReadConfig(d / "a")["quantization_config"];
  EXPECT_TRUE(qc.contains("compress_kv_cache"));
  EXPECT_FALSE(qc.contains("kv_cache_scheme"));
  auto back = LoadModel(d / "a");
  ASSERT_TRUE(back.ok()) << back.status();
  ASSERT_TRUE(back->kv_cache.has_value());
  EXPECT_EQ(back->kv_cache->scales.at(1).k, k8.kv_cache->scales.at(1).k);
  EXPECT_EQ(ev.Ppl(*back), pq);
  // fp8 per-tensor on dense weights: the standard kv_cache_scheme with k_scale / v_scale.
  ASSERT_TRUE(SaveModel(kfp8, d / "b", {}).ok());
  qc = ReadConfig(d / "b")["quantization_config"];
  EXPECT_EQ(qc["format"], "dense");
  EXPECT_EQ(qc["kv_cache_scheme"]["type"], "float");
  EXPECT_EQ(qc["kv_cache_scheme"]["strategy"], "tensor");
  auto back2 = LoadModel(d / "b");
  ASSERT_TRUE(back2.ok()) << back2.status();
  EXPECT_EQ(ev.Ppl(*back2), pf);
  EXPECT_FALSE(back2->tensors.contains("model.layers.0.self_attn.k_scale")) << "scales are consumed";
}

TEST_F(PycodeTiny, AlignedKvSavesBitsAtLittleCostAndRoundTrips) {
  Model m = dense, i8 = dense;
  EXPECT_FALSE(testing::RunPipeline(m, "quantize-kv{type=aligned}").ok()) << "needs calibration";
  auto rep = testing::RunPipeline(m, "quantize-kv{type=aligned}", &calib);
  ASSERT_TRUE(rep.ok()) << rep.status();
  const double bits = rep->passes[0].stats.at("kv_mean_bits");
  EXPECT_LT(bits, 8.0);
  EXPECT_GE(bits, 2.0);
  for (const auto& [b, s] : m.kv_cache->scales) {
    ASSERT_EQ(s.k_bits.size(), s.k.size()) << b;
    ASSERT_EQ(s.v_bits.size(), s.v.size()) << b;
  }
  ASSERT_TRUE(testing::RunPipeline(i8, "quantize-kv", &calib).ok());
  const double pa = ev.Ppl(m);
  EXPECT_LT(pa, base * 1.02) << "aligned cache at " << bits << " bits; int8 " << ev.Ppl(i8);
  ScratchDir d;
  ASSERT_TRUE(SaveModel(m, d / "a", {}).ok());
  auto back = LoadModel(d / "a");
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->kv_cache->scales.at(0).k_bits, m.kv_cache->scales.at(0).k_bits);
  EXPECT_EQ(ev.Ppl(*back), pa);
}

TEST_F(PycodeTiny, W4A4LlmFp4BeatsTheInt4BaselineAndRoundTrips) {
  Model fp = dense, in4 = dense, wonly = dense;
  auto rep = testing::RunPipeline(fp, "quantize-w4a4", &calib);
  ASSERT_TRUE(rep.ok()) << rep.status();
  ASSERT_TRUE(testing::RunPipeline(in4, "quantize-w4a4{method=int}", &calib).ok());
  ASSERT_TRUE(testing::RunPipeline(wonly, "quantize-fp4{group-size=0}", &calib).ok());
  for (const auto& [w, spec] : fp.input_quant) {
    ASSERT_EQ(spec.format, ActFormat::kFp4) << w;
    ASSERT_FALSE(spec.dynamic) << w;
    ASSERT_EQ(spec.channel_exp.size(), static_cast<size_t>(fp.arch.LayerOfWeight(w)->in_features)) << w;
  }
  EXPECT_GT(rep->passes[0].tensors[0].metrics.count("act_weighted_rel_error"), 0u);
  const double pf = ev.Ppl(fp), pi = ev.Ppl(in4), pw = ev.Ppl(wonly);
  EXPECT_LT(pf, pi) << "LLM-FP4 W4A4 beats int4 W4A4 (base " << base << ", weight-only fp4 " << pw << ")";
  EXPECT_GT(pf, pw) << "4-bit inputs cost something on top of 4-bit weights";
  ScratchDir d;
  ASSERT_TRUE(SaveModel(fp, d / "q", {}).ok());
  auto back = LoadModel(d / "q");
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->input_quant, fp.input_quant);
  EXPECT_EQ(ev.Ppl(*back), pf);
}

TEST_F(PycodeTiny, SmoothQuantIsExactAloneAndFlattensInputsForW8A8) {
  for (const char* p : {"smooth-quant", "smooth-quant{alpha=0.8,fold=all}"}) {
    SCOPED_TRACE(p);
    Model m = dense;
    auto rep = testing::RunPipeline(m, p, &calib);
    ASSERT_TRUE(rep.ok()) << rep.status();
    const auto& st = rep->passes[0].stats;
    EXPECT_LT(st.at("max_input_absmax_after"), st.at("max_input_absmax_before"));
    EXPECT_GE(st.at("groups_smoothed"), 2 * m.arch.blocks.size());
    // The same function: only the weights' storage rounding differs.
    EXPECT_NEAR(ev.Ppl(m), base, base * 2e-3);
    auto w8 = testing::RunPipeline(m, "quantize-w8a8{activations=static}", &calib);
    ASSERT_TRUE(w8.ok()) << w8.status();
    EXPECT_LT(ev.Ppl(m), base * 1.05);
  }
  Model q = dense;
  ASSERT_TRUE(testing::RunPipeline(q, "quantize-int8", &calib).ok());
  EXPECT_FALSE(testing::RunPipeline(q, "smooth-quant", &calib).ok()) << "refuses quantized weights";
}

// smooth-quant keeps the calibration-statistics analysis valid by dividing the inputs it
// smoothed: what it leaves in the cache equals a fresh calibration of the smoothed model, up
// to the weights' rounding, and the next pass reuses it instead of calibrating again.
TEST_F(PycodeTiny, SmoothQuantUpdatesTheCalibrationStatisticsItChanges) {
  PassRegistry reg;
  ASSERT_TRUE(RegisterBuiltinPasses(reg).ok());
  auto steps = ResolvePipeline(reg, *ParsePipelineText("smooth-quant{fold=all}, prune-structured{score=wanda}"));
  ASSERT_TRUE(steps.ok()) << steps.status();
  PassManagerOptions opts;
  opts.calibration = &calib;
  opts.checkpoint = &ModelCheckpointEditor();
  PassManager pm(opts);
  Model m = dense;
  RunReport report;
  // Only the smoothing step: the cache then holds the updated statistics.
  ASSERT_TRUE(pm.Run(m, {(*steps)[0]}, report).ok());
  ASSERT_TRUE(pm.analyses().IsCached(CalibrationStatistics::kName));
  auto updated = pm.analyses().Get<CalibrationStatistics>(m);
  ASSERT_TRUE(updated.ok());
  AnalysisManager fresh_am;
  fresh_am.SetCalibration(&calib);
  auto fresh = fresh_am.Get<CalibrationStatistics>(m);
  ASSERT_TRUE(fresh.ok()) << fresh.status();
  ASSERT_EQ((*updated)->layers.size(), (*fresh)->layers.size());
  // The smoothed weights are stored back in the checkpoint's dtype: each rescaled norm and
  // reader weight moves by at most its unit roundoff u, so an input differs from the exact
  // division by about 2u relative (norm and reader) plus about 2u for each block before it
  // (their rounded weights change the residual stream); its square by twice that.
  const DType dt = dense.tensors.at(dense.arch.blocks[0].norms[0]).dtype();
  const double u = dt == DType::kBF16 ? std::ldexp(1.0, -8) : dt == DType::kF16 ? std::ldexp(1.0, -11) : 1e-6;
  int64_t compared = 0;
  double worst_max = 0, worst_sq = 0;
  for (const auto& [name, f] : (*fresh)->layers) {
    const LinearStats& up = (*updated)->layers.at(name);
    ASSERT_EQ(up.in_features, f.in_features) << name;
    for (int64_t j = 0; j < f.in_features; ++j, ++compared) {
      if (f.absmax[j] < 1e-3) continue;
      worst_max = std::max(worst_max, static_cast<double>(std::fabs(up.absmax[j] - f.absmax[j]) / f.absmax[j]));
      worst_sq = std::max(worst_sq, std::fabs(up.sum_sq[j] - f.sum_sq[j]) / f.sum_sq[j]);
    }
  }
  EXPECT_GT(compared, 0);
  const double bound = (2.0 + 2.0 * static_cast<double>(dense.arch.blocks.size())) * u;
  EXPECT_LT(worst_max, bound) << "largest relative difference of max |x|";
  EXPECT_LT(worst_sq, 2 * bound) << "largest relative difference of sum x^2";
  std::printf("updated vs fresh statistics: max |x| %.3g u, sum x^2 %.3g u\n", worst_max / u, worst_sq / u);
  // Not vacuous: the statistics before smoothing are far from the updated ones.
  AnalysisManager orig_am;
  orig_am.SetCalibration(&calib);
  auto orig = orig_am.Get<CalibrationStatistics>(dense);
  ASSERT_TRUE(orig.ok());
  double moved = 0;
  for (const auto& [name, f] : (*fresh)->layers)
    for (int64_t j = 0; j < f.in_features; ++j)
      if (f.absmax[j] >= 1e-3)
        moved = std::max(moved, static_cast<double>(std::fabs((*orig)->layers.at(name).absmax[j] - f.absmax[j]) / f.absmax[j]));
  EXPECT_GT(moved, 100 * u);
  // The next pass reuses the statistics: calibrated once for the whole pipeline.
  ASSERT_TRUE(pm.Run(m, {(*steps)[1]}, report).ok());
  EXPECT_EQ(pm.analyses().computations(CalibrationStatistics::kName), 1);
  const auto& notes = report.passes.back().notes;
  EXPECT_NE(std::find(notes.begin(), notes.end(), "reused analysis 'calibration-statistics' (still valid)"),
            notes.end());
}

}  // namespace
}  // namespace compress
