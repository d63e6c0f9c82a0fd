// `compress eval` on ONNX models: output agreement, --tolerance exit codes, expected outputs
// from test-data folders, and one-line errors for graphs the interpreter cannot run.
#include <filesystem>

#include "gtest/gtest.h"
#include "onnx/onnx_pb.h"
#include "tests/test_util.h"

namespace compress {
namespace {
namespace fs = std::filesystem;
using testing::RunCompress;
using testing::ScratchDir;
using testing::WriteFile;

// y = op(x) on a float [2] input.
std::string OneNodeModel(const ScratchDir& d, const std::string& op, const std::string& name) {
  onnx::ModelProto m;
  m.set_ir_version(8);
  m.add_opset_import()->set_version(17);
  auto* g = m.mutable_graph();
  g->set_name("g");
  for (const char* io : {"x", "y"}) {
    auto* vi = std::string(io) == "x" ? g->add_input() : g->add_output();
    vi->set_name(io);
    auto* tt = vi->mutable_type()->mutable_tensor_type();
    tt->set_elem_type(onnx::TensorProto::FLOAT);
    tt->mutable_shape()->add_dim()->set_dim_value(2);
  }
  auto* n = g->add_node();
  n->set_op_type(op);
  n->set_name("n0");
  n->add_input("x");
  n->add_input(op == "MatMul" ? "x3" : "");
  if (op != "MatMul") n->mutable_input()->RemoveLast();
  n->add_output("y");
  if (op == "MatMul") {
    auto* t = g->add_initializer();
    t->set_name("x3");
    t->set_data_type(onnx::TensorProto::FLOAT);
    t->add_dims(3);
    t->add_dims(1);
    for (int i = 0; i < 3; ++i) t->add_float_data(1.f);
  }
  const std::string path = d / name;
  WriteFile(path, m.SerializeAsString());
  return path;
}

TEST(EvalOnnx, UnknownOpIsAOneLineError) {
  ScratchDir d;
  const std::string m = OneNodeModel(d, "FancyOp", "fancy.onnx");
  auto r = RunCompress("eval '" + m + "'", d.path().string());
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  EXPECT_NE(r.err.find("ONNX op 'FancyOp' (node 'n0') is not supported"), std::string::npos) << r.err;
}

TEST(EvalOnnx, ShapeErrorNamesTheNode) {
  ScratchDir d;
  const std::string m = OneNodeModel(d, "MatMul", "mm.onnx");
  auto r = RunCompress("eval '" + m + "'", d.path().string());
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  EXPECT_NE(r.err.find("MatMul 'n0': shapes [2] and [3, 1] do not multiply"), std::string::npos) << r.err;
}

TEST(EvalOnnx, ToleranceDecidesTheExitCode) {
  const std::string model = testing::SharedModel("stories260K/model.onnx");
  REQUIRE_SHARED(model);
  ScratchDir d;
  auto same = RunCompress("eval '" + model + "' --reference '" + model + "' --tolerance 0 --json -q", d.path().string());
  EXPECT_EQ(same.exit_code, 0) << same.err;
  EXPECT_NE(same.out.find("\"max_abs\": 0.0"), std::string::npos) << same.out;
  EXPECT_NE(same.out.find("\"pass\": true"), std::string::npos) << same.out;
  auto q = RunCompress("run '" + model + "' -q -p 'quantize-int{bits=4,group-size=0}' -o '" + (d / "q.onnx") + "'",
                       d.path().string());
  ASSERT_EQ(q.exit_code, 0) << q.err;
  auto loose = RunCompress("eval '" + (d / "q.onnx") + "' --reference '" + model + "' --tolerance 0.5 -q",
                           d.path().string());
  EXPECT_EQ(loose.exit_code, 0) << loose.err;
  EXPECT_NE(loose.out.find("top-1 agreement"), std::string::npos) << loose.out;
  auto strict = RunCompress("eval '" + (d / "q.onnx") + "' --reference '" + model + "' --tolerance 1e-6 -q",
                            d.path().string());
  EXPECT_EQ(strict.exit_code, 4) << strict.err;
  EXPECT_NE(strict.err.find("above --tolerance"), std::string::npos) << strict.err;
}

TEST(EvalOnnx, ExpectedOutputsFromATestDataFolder) {
  // A backend node test folder: model.onnx + test_data_set_0/{input,output}_N.pb.
  const std::string dir = "/usr/include/onnx/backend/test/data/node/test_softmax_axis_1";
  if (!fs::exists(dir)) GTEST_SKIP() << "libonnx-testdata is not installed";
  ScratchDir d;
  auto r = RunCompress("eval '" + dir + "/model.onnx' --inputs '" + dir + "' --tolerance 1e-5 --json -q",
                       d.path().string());
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("\"vs_expected\""), std::string::npos) << r.out;
}

}  // namespace
}  // namespace compress
