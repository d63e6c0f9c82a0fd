// ONNX: bit-exact round trips (inline and external data) that pass the ONNX checker,
// typed-field initializers, and the Cast the writer adds when a pass changed a dtype.
#include <gtest/gtest.h>

#include <cstring>

#include "core/graph_ir.h"
#include "core/pass_manager.h"
#include "formats/model_io.h"
#include "formats/onnx_io.h"
#include "onnx/onnx_pb.h"
#include "passes/registry.h"
#include "tests/pipeline_util.h"
#include "tests/onnx_test_util.h"
#include "tests/test_util.h"

namespace compress {
namespace {
using testing::ExpectSameTensors;
using testing::ScratchDir;
using testing::SharedModel;

void RoundTrip(const std::string& src, OnnxWriteOptions::External ext) {
  auto m = LoadModel(src);
  ASSERT_TRUE(m.ok()) << m.status();
  ScratchDir tmp;
  SaveOptions opts;
  opts.onnx.external = ext;
  auto files = SaveModel(*m, tmp / "out.onnx", opts);
  ASSERT_TRUE(files.ok()) << files.status();
  EXPECT_EQ(std::filesystem::exists(tmp / "out.onnx.data"), ext == OnnxWriteOptions::External::kAlways);
  EXPECT_TRUE(CheckOnnxFile(tmp / "out.onnx").ok()) << CheckOnnxFile(tmp / "out.onnx");
  auto back = LoadModel(tmp / "out.onnx");
  ASSERT_TRUE(back.ok()) << back.status();
  ExpectSameTensors(m->tensors, back->tensors);
  // The graph itself is unchanged: same nodes in the same order.
  onnx::ModelProto a, b;
  a.ParseFromString(testing::ReadFile(src));
  b.ParseFromString(testing::ReadFile(tmp / "out.onnx"));
  ASSERT_EQ(a.graph().node_size(), b.graph().node_size());
  for (int i = 0; i < a.graph().node_size(); ++i) {
    EXPECT_EQ(a.graph().node(i).SerializeAsString(), b.graph().node(i).SerializeAsString());
  }
  EXPECT_EQ(a.graph().initializer_size(), b.graph().initializer_size());
}

TEST(Onnx, MagikaRoundTripsInline) {
  REQUIRE_SHARED(SharedModel("onnx/magika-standard-v3-3.onnx"));
  RoundTrip(SharedModel("onnx/magika-standard-v3-3.onnx"), OnnxWriteOptions::External::kNever);
}

TEST(Onnx, MagikaRoundTripsWithExternalData) {
  REQUIRE_SHARED(SharedModel("onnx/magika-standard-v3-3.onnx"));
  RoundTrip(SharedModel("onnx/magika-standard-v3-3.onnx"), OnnxWriteOptions::External::kAlways);
}

TEST(Onnx, Stories260KRoundTripsBothWays) {
  REQUIRE_SHARED(SharedModel("stories260K/model.onnx"));
  RoundTrip(SharedModel("stories260K/model.onnx"), OnnxWriteOptions::External::kNever);
  RoundTrip(SharedModel("stories260K/model.onnx"), OnnxWriteOptions::External::kAlways);
}

TEST(Onnx, ArchitectureFindsWeightLayers) {
  REQUIRE_SHARED(SharedModel("stories260K/model.onnx"));
  auto m = LoadModel(SharedModel("stories260K/model.onnx"));
  ASSERT_TRUE(m.ok());
  // 5 decoder blocks of 7 projections found from the residual chain; the output projection
  // stays outside them.
  const Architecture& a = m->arch;
  EXPECT_EQ(a.AllLinears().size(), 36u);
  ASSERT_EQ(a.blocks.size(), 5u);
  ASSERT_EQ(a.other_linears.size(), 1u);
  EXPECT_EQ(m->RoleOf(a.other_linears[0].weight), TensorRole::kLmHead);
  EXPECT_EQ(a.num_heads, 8);
  EXPECT_EQ(a.num_kv_heads, 4);
  EXPECT_EQ(a.head_dim, 8);
  EXPECT_EQ(a.intermediate_size, 172);
  EXPECT_EQ(a.hidden_size, 64);
  for (const Block& b : a.blocks) {
    std::vector<std::string> kinds;
    for (const auto* list : {&b.attention, &b.mlp})
      for (const LinearLayer& l : *list) {
        kinds.push_back(l.kind);
        EXPECT_EQ(m->RoleOf(l.weight), TensorRole::kLinearWeight) << l.weight;
        EXPECT_EQ(l.out_axis, 1) << l.weight;  // MatMul weights are [in, out]
      }
    EXPECT_EQ(kinds, (std::vector<std::string>{"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                               "down_proj"}))
        << "block " << b.index;
  }
}

onnx::ModelProto TypedFieldModel() {
  onnx::ModelProto m = testing::NewOnnxModel();
  auto* g = m.mutable_graph();
  auto* w = g->add_initializer();
  w->set_name("W");
  w->set_data_type(onnx::TensorProto::FLOAT);
  w->add_dims(2);
  w->add_dims(3);
  for (float v : {1.f, -2.f, 3.5f, 0.25f, 1e-3f, 7.f}) w->add_float_data(v);
  auto* h = g->add_initializer();
  h->set_name("H");
  h->set_data_type(onnx::TensorProto::FLOAT16);
  h->add_dims(2);
  h->add_int32_data(F32ToF16(1.5f));
  h->add_int32_data(F32ToF16(-2.f));
  auto* node = g->add_node();
  node->set_op_type("MatMul");
  node->add_input("X");
  node->add_input("W");
  node->add_output("Y");
  auto vi = [](onnx::ValueInfoProto* v, const char* name, std::vector<int64_t> dims) {
    v->set_name(name);
    auto* t = v->mutable_type()->mutable_tensor_type();
    t->set_elem_type(onnx::TensorProto::FLOAT);
    for (int64_t d : dims) t->mutable_shape()->add_dim()->set_dim_value(d);
  };
  vi(g->add_input(), "X", {1, 2});
  vi(g->add_output(), "Y", {1, 3});
  return m;
}

TEST(Onnx, ReadsTypedFieldInitializers) {
  ScratchDir tmp;
  testing::WriteFile(tmp / "t.onnx", TypedFieldModel().SerializeAsString());
  auto m = LoadModel(tmp / "t.onnx");
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(*m->tensors.at("W").ToF32(), (std::vector<float>{1.f, -2.f, 3.5f, 0.25f, 1e-3f, 7.f}));
  EXPECT_EQ(*m->tensors.at("H").ToF32(), (std::vector<float>{1.5f, -2.f}));
  EXPECT_EQ(m->RoleOf("W"), TensorRole::kLinearWeight);
  // Written back as raw_data with identical values.
  ASSERT_TRUE(SaveModel(*m, tmp / "raw.onnx", {}).ok());
  auto back = LoadModel(tmp / "raw.onnx");
  ASSERT_TRUE(back.ok());
  ExpectSameTensors(m->tensors, back->tensors);
}

// X -> MatMul(W) -> Y -> Relu -> Z, Y also read by Add(Y, Z) -> OUT; a Conv-like node with
// attributes; an IR 3 style graph input that is really the initializer W.
TEST(GraphIr, ViewIndexesProducersConsumersAndAttributes) {
  onnx::ModelProto m = TypedFieldModel();
  auto* g = m.mutable_graph();
  g->mutable_output()->Clear();
  auto add_node = [&](const char* op, std::vector<std::string> in, std::vector<std::string> out, const char* name) {
    auto* n = g->add_node();
    n->set_op_type(op);
    n->set_name(name);
    for (auto& i : in) n->add_input(i);
    for (auto& o : out) n->add_output(o);
    return n;
  };
  auto* relu = add_node("Relu", {"Y"}, {"Z"}, "");
  auto* cst = relu->add_attribute();  // a tensor-valued attribute, as Constant nodes carry
  cst->set_name("value");
  cst->set_type(onnx::AttributeProto::TENSOR);
  cst->mutable_t()->set_data_type(onnx::TensorProto::INT64);
  cst->mutable_t()->add_dims(2);
  for (int64_t v : {5, -6}) cst->mutable_t()->add_int64_data(v);
  auto* a = relu->add_attribute();
  a->set_name("alpha");
  a->set_type(onnx::AttributeProto::INT);
  a->set_i(7);
  auto* s = relu->add_attribute();
  s->set_name("pads");
  s->set_type(onnx::AttributeProto::INTS);
  for (int64_t v : {1, 2}) s->add_ints(v);
  add_node("Add", {"Y", "Z"}, {"OUT"}, "add0");
  g->add_output()->set_name("OUT");
  g->add_input()->set_name("W");  // an initializer listed as input (IR < 4)
  ScratchDir tmp;
  testing::WriteFile(tmp / "g.onnx", m.SerializeAsString());
  auto model = LoadModel(tmp / "g.onnx");
  ASSERT_TRUE(model.ok()) << model.status();
  const GraphView* v = ModelGraph(*model);
  ASSERT_NE(v, nullptr);
  ASSERT_EQ(v->node_size(), 3);
  EXPECT_EQ(v->inputs(), (std::vector<std::string>{"X"}));
  EXPECT_EQ(v->outputs(), (std::vector<std::string>{"OUT"}));
  EXPECT_EQ(v->Producer("Y"), 0);
  EXPECT_EQ(v->Producer("X"), -1);
  EXPECT_EQ(v->Producer("W"), -1);
  ASSERT_EQ(v->Consumers("Y").size(), 2u);
  EXPECT_EQ(v->Consumers("Y")[0].node, 1);
  EXPECT_EQ(v->Consumers("Y")[1].node, 2);
  EXPECT_EQ(v->Consumers("Y")[1].slot, 0);
  EXPECT_EQ(v->Consumers("Z")[0].slot, 1);
  EXPECT_EQ(v->OnlyConsumer("Y"), -1);
  EXPECT_EQ(v->OnlyConsumer("W"), 0);
  EXPECT_TRUE(v->Consumers("OUT").empty());
  EXPECT_TRUE(v->IsOutput("OUT"));
  EXPECT_EQ(v->node(1).DisplayName(), "Z");  // unnamed: addressed by its first output
  EXPECT_EQ(v->node(2).DisplayName(), "add0");
  EXPECT_EQ(v->node(1).IntAttribute("alpha", 0), 7);
  EXPECT_EQ(v->node(1).IntAttribute("missing", -3), -3);
  EXPECT_EQ(std::get<std::vector<int64_t>>(*v->node(1).attribute("pads")), (std::vector<int64_t>{1, 2}));
  const Tensor* value = v->node(1).TensorAttribute("value");
  ASSERT_NE(value, nullptr);
  EXPECT_EQ(value->dtype(), DType::kI64);
  EXPECT_EQ(value->shape(), (Shape{2}));
  auto bytes = value->Data();
  ASSERT_TRUE(bytes.ok());
  int64_t got[2];
  std::memcpy(got, (*bytes)->data(), 16);
  EXPECT_EQ(got[0], 5);
  EXPECT_EQ(got[1], -6);
  // The signature: the fed input with its declared type, and the imported opsets.
  ASSERT_EQ(v->signature().inputs.size(), 1u);
  EXPECT_EQ(v->signature().inputs[0].name, "X");
  EXPECT_EQ(v->signature().inputs[0].dtype, DType::kF32);
  EXPECT_EQ(v->Opset(""), m.opset_import(0).version());
  EXPECT_EQ(v->Opset("com.example"), 1);
  EXPECT_EQ(ModelGraph(Model()), nullptr);

  // Edits change this model only (a copy shares the graph until one of them edits it), and
  // the view follows them.
  Model copy = *model;
  ASSERT_TRUE(SetGraphNodeAttribute(copy, "Z", "alpha", 9).ok());
  EXPECT_EQ(ModelGraph(copy)->node(1).IntAttribute("alpha", 0), 9);
  EXPECT_EQ(ModelGraph(*model)->node(1).IntAttribute("alpha", 0), 7);
  EXPECT_FALSE(SetGraphNodeAttribute(copy, "nope", "alpha", 1).ok());
  // Bypassing Z: the Add reads Y twice, the Relu goes (nothing reads it).
  auto erased = BypassGraphValues(copy, {{"Z", "Y"}});
  ASSERT_TRUE(erased.ok()) << erased.status();
  const GraphView* c = ModelGraph(copy);
  ASSERT_EQ(c->node_size(), 2);
  EXPECT_EQ(c->node(1).inputs(), (std::vector<std::string>{"Y", "Y"}));
  EXPECT_EQ(c->Producer("Z"), -1);
  EXPECT_EQ(ModelGraph(*model)->node_size(), 3);
  Model safetensors;
  EXPECT_EQ(BypassGraphValues(safetensors, {}).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(Onnx, CastWeightsAreCastBackInTheGraph) {
  REQUIRE_SHARED(SharedModel("stories260K/model.onnx"));
  auto m = LoadModel(SharedModel("stories260K/model.onnx"));
  ASSERT_TRUE(m.ok());
  auto r = testing::RunPipeline(*m, "cast{dtype=f16}");
  ASSERT_TRUE(r.ok()) << r.status();
  ScratchDir tmp;
  ASSERT_TRUE(SaveModel(*m, tmp / "f16.onnx", {}).ok());
  EXPECT_TRUE(CheckOnnxFile(tmp / "f16.onnx").ok()) << CheckOnnxFile(tmp / "f16.onnx");
  onnx::ModelProto p;
  p.ParseFromString(testing::ReadFile(tmp / "f16.onnx"));
  int casts = 0;
  for (const auto& n : p.graph().node())
    casts += n.op_type() == "Cast" && n.name().starts_with("compress_cast_");
  EXPECT_EQ(casts, static_cast<int>(r->passes[0].tensors.size()));
  EXPECT_GT(casts, 36);
  // File shrank by about half (weights dominate).
  EXPECT_LT(std::filesystem::file_size(tmp / "f16.onnx"),
            0.55 * std::filesystem::file_size(SharedModel("stories260K/model.onnx")));
}

}  // namespace
}  // namespace compress

namespace compress {
namespace {

TEST(Onnx, FourBitMatMulWeightsBecomeMatMulNBits) {
  REQUIRE_SHARED(testing::SharedModel("stories260K/model.onnx"));
  auto m = LoadModel(testing::SharedModel("stories260K/model.onnx"));
  ASSERT_TRUE(m.ok());
  auto r = testing::RunPipeline(*m, "quantize-int{bits=4,group-size=32,exclude=[*down_proj*]}");
  ASSERT_TRUE(r.ok()) << r.status();
  const size_t quantized = r->passes[0].tensors.size();
  EXPECT_EQ(quantized, 30u);  // 36 MatMul weights less 5 down_proj and the lm_head (kept by default)
  testing::ScratchDir tmp;
  ASSERT_TRUE(SaveModel(*m, tmp / "q4.onnx", {}).ok());
  EXPECT_TRUE(CheckOnnxFile(tmp / "q4.onnx").ok()) << CheckOnnxFile(tmp / "q4.onnx");
  onnx::ModelProto p;
  p.ParseFromString(testing::ReadFile(tmp / "q4.onnx"));
  size_t nbits = 0;
  for (const auto& n : p.graph().node()) {
    if (n.op_type() != "MatMulNBits") continue;
    ++nbits;
    EXPECT_EQ(n.domain(), "com.microsoft");
    EXPECT_EQ(n.input_size(), 3);
  }
  EXPECT_EQ(nbits, quantized);
  bool ms = false;
  for (const auto& o : p.opset_import()) ms = ms || o.domain() == "com.microsoft";
  EXPECT_TRUE(ms);
  // Packed: 4 bits per weight plus one f32 scale per 32 weights = 5 bits per weight.
  for (const auto& init : p.graph().initializer()) {
    if (init.name() == "model.layers.0.self_attn.q_proj.weight.T__nbits") {
      EXPECT_EQ(init.raw_data().size(), 64u * 64 / 2);
    }
  }
}

}  // namespace
}  // namespace compress
