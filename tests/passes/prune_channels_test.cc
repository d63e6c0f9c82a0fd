// prune-structured{target=channels} on an ONNX graph built here: Conv -> BatchNorm -> Relu ->
// depthwise Conv -> Relu -> Conv (pruned through), GlobalAveragePool, then MatMul -> Add ->
// Relu -> MatMul (pruned through). The pruned graph must compute exactly what the original
// computes with the removed channels' consumer weights zeroed, and survive a save / reload.
#include <gtest/gtest.h>

#include <random>

#include "formats/model_io.h"
#include "formats/onnx_io.h"
#include "onnx/onnx_pb.h"
#include "runtime/onnx/interpreter.h"
#include "tests/pipeline_util.h"
#include "tests/test_util.h"

namespace compress {
namespace {
using onnxrt::Interpreter;
using onnxrt::Value;

void AddInit(onnx::GraphProto* g, const std::string& name, std::vector<int64_t> dims, std::mt19937& rng,
             float lo = -0.5f, float hi = 0.5f) {
  auto* t = g->add_initializer();
  t->set_name(name);
  t->set_data_type(onnx::TensorProto::FLOAT);
  int64_t n = 1;
  for (int64_t d : dims) {
    t->add_dims(d);
    n *= d;
  }
  std::uniform_real_distribution<float> u(lo, hi);
  for (int64_t i = 0; i < n; ++i) t->add_float_data(u(rng));
}

onnx::NodeProto* AddNode(onnx::GraphProto* g, const std::string& op, std::vector<std::string> in, const std::string& out) {
  auto* n = g->add_node();
  n->set_op_type(op);
  n->set_name(out + "_node");
  for (auto& i : in) n->add_input(i);
  n->add_output(out);
  return n;
}

void IntAttr(onnx::NodeProto* n, const std::string& name, int64_t v) {
  auto* a = n->add_attribute();
  a->set_name(name);
  a->set_type(onnx::AttributeProto::INT);
  a->set_i(v);
}

std::string BuildModel(const testing::ScratchDir& d) {
  std::mt19937 rng(11);
  onnx::ModelProto m;
  m.set_ir_version(8);
  m.add_opset_import()->set_version(17);
  auto* g = m.mutable_graph();
  g->set_name("cnn");
  auto io = [&](onnx::ValueInfoProto* vi, const std::string& name, std::vector<int64_t> dims) {
    vi->set_name(name);
    auto* tt = vi->mutable_type()->mutable_tensor_type();
    tt->set_elem_type(onnx::TensorProto::FLOAT);
    for (int64_t x : dims) tt->mutable_shape()->add_dim()->set_dim_value(x);
  };
  io(g->add_input(), "x", {2, 3, 10, 10});
  io(g->add_output(), "y", {2, 5});
  AddInit(g, "w1", {8, 3, 3, 3}, rng);
  AddInit(g, "b1", {8}, rng);
  AddInit(g, "bn_s", {8}, rng, 0.5f, 1.5f);
  AddInit(g, "bn_b", {8}, rng);
  AddInit(g, "bn_m", {8}, rng);
  AddInit(g, "bn_v", {8}, rng, 0.5f, 1.5f);
  AddInit(g, "wdw", {8, 1, 3, 3}, rng);
  AddInit(g, "w2", {6, 8, 1, 1}, rng);
  AddInit(g, "w3", {6, 10}, rng);
  AddInit(g, "b3", {10}, rng);
  AddInit(g, "w4", {10, 5}, rng);
  auto* c1 = AddNode(g, "Conv", {"x", "w1", "b1"}, "c1");
  for (const char* p : {"pads"}) {
    auto* a = c1->add_attribute();
    a->set_name(p);
    a->set_type(onnx::AttributeProto::INTS);
    for (int i = 0; i < 4; ++i) a->add_ints(1);
  }
  AddNode(g, "BatchNormalization", {"c1", "bn_s", "bn_b", "bn_m", "bn_v"}, "bn");
  AddNode(g, "Relu", {"bn"}, "r1");
  IntAttr(AddNode(g, "Conv", {"r1", "wdw"}, "dw"), "group", 8);
  AddNode(g, "Relu", {"dw"}, "r2");
  AddNode(g, "Conv", {"r2", "w2"}, "c2");
  AddNode(g, "GlobalAveragePool", {"c2"}, "gap");
  IntAttr(AddNode(g, "Flatten", {"gap"}, "flat"), "axis", 1);
  AddNode(g, "MatMul", {"flat", "w3"}, "m3");
  AddNode(g, "Add", {"m3", "b3"}, "a3");
  AddNode(g, "Relu", {"a3"}, "r3");
  AddNode(g, "MatMul", {"r3", "w4"}, "y");
  // A shape hint on a pruned value: the pass must drop it.
  io(g->add_value_info(), "bn", {2, 8, 10, 10});
  const std::string path = d / "cnn.onnx";
  testing::WriteFile(path, m.SerializeAsString());
  return path;
}

std::vector<float> RunCnn(const Model& m) {
  auto it = Interpreter::Create(m);
  EXPECT_TRUE(it.ok()) << it.status();
  std::vector<float> x(2 * 3 * 10 * 10);
  for (size_t i = 0; i < x.size(); ++i) x[i] = std::sin(0.37f * i);
  auto out = (*it)->Run({{"x", onnxrt::MakeValue(DType::kF32, x, {2, 3, 10, 10})}});
  EXPECT_TRUE(out.ok()) << out.status();
  const Value& y = out->at("y");
  return std::vector<float>(y.data<float>(), y.data<float>() + y.numel());
}

// Zeroes input channels `gone` (axis `axis`) of weight `name`.
void ZeroChannels(Model& m, const std::string& name, int axis, const std::vector<int64_t>& gone) {
  const Tensor& t = m.tensors.at(name);
  auto v = *t.ToF32();
  int64_t outer = 1, inner = 1;
  for (int d = 0; d < axis; ++d) outer *= t.shape()[d];
  for (size_t d = axis + 1; d < t.shape().size(); ++d) inner *= t.shape()[d];
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t c : gone)
      for (int64_t i = 0; i < inner; ++i) v[(o * t.shape()[axis] + c) * inner + i] = 0.f;
  m.tensors.Set(name, *Tensor::FromF32(v, t.shape(), DType::kF32));
}

// Rows of `orig` ([n, ...] flattened per row) missing from `pruned`.
std::vector<int64_t> Removed(const Tensor& orig, const Tensor& pruned) {
  auto a = *orig.ToF32(), b = *pruned.ToF32();
  const int64_t n = orig.shape()[0], row = orig.numel() / n;
  std::vector<int64_t> gone;
  int64_t k = 0;
  for (int64_t r = 0; r < n; ++r) {
    if (k < pruned.shape()[0] && std::equal(a.begin() + r * row, a.begin() + (r + 1) * row, b.begin() + k * row)) {
      ++k;
    } else {
      gone.push_back(r);
    }
  }
  return gone;
}

TEST(PruneChannels, OnnxChainsLoseChannelsExactly) {
  testing::ScratchDir d;
  const std::string path = BuildModel(d);
  auto original = LoadModel(path);
  auto m = LoadModel(path);
  ASSERT_TRUE(original.ok() && m.ok()) << m.status();
  auto report = testing::RunPipeline(*m, "prune-structured{target=channels,ratio=0.5}");
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->passes[0].stats.at("chains_pruned"), 2.0);
  EXPECT_EQ(report->passes[0].stats.at("channels_removed"), 4.0 + 5.0);
  EXPECT_EQ(m->tensors.at("w1").shape(), (Shape{4, 3, 3, 3}));
  EXPECT_EQ(m->tensors.at("bn_v").shape(), (Shape{4}));
  EXPECT_EQ(m->tensors.at("wdw").shape(), (Shape{4, 1, 3, 3}));
  EXPECT_EQ(m->tensors.at("w2").shape(), (Shape{6, 4, 1, 1}));
  EXPECT_EQ(m->tensors.at("w3").shape(), (Shape{6, 5}));
  EXPECT_EQ(m->tensors.at("b3").shape(), (Shape{5}));
  EXPECT_EQ(m->tensors.at("w4").shape(), (Shape{5, 5}));
  // Reference: the original graph with the removed channels' consumer weights zeroed.
  const auto gone_conv = Removed(original->tensors.at("w1"), m->tensors.at("w1"));
  ASSERT_EQ(gone_conv.size(), 4u);
  Model ref = *original;
  ZeroChannels(ref, "w2", 1, gone_conv);
  auto w3t = original->tensors.at("w3");  // [6, 10]: channels are columns
  std::vector<int64_t> gone_mlp;
  {
    auto a = *w3t.ToF32(), b = *m->tensors.at("w3").ToF32();
    int64_t k = 0;
    for (int64_t c = 0; c < 10; ++c) {
      bool same = k < 5;
      for (int64_t r = 0; r < 6 && same; ++r) same = a[r * 10 + c] == b[r * 5 + k];
      if (same) ++k; else gone_mlp.push_back(c);
    }
  }
  ASSERT_EQ(gone_mlp.size(), 5u);
  ZeroChannels(ref, "w4", 0, gone_mlp);
  const auto want = RunCnn(ref), got = RunCnn(*m);
  ASSERT_EQ(got.size(), want.size());
  double max_ref = 0;
  for (float v : want) max_ref = std::max<double>(max_ref, std::abs(v));
  for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], want[i], 1e-5 * max_ref) << i;
  // Saved and reloaded, it passes the ONNX checker and computes the same.
  ASSERT_TRUE(SaveModel(*m, d / "pruned.onnx", {}).ok());
  if (const char* keep = std::getenv("COMPRESS_KEEP_PRUNED")) std::filesystem::copy_file(d / "pruned.onnx", keep);
  EXPECT_TRUE(CheckOnnxFile(d / "pruned.onnx").ok()) << CheckOnnxFile(d / "pruned.onnx");
  auto back = LoadModel(d / "pruned.onnx");
  ASSERT_TRUE(back.ok());
  for (const auto& vi : OnnxModelProto(*back)->graph().value_info()) EXPECT_NE(vi.name(), "bn") << "stale shape hint";
  EXPECT_EQ(RunCnn(*back), got);
}

// A Conv chain whose weights hold no elements (a zero dimension) starts or continues no chain
// and is no crash: the consumer's kernel size divided by its zero channel product (SIGFPE).
TEST(PruneChannels, EmptyConvWeightsAreNoChain) {
  for (const bool empty_producer : {false, true}) {
    SCOPED_TRACE(empty_producer ? "empty producer" : "empty consumer");
    std::mt19937 rng(3);
    onnx::ModelProto mp;
    mp.set_ir_version(8);
    mp.add_opset_import()->set_version(17);
    auto* g = mp.mutable_graph();
    g->set_name("empty");
    auto io = [&](onnx::ValueInfoProto* vi, const std::string& name, std::vector<int64_t> dims) {
      vi->set_name(name);
      auto* tt = vi->mutable_type()->mutable_tensor_type();
      tt->set_elem_type(onnx::TensorProto::FLOAT);
      for (int64_t x : dims) tt->mutable_shape()->add_dim()->set_dim_value(x);
    };
    io(g->add_input(), "x", {1, 3, 4, 4});
    io(g->add_output(), "y", {1, 0, 4, 4});
    AddInit(g, "w1", {empty_producer ? 0 : 4, 3, 1, 1}, rng);
    AddInit(g, "w2", {0, empty_producer ? 0 : 4, 1, 1}, rng);
    AddNode(g, "Conv", {"x", "w1"}, "c1");
    AddNode(g, "Conv", {"c1", "w2"}, "y");
    testing::ScratchDir d;
    const std::string path = d / "empty.onnx";
    testing::WriteFile(path, mp.SerializeAsString());
    auto m = LoadModel(path);
    if (!m.ok()) continue;  // refused by the reader: also no crash
    auto r = testing::RunPipeline(*m, "prune-structured{target=channels}");
    if (r.ok()) continue;
    EXPECT_NE(r.status().message().find("no prunable"), std::string::npos) << r.status();
  }
}

TEST(PruneChannels, SaysWhyNothingIsPrunable) {
  REQUIRE_SHARED(testing::SharedModel("stories260K/model.onnx"));
  auto m = LoadModel(testing::SharedModel("stories260K/model.onnx"));
  ASSERT_TRUE(m.ok());
  auto r = testing::RunPipeline(*m, "prune-structured{target=channels}");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("no prunable"), std::string::npos) << r.status();
  EXPECT_NE(r.status().message().find("left MatMul"), std::string::npos) << r.status();
}

}  // namespace
}  // namespace compress
