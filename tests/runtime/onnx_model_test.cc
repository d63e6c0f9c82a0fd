// The ONNX interpreter on real models: stories260K's ONNX export against our LLM runtime on
// the same weights (safetensors), ONNX calibration statistics against the LLM driver's, and
// calibrated passes (GPTQ, SparseGPT, LLM.int8) on ONNX graphs.
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>

#include "analyze/onnx_eval.h"
#include "calibrate/calibration.h"
#include "calibrate/onnx_calibration.h"
#include "core/graph_ir.h"
#include "formats/model_io.h"
#include "formats/onnx_io.h"
#include "nlohmann/json.hpp"
#include "formats/onnx_structure.h"
#include "gtest/gtest.h"
#include "onnx/onnx_pb.h"
#include "runtime/llama.h"
#include "runtime/onnx/interpreter.h"
#include "tests/pipeline_util.h"
#include "tests/test_util.h"

namespace compress {
namespace {
using onnxrt::Interpreter;
using onnxrt::Value;
using testing::SharedModel;

std::vector<int32_t> Tokens(int n, uint64_t seed, int vocab) {
  std::mt19937_64 rng(seed);
  std::vector<int32_t> ids(n);
  for (auto& t : ids) t = static_cast<int32_t>(rng() % vocab);
  return ids;
}

CalibrationData Windows(int samples, int len, int vocab) {
  CalibrationData d;
  d.options.samples = samples;
  d.options.seqlen = len;
  for (int s = 0; s < samples; ++s) d.windows.push_back(Tokens(len, 100 + s, vocab));
  return d;
}

// In-distribution text: tokens sampled (temperature 1, seeded) from stories260K itself,
// starting from BOS (id 1).
std::vector<int32_t> Sampled(const LlamaRuntime& rt, int n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int32_t> ids = {1};
  while (static_cast<int>(ids.size()) < n) {
    auto logits = rt.Forward(ids);
    if (!logits.ok()) break;
    const auto row = logits->row(logits->rows() - 1);
    std::vector<double> p(row.size());
    double mx = row.maxCoeff(), sum = 0;
    for (int64_t v = 0; v < row.size(); ++v) sum += p[v] = std::exp(row[v] - mx);
    std::discrete_distribution<int32_t> pick(p.begin(), p.end());
    ids.push_back(pick(rng));
  }
  return ids;
}

// Four calibration windows of 96 tokens (seeds window_seed..+3) and 160 evaluation tokens
// sampled from stories260K, with the dense ONNX graph's next-token NLLs on the latter.
struct StoriesSamples {
  CalibrationData data;
  std::vector<int32_t> ids;
  std::vector<double> dense_nll;
};
absl::StatusOr<StoriesSamples> SampleStories(uint64_t window_seed, uint64_t eval_seed) {
  ASSIGN_OR_RETURN(Model st, LoadModel(SharedModel("stories260K")));
  ASSIGN_OR_RETURN(auto rt, LlamaRuntime::Create(st));
  StoriesSamples out;
  for (uint64_t s = 0; s < 4; ++s) out.data.windows.push_back(Sampled(*rt, 96, window_seed + s));
  out.ids = Sampled(*rt, 160, eval_seed);
  ASSIGN_OR_RETURN(Model dense, LoadModel(SharedModel("stories260K/model.onnx")));
  ASSIGN_OR_RETURN(auto interp, Interpreter::Create(dense));
  ASSIGN_OR_RETURN(out.dense_nll, OnnxTokenNlls(*interp, out.ids));
  return out;
}

TEST(OnnxModel, Stories260KLogitsMatchTheLlmRuntime) {
  REQUIRE_SHARED(SharedModel("stories260K/model.onnx"));
  auto onnx = LoadModel(SharedModel("stories260K/model.onnx"));
  auto st = LoadModel(SharedModel("stories260K"));
  ASSERT_TRUE(onnx.ok() && st.ok());
  auto interp = Interpreter::Create(*onnx);
  ASSERT_TRUE(interp.ok()) << interp.status();
  auto rt = LlamaRuntime::Create(*st);
  ASSERT_TRUE(rt.ok()) << rt.status();
  const auto ids = Tokens(64, 7, 512);
  auto feeds = onnxrt::TokenFeeds(**interp, ids);
  ASSERT_TRUE(feeds.ok());
  auto out = (*interp)->Run(*feeds);
  ASSERT_TRUE(out.ok()) << out.status();
  const Value& logits = out->at("logits");
  ASSERT_EQ(logits.shape, (Shape{1, 64, 512}));
  auto ref = (*rt)->Forward(ids);
  ASSERT_TRUE(ref.ok());
  double max_diff = 0, max_ref = 0;
  for (int64_t i = 0; i < logits.numel(); ++i) {
    max_diff = std::max<double>(max_diff, std::abs(logits.data<float>()[i] - ref->data()[i]));
    max_ref = std::max<double>(max_ref, std::abs(ref->data()[i]));
  }
  EXPECT_LT(max_diff, 1e-4) << "max |logit| " << max_ref;
  // Perplexity through both paths agrees too.
  auto nll_onnx = OnnxTokenNlls(**interp, ids);
  auto nll_rt = (*rt)->TokenNlls(ids);
  ASSERT_TRUE(nll_onnx.ok() && nll_rt.ok());
  for (size_t t = 0; t < nll_rt->size(); ++t) EXPECT_NEAR((*nll_onnx)[t], (*nll_rt)[t], 1e-4);
}

// For each ONNX MatMul weight [in, out], the safetensors weight [out, in] holding the same values.
std::map<std::string, std::string> MatchWeights(const Model& onnx, const Model& st) {
  std::map<std::string, std::string> out;
  for (const auto* l : onnx.arch.AllLinears()) {
    const Tensor& w = onnx.tensors.at(l->weight);
    if (w.shape().size() != 2) continue;
    auto wf = *w.ToF32();
    for (const auto* s : st.arch.AllLinears()) {
      const Tensor& v = st.tensors.at(s->weight);
      if (v.shape() != Shape{w.shape()[1], w.shape()[0]}) continue;
      auto vf = *v.ToF32();
      bool same = true;
      for (int64_t r = 0; r < w.shape()[0] && same; ++r)
        for (int64_t c = 0; c < w.shape()[1] && same; ++c) same = wf[r * w.shape()[1] + c] == vf[c * w.shape()[0] + r];
      if (same) out[l->weight] = s->weight;
    }
  }
  return out;
}

// Results are a function of the data alone, not of where the heap puts buffers: the same
// logits, bit for bit, from both runtimes after the heap was fragmented in different ways
// (with glibc's 16-byte malloc alignment, buffers then start at different offsets from a
// 64-byte boundary, which changes how vectorized reductions split their sums unless the
// buffers Eigen reads in place are aligned: core/aligned.h).
TEST(Determinism, LogitsDoNotDependOnWhereTheHeapPutsBuffers) {
  REQUIRE_SHARED(SharedModel("stories260K/model.onnx"));
  auto onnx = LoadModel(SharedModel("stories260K/model.onnx"));
  auto st = LoadModel(SharedModel("stories260K"));
  ASSERT_TRUE(onnx.ok() && st.ok());
  const auto ids = Tokens(48, 11, 512);
  auto run = [&](std::vector<float>& out_onnx, std::vector<float>& out_llm) {
    auto interp = Interpreter::Create(*onnx);
    ASSERT_TRUE(interp.ok()) << interp.status();
    auto feeds = onnxrt::TokenFeeds(**interp, ids);
    ASSERT_TRUE(feeds.ok());
    auto out = (*interp)->Run(*feeds);
    ASSERT_TRUE(out.ok()) << out.status();
    const Value& logits = out->at("logits");
    out_onnx.assign(logits.data<float>(), logits.data<float>() + logits.numel());
    auto rt = LlamaRuntime::Create(*st);
    ASSERT_TRUE(rt.ok()) << rt.status();
    auto ref = (*rt)->Forward(ids);
    ASSERT_TRUE(ref.ok());
    out_llm.assign(ref->data(), ref->data() + ref->size());
  };
  std::vector<float> base_onnx, base_llm;
  run(base_onnx, base_llm);
  for (int shift : {1, 2, 3, 5}) {
    // Fragment the heap: keep every other one of many small blocks of shifting sizes.
    std::vector<std::unique_ptr<char[]>> keep;
    for (int i = 0; i < 400; ++i) {
      auto block = std::make_unique<char[]>(static_cast<size_t>(16 * shift + 24 * (i % 7)));
      if (i % 2) keep.push_back(std::move(block));
    }
    std::vector<float> o, l;
    run(o, l);
    ASSERT_EQ(o.size(), base_onnx.size());
    EXPECT_EQ(std::memcmp(o.data(), base_onnx.data(), o.size() * sizeof(float)), 0) << "ONNX, shift " << shift;
    ASSERT_EQ(l.size(), base_llm.size());
    EXPECT_EQ(std::memcmp(l.data(), base_llm.data(), l.size() * sizeof(float)), 0) << "LLM runtime, shift " << shift;
  }
}

TEST(OnnxModel, CalibrationStatisticsMatchTheLlmDriver) {
  REQUIRE_SHARED(SharedModel("stories260K/model.onnx"));
  auto onnx = LoadModel(SharedModel("stories260K/model.onnx"));
  auto st = LoadModel(SharedModel("stories260K"));
  ASSERT_TRUE(onnx.ok() && st.ok());
  const auto names = MatchWeights(*onnx, *st);
  ASSERT_GE(names.size(), 30u) << "q/k/v/o/gate/up/down of 5 blocks should match";
  const CalibrationData data = Windows(3, 48, 512);
  std::map<std::string, LinearStats> a, b;
  for (bool sequential : {false, true}) {
    a.clear();
    ASSERT_TRUE(RunCalibration(*onnx, data, {true, sequential},
                               [&](int, const std::map<std::string, LinearStats>& s) {
                                 for (const auto& [k, v] : s) a[k] = v;
                                 return absl::OkStatus();
                               })
                    .ok());
    // Every weight-bearing MatMul gets statistics (the 35 block linears and the lm_head).
    EXPECT_EQ(a.size(), onnx->arch.AllLinears().size());
  }
  ASSERT_TRUE(RunCalibration(*st, data, {true, false},
                             [&](int, const std::map<std::string, LinearStats>& s) {
                               for (const auto& [k, v] : s) b[k] = v;
                               return absl::OkStatus();
                             })
                  .ok());
  int compared = 0;
  for (const auto& [onnx_name, st_name] : names) {
    if (!a.count(onnx_name) || !b.count(st_name)) continue;
    const LinearStats& x = a.at(onnx_name);
    const LinearStats& y = b.at(st_name);
    ASSERT_EQ(x.rows, y.rows) << onnx_name;
    ASSERT_EQ(x.xtx.size(), y.xtx.size());
    double diff = 0, norm = 0;
    for (size_t i = 0; i < x.xtx.size(); ++i) {
      diff = std::max(diff, std::abs(x.xtx[i] - y.xtx[i]));
      norm = std::max(norm, std::abs(y.xtx[i]));
    }
    EXPECT_LT(diff, 1e-4 * norm) << onnx_name << " vs " << st_name;
    ++compared;
  }
  EXPECT_GE(compared, 30);
}

// FinerCut on the ONNX export finds the 10 residual sublayers, removes the same ones in the
// same order with the same scores as on the safetensors checkpoint, and the written graph
// (Adds bypassed, branches and weights deleted) computes what the LLM runtime computes on
// the safetensors student.
TEST(OnnxModel, FinerCutAcrossFormats) {
  REQUIRE_SHARED(SharedModel("stories260K/model.onnx"));
  auto st = LoadModel(SharedModel("stories260K"));
  auto onnx = LoadModel(SharedModel("stories260K/model.onnx"));
  ASSERT_TRUE(st.ok() && onnx.ok());
  auto rt0 = LlamaRuntime::Create(*st);
  ASSERT_TRUE(rt0.ok());
  CalibrationData data;
  for (int s = 0; s < 3; ++s) data.windows.push_back(Sampled(**rt0, 64, 30 + s));
  const auto ids = Sampled(**rt0, 128, 777);
  auto subs = FindOnnxSublayers(*onnx);
  ASSERT_TRUE(subs.ok()) << subs.status();
  ASSERT_EQ(subs->size(), 10u);
  for (size_t i = 0; i < subs->size(); ++i) {
    EXPECT_EQ((*subs)[i].attention, i % 2 == 0) << i;
    EXPECT_EQ((*subs)[i].block, static_cast<int>(i / 2)) << i;
    EXPECT_GT((*subs)[i].params, 0) << i;
  }
  const size_t nodes_before = OnnxModelProto(*onnx)->graph().node_size();
  const size_t tensors_before = onnx->tensors.names().size();
  const std::string pipeline = "remove-layers-finercut{ratio=0.4,samples=3}";
  auto ra = testing::RunPipeline(*onnx, pipeline, &data);
  ASSERT_TRUE(ra.ok()) << ra.status();
  auto rb = testing::RunPipeline(*st, pipeline, &data);
  ASSERT_TRUE(rb.ok()) << rb.status();
  const auto ma = nlohmann::json::parse(onnx->metadata.at("compress.finercut"));
  const auto mb = nlohmann::json::parse(st->metadata.at("compress.finercut"));
  ASSERT_EQ(ma["removal_order"].size(), 4u);
  for (size_t i = 0; i < 4; ++i) {
    EXPECT_EQ(ma["removal_order"][i]["teacher_block"], mb["removal_order"][i]["teacher_block"]) << i;
    EXPECT_EQ(ma["removal_order"][i]["sublayer"], mb["removal_order"][i]["sublayer"]) << i;
    EXPECT_EQ(ma["removal_order"][i]["parameters"], mb["removal_order"][i]["parameters"]) << i;
    const double a = ma["removal_order"][i]["score"], b = mb["removal_order"][i]["score"];
    EXPECT_NEAR(a, b, 1e-4 * b + 1e-7) << i;
  }
  EXPECT_EQ(ma["student"], mb["student"]);
  EXPECT_LT(static_cast<size_t>(OnnxModelProto(*onnx)->graph().node_size()), nodes_before);
  EXPECT_LT(onnx->tensors.names().size(), tensors_before);
  // Written and read back: the ONNX checker passes and the logits match the LLM runtime's on
  // the safetensors student.
  const std::string dir = ::testing::TempDir() + "/finercut_onnx";
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  ASSERT_TRUE(WriteOnnx(*onnx, dir, "model.onnx", {}).ok());
  ASSERT_TRUE(CheckOnnxFile(dir + "/model.onnx").ok());
  auto back = LoadModel(dir + "/model.onnx");
  ASSERT_TRUE(back.ok()) << back.status();
  auto interp = Interpreter::Create(*back);
  ASSERT_TRUE(interp.ok()) << interp.status();
  auto nll_onnx = OnnxTokenNlls(**interp, ids);
  ASSERT_TRUE(nll_onnx.ok()) << nll_onnx.status();
  auto rt = LlamaRuntime::Create(*st);
  ASSERT_TRUE(rt.ok());
  auto logits = (*rt)->Forward(ids);
  ASSERT_TRUE(logits.ok());
  for (size_t t = 0; t + 1 < ids.size(); ++t) {
    const auto row = logits->row(static_cast<Eigen::Index>(t));
    const double mx = row.maxCoeff();
    const double lse = mx + std::log((row.array() - static_cast<float>(mx)).exp().cast<double>().sum());
    EXPECT_NEAR((*nll_onnx)[t], lse - row[ids[t + 1]], 1e-4) << t;
  }
}

// Runs `pipeline` on stories260K's ONNX export and on its safetensors checkpoint, writes the
// ONNX result and reads it back (checker passes), and expects its next-token NLLs to equal
// the LLM runtime's on the pruned checkpoint within 1e-4 and to differ from the dense
// model's. Returns the pruned ONNX model and its report.
std::pair<Model, RunReport> PruneBothFormats(const std::string& pipeline, const std::string& tag,
                                             const std::string& onnx_path = SharedModel("stories260K/model.onnx")) {
  auto st = LoadModel(SharedModel("stories260K"));
  auto onnx = LoadModel(onnx_path);
  EXPECT_TRUE(st.ok() && onnx.ok());
  auto rt0 = LlamaRuntime::Create(*st);
  EXPECT_TRUE(rt0.ok());
  const auto ids = Sampled(**rt0, 96, 4321);
  auto dense = (*rt0)->TokenNlls(ids);
  auto ra = testing::RunPipeline(*onnx, pipeline, nullptr);
  EXPECT_TRUE(ra.ok()) << ra.status();
  auto rb = testing::RunPipeline(*st, pipeline, nullptr);
  EXPECT_TRUE(rb.ok()) << rb.status();
  const std::string dir = ::testing::TempDir() + "/" + tag;
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  EXPECT_TRUE(WriteOnnx(*onnx, dir, "model.onnx", {}).ok());
  EXPECT_TRUE(CheckOnnxFile(dir + "/model.onnx").ok());
  auto back = LoadModel(dir + "/model.onnx");
  EXPECT_TRUE(back.ok()) << back.status();
  auto interp = Interpreter::Create(*back);
  EXPECT_TRUE(interp.ok()) << interp.status();
  auto nll_onnx = OnnxTokenNlls(**interp, ids);
  EXPECT_TRUE(nll_onnx.ok()) << nll_onnx.status();
  auto rt = LlamaRuntime::Create(*st);
  EXPECT_TRUE(rt.ok()) << rt.status();
  auto nll_st = (*rt)->TokenNlls(ids);
  EXPECT_TRUE(nll_st.ok() && dense.ok());
  EXPECT_EQ(nll_onnx->size(), nll_st->size());
  double changed = 0;
  for (size_t t = 0; t < nll_st->size() && t < nll_onnx->size(); ++t) {
    EXPECT_NEAR((*nll_onnx)[t], (*nll_st)[t], 1e-4) << t;
    changed = std::max(changed, std::abs((*nll_st)[t] - (*dense)[t]));
  }
  EXPECT_GT(changed, 1e-3) << "pruning must change the model";
  return {*std::move(onnx), *std::move(ra)};
}

std::vector<int64_t> I64Values(const Model& m, const std::string& name) {
  const Tensor& t = m.tensors.at(name);
  std::vector<int64_t> v(t.numel());
  std::memcpy(v.data(), (*t.Data())->data(), v.size() * sizeof(int64_t));
  return v;
}

// Head pruning (KV groups under GQA: 8 query / 4 key-value heads, ratio 0.25 keeps 3
// groups) slices the same heads as on the checkpoint and rewrites the head counts in the
// shared Reshape constants and the head-repeat Gather indices.
TEST(OnnxModel, HeadPruningAcrossFormats) {
  REQUIRE_SHARED(SharedModel("stories260K/model.onnx"));
  auto [onnx, report] = PruneBothFormats("prune-structured{target=heads,ratio=0.25}", "heads_onnx");
  EXPECT_EQ(report.passes[0].stats.at("attention_heads_after"), 6);
  EXPECT_EQ(report.passes[0].stats.at("kv_heads_after"), 3);
  // The view is derived again from the edited graph: five blocks with the new head counts.
  EXPECT_EQ(onnx.arch.blocks.size(), 5u);
  EXPECT_EQ(onnx.arch.num_heads, 6);
  EXPECT_EQ(onnx.arch.num_kv_heads, 3);
  EXPECT_EQ(onnx.arch.head_dim, 8);
  EXPECT_EQ(I64Values(onnx, "shp_q"), (std::vector<int64_t>{1, -1, 6, 8}));
  EXPECT_EQ(I64Values(onnx, "shp_k"), (std::vector<int64_t>{1, -1, 3, 8}));
  EXPECT_EQ(I64Values(onnx, "shp_o"), (std::vector<int64_t>{1, -1, 48}));
  EXPECT_EQ(I64Values(onnx, "kv_rep"), (std::vector<int64_t>{0, 0, 1, 1, 2, 2}));
}

// Neuron pruning keeps the same FFN neurons as on the checkpoint (gate/up columns, down rows).
TEST(OnnxModel, NeuronPruningAcrossFormats) {
  REQUIRE_SHARED(SharedModel("stories260K/model.onnx"));
  auto [onnx, report] = PruneBothFormats("prune-structured{target=neurons,ratio=0.3}", "neurons_onnx");
  EXPECT_EQ(report.passes[0].stats.at("intermediate_size_before"), 172);
  EXPECT_EQ(report.passes[0].stats.at("intermediate_size_after"), 120);
  EXPECT_EQ(onnx.arch.blocks.size(), 5u);
  EXPECT_EQ(onnx.arch.intermediate_size, 120);
}

// An FFN with a per-neuron constant between its products (a Mul by a [172] vector of ones
// before each down projection, inserted here): neuron pruning cuts that constant with the
// neurons, and the pruned graph still computes what the pruned checkpoint does.
TEST(OnnxModel, NeuronPruningCutsPerNeuronConstants) {
  REQUIRE_SHARED(SharedModel("stories260K/model.onnx"));
  onnx::ModelProto proto;
  {
    std::ifstream in(SharedModel("stories260K/model.onnx"), std::ios::binary);
    ASSERT_TRUE(proto.ParseFromIstream(&in));
  }
  auto* g = proto.mutable_graph();
  std::vector<onnx::NodeProto> nodes(g->node().begin(), g->node().end());
  g->clear_node();
  int scaled = 0;
  for (onnx::NodeProto& n : nodes) {
    if (n.op_type() == "MatMul" && n.input(1).find("down_proj") != std::string::npos) {
      const std::string c = "neuron_scale_" + std::to_string(scaled), y = "scaled_" + std::to_string(scaled);
      auto* init = g->add_initializer();
      init->set_name(c);
      init->set_data_type(onnx::TensorProto::FLOAT);
      init->add_dims(172);
      for (int j = 0; j < 172; ++j) init->add_float_data(1.f);
      auto* mul = g->add_node();
      mul->set_op_type("Mul");
      mul->set_name("scale_" + std::to_string(scaled++));
      mul->add_input(n.input(0));
      mul->add_input(c);
      mul->add_output(y);
      n.set_input(0, y);
    }
    *g->add_node() = n;
  }
  ASSERT_EQ(scaled, 5);
  const std::string path = ::testing::TempDir() + "/per_neuron.onnx";
  {
    std::ofstream out(path, std::ios::binary);
    ASSERT_TRUE(proto.SerializeToOstream(&out));
  }
  auto [onnx, report] = PruneBothFormats("prune-structured{target=neurons,ratio=0.3}", "per_neuron_onnx", path);
  EXPECT_EQ(onnx.arch.intermediate_size, 120);
  for (int b = 0; b < 5; ++b)
    EXPECT_EQ(onnx.tensors.at("neuron_scale_" + std::to_string(b)).shape(), (Shape{120})) << b;
}

// BypassGraphValues on an IR 3 graph, which also lists its initializers as graph inputs: the
// bypassed branch's node, initializer, store tensor and graph input all go, a bypassed graph
// output becomes an Identity, and the graph runs with only its real input.
TEST(OnnxModel, BypassDropsTheBranchAndItsInitializerInputs) {
  onnx::ModelProto m;
  m.set_ir_version(3);
  m.add_opset_import()->set_version(9);
  auto* g = m.mutable_graph();
  g->set_name("residual");
  auto io = [](onnx::ValueInfoProto* vi, const std::string& name) {
    vi->set_name(name);
    auto* t = vi->mutable_type()->mutable_tensor_type();
    t->set_elem_type(onnx::TensorProto::FLOAT);
    for (int64_t d : {2, 4}) t->mutable_shape()->add_dim()->set_dim_value(d);
  };
  io(g->add_input(), "x");
  io(g->add_input(), "w");
  io(g->add_output(), "r");
  auto* w = g->add_initializer();
  w->set_name("w");
  w->set_data_type(onnx::TensorProto::FLOAT);
  w->add_dims(4), w->add_dims(4);
  for (int i = 0; i < 16; ++i) w->add_float_data(0.1f * i);
  auto* mm = g->add_node();
  mm->set_op_type("MatMul"), mm->add_input("x"), mm->add_input("w"), mm->add_output("y");
  auto* add = g->add_node();
  add->set_op_type("Add"), add->add_input("x"), add->add_input("y"), add->add_output("r");
  testing::ScratchDir d;
  const std::string path = (d / "residual.onnx");
  {
    std::ofstream f(path, std::ios::binary);
    ASSERT_TRUE(m.SerializeToOstream(&f));
  }
  auto model = LoadModel(path);
  ASSERT_TRUE(model.ok()) << model.status();
  ASSERT_TRUE(model->tensors.contains("w"));
  auto erased = BypassGraphValues(*model, {{"r", "x"}});
  ASSERT_TRUE(erased.ok()) << erased.status();
  EXPECT_EQ(*erased, std::vector<std::string>{"w"});
  EXPECT_FALSE(model->tensors.contains("w"));
  const auto& graph = OnnxModelProto(*model)->graph();
  ASSERT_EQ(graph.input_size(), 1);
  EXPECT_EQ(graph.input(0).name(), "x");
  ASSERT_EQ(graph.node_size(), 1);
  EXPECT_EQ(graph.node(0).op_type(), "Identity");
  auto interp = Interpreter::Create(*model);
  ASSERT_TRUE(interp.ok()) << interp.status();
  std::vector<float> x = {1, 2, 3, 4, 5, 6, 7, 8};
  auto out = (*interp)->Run({{"x", onnxrt::MakeValue(DType::kF32, x, {2, 4})}});
  ASSERT_TRUE(out.ok()) << out.status();
  const auto r = out->at("r").span<float>();
  EXPECT_EQ(std::vector<float>(r.begin(), r.end()), x);
}

// A small CNN: x [1, 3, 6, 6] -> Conv (W1 [4, 3, 3, 3], bias) -> Relu -> Conv (W2 [2, 4, 1, 1]) ->
// Reshape [1, 32] -> MatMul (B [32, 5]) -> y, written at `opset`.
std::string WriteSmallCnn(const std::filesystem::path& dir, int opset) {
  onnx::ModelProto m;
  m.set_ir_version(7);
  m.add_opset_import()->set_version(opset);
  auto* g = m.mutable_graph();
  g->set_name("cnn");
  auto io = [](onnx::ValueInfoProto* vi, const std::string& name, std::vector<int64_t> dims) {
    vi->set_name(name);
    auto* t = vi->mutable_type()->mutable_tensor_type();
    t->set_elem_type(onnx::TensorProto::FLOAT);
    for (int64_t d : dims) t->mutable_shape()->add_dim()->set_dim_value(d);
  };
  io(g->add_input(), "x", {1, 3, 6, 6});
  io(g->add_output(), "y", {1, 5});
  std::mt19937 rng(opset);
  std::normal_distribution<float> nd;
  auto init = [&](const std::string& name, std::vector<int64_t> dims, float scale) {
    auto* w = g->add_initializer();
    w->set_name(name);
    w->set_data_type(onnx::TensorProto::FLOAT);
    int64_t n = 1;
    for (int64_t d : dims) w->add_dims(d), n *= d;
    for (int64_t i = 0; i < n; ++i) w->add_float_data(scale * nd(rng) * (i % 7 == 0 ? 4.0f : 1.0f));
  };
  init("w1", {4, 3, 3, 3}, 0.3f);
  init("b1", {4}, 0.1f);
  init("w2", {2, 4, 1, 1}, 0.5f);
  init("fc", {32, 5}, 0.2f);
  auto* shape = g->add_initializer();
  shape->set_name("flat");
  shape->set_data_type(onnx::TensorProto::INT64);
  shape->add_dims(2);
  shape->add_int64_data(1), shape->add_int64_data(32);
  auto node = [&](const std::string& op, std::vector<std::string> in, const std::string& out) {
    auto* n = g->add_node();
    n->set_op_type(op);
    n->set_name(op + "_" + out);
    for (auto& i : in) n->add_input(i);
    n->add_output(out);
    return n;
  };
  node("Conv", {"x", "w1", "b1"}, "c1");
  node("Relu", {"c1"}, "r1");
  node("Conv", {"r1", "w2"}, "c2");
  node("Reshape", {"c2", "flat"}, "f");
  node("MatMul", {"f", "fc"}, "y");
  const std::string path = dir / ("cnn" + std::to_string(opset) + ".onnx");
  std::ofstream f(path, std::ios::binary);
  m.SerializeToOstream(&f);
  return path;
}

// Convolution kernels are quantized as [M, rest] with one scale per output channel (a group
// size is not applied to them, and the report says so), and written for any opset: int8 codes
// + DequantizeLinear on axis 0 from opset 13, Cast / Mul by the broadcast scales below it. The
// written graph computes exactly what the quantized model in memory computes.
TEST(OnnxModel, ConvKernelsAreQuantizedPerOutputChannelAtAnyOpset) {
  testing::ScratchDir d;
  std::vector<float> x(3 * 36);
  for (size_t i = 0; i < x.size(); ++i) x[i] = std::sin(0.37f * static_cast<float>(i));
  auto run = [&](const Model& m) -> std::vector<float> {
    auto interp = Interpreter::Create(m);
    EXPECT_TRUE(interp.ok()) << interp.status();
    if (!interp.ok()) return {};
    auto out = (*interp)->Run({{"x", onnxrt::MakeValue(DType::kF32, x, {1, 3, 6, 6})}});
    EXPECT_TRUE(out.ok()) << out.status();
    if (!out.ok()) return {};
    const auto y = out->at("y").span<float>();
    return {y.begin(), y.end()};
  };
  for (int opset : {9, 11, 13, 17}) {
    for (const std::string pipeline : {"quantize-int8", "quantize-int{bits=4,group-size=16,symmetric=false}"}) {
      SCOPED_TRACE(pipeline + " at opset " + std::to_string(opset));
      const std::string path = WriteSmallCnn(d.path(), opset);
      auto dense = LoadModel(path);
      ASSERT_TRUE(dense.ok()) << dense.status();
      const std::vector<float> y0 = run(*dense);
      Model m = *dense;
      auto report = testing::RunPipeline(m, pipeline);
      ASSERT_TRUE(report.ok()) << report.status();
      const PassReport& p = report->passes[0];
      std::set<std::string> changed;
      for (const auto& t : p.tensors) changed.insert(t.name);
      const bool int8 = pipeline == "quantize-int8";
      // Every weight is taken; with group-size 16, fc (32 inputs) is grouped, the kernels per channel.
      EXPECT_EQ(changed, (std::set<std::string>{"w1", "w2", "fc"}));
      ASSERT_TRUE(m.tensors.at("w1").quant());
      EXPECT_EQ(m.tensors.at("w1").shape(), (Shape{4, 3, 3, 3}));
      EXPECT_EQ(m.tensors.at("w1").quant()->channels, 4);
      EXPECT_EQ(m.tensors.at("w1").quant()->group_size, 27);
      bool noted = false;
      for (const auto& n : p.notes) noted = noted || n.find("2 convolution kernels quantized with one scale per output channel") != std::string::npos;
      EXPECT_EQ(noted, !int8);
      const std::vector<float> yq = run(m);
      ASSERT_EQ(yq.size(), 5u);
      double err = 0, ref = 0;
      for (size_t i = 0; i < yq.size(); ++i) err = std::max(err, std::fabs(double(yq[i]) - y0[i])), ref = std::max(ref, std::fabs(double(y0[i])));
      EXPECT_GT(err, 0) << "the weights really changed";
      EXPECT_LT(err, (int8 ? 0.02 : 0.5) * ref);  // a toy with outliers: 4 bits per channel is coarse
      // fc's 4-bit groups have a form only from opset 13 (MatMulNBits); per-channel weights any opset.
      const std::filesystem::path out = d / ("q" + std::to_string(opset) + (int8 ? "a" : "b") + ".onnx");
      auto saved = SaveModel(m, out, {});
      if (!int8 && opset < 13) {
        ASSERT_FALSE(saved.ok());
        EXPECT_NE(saved.status().message().find("'fc'"), std::string::npos) << saved.status();
        EXPECT_NE(saved.status().message().find("group-size=0"), std::string::npos) << saved.status();
        continue;
      }
      ASSERT_TRUE(saved.ok()) << saved.status();
      EXPECT_TRUE(CheckOnnxFile(out).ok()) << CheckOnnxFile(out);
      onnx::ModelProto proto;
      {
        std::ifstream f(out, std::ios::binary);
        ASSERT_TRUE(proto.ParseFromIstream(&f));
      }
      EXPECT_EQ(proto.opset_import(0).version(), opset) << "the opset is kept";
      int dq = 0, mul = 0, nbits = 0;
      for (const auto& n : proto.graph().node()) {
        dq += n.op_type() == "DequantizeLinear";
        nbits += n.op_type() == "MatMulNBits";
        mul += n.op_type() == "Mul" && n.name().starts_with("compress_dequantize_");
      }
      EXPECT_EQ(dq, opset >= 13 ? (int8 ? 3 : 2) : 0);
      EXPECT_EQ(mul, opset >= 13 ? 0 : 3);
      EXPECT_EQ(nbits, int8 ? 0 : 1);
      auto back = LoadModel(out.string());
      ASSERT_TRUE(back.ok()) << back.status();
      const std::vector<float> yw = run(*back);
      ASSERT_EQ(yw.size(), yq.size());
      for (size_t i = 0; i < yq.size(); ++i) {
        // the same values; MatMulNBits (fc in 4-bit groups) sums its products in another order
        if (nbits == 0) {
          EXPECT_EQ(yw[i], yq[i]) << "the written graph computes what the quantized model computes";
        } else {
          EXPECT_NEAR(yw[i], yq[i], 1e-5 * ref);
        }
      }
    }
  }
}

// GPTQ on convolution kernels: the kernel [M, C, k, k] as [M, C k k] against its im2col
// statistics (the same column order), one scale per output channel; it beats round-to-nearest on
// the output error it minimizes, and the written graph computes what the model in memory does.
TEST(OnnxModel, GptqQuantizesConvKernelsFromTheirIm2colStatistics) {
  testing::ScratchDir d;
  auto m = LoadModel(WriteSmallCnn(d.path(), 17));
  ASSERT_TRUE(m.ok()) << m.status();
  auto interp = Interpreter::Create(*m);
  ASSERT_TRUE(interp.ok());
  for (int s = 0; s < 8; ++s) {
    InputSpec spec;
    spec.seed = 70 + s;
    auto feeds = GenerateInputs(**interp, spec);
    ASSERT_TRUE(feeds.ok()) << feeds.status();
    std::filesystem::create_directories(d.path() / "calib" / fmt::format("s{}", s));
    onnx::TensorProto t;
    onnxrt::ToTensorProto(feeds->at("x"), "x", t);
    testing::WriteFile(d.path() / "calib" / fmt::format("s{}/input_0.pb", s), t.SerializeAsString());
  }
  CalibrationOptions opts;
  opts.file = (d.path() / "calib").string();
  opts.samples = 8;
  auto data = LoadCalibration(opts, "");
  ASSERT_TRUE(data.ok()) << data.status();
  auto report = testing::RunPipeline(*m, "quantize-gptq{bits=4,group-size=16}", &*data);
  ASSERT_TRUE(report.ok()) << report.status();
  const PassReport& p = report->passes[0];
  std::map<std::string, const TensorChange*> changed;
  for (const auto& t : p.tensors) changed[t.name] = &t;
  ASSERT_EQ(changed.size(), 3u);
  for (const char* k : {"w1", "w2"}) {
    SCOPED_TRACE(k);
    ASSERT_TRUE(changed.count(k));
    const Tensor& t = m->tensors.at(k);
    ASSERT_TRUE(t.quant());
    EXPECT_EQ(t.shape().size(), 4u);
    EXPECT_EQ(t.quant()->group_size, t.numel() / t.shape()[0]) << "one scale per output channel";
    const auto& mt = changed[k]->metrics;
    std::printf("%s: rel_output_error gptq %.6g rtn %.6g\n", k, mt.at("rel_output_error"), mt.at("rel_output_error_rtn"));
    // w2 has 4 inputs per channel: its error feedback has little room (equal on this data)
    EXPECT_LE(mt.at("rel_output_error"), (std::string(k) == "w1" ? 0.9 : 1.0) * mt.at("rel_output_error_rtn"));
  }
  EXPECT_EQ(m->tensors.at("fc").quant()->group_size, 16);
  bool noted = false;
  for (const auto& n : p.notes) noted = noted || n.find("2 convolution kernels quantized with one scale per output channel") != std::string::npos;
  EXPECT_TRUE(noted);
  auto run = [&](const Model& model) {
    auto it = Interpreter::Create(model);
    EXPECT_TRUE(it.ok());
    std::vector<float> x(3 * 36);
    for (size_t i = 0; i < x.size(); ++i) x[i] = std::cos(0.21f * static_cast<float>(i));
    auto out = (*it)->Run({{"x", onnxrt::MakeValue(DType::kF32, x, {1, 3, 6, 6})}});
    EXPECT_TRUE(out.ok()) << out.status();
    const auto y = out->at("y").span<float>();
    return std::vector<float>(y.begin(), y.end());
  };
  const std::vector<float> yq = run(*m);
  ASSERT_TRUE(SaveModel(*m, d / "gptq.onnx", {}).ok());
  EXPECT_TRUE(CheckOnnxFile(d / "gptq.onnx").ok());
  auto back = LoadModel(d / "gptq.onnx");
  ASSERT_TRUE(back.ok()) << back.status();
  const std::vector<float> yw = run(*back);
  ASSERT_EQ(yw.size(), yq.size());
  double scale = 0;
  for (float v : yq) scale = std::max(scale, std::fabs(double(v)));
  for (size_t i = 0; i < yq.size(); ++i) EXPECT_NEAR(yw[i], yq[i], 1e-5 * scale);  // fc: MatMulNBits' order
}

TEST(OnnxModel, CalibratedPassesRunOnOnnxGraphs) {
  REQUIRE_SHARED(SharedModel("stories260K/model.onnx"));
  auto samples = SampleStories(10, 999);
  ASSERT_TRUE(samples.ok()) << samples.status();
  const CalibrationData& data = samples->data;
  const std::vector<int32_t>& eval_ids = samples->ids;
  const std::vector<double>* base_nll = &samples->dense_nll;
  std::map<std::string, double> mean_nll;
  for (const std::string pipeline :
       {"quantize-gptq{bits=4,group-size=0}", "quantize-int{bits=4,group-size=0}", "prune-sparsegpt{sparsity=0.5}",
        "prune-magnitude{sparsity=0.5,score=wanda}", "prune-magnitude{sparsity=0.5}", "prune-nm{n=2,m=4,score=wanda}",
        "prune-nm{n=2,m=4}", "llm-int8{threshold=2,activations=none}"}) {
    SCOPED_TRACE(pipeline);
    auto m = LoadModel(SharedModel("stories260K/model.onnx"));
    ASSERT_TRUE(m.ok());
    auto report = testing::RunPipeline(*m, pipeline, &data);
    ASSERT_TRUE(report.ok()) << report.status();
    ASSERT_FALSE(report->passes.empty());
    EXPECT_GE(report->passes[0].tensors.size(), 30u);
    for (const auto& t : report->passes[0].tensors) {
      // Calibrated methods report their output error on the calibration data; it is small
      // and, for GPTQ, below round-to-nearest's on the same grid.
      if (t.metrics.count("rel_output_error")) {
        EXPECT_LT(t.metrics.at("rel_output_error"), 0.5) << t.name;
      }
      if (t.metrics.count("rel_output_error_rtn")) {
        EXPECT_LE(t.metrics.at("rel_output_error"), t.metrics.at("rel_output_error_rtn") * 1.0001) << t.name;
      }
    }
    auto interp = Interpreter::Create(*m);
    ASSERT_TRUE(interp.ok());
    auto nll = OnnxTokenNlls(**interp, eval_ids);
    ASSERT_TRUE(nll.ok());
    double a = 0, b = 0;
    for (size_t t = 0; t < nll->size(); ++t) {
      a += (*nll)[t];
      b += (*base_nll)[t];
    }
    std::printf("%s: mean nll %.4f vs %.4f dense\n", pipeline.c_str(), a / nll->size(), b / nll->size());
    mean_nll[pipeline] = a / nll->size();
    mean_nll["dense"] = b / nll->size();
  }
  // Calibrated methods beat their uncalibrated counterparts on the ONNX graph, as they do on
  // safetensors checkpoints.
  EXPECT_LT(mean_nll["quantize-gptq{bits=4,group-size=0}"], mean_nll["quantize-int{bits=4,group-size=0}"]);
  EXPECT_LT(mean_nll["prune-sparsegpt{sparsity=0.5}"], mean_nll["prune-magnitude{sparsity=0.5}"]);
  EXPECT_LT(mean_nll["prune-magnitude{sparsity=0.5,score=wanda}"], mean_nll["prune-magnitude{sparsity=0.5}"]);
  EXPECT_LT(mean_nll["prune-nm{n=2,m=4,score=wanda}"], mean_nll["prune-nm{n=2,m=4}"]);
  EXPECT_LT(mean_nll["llm-int8{threshold=2,activations=none}"], mean_nll["dense"] * 1.01);
}

// quantize-w8a8 on stories260K's ONNX export: `pipeline` quantizes the inputs of every
// MatMul; our interpreter simulates them, the written graph computes them with `op` nodes
// (and reads back with no input_quant: the graph itself carries it), and both give the same
// next-token NLLs, a little above the dense model's.
void ExpectW8A8SimulatedAsWritten(const std::string& pipeline, const std::string& op) {
  auto samples = SampleStories(30, 777);
  ASSERT_TRUE(samples.ok()) << samples.status();
  const CalibrationData& data = samples->data;
  const std::vector<int32_t>& ids = samples->ids;
  const std::vector<double>* base = &samples->dense_nll;
  auto dense = LoadModel(SharedModel("stories260K/model.onnx"));
  ASSERT_TRUE(dense.ok());
  Model m = *dense;
  auto report = testing::RunPipeline(m, pipeline, &data);
  ASSERT_TRUE(report.ok()) << report.status();
  const size_t layers = m.input_quant.size();
  EXPECT_GE(layers, 30u);
  auto sim = Interpreter::Create(m);
  ASSERT_TRUE(sim.ok());
  auto sim_nll = OnnxTokenNlls(**sim, ids);
  ASSERT_TRUE(sim_nll.ok());

  testing::ScratchDir d;
  ASSERT_TRUE(SaveModel(m, d / "w8a8.onnx", {}).ok());
  ASSERT_TRUE(CheckOnnxFile(d / "w8a8.onnx").ok());
  auto back = LoadModel(d / "w8a8.onnx");
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_TRUE(back->input_quant.empty()) << "the graph itself carries the input quantization";
  int quantize_nodes = 0;
  const GraphView* g = ModelGraph(*back);
  for (int i = 0; i < g->node_size(); ++i) quantize_nodes += g->node(i).op_type() == op;
  EXPECT_EQ(static_cast<size_t>(quantize_nodes), layers);
  if (op == "DynamicQuantizeLinear") {
    // Every reader is a MatMul of int8 per-column codes: the product runs in integers
    // (MatMulInteger, then the scales), and no weight is dequantized any more.
    int integer = 0, dequantize = 0;
    for (int i = 0; i < g->node_size(); ++i) {
      integer += g->node(i).op_type() == "MatMulInteger";
      dequantize += g->node(i).op_type() == "DequantizeLinear";
    }
    EXPECT_EQ(static_cast<size_t>(integer), layers);
    EXPECT_EQ(dequantize, 0);
  }
  auto written = Interpreter::Create(*back);
  ASSERT_TRUE(written.ok());
  auto written_nll = OnnxTokenNlls(**written, ids);
  ASSERT_TRUE(written_nll.ok());
  double a = 0, b = 0, c = 0, worst = 0;
  ASSERT_EQ(sim_nll->size(), base->size());
  ASSERT_EQ(written_nll->size(), base->size());
  for (size_t t = 0; t < base->size(); ++t) {
    a += (*base)[t];
    b += (*sim_nll)[t];
    c += (*written_nll)[t];
    worst = std::max(worst, std::fabs((*sim_nll)[t] - (*written_nll)[t]));
  }
  std::printf("%s: mean nll %.5f (simulated %.5f, written %.5f), worst token difference %.2g\n", pipeline.c_str(),
              a / base->size(), b / base->size(), c / base->size(), worst);
  // Same int8 codes either way; only the order of float operations around them differs.
  EXPECT_LT(worst, 1e-3);
  EXPECT_NE(b, a) << "the inputs are really quantized";
  EXPECT_LT(b, a * 1.05) << "8-bit weights and inputs cost little";
}

// Static inputs (calibrated, entropy estimator): QuantizeLinear/DequantizeLinear pairs.
TEST(OnnxModel, W8A8StaticInputsAreSimulatedAndWrittenAsQdq) {
  REQUIRE_SHARED(SharedModel("stories260K/model.onnx"));
  ExpectW8A8SimulatedAsWritten("quantize-w8a8{activations=static,estimator=entropy}", "QuantizeLinear");
}

// Dynamic inputs, ONNX Runtime's form: DynamicQuantizeLinear (uint8, zero point per tensor)
// then MatMulInteger on the int8 weight codes. ONNX has no per-token or FP8 input form we write: refused.
TEST(OnnxModel, W8A8DynamicInputsAreSimulatedAndWrittenAsDynamicQuantizeLinear) {
  REQUIRE_SHARED(SharedModel("stories260K/model.onnx"));
  ExpectW8A8SimulatedAsWritten("quantize-w8a8", "DynamicQuantizeLinear");
  auto dense = LoadModel(SharedModel("stories260K/model.onnx"));
  ASSERT_TRUE(dense.ok());
  for (const char* refused : {"quantize-w8a8{type=fp8}", "quantize-w8a8{granularity=token}"}) {
    Model m = *dense;
    auto r = testing::RunPipeline(m, refused, nullptr);
    ASSERT_FALSE(r.ok()) << refused;
    EXPECT_NE(r.status().message().find("granularity=auto or tensor"), std::string::npos) << r.status();
  }
}

// The same pipeline on stories260K's ONNX export and on its safetensors checkpoint gives the
// same model: uncalibrated int4 exactly, and mixed precision (calibrated sensitivities from
// the two drivers) picks the same formats, so next-token NLLs agree to float rounding.
TEST(OnnxModel, SamePipelineSameModelAcrossFormats) {
  REQUIRE_SHARED(SharedModel("stories260K/model.onnx"));
  auto st0 = LoadModel(SharedModel("stories260K"));
  ASSERT_TRUE(st0.ok());
  auto rt0 = LlamaRuntime::Create(*st0);
  ASSERT_TRUE(rt0.ok());
  CalibrationData data;
  for (int s = 0; s < 4; ++s) data.windows.push_back(Sampled(**rt0, 96, 20 + s));
  const auto ids = Sampled(**rt0, 160, 4242);
  for (const std::string pipeline : {"quantize-int{bits=4,group-size=0}", "mixed-precision{budget=4.5}"}) {
    SCOPED_TRACE(pipeline);
    auto onnx = LoadModel(SharedModel("stories260K/model.onnx"));
    auto st = LoadModel(SharedModel("stories260K"));
    ASSERT_TRUE(onnx.ok() && st.ok());
    ASSERT_TRUE(testing::RunPipeline(*onnx, pipeline, &data).ok());
    ASSERT_TRUE(testing::RunPipeline(*st, pipeline, &data).ok());
    auto interp = Interpreter::Create(*onnx);
    auto rt = LlamaRuntime::Create(*st);
    ASSERT_TRUE(interp.ok() && rt.ok());
    auto a = OnnxTokenNlls(**interp, ids);
    auto b = (*rt)->TokenNlls(ids);
    ASSERT_TRUE(a.ok() && b.ok());
    double sa = 0, sb = 0;
    for (size_t t = 0; t < b->size(); ++t) {
      sa += (*a)[t];
      sb += (*b)[t];
    }
    EXPECT_NEAR(sa / sb, 1.0, 1e-4) << "mean nll onnx " << sa / b->size() << " vs safetensors " << sb / b->size();
  }
}

// A non-LM graph calibrates from a folder of input tensors (ONNX test-data layout): Magika's
// int32 byte input, four samples written as input_0.pb in one subfolder each.
TEST(OnnxModel, CalibratesFromATensorFolder) {
  const std::string path = SharedModel("onnx/magika-standard-v3-3.onnx");
  REQUIRE_SHARED(path);
  auto m = LoadModel(path);
  ASSERT_TRUE(m.ok());
  auto interp = Interpreter::Create(*m);
  ASSERT_TRUE(interp.ok());
  testing::ScratchDir d;
  for (int s = 0; s < 4; ++s) {
    InputSpec spec;
    spec.seed = 50 + s;
    auto feeds = GenerateInputs(**interp, spec);
    ASSERT_TRUE(feeds.ok()) << feeds.status();
    std::filesystem::create_directories(d / fmt::format("sample{}", s));
    onnx::TensorProto t;
    const auto& in = (*interp)->inputs()[0];
    onnxrt::ToTensorProto(feeds->at(in.name), in.name, t);
    testing::WriteFile(d / fmt::format("sample{}/input_0.pb", s), t.SerializeAsString());
  }
  CalibrationOptions opts;
  opts.file = d.path().string();
  opts.samples = 3;  // at most 3 of the 4 folders
  auto data = LoadCalibration(opts, "");
  ASSERT_TRUE(data.ok()) << data.status();
  ASSERT_EQ(data->tensor_sets.size(), 3u);
  std::map<std::string, LinearStats> stats;
  ASSERT_TRUE(RunCalibration(*m, *data, {false, false},
                             [&](int, const std::map<std::string, LinearStats>& s) {
                               for (const auto& [k, v] : s) stats[k] = v;
                               return absl::OkStatus();
                             })
                  .ok());
  EXPECT_EQ(stats.size(), m->arch.AllLinears().size()) << "every weight-bearing node observed";
  for (const auto& [name, st] : stats) {
    EXPECT_GT(st.rows, 0) << name;
    EXPECT_EQ(st.rows % 3, 0) << name << ": rows come in equal parts from the 3 samples";
  }
  // The same folder drives a calibrated pass end to end.
  auto report = testing::RunPipeline(*m, "llm-int8{threshold=3,activations=none}", &*data);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_GT(report->passes[0].stats.at("tensors_quantized"), 0);
  // A folder whose tensors do not fit the graph is refused with the file named.
  testing::WriteFile(d / "sample0/input_0.pb", "not a tensor");
  opts.samples = 4;
  auto bad = LoadCalibration(opts, "");
  ASSERT_TRUE(bad.ok());
  auto st = RunCalibration(*m, *bad, {false, false}, [](int, const auto&) { return absl::OkStatus(); });
  EXPECT_FALSE(st.ok());
  EXPECT_NE(st.message().find("input_0.pb"), std::string::npos) << st;
}

// ONNX MatMul weights are [in, out]: N:M groups run along the input axis, i.e. down columns.
TEST(OnnxModel, NmPruningOfOnnxWeightsGroupsInputs) {
  REQUIRE_SHARED(SharedModel("stories260K/model.onnx"));
  auto m = LoadModel(SharedModel("stories260K/model.onnx"));
  ASSERT_TRUE(m.ok());
  auto report = testing::RunPipeline(*m, "prune-nm{n=2,m=4}");
  ASSERT_TRUE(report.ok()) << report.status();
  int checked = 0;
  for (const auto* l : m->arch.AllLinears()) {
    const Tensor& t = m->tensors.at(l->weight);
    if (t.shape().size() != 2 || l->out_axis != 1 || t.shape()[0] % 4) continue;
    auto w = *t.ToF32();
    const int64_t in = t.shape()[0], out = t.shape()[1];
    bool pruned = false;
    for (const auto& ch : report->passes[0].tensors) pruned |= ch.name == l->weight;
    if (!pruned) continue;
    for (int64_t c = 0; c < out; ++c)
      for (int64_t r0 = 0; r0 < in; r0 += 4) {
        int nz = 0;
        for (int64_t r = r0; r < r0 + 4; ++r) nz += w[r * out + c] != 0.f;
        ASSERT_LE(nz, 2) << l->weight << " column " << c << " rows " << r0;
      }
    ++checked;
  }
  EXPECT_GE(checked, 20);
}

// A head-splitting Reshape whose [heads, head_dim] product overflows int64 is refused as not
// splitting the projection (found by fuzz_onnx: the product was a signed overflow).
TEST(OnnxStructure, HeadShapeWhoseProductOverflowsIsRefused) {
  REQUIRE_SHARED(SharedModel("stories260K/model.onnx"));
  auto m = LoadModel(SharedModel("stories260K/model.onnx"));
  ASSERT_TRUE(m.ok()) << m.status();
  auto atts = DescribeOnnxAttentions(*ModelGraph(*m), *m);
  ASSERT_TRUE(atts.ok()) << atts.status();
  ASSERT_FALSE(atts->empty());
  const std::string q_shape = (*atts)[0].q_shape;
  auto v = ReadI64(m->tensors.at(q_shape));
  ASSERT_TRUE(v.ok() && v->size() >= 2);
  // heads x 8 wraps around to the projection's width: without the overflow check the split
  // would be taken, with 2^61 heads.
  const int64_t width = (*v)[v->size() - 2] * (*v)[v->size() - 1];
  ASSERT_EQ(width % 8, 0);
  (*v)[v->size() - 2] = (int64_t{1} << 61) + width / 8;
  (*v)[v->size() - 1] = 8;
  m->tensors.Set(q_shape, I64Tensor(*v, {static_cast<int64_t>(v->size())}));
  auto bad = DescribeOnnxAttentions(*ModelGraph(*m), *m);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(std::string(bad.status().message()).find("does not split"), std::string::npos) << bad.status();
}

}  // namespace
}  // namespace compress
