// `compress run` end to end: report contents, dry run, recipe, determinism, metadata.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>

#include "formats/gguf_container.h"
#include "formats/gguf_tokenizer.h"
#include "formats/imatrix.h"
#include "formats/model_io.h"
#include "nlohmann/json.hpp"
#include "runtime/native_matmul.h"
#include "runtime/tokenizer.h"
#include "tests/test_util.h"

namespace compress {
namespace {
namespace fs = std::filesystem;
using testing::RunCompress;
using testing::ScratchDir;

TEST(Run, CastWritesModelReportAndMetadata) {
  const std::string src = testing::SharedModel("pycode-tiny");
  REQUIRE_SHARED(src);
  ScratchDir d;
  auto r = RunCompress("run '" + src + "' -p 'cast{dtype=f16}' -o '" + (d / "out") + "' --report '" +
                           (d / "r.json") + "' --report-md '" + (d / "r.md") + "'",
                       d.path().string());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("| cast | 38 |"), std::string::npos) << r.out;
  auto j = nlohmann::json::parse(testing::ReadFile(d / "r.json"));
  EXPECT_EQ(j["schema_version"], 1);
  EXPECT_EQ(j["pipeline"], "cast{dtype=f16,include=[],exclude=[]}");
  EXPECT_EQ(j["input"]["parameters"], 1836160);
  EXPECT_EQ(j["output"]["parameters"], 1836160);
  // Sizes are the bytes of the weight files on disk.
  EXPECT_EQ(j["input"]["bytes"], fs::file_size(src + "/model.safetensors"));
  EXPECT_EQ(j["output"]["bytes"], fs::file_size(d / "out/model.safetensors"));
  ASSERT_EQ(j["passes"].size(), 1u);
  // Where the time went, in run order; the phases cover the run up to the reports.
  std::vector<std::string> phases;
  double phase_sum = 0;
  const auto ordered = nlohmann::ordered_json::parse(testing::ReadFile(d / "r.json"));
  for (const auto& [k, v] : ordered["phase_seconds"].items()) {
    phases.push_back(k);
    EXPECT_GE(v.get<double>(), 0.0) << k;
    phase_sum += v.get<double>();
  }
  EXPECT_EQ(phases, (std::vector<std::string>{"load", "passes", "write", "read_back"}));
  EXPECT_LE(phase_sum, j["total_seconds"].get<double>());
  EXPECT_GE(phase_sum, 0.9 * j["total_seconds"].get<double>());
  EXPECT_NE(r.out.find("Time: "), std::string::npos) << r.out;
  const auto& tensors = j["passes"][0]["tensors"];
  EXPECT_EQ(tensors.size(), 38u);
  for (const auto& t : tensors) {
    EXPECT_EQ(t["dtype_before"], "bf16");
    EXPECT_EQ(t["dtype_after"], "f16");
    // bf16 -> f16 only loses values below f16's normal range or above 65504;
    // relative error of a normal f16 is <= 2^-11.
    EXPECT_LE(t["metrics"]["rel_fro_error"].get<double>(), std::ldexp(1.0, -11)) << t["name"];
  }
  auto out = LoadModel(d / "out");
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(out->metadata["compress.pipeline"], "cast{dtype=f16,include=[],exclude=[]}");
  EXPECT_EQ(out->config["dtype"], "float16");
  EXPECT_NE(testing::ReadFile(d / "r.md").find("# compress report"), std::string::npos);
}

TEST(Run, SameInputSameOptionsGiveByteIdenticalOutput) {
  const std::string src = testing::SharedModel("pycode-tiny");
  REQUIRE_SHARED(src);
  ScratchDir d;
  for (const char* o : {"a", "b"}) {
    auto r = RunCompress("run '" + src + "' -q -p 'cast{dtype=f32}' -o '" + (d / o) + "'", d.path().string());
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_TRUE(r.out.empty()) << "--quiet prints nothing";
  }
  for (const char* f : {"model.safetensors", "config.json", "tokenizer.json"}) {
    EXPECT_EQ(testing::ReadFile(d / (std::string("a/") + f)), testing::ReadFile(d / (std::string("b/") + f)))
        << f;
  }
}

TEST(Run, DryRunPrintsPlanAndWritesNothing) {
  const std::string src = testing::SharedModel("pycode-tiny");
  REQUIRE_SHARED(src);
  ScratchDir d;
  auto r = RunCompress("run '" + src + "' --dry-run -p 'cast{exclude=[*norm*]}' -o '" + (d / "out") + "'",
                       d.path().string());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("pipeline: cast{dtype=bf16,include=[],exclude=[*norm*]}"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("1. cast: 29 tensors selected"), std::string::npos) << r.out;
  EXPECT_FALSE(fs::exists(d / "out"));
}

TEST(Run, DryRunPredictsNoOpPassesAndCalibrationMemory) {
  const std::string src = testing::SharedModel("pycode-tiny");
  REQUIRE_SHARED(src);
  ScratchDir d;
  auto r = RunCompress("run '" + src + "' --dry-run -p 'quantize-gptq, cast{include=[nothing*]}' --calibration '" +
                           std::string(COMPRESS_SHARED_DIR) + "/data/pycode-dev.txt' --calib-samples 16 --calib-seqlen 256",
                       d.path().string());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  // 2 x 16 x 256 x 128 floats of hidden states + one 384^2 f64 X^T X (down_proj's inputs).
  EXPECT_NE(r.out.find("calibration holds about 5.12 MiB (16 windows x 256 tokens of hidden states, X^T X 1.12 MiB)"),
            std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("2. cast: 0 tensors selected (0 B); selects nothing"), std::string::npos) << r.out;
}

TEST(Run, RecipeFileEqualsPipelineText) {
  const std::string src = testing::SharedModel("pycode-tiny");
  REQUIRE_SHARED(src);
  ScratchDir d;
  testing::WriteFile(d / "r.yaml", "pipeline:\n  - cast: {dtype: f32, exclude: [\"*norm*\"]}\n");
  auto a = RunCompress("run '" + src + "' --dry-run -r '" + (d / "r.yaml") + "'", d.path().string());
  auto b =
      RunCompress("run '" + src + "' --dry-run -p 'cast{dtype=f32,exclude=[*norm*]}'", d.path().string());
  ASSERT_EQ(a.exit_code, 0) << a.err;
  EXPECT_EQ(a.out, b.out);
}

TEST(Run, ReplacesAPreviousOutputFolderOnlyWithForce) {
  const std::string src = testing::SharedModel("pycode-tiny");
  REQUIRE_SHARED(src);
  ScratchDir d;
  ASSERT_EQ(RunCompress("run '" + src + "' -q -p cast -o '" + (d / "out") + "'", d.path().string()).exit_code, 0);
  testing::WriteFile(d / "out/model-00002-of-00002.safetensors", "stale shard of an older output");
  auto refused = RunCompress("run '" + src + "' -q -p cast -o '" + (d / "out") + "'", d.path().string());
  EXPECT_EQ(refused.exit_code, 2);
  EXPECT_TRUE(fs::exists(d / "out/model-00002-of-00002.safetensors"));
  auto r = RunCompress("run '" + src + "' -q --force -p cast -o '" + (d / "out") + "'", d.path().string());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_FALSE(fs::exists(d / "out/model-00002-of-00002.safetensors"));
  EXPECT_TRUE(fs::exists(d / "out/model.safetensors"));
  EXPECT_EQ(std::distance(fs::directory_iterator(d.path()), {}), 1);
}

TEST(Run, RefusesToOverwriteTheInput) {
  const std::string src = testing::SharedModel("pycode-tiny");
  REQUIRE_SHARED(src);
  ScratchDir d;
  fs::copy(src, d / "m");
  auto r = RunCompress("run '" + (d / "m") + "' -q -p cast -o '" + (d / "m") + "'", d.path().string());
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("is the input model"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace compress

namespace compress {
namespace {

TEST(Run, SafetensorsOutputMustBeAFolderPath) {
  const std::string src = testing::SharedModel("pycode-tiny");
  REQUIRE_SHARED(src);
  testing::ScratchDir d;
  auto r =
      testing::RunCompress("run '" + src + "' -q -p cast -o '" + (d / "m.onnx") + "'", d.path().string());
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("a safetensors checkpoint is written as a folder"), std::string::npos) << r.err;
  EXPECT_EQ(std::distance(std::filesystem::directory_iterator(d.path()), {}), 0);
}

}  // namespace
}  // namespace compress

namespace compress {
namespace {

// A 3 GiB all-zero f32 checkpoint as a sparse file: cheap to make, slow enough to interrupt.
void MakeSparseCheckpoint(const std::string& dir) {
  std::filesystem::create_directories(dir);
  nlohmann::ordered_json h;
  const uint64_t n = uint64_t{4096} * 4096 * 4;
  for (int i = 0; i < 48; ++i) {
    h["w" + std::to_string(i) + ".weight"] = {
        {"dtype", "F32"}, {"shape", {4096, 4096}}, {"data_offsets", {i * n, (i + 1) * n}}};
  }
  std::string s = h.dump();
  s.append((8 - s.size() % 8) % 8, ' ');
  uint64_t len = s.size();
  std::string head(8, '\0');
  std::memcpy(head.data(), &len, 8);
  testing::WriteFile(dir + "/model.safetensors", head + s);
  std::filesystem::resize_file(dir + "/model.safetensors", 8 + s.size() + 48 * n);
}

TEST(Run, InterruptDuringWriteLeavesNothingBehind) {
  testing::ScratchDir d;
  MakeSparseCheckpoint(d / "big");
  pid_t pid = fork();
  if (pid == 0) {
    execl(COMPRESS_BINARY, COMPRESS_BINARY, "run", (d / "big").c_str(), "-q", "-p", "cast{dtype=bf16}", "-o",
          (d / "out").c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  // Wait until the writer's staging folder exists, then interrupt.
  bool staging = false;
  for (int i = 0; i < 600 && !staging; ++i) {
    for (const auto& e : std::filesystem::directory_iterator(d.path())) {
      staging = staging || e.path().filename().string().starts_with(".out.compress-staging.");
    }
    if (!staging) usleep(50000);
  }
  kill(pid, SIGINT);
  int status = 0;
  waitpid(pid, &status, 0);
  ASSERT_TRUE(staging) << "the run never started writing";
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 130);
  EXPECT_FALSE(std::filesystem::exists(d / "out"));
  for (const auto& e : std::filesystem::directory_iterator(d.path())) {
    EXPECT_FALSE(e.path().filename().string().starts_with(".out.compress-staging.")) << "staging left behind";
  }
}

}  // namespace
}  // namespace compress

namespace compress {
namespace {

TEST(Run, EvalTextReportsPerplexityOfInputAndWrittenOutput) {
  const std::string src = testing::SharedModel("pycode-tiny");
  REQUIRE_SHARED(src);
  testing::ScratchDir d;
  const std::string text = std::string(COMPRESS_SOURCE_DIR) + "/samples/eval/pycode-sample.txt";
  auto r = testing::RunCompress("run '" + src + "' -q -p 'cast{dtype=f32}' -o '" + (d / "out") +
                                    "' --eval-text '" + text + "' --eval-tokens 2048 --report '" +
                                    (d / "r.json") + "'",
                                d.path().string());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto j = nlohmann::json::parse(testing::ReadFile(d / "r.json"));
  const auto& acc = j["accuracy"];
  EXPECT_EQ(acc["metric"], "perplexity");
  EXPECT_EQ(acc["tokens"], 2044);  // 4 windows of 512 score 511 each
  EXPECT_GT(acc["input"].get<double>(), 1.0);
  // bf16 -> f32 is exact, so the written model scores the same.
  EXPECT_DOUBLE_EQ(acc["input"].get<double>(), acc["output"].get<double>());
  // Both perplexities count in one "eval" phase, after the load (the input's, before the passes).
  const auto ordered = nlohmann::ordered_json::parse(testing::ReadFile(d / "r.json"));
  std::vector<std::string> phases;
  for (const auto& [k, v] : ordered["phase_seconds"].items()) phases.push_back(k);
  EXPECT_EQ(phases, (std::vector<std::string>{"load", "eval", "passes", "write", "read_back"}));
  EXPECT_GT(ordered["phase_seconds"]["eval"].get<double>(), 0.0);
}

}  // namespace
}  // namespace compress

namespace compress {
namespace {

TEST(Run, RecipeCarriesCalibrationSettingsAndFlagsOverrideThem) {
  const std::string src = testing::SharedModel("pycode-tiny");
  REQUIRE_SHARED(src);
  testing::ScratchDir d;
  testing::WriteFile(d / "calib.txt",
                     testing::ReadFile(std::string(COMPRESS_SOURCE_DIR) + "/samples/eval/pycode-sample.txt"));
  testing::WriteFile(d / "r.yaml",
                     "pipeline:\n  - quantize-gptq: {bits: 4, group-size: 32}\n"
                     "calibration:\n  file: calib.txt\n  samples: 4\n  seqlen: 128\n  seed: 3\n");
  auto r = testing::RunCompress(
      "run '" + src + "' -q -r '" + (d / "r.yaml") + "' --seed 9 -o '" + (d / "out") + "'",
      d.path().string());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto m = LoadModel(d / "out");
  ASSERT_TRUE(m.ok());
  const std::string& prov = m->metadata["compress.calibration"];
  EXPECT_TRUE(prov.starts_with("calib.txt samples=4 seqlen=128 seed=9 hash=")) << prov;
  testing::WriteFile(d / "bad.yaml", "pipeline: cast\ncalibration:\n  sample: 4\n");
  auto bad =
      testing::RunCompress("run '" + src + "' -q -r '" + (d / "bad.yaml") + "' --dry-run", d.path().string());
  EXPECT_EQ(bad.exit_code, 2);
  EXPECT_NE(bad.err.find("unknown calibration key 'sample'; known keys: file, samples, seqlen, seed"),
            std::string::npos)
      << bad.err;
}

// --calib-precision bf16 (bf16 forwards, X^T X in f32 per shard): recorded in the provenance
// (f32, the default, stays unnamed), deterministic, other statistics than f32's (other bytes),
// the same from a recipe's `precision` key; a bad value is a one-line error, exit 2.
TEST(Run, CalibrationPrecisionIsRecordedAndDeterministic) {
  const std::string src = testing::SharedModel("pycode-tiny");
  REQUIRE_SHARED(src);
  testing::ScratchDir d;
  testing::WriteFile(d / "calib.txt",
                     testing::ReadFile(std::string(COMPRESS_SOURCE_DIR) + "/samples/eval/pycode-sample.txt"));
  const std::string run = "run '" + src + "' -q -p 'quantize-gptq{bits=4,group-size=32}' --calibration '" +
                          (d / "calib.txt") + "' --calib-samples 4 --calib-seqlen 128 -o ";
  for (auto [flags, out] : {std::pair{"", "f32"}, std::pair{" --calib-precision bf16", "bf16"},
                            std::pair{" --calib-precision bf16", "bf16b"}}) {
    auto r = testing::RunCompress(run + "'" + (d / out) + "'" + flags, d.path().string());
    ASSERT_EQ(r.exit_code, 0) << r.err;
  }
  testing::WriteFile(d / "r.yaml", "pipeline:\n  - quantize-gptq: {bits: 4, group-size: 32}\n"
                                   "calibration:\n  file: calib.txt\n  samples: 4\n  seqlen: 128\n  precision: bf16\n");
  auto r = testing::RunCompress("run '" + src + "' -q -r '" + (d / "r.yaml") + "' -o '" + (d / "recipe") + "'",
                                d.path().string());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::string f32 = testing::ReadFile(d / "f32/model.safetensors");
  const std::string bf16 = testing::ReadFile(d / "bf16/model.safetensors");
  EXPECT_NE(f32, bf16);
  EXPECT_EQ(bf16, testing::ReadFile(d / "bf16b/model.safetensors"));
  EXPECT_EQ(bf16, testing::ReadFile(d / "recipe/model.safetensors"));
  auto a = LoadModel(d / "f32");
  auto b = LoadModel(d / "bf16");
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->metadata["compress.calibration"].find("precision"), std::string::npos);
  EXPECT_NE(b->metadata["compress.calibration"].find(" seed=0 precision=bf16 hash="), std::string::npos)
      << b->metadata["compress.calibration"];
  testing::WriteFile(d / "bad.yaml", "pipeline: cast\ncalibration:\n  precision: fp8\n");
  auto bad = testing::RunCompress("run '" + src + "' -q -r '" + (d / "bad.yaml") + "' --dry-run", d.path().string());
  EXPECT_EQ(bad.exit_code, 2);
  EXPECT_NE(bad.err.find("calibration precision 'fp8' is not f32 or bf16"), std::string::npos) << bad.err;
  std::string plan = run;  // the plan is printed without -q
  plan.replace(plan.find(" -q "), 4, " ");
  auto dry = testing::RunCompress(plan + "'" + (d / "dry") + "' --calib-precision bf16 --dry-run", d.path().string());
  ASSERT_EQ(dry.exit_code, 0) << dry.err;
  EXPECT_NE(dry.out.find("X^T X"), std::string::npos) << dry.out;
  EXPECT_NE(dry.out.find(", bf16 products"), std::string::npos) << dry.out;
  auto flag = testing::RunCompress(run + "'" + (d / "x") + "' --calib-precision f16", d.path().string());
  EXPECT_EQ(flag.exit_code, 1) << flag.err;  // a usage error
  EXPECT_NE(flag.err.find("--calib-precision"), std::string::npos) << flag.err;
  const std::string onnx = testing::SharedModel("stories260K") + "/model.onnx";
  if (std::filesystem::exists(onnx)) {  // the ONNX driver calibrates in f32 only: said, not ignored
    testing::WriteFile(d / "ids.txt", "1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20");
    auto o = testing::RunCompress("run '" + onnx + "' -q -p 'quantize-gptq{bits=4,group-size=0}' --calibration '" +
                                      (d / "ids.txt") + "' --calib-samples 2 --calib-seqlen 8 --calib-precision bf16 -o '" +
                                      (d / "o.onnx") + "'",
                                  d.path().string());
    EXPECT_EQ(o.exit_code, 2) << o.err;
    EXPECT_NE(o.err.find("calibration precision bf16: LLM checkpoints only"), std::string::npos) << o.err;
    EXPECT_FALSE(std::filesystem::exists(d / "o.onnx"));
  }
}

}  // namespace
}  // namespace compress

#include "cli/progress.h"

namespace compress {
namespace {

TEST(Run, APassThatChangesNothingSaysSo) {
  const std::string src = std::string(COMPRESS_SOURCE_DIR) + "/samples/pycode-tiny";
  testing::ScratchDir d;
  auto r = testing::RunCompress("run '" + src + "' -q -p 'quantize-int8{include=[no.such.*]}' -o '" + (d / "out") +
                                    "' --report '" + (d / "r.json") + "'",
                                d.path().string());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("warning: pass 1 'quantize-int8' changed nothing"), std::string::npos) << r.err;
  auto j = nlohmann::json::parse(testing::ReadFile(d / "r.json"));
  ASSERT_EQ(j["warnings"].size(), 1u);
  // A pass that does change tensors gives no warning.
  auto ok = testing::RunCompress("run '" + src + "' -q -p quantize-int8 -o '" + (d / "out2") + "'", d.path().string());
  EXPECT_EQ(ok.err.find("warning"), std::string::npos) << ok.err;
}

// GGUF -> GGUF keeps the input's tokenizer metadata entry for entry (as llama-quantize does),
// so a file whose tokenizer compress cannot read (a pre-tokenizer it has no split list for)
// is still re-quantized; evaluating it on text is refused naming the pre-tokenizer.
TEST(Run, GgufToGgufCopiesTheTokenizerMetadata) {
  const std::string src = std::string(COMPRESS_SOURCE_DIR) + "/samples/pycode-tiny";
  testing::ScratchDir d;
  auto a = testing::RunCompress("run '" + src + "' -q -p 'cast{dtype=f16}' -o '" + (d / "a.gguf") + "'",
                                d.path().string());
  ASSERT_EQ(a.exit_code, 0) << a.err;
  std::string bytes = testing::ReadFile(d / "a.gguf");
  const std::string key = "tokenizer.ggml.pre";
  const size_t at = bytes.find(key);
  ASSERT_NE(at, std::string::npos);
  const size_t value = at + key.size() + 4 + 8;  // type, then the string's length
  ASSERT_EQ(bytes.substr(value, 5), "gpt-2");
  bytes.replace(value, 5, "bloom");  // a llama.cpp pre-tokenizer name compress does not read
  testing::WriteFile(d / "b.gguf", bytes);
  auto c = testing::RunCompress("run '" + (d / "b.gguf") + "' -q -p 'quantize-int{bits=8,group-size=32,scale-dtype=f16}' -o '" +
                                    (d / "c.gguf") + "'",
                                d.path().string());
  ASSERT_EQ(c.exit_code, 0) << c.err;
  auto gb = gguf::ReadContainer(d / "b.gguf");
  auto gc = gguf::ReadContainer(d / "c.gguf");
  ASSERT_TRUE(gb.ok() && gc.ok());
  size_t copied = 0;
  for (const auto& e : gb->kv_raw) {
    if (!e.key.starts_with("tokenizer.")) continue;
    auto it = std::find_if(gc->kv_raw.begin(), gc->kv_raw.end(), [&](const auto& o) { return o.key == e.key; });
    ASSERT_NE(it, gc->kv_raw.end()) << e.key;
    EXPECT_EQ(gb->RawBytes(e), gc->RawBytes(*it)) << e.key;
    ++copied;
  }
  EXPECT_GE(copied, 6u);
  testing::WriteFile(d / "t.txt", "def f(x):\n    return x\n");
  auto eval = testing::RunCompress("eval '" + (d / "c.gguf") + "' --text '" + (d / "t.txt") + "'", d.path().string());
  EXPECT_EQ(eval.exit_code, 2) << eval.err;
  EXPECT_NE(eval.err.find("pre-tokenizer 'bloom'"), std::string::npos) << eval.err;
}

// An added token that takes the whitespace after it (rstrip, as Phi-3's chat tokens) cannot be
// said in GGUF: the run warns naming it, unless the file's name makes llama.cpp apply the
// same rule (a model named Phi-3 whose other control tokens rstrip as well). Reading such a GGUF
// back gives those tokens rstrip again.
TEST(Run, GgufOutputWarnsOfAddedTokenRulesItCannotHold) {
  const std::string src = std::string(COMPRESS_SOURCE_DIR) + "/samples/pycode-tiny";
  testing::ScratchDir d;
  for (const char* folder : {"plain-model", "my-phi3-model"}) {
    const std::filesystem::path m = std::filesystem::path(d / folder);
    std::filesystem::copy(src, m, std::filesystem::copy_options::recursive);
    auto tok = nlohmann::json::parse(testing::ReadFile(m / "tokenizer.json"));
    // Phi-3's rules: control tokens rstrip but <unk>, <s> and <|endoftext|> (llama.cpp also
    // wants </s>, <unk> and <s> in a vocabulary it gives them to; the last ids take them here).
    int32_t id = 8188;
    for (const char* p : {"<|user|>", "</s>", "<unk>", "<s>"})
      tok["added_tokens"].push_back({{"id", id++}, {"content", p}, {"single_word", false}, {"lstrip", false},
                                     {"rstrip", false}, {"normalized", false}, {"special", true}});
    for (auto& a : tok["added_tokens"])
      a["rstrip"] = a["content"] != "<|endoftext|>" && a["content"] != "<unk>" && a["content"] != "<s>";
    testing::WriteFile(m / "tokenizer.json", tok.dump());
    auto r = testing::RunCompress("run '" + m.string() + "' -q -p 'cast{dtype=f16}' -o '" + (d / folder) +
                                      ".gguf' --report '" + (d / folder) + ".json'",
                                  d.path().string());
    ASSERT_EQ(r.exit_code, 0) << r.err;
    const bool phi3 = std::string(folder).find("phi3") != std::string::npos;
    EXPECT_EQ(r.err.find("whitespace rules (lstrip / rstrip / single_word) GGUF cannot hold: <|user|>") !=
                  std::string::npos,
              !phi3)
        << r.err;
    auto j = nlohmann::json::parse(testing::ReadFile((d / folder) + ".json"));
    EXPECT_EQ(j["warnings"].size(), phi3 ? 0u : 1u) << j["warnings"].dump();
    auto g = gguf::ReadContainer((d / folder) + ".gguf");
    ASSERT_TRUE(g.ok()) << g.status();
    auto back = TokenizerJsonFromGguf(*g);
    ASSERT_TRUE(back.ok()) << back.status();
    for (const auto& a : (*back)["added_tokens"]) {
      if (a["content"] == "<|user|>") {
        EXPECT_EQ(a["rstrip"], phi3) << a.dump();
      }
      if (a["content"] == "<|endoftext|>") {
        EXPECT_EQ(a["rstrip"], false) << a.dump();
      }
    }
  }
}

TEST(Run, ReportedSizeIsTheBytesWrittenForSparseStorage) {
  const std::string src = std::string(COMPRESS_SOURCE_DIR) + "/samples/pycode-tiny";
  testing::ScratchDir d;
  for (const std::string storage : {"dense", "2:4"}) {
    auto r = testing::RunCompress("run '" + src + "' -q -p 'prune-nm' --sparse-storage " + storage + " -o '" +
                                      (d / storage) + "' --report '" + (d / (storage + ".json")) + "'",
                                  d.path().string());
    ASSERT_EQ(r.exit_code, 0) << r.err;
    auto j = nlohmann::json::parse(testing::ReadFile(d / (storage + ".json")));
    EXPECT_EQ(j["output"]["bytes"].get<int64_t>(),
              static_cast<int64_t>(std::filesystem::file_size(d / (storage + "/model.safetensors"))));
  }
  EXPECT_LT(std::filesystem::file_size(d / "2:4/model.safetensors"),
            std::filesystem::file_size(d / "dense/model.safetensors") * 9 / 10);
  // `compress decompress` turns the sparse form back into the dense checkpoint.
  auto r = testing::RunCompress("decompress '" + (d / "2:4") + "' -q -o '" + (d / "back") + "' --report '" +
                                    (d / "back.json") + "'",
                                d.path().string());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto j = nlohmann::json::parse(testing::ReadFile(d / "back.json"));
  EXPECT_NE(j.dump().find("28 weights read from sparse storage"), std::string::npos) << j.dump();
  auto back = LoadModel(d / "back"), dense = LoadModel(d / "dense");
  ASSERT_TRUE(back.ok() && dense.ok());
  EXPECT_TRUE(back->sparse_stored.empty());
  EXPECT_EQ(back->tensors.names(), dense->tensors.names());
  for (const auto& name : dense->tensors.names()) EXPECT_EQ(*back->tensors.at(name).ToF32(), *dense->tensors.at(name).ToF32());
}

// A .gguf needs no tokenizer.json: `eval --text` and `--calibration` read the tokenizer the
// file holds (the same ids as the tokenizer.json it was written from).
TEST(Run, GgufInputUsesTheTokenizerItHolds) {
  const std::string src = testing::SharedModel("pycode-tiny");
  REQUIRE_SHARED(src);
  testing::ScratchDir d;
  std::filesystem::create_directories(d / "g");
  const std::string text = std::string(COMPRESS_SOURCE_DIR) + "/samples/eval/pycode-sample.txt";
  auto w = testing::RunCompress("run '" + src + "' -q -p 'cast{dtype=f16}' -o '" + (d / "g/m.gguf") + "'", d.path().string());
  ASSERT_EQ(w.exit_code, 0) << w.err;
  ASSERT_FALSE(std::filesystem::exists(d / "g/tokenizer.json"));
  const std::string eval = "eval '" + (d / "g/m.gguf") + "' --text '" + text + "' --ctx 128 --max-tokens 1024 --json -q";
  auto own = testing::RunCompress(eval, d.path().string());
  ASSERT_EQ(own.exit_code, 0) << own.err;
  std::filesystem::copy_file(src + "/tokenizer.json", d / "g/tokenizer.json");
  auto beside = testing::RunCompress(eval, d.path().string());
  ASSERT_EQ(beside.exit_code, 0) << beside.err;
  EXPECT_EQ(nlohmann::json::parse(own.out)["perplexity"], nlohmann::json::parse(beside.out)["perplexity"]);
  std::filesystem::remove(d / "g/tokenizer.json");
  auto calibrated = testing::RunCompress("run '" + (d / "g/m.gguf") + "' -q -p 'quantize-gptq{bits=4,group-size=32,scale-dtype=f16}' --calibration '" +
                                             text + "' --calib-samples 4 --calib-seqlen 128 -o '" + (d / "q.gguf") + "'",
                                         d.path().string());
  EXPECT_EQ(calibrated.exit_code, 0) << calibrated.err;
}

// A checkpoint written from a .gguf gets the tokenizer files the GGUF stands for
// (tokenizer.json + tokenizer_config.json): the same vocabulary, merges and ids as the
// tokenizer.json the GGUF was made from, and transformers' loader class.
TEST(Run, CheckpointFromGgufGetsTheTokenizerFiles) {
  const std::string src = testing::SharedModel("pycode-tiny");
  REQUIRE_SHARED(src);
  testing::ScratchDir d;
  auto w = testing::RunCompress("run '" + src + "' -q -p 'cast{dtype=f16}' -o '" + (d / "m.gguf") + "'", d.path().string());
  ASSERT_EQ(w.exit_code, 0) << w.err;
  auto back = testing::RunCompress("run '" + (d / "m.gguf") + "' -q -p 'cast{dtype=f32}' -o '" + (d / "ck") + "'",
                                   d.path().string());
  ASSERT_EQ(back.exit_code, 0) << back.err;
  EXPECT_EQ(back.err.find("warning"), std::string::npos) << back.err;
  ASSERT_TRUE(std::filesystem::exists(d / "ck/tokenizer.json"));
  const auto cfg = nlohmann::json::parse(testing::ReadFile(d / "ck/tokenizer_config.json"));
  EXPECT_EQ(cfg["tokenizer_class"], "PreTrainedTokenizerFast");
  EXPECT_EQ(cfg["eos_token"], "<|endoftext|>");
  EXPECT_EQ(cfg["add_bos_token"], false);  // a GPT-2 BPE tokenizer without the flag: llama.cpp adds none
  const auto ours = nlohmann::json::parse(testing::ReadFile(d / "ck/tokenizer.json"));
  const auto theirs = nlohmann::json::parse(testing::ReadFile(src + "/tokenizer.json"));
  EXPECT_EQ(ours["model"]["vocab"], theirs["model"]["vocab"]);
  ASSERT_EQ(ours["model"]["merges"].size(), theirs["model"]["merges"].size());
  for (size_t i = 0; i < theirs["model"]["merges"].size(); ++i) {
    const auto& m = theirs["model"]["merges"][i];
    const std::string joined = m.is_array() ? m[0].get<std::string>() + " " + m[1].get<std::string>() : m.get<std::string>();
    ASSERT_EQ(ours["model"]["merges"][i].get<std::string>(), joined) << "merge " << i;
  }
  auto a = Tokenizer::FromFile(d / "ck/tokenizer.json");
  auto b = Tokenizer::FromFile(src + "/tokenizer.json");
  ASSERT_TRUE(a.ok() && b.ok());
  const std::string text = testing::ReadFile(std::string(COMPRESS_SOURCE_DIR) + "/samples/eval/pycode-sample.txt");
  auto ia = (*a)->EncodeWithSpecialTokens(text), ib = (*b)->EncodeWithSpecialTokens(text);
  ASSERT_TRUE(ia.ok() && ib.ok());
  EXPECT_EQ(*ia, *ib);
  EXPECT_EQ((*a)->Decode(*ia), text);
  // The folder loads and evaluates as a checkpoint with its own tokenizer.
  auto eval = testing::RunCompress("eval '" + (d / "ck") + "' --text '" + std::string(COMPRESS_SOURCE_DIR) +
                                       "/samples/eval/pycode-sample.txt' --ctx 128 --max-tokens 256 --json -q",
                                   d.path().string());
  EXPECT_EQ(eval.exit_code, 0) << eval.err;
}

// Chat templates travel with the model: chat_template.jinja is copied beside a checkpoint,
// written into a GGUF as llama.cpp's tokenizer.chat_template (named ones from
// tokenizer_config.json as tokenizer.chat_template.NAME), kept by GGUF -> GGUF, and given back
// to a checkpoint written from the GGUF in tokenizer_config.json.
TEST(Run, ChatTemplatesTravelWithTheModel) {
  const std::string src = testing::SharedModel("pycode-tiny");
  REQUIRE_SHARED(src);
  testing::ScratchDir d;
  std::filesystem::copy(src, d / "in", std::filesystem::copy_options::recursive);
  const std::string jinja = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}";
  const std::string tool = "{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}";
  testing::WriteFile(d / "in/chat_template.jinja", jinja);
  nlohmann::json tc = nlohmann::json::parse(testing::ReadFile(d / "in/tokenizer_config.json"));
  tc["chat_template"] = {{{"name", "tool_use"}, {"template", tool}}};
  testing::WriteFile(d / "in/tokenizer_config.json", tc.dump());
  auto ck = testing::RunCompress("run '" + (d / "in") + "' -q -p 'cast{dtype=f16}' -o '" + (d / "ck") + "'", d.path().string());
  ASSERT_EQ(ck.exit_code, 0) << ck.err;
  EXPECT_EQ(testing::ReadFile(d / "ck/chat_template.jinja"), jinja);
  auto g = testing::RunCompress("run '" + (d / "in") + "' -q -p 'cast{dtype=f16}' -o '" + (d / "m.gguf") + "'", d.path().string());
  ASSERT_EQ(g.exit_code, 0) << g.err;
  auto check_gguf = [&](const std::string& path) {
    auto c = gguf::ReadContainer(path);
    ASSERT_TRUE(c.ok()) << c.status();
    EXPECT_EQ(c->GetStr("tokenizer.chat_template"), jinja);
    EXPECT_EQ(c->GetStr("tokenizer.chat_template.tool_use"), tool);
    ASSERT_TRUE(c->kv.count("tokenizer.chat_templates"));
    EXPECT_EQ(c->kv.at("tokenizer.chat_templates"), nlohmann::json::array({"tool_use"}));
  };
  check_gguf(d / "m.gguf");
  auto again = testing::RunCompress("run '" + (d / "m.gguf") + "' -q -p 'cast{dtype=f32}' -o '" + (d / "again.gguf") + "'",
                                    d.path().string());
  ASSERT_EQ(again.exit_code, 0) << again.err;
  check_gguf(d / "again.gguf");
  auto back = testing::RunCompress("run '" + (d / "m.gguf") + "' -q -p 'cast{dtype=f32}' -o '" + (d / "back") + "'",
                                   d.path().string());
  ASSERT_EQ(back.exit_code, 0) << back.err;
  const auto cfg = nlohmann::json::parse(testing::ReadFile(d / "back/tokenizer_config.json"));
  const nlohmann::json want = {{{"name", "default"}, {"template", jinja}}, {{"name", "tool_use"}, {"template", tool}}};
  EXPECT_EQ(cfg["chat_template"], want);
}

TEST(Progress, LineShowsElapsedRateAndEta) {
  EXPECT_EQ(ProgressLine("eval", 5, 10, 10.0), "eval       [############............] 5/10 10s, 2.0s each, ETA 10s");
  EXPECT_EQ(ProgressLine("write", 300, 300, 150.0), "write      [########################] 300/300 2m30s, 2.0/s");
  EXPECT_EQ(ShortDuration(3725), "1h02m");
}

// `compress imatrix` writes llama.cpp's importance matrix from our calibration, which
// quantize-gguf{imatrix=...} then reads; outputs follow the same safety rules as `run`.
TEST(Imatrix, WritesTheMatrixQuantizeGgufReadsAndRefusesUnsafePaths) {
  const std::string src = testing::SharedModel("pycode-tiny");
  REQUIRE_SHARED(src);
  testing::ScratchDir d;
  const std::string text = std::string(COMPRESS_SHARED_DIR) + "/data/pycode-dev.txt";
  const std::string args = src + " --calibration " + text + " --calib-samples 4 --calib-seqlen 128 -q";
  auto r = testing::RunCompress("imatrix " + args + " -o " + (d / "m.gguf"), d.path().string());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto m = LoadImatrix(d / "m.gguf");
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->entries.size(), 28u);
  EXPECT_EQ(m->chunk_count, 4u);
  EXPECT_EQ(m->chunk_size, 128u);
  EXPECT_EQ(m->datasets, std::vector<std::string>{"pycode-dev.txt"});
  EXPECT_EQ(m->entries.at("blk.3.ffn_down.weight").counts, std::vector<float>{512.f});

  // An existing output needs --force; an output inside the input model is refused.
  const std::string before = testing::ReadFile(d / "m.gguf");
  r = testing::RunCompress("imatrix " + args + " -o " + (d / "m.gguf"), d.path().string());
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("--force"), std::string::npos) << r.err;
  EXPECT_TRUE(testing::ReadFile(d / "m.gguf") == before);
  r = testing::RunCompress("imatrix " + args + " -o " + src + "/imatrix.gguf", d.path().string());
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_FALSE(fs::exists(src + "/imatrix.gguf"));

  // quantize-gguf reads it; the file is an input of the run, which -o may not replace.
  r = testing::RunCompress("run " + src + " -q -p 'quantize-gguf{type=Q4_K_M,imatrix=" + (d / "m.gguf") +
                               "}' -o " + (d / "q.gguf") + " --report " + (d / "r.json"),
                           d.path().string());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(testing::ReadFile(d / "r.json").find("importance matrix"), std::string::npos);
  r = testing::RunCompress("run " + src + " -q --force -p 'quantize-gguf{imatrix=" + (d / "m.gguf") + "}' -o " +
                               (d / "m.gguf"),
                           d.path().string());
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_TRUE(testing::ReadFile(d / "m.gguf") == before);
  r = testing::RunCompress("run " + src + " -q -p 'quantize-gguf{imatrix=" + (d / "none.gguf") + "}' -o " +
                               (d / "x.gguf"),
                           d.path().string());
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("no such file"), std::string::npos) << r.err;
}

// `eval --matmul auto` (the default) runs the packed products where the CPU has AVX2 or AVX-512 VNNI /
// BF16 (every dense or quantized form here has one), the f32 decode otherwise, and says which;
// its perplexity is the chosen mode's, bit for bit.
TEST(Eval, MatmulAutoPicksNativeWhereTheCpuHasIt) {
  const std::string src = testing::SharedModel("pycode-tiny");
  REQUIRE_SHARED(src);
  ScratchDir d;
  testing::WriteFile(d / "ids.txt", [] {
    std::string ids;
    for (int i = 0; i < 300; ++i) ids += std::to_string((i * 37) % 500) + " ";
    return ids;
  }());
  for (const char* dt : {"bf16", "f16", "f32"}) {
    const std::string m = d / dt;
    auto c = RunCompress("run '" + src + "' -q --force -p 'cast{dtype=" + dt + "}' -o '" + m + "'", d.path().string());
    ASSERT_EQ(c.exit_code, 0) << c.err;
    auto eval = [&](const std::string& mode) {
      auto r = RunCompress("eval '" + m + "' --tokens '" + (d / "ids.txt") + "' --ctx 128 --json -q" +
                               (mode.empty() ? "" : " --matmul " + mode),
                           d.path().string());
      EXPECT_EQ(r.exit_code, 0) << r.err;
      return nlohmann::json::parse(r.out);
    };
    const auto a = eval(""), f = eval("f32"), n = eval("native");
    const bool native = NativeMatmulAccelerated();
    EXPECT_EQ(a["matmul"], native ? "native" : "f32") << dt;
    EXPECT_EQ(f["matmul"], "f32");
    EXPECT_EQ(n["matmul"], "native");
    EXPECT_EQ(a["perplexity"].get<double>(), (native ? n : f)["perplexity"].get<double>()) << dt;
    if (std::string(dt) == "bf16") {  // bf16-rounded activations: close to, not equal to, f32's
      EXPECT_NE(n["perplexity"].get<double>(), f["perplexity"].get<double>());
      EXPECT_NEAR(n["perplexity"].get<double>(), f["perplexity"].get<double>(), 1e-3 * f["perplexity"].get<double>());
    }
    if (std::string(dt) != "bf16") {  // f32 activations: the sums' order only
      EXPECT_NEAR(n["perplexity"].get<double>(), f["perplexity"].get<double>(), 1e-6 * f["perplexity"].get<double>());
    }
  }
}

}  // namespace
}  // namespace compress
