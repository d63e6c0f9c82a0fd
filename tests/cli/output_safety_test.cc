// Output safety: no output or report may replace, contain or sit inside an input; an
// existing output is replaced only with --force and only when it is a model output; the
// model and its reports appear together or not at all; stale staging is cleaned up.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>

#include <filesystem>
#include <map>

#include "onnx/onnx_pb.h"
#include "tests/onnx_test_util.h"
#include "tests/test_util.h"

namespace compress {
namespace {
namespace fs = std::filesystem;
using testing::ReadFile;
using testing::RunCompress;
using testing::ScratchDir;
using testing::WriteFile;

const std::string kSample = std::string(COMPRESS_SOURCE_DIR) + "/samples/pycode-tiny";

// Every regular file under `root` (relative path -> bytes), to prove nothing changed.
std::map<std::string, std::string> Snapshot(const fs::path& root) {
  std::map<std::string, std::string> out;
  if (fs::is_regular_file(root)) {
    out[root.filename().string()] = ReadFile(root.string());
    return out;
  }
  for (const auto& e : fs::recursive_directory_iterator(root)) {
    if (e.is_regular_file()) out[fs::relative(e.path(), root).string()] = ReadFile(e.path().string());
  }
  return out;
}

// No hidden staging entries left in `dir`.
void ExpectNoStaging(const fs::path& dir) {
  for (const auto& e : fs::directory_iterator(dir)) {
    EXPECT_EQ(e.path().filename().string().find(".compress-staging."), std::string::npos)
        << "staging left behind: " << e.path();
  }
}

std::string Q(const std::string& s) { return "'" + s + "'"; }

struct Refused {
  std::string args, expect;
};

// Runs each command, expecting exit 2 with one line containing `expect`, and `root`
// byte-identical afterwards.
void ExpectRefused(const ScratchDir& d, const fs::path& root, const std::vector<Refused>& cases) {
  const auto before = Snapshot(root);
  for (const auto& c : cases) {
    SCOPED_TRACE(c.args);
    auto r = RunCompress(c.args, d.path().string());
    EXPECT_EQ(r.exit_code, 2) << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
    EXPECT_NE(r.err.find(c.expect), std::string::npos) << r.err;
    EXPECT_EQ(Snapshot(root), before) << "an input or existing file changed";
    ExpectNoStaging(d.path());
  }
}

TEST(OutputSafety, NonEmptyOutputFolderIsRefusedAndNeverEmptied) {
  ScratchDir d;
  fs::create_directories(d / "out/models/llama");
  WriteFile(d / "out/models/llama/config.json", "{}");
  WriteFile(d / "out/models/notes.txt", "mine");
  const std::string run = "run " + Q(kSample) + " -p cast{dtype=f16} -q -o " + Q(d / "out/models");
  ExpectRefused(d, d / "out", {{run, "exists and is not empty; give --force"},
                               {run + " --force", "holds 'llama' (a folder), which no checkpoint has"}});
  // A folder of loose files that is no checkpoint is not replaced either.
  fs::remove_all(d / "out/models/llama");
  ExpectRefused(d, d / "out", {{run + " --force", "holds no config.json or .safetensors"}});
}

TEST(OutputSafety, OutputMayNotBeContainOrSitInsideTheInput) {
  ScratchDir d;
  fs::create_directories(d / "in/m");
  fs::copy(kSample, d / "in/m", fs::copy_options::recursive);
  fs::create_symlink(d / "in/m", d / "link");
  auto run = [&](const std::string& model, const std::string& out) {
    return "run " + Q(model) + " -p cast{dtype=f16} -q --force -o " + Q(out);
  };
  ExpectRefused(d, d / "in",
                {{run(d / "in/m", d / "in/m"), "is the input model"},
                 {run(d / "in/m", d / "in"), "contains the input model"},
                 {run(d / "in/m", d / "in/m/sub"), "lies inside the input model"},
                 {run(d / "in/m", d / "link"), "is the input model"},
                 {run(d / "link", d / "in"), "contains the input model"},
                 // The folder of a bare .safetensors input holds the input.
                 {run(d / "in/m/model.safetensors", d / "in/m"), "contains the input model"}});
}

TEST(OutputSafety, ReportsMayNotTouchInputsEvenInADryRun) {
  ScratchDir d;
  fs::create_directories(d / "in");
  fs::copy(kSample, d / "in/m", fs::copy_options::recursive);
  WriteFile(d / "calib.txt", "def f(x):\n    return x\n");
  const std::string base = "run " + Q(d / "in/m") + " -p cast{dtype=f16} -q -o " + Q(d / "out");
  ExpectRefused(
      d, d / "in",
      {{base + " --report " + Q(d / "in/m/model.safetensors"), "--report '"},
       {base + " --report-md " + Q(d / "in/m/config.json"), "lies inside the input model"},
       {base + " --dry-run --report " + Q(d / "in/m/config.json"), "lies inside the input model"},
       {base + " --report " + Q(d / "calib.txt") + " --calibration " + Q(d / "calib.txt"),
        "is the calibration file"},
       {base + " --report " + Q(d / "out"), "is the model output"},
       {base + " --report " + Q(d / "r.json") + " --report-md " + Q(d / "r.json"), "is also the path of --report"},
       {base + " --report " + Q(d / "nodir/r.json"), "does not exist; create it first"},
       {base + " --report " + Q(d / "in"), "contains the input model"}});
  EXPECT_FALSE(fs::exists(d / "out"));
}

TEST(OutputSafety, AFailedReportWriteLeavesNoModel) {
  if (!fs::exists("/dev/full")) GTEST_SKIP() << "no /dev/full";
  ScratchDir d;
  auto r = RunCompress("run " + Q(kSample) + " -p cast{dtype=f16} -q -o " + Q(d / "out") + " --report /dev/full",
                       d.path().string());
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("/dev/full"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(d / "out"));
  ExpectNoStaging(d.path());
}

TEST(OutputSafety, ForceReplacesAPreviousOutputAtomicallyAndReportsCanGoInsideIt) {
  ScratchDir d;
  const std::string run = "run " + Q(kSample) + " -q -o " + Q(d / "out");
  ASSERT_EQ(RunCompress(run + " -p cast{dtype=f16}", d.path().string()).exit_code, 0);
  const auto f16 = Snapshot(d / "out");
  auto again = RunCompress(run + " -p cast{dtype=bf16}", d.path().string());
  EXPECT_EQ(again.exit_code, 2) << again.err;
  EXPECT_EQ(Snapshot(d / "out"), f16);
  auto forced = RunCompress(run + " -p cast{dtype=bf16} --force --report " + Q(d / "out/report.json"),
                            d.path().string());
  ASSERT_EQ(forced.exit_code, 0) << forced.err;
  EXPECT_NE(Snapshot(d / "out"), f16);
  EXPECT_NE(ReadFile(d / "out/report.json").find("cast{dtype=bf16"), std::string::npos);
  EXPECT_TRUE(fs::exists(d / "out/model.safetensors"));
  ExpectNoStaging(d.path());
  // A report inside the output folder is a checkpoint file: --force may replace it again.
  EXPECT_EQ(RunCompress(run + " -p cast{dtype=f16} --force --report-md " + Q(d / "out/report.md"),
                        d.path().string())
                .exit_code,
            0);
  EXPECT_TRUE(fs::exists(d / "out/report.md"));
  EXPECT_FALSE(fs::exists(d / "out/report.json")) << "the old output's files go with it";
}

// A tiny ONNX graph whose weight W lives in the external file `data_name`.
void WriteOnnxWithExternalData(const fs::path& dir, const std::string& data_name, int dim = 4) {
  const int n = dim;
  onnx::ModelProto m = testing::NewOnnxModel();
  auto* g = m.mutable_graph();
  auto* t = g->add_initializer();
  t->set_name("W");
  t->set_data_type(onnx::TensorProto::FLOAT);
  t->add_dims(n);
  t->add_dims(n);
  t->set_data_location(onnx::TensorProto::EXTERNAL);
  auto* e = t->add_external_data();
  e->set_key("location");
  e->set_value(data_name);
  auto io = [n](onnx::ValueInfoProto* v, const char* name) {
    v->set_name(name);
    auto* tt = v->mutable_type()->mutable_tensor_type();
    tt->set_elem_type(onnx::TensorProto::FLOAT);
    tt->mutable_shape()->add_dim()->set_dim_value(1);
    tt->mutable_shape()->add_dim()->set_dim_value(n);
  };
  io(g->add_input(), "x");
  io(g->add_output(), "y");
  auto* node = g->add_node();
  node->set_op_type("MatMul");
  node->set_name("mm");
  node->add_input("x");
  node->add_input("W");
  node->add_output("y");
  WriteFile((dir / "model.onnx").string(), m.SerializeAsString());
  std::string w(4 * n * n, '\0');
  for (int i = 0; i < n * n; ++i) {
    float v = 0.25f * static_cast<float>(i % 16 - 7);
    std::memcpy(w.data() + 4 * i, &v, 4);
  }
  WriteFile((dir / data_name).string(), w);
}

TEST(OutputSafety, OnnxOutputsMayNotReplaceTheInputsExternalData) {
  ScratchDir d;
  fs::create_directories(d / "in");
  WriteOnnxWithExternalData(d / "in", "other.onnx.data");
  const std::string run = "run " + Q(d / "in/model.onnx") + " -p cast{dtype=f16} -q --force ";
  ExpectRefused(d, d / "in",
                {{run + "-o " + Q(d / "in/other.onnx.data"), "is the input model"},
                 {run + "-o " + Q(d / "in/model.onnx"), "is the input model"}});
  // An output whose usual data file name is the input's writes its data under the other name.
  const std::string before = testing::ReadFile(d / "in/other.onnx.data");
  auto side = RunCompress(run + "--external-data always -o " + Q(d / "in/other.onnx"), d.path().string());
  ASSERT_EQ(side.exit_code, 0) << side.err;
  EXPECT_EQ(testing::ReadFile(d / "in/other.onnx.data"), before) << "the input's weights changed";
  EXPECT_TRUE(fs::exists(d / "in/other.onnx.b.data"));
  // Beside the input under another name is fine, and an existing file needs --force.
  auto ok = RunCompress(run + "--external-data always -o " + Q(d / "in/half.onnx"), d.path().string());
  ASSERT_EQ(ok.exit_code, 0) << ok.err;
  EXPECT_TRUE(fs::exists(d / "in/half.onnx.data"));
  auto again = RunCompress("run " + Q(d / "in/model.onnx") + " -p cast{dtype=f16} -q -o " + Q(d / "in/half.onnx"),
                           d.path().string());
  EXPECT_EQ(again.exit_code, 2);
  EXPECT_NE(again.err.find("exists; give --force"), std::string::npos) << again.err;
}

// Replacing an ONNX output with external data never renames over the data file the existing
// output reads: the new data takes the other name, and the old one goes after the switch.
TEST(OutputSafety, ReplacingAnOnnxPairAlternatesItsDataFile) {
  ScratchDir d;
  fs::create_directories(d / "in");
  WriteOnnxWithExternalData(d / "in", "w.data", 32);  // 4 KiB: above the inline threshold
  const std::string run =
      "run " + Q(d / "in/model.onnx") + " -p cast{dtype=f16} -q --force --external-data always -o " + Q(d / "out.onnx");
  const char* names[] = {"out.onnx.data", "out.onnx.b.data", "out.onnx.data"};
  for (int i = 0; i < 3; ++i) {
    SCOPED_TRACE(i);
    auto r = RunCompress(run, d.path().string());
    ASSERT_EQ(r.exit_code, 0) << r.err;
    const std::string model = testing::ReadFile(d / "out.onnx");
    EXPECT_NE(model.find(names[i]), std::string::npos) << "out.onnx reads " << names[i];
    EXPECT_TRUE(fs::exists(d / names[i]));
    EXPECT_FALSE(fs::exists(d / (i % 2 ? "out.onnx.data" : "out.onnx.b.data"))) << "the replaced data file is gone";
    auto ev = RunCompress("inspect " + Q(d / "out.onnx"), d.path().string());
    EXPECT_EQ(ev.exit_code, 0) << ev.err;
  }
  // A crash between the two renames left both data files: the one out.onnx does not read is
  // the one overwritten, and out.onnx keeps working until the switch.
  WriteFile(d / "out.onnx.b.data", std::string(4096, '\x7f'));
  auto r = RunCompress(run, d.path().string());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(testing::ReadFile(d / "out.onnx").find("out.onnx.b.data"), std::string::npos);
  EXPECT_FALSE(fs::exists(d / "out.onnx.data"));
}

TEST(OutputSafety, GgufOnlyPassesNeedAGgufOutputBeforeAnyWork) {
  const std::string src = testing::SharedModel("pycode-tiny");
  REQUIRE_SHARED(src);
  ScratchDir d;
  auto r = RunCompress("run " + Q(src) + " -q -p quantize-gguf -o " + Q(d / "out"), d.path().string());
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("only a .gguf output stores"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(d / "out"));
  auto ok = RunCompress("run " + Q(src) + " -q -p quantize-gguf{type=Q8_0} -o " + Q(d / "m.gguf"), d.path().string());
  EXPECT_EQ(ok.exit_code, 0) << ok.err;
}

TEST(OutputSafety, StaleStagingOfDeadRunsIsRemovedAndAnAsideOutputRestored) {
  ScratchDir d;
  char host[256] = {};
  ::gethostname(host, sizeof(host) - 1);
  // A pid that does not run: a child that has exited and been reaped.
  pid_t dead = ::fork();
  if (dead == 0) ::_exit(0);
  int status = 0;
  ::waitpid(dead, &status, 0);
  const std::string tag = std::string(".compress-staging.") + host + ".";
  const fs::path stale = d.path() / (".out" + tag + std::to_string(dead) + ".abc123");
  const fs::path live = d.path() / (".out" + tag + std::to_string(::getpid()) + ".abc123");
  const fs::path aside = d.path() / (".prev" + tag + std::to_string(dead) + ".xyz789.old");
  const fs::path foreign = d.path() / ".out.tmp-abc123";
  for (const auto& p : {stale, live, aside, foreign}) fs::create_directories(p);
  WriteFile((aside / "config.json").string(), "{}");
  auto r = RunCompress("run " + Q(kSample) + " -p cast{dtype=f16} -q -o " + Q(d / "out"), d.path().string());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_FALSE(fs::exists(stale));
  EXPECT_TRUE(fs::exists(live)) << "a running process's staging is not ours to remove";
  EXPECT_TRUE(fs::exists(foreign)) << "only names we make are recognised";
  EXPECT_FALSE(fs::exists(aside));
  EXPECT_EQ(ReadFile(d / "prev/config.json"), "{}") << "a swapped-out output whose swap died is put back";
}

TEST(OutputSafety, MissingOutputIsAUsageErrorInRunAndDecompress) {
  ScratchDir d;
  EXPECT_EQ(RunCompress("run " + Q(kSample) + " -p cast", d.path().string()).exit_code, 1);
  EXPECT_EQ(RunCompress("decompress " + Q(kSample), d.path().string()).exit_code, 1);
}

TEST(OutputSafety, PrintAfterDoesNotSwallowTheModelPath) {
  ScratchDir d;
  auto r = RunCompress("run --print-after cast " + Q(kSample) + " -p cast{dtype=f16} -q -o " + Q(d / "out"),
                       d.path().string());
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("--- after cast"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace compress
