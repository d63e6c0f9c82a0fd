// The bad-input corpus: every malformed model gives one clear line, exit code 2 and no output.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>

#include "nlohmann/json.hpp"
#include "onnx/onnx_pb.h"
#include "tests/test_util.h"

namespace compress {
namespace {
namespace fs = std::filesystem;
using testing::ScratchDir;
using testing::WriteFile;

std::string Safetensors(const std::string& header, const std::string& data, int64_t lie_len = -1) {
  uint64_t n = lie_len >= 0 ? static_cast<uint64_t>(lie_len) : header.size();
  std::string out(8, '\0');
  std::memcpy(out.data(), &n, 8);
  return out + header + data;
}

std::string Floats(int n) { return std::string(n * 4, '\x01'); }

struct BadCase {
  std::string name;
  std::function<std::string(const ScratchDir&)> make;  // returns the model path to load
  std::string expect;                                  // substring of the one-line error
};

std::string StFile(const ScratchDir& d, const std::string& bytes) {
  fs::create_directories(d / "m");
  WriteFile(d / "m/model.safetensors", bytes);
  return d / "m";
}

const char* kOkHeader = R"({"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}})";

std::string LlamaConfig(int layers) {
  nlohmann::json c = {{"model_type", "llama"},    {"hidden_size", 4},           {"num_hidden_layers", layers},
                      {"num_attention_heads", 2}, {"num_key_value_heads", 1},   {"intermediate_size", 8},
                      {"vocab_size", 8},          {"tie_word_embeddings", true}};
  return c.dump();
}

std::string OnnxWithExternal(const ScratchDir& d, const std::string& location, int64_t length,
                             const std::string& data_bytes) {
  fs::create_directories(d / "o");
  onnx::ModelProto m;
  m.set_ir_version(8);
  m.add_opset_import()->set_version(17);
  auto* t = m.mutable_graph()->add_initializer();
  t->set_name("W");
  t->set_data_type(onnx::TensorProto::FLOAT);
  t->add_dims(4);
  t->set_data_location(onnx::TensorProto::EXTERNAL);
  auto kv = [&](const char* k, const std::string& v) {
    auto* e = t->add_external_data();
    e->set_key(k);
    e->set_value(v);
  };
  kv("location", location);
  kv("offset", "0");
  if (length >= 0) kv("length", std::to_string(length));
  WriteFile(d / "o/model.onnx", m.SerializeAsString());
  if (!data_bytes.empty()) WriteFile(d / "o/w.bin", data_bytes);
  return d / "o/model.onnx";
}

std::vector<BadCase> Corpus() {
  return {
      {"missing path", [](const ScratchDir& d) { return d / "nope"; }, "no such file or folder"},
      {"file shorter than 8 bytes", [](const ScratchDir& d) { return StFile(d, "abc"); },
       "truncated: 3 bytes, shorter than the 8-byte header length"},
      {"huge header length",
       [](const ScratchDir& d) { return StFile(d, Safetensors(kOkHeader, Floats(4), 1ll << 40)); },
       "exceeds the 100 MiB limit"},
      {"header longer than file",
       [](const ScratchDir& d) { return StFile(d, Safetensors(kOkHeader, "", 5000)); },
       "truncated: header length 5000"},
      {"header not json", [](const ScratchDir& d) { return StFile(d, Safetensors("{not json", "")); },
       "header is not valid JSON"},
      {"truncated data", [](const ScratchDir& d) { return StFile(d, Safetensors(kOkHeader, Floats(3))); },
       "data_offsets end 16 is past the end of the data (12 bytes)"},
      {"unknown dtype",
       [](const ScratchDir& d) {
         return StFile(d, Safetensors(R"({"a":{"dtype":"F7","shape":[1],"data_offsets":[0,4]}})", Floats(1)));
       },
       "tensor 'a': unsupported dtype 'F7'"},
      {"shape lies about byte length",
       [](const ScratchDir& d) {
         return StFile(
             d, Safetensors(R"({"a":{"dtype":"F32","shape":[3,3],"data_offsets":[0,16]}})", Floats(4)));
       },
       "F32 [3, 3] needs 36 bytes but data_offsets span 16"},
      {"wrong dtype for the bytes",
       [](const ScratchDir& d) {
         return StFile(
             d, Safetensors(R"({"a":{"dtype":"F16","shape":[2,2],"data_offsets":[0,16]}})", Floats(4)));
       },
       "F16 [2, 2] needs 8 bytes but data_offsets span 16"},
      {"overlapping tensors",
       [](const ScratchDir& d) {
         return StFile(
             d,
             Safetensors(
                 R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                 Floats(3)));
       },
       "tensors 'a' and 'b' overlap"},
      {"reversed offsets",
       [](const ScratchDir& d) {
         return StFile(d,
                       Safetensors(R"({"a":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}})", Floats(2)));
       },
       "data_offsets [8, 0] are reversed"},
      {"negative dimension",
       [](const ScratchDir& d) {
         return StFile(d,
                       Safetensors(R"({"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", Floats(1)));
       },
       "shape has a non-integer or negative dimension"},
      {"metadata not strings",
       [](const ScratchDir& d) {
         return StFile(
             d,
             Safetensors(R"({"__metadata__":{"x":1},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})",
                         Floats(1)));
       },
       "__metadata__ value of 'x' is not a string"},
      {"index names a tensor its shard lacks",
       [](const ScratchDir& d) {
         StFile(d, Safetensors(kOkHeader, Floats(4)));
         fs::rename(d / "m/model.safetensors", d / "m/s1.safetensors");
         WriteFile(d / "m/model.safetensors.index.json",
                   R"({"weight_map":{"a":"s1.safetensors","b":"s1.safetensors"}})");
         return d / "m";
       },
       "weight_map puts 'b' in s1.safetensors but that shard does not hold it"},
      {"index shard escapes the folder",
       [](const ScratchDir& d) {
         fs::create_directories(d / "m");
         WriteFile(d / "outside.safetensors", Safetensors(kOkHeader, Floats(4)));
         WriteFile(d / "m/model.safetensors.index.json", R"({"weight_map":{"a":"../outside.safetensors"}})");
         return d / "m";
       },
       "path '../outside.safetensors' escapes the model folder"},
      {"config lies about layer count",
       [](const ScratchDir& d) {
         std::string p = StFile(
             d,
             Safetensors(
                 R"({"model.embed_tokens.weight":{"dtype":"F32","shape":[8,4],"data_offsets":[0,128]},"model.layers.0.self_attn.q_proj.weight":{"dtype":"F32","shape":[4,4],"data_offsets":[128,192]}})",
                 Floats(48)));
         WriteFile(d / "m/config.json", LlamaConfig(3));
         return p;
       },
       "config.json says num_hidden_layers=3 but the tensors hold 1 blocks"},
      {"projection shape disagrees with config",
       [](const ScratchDir& d) {
         std::string p = StFile(
             d,
             Safetensors(
                 R"({"model.embed_tokens.weight":{"dtype":"F32","shape":[8,4],"data_offsets":[0,128]},"model.layers.0.self_attn.k_proj.weight":{"dtype":"F32","shape":[4,4],"data_offsets":[128,192]}})",
                 Floats(48)));
         WriteFile(d / "m/config.json", LlamaConfig(1));
         return p;
       },
       "has shape [4, 4] but config.json implies [2, 4]"},
      {"config not json",
       [](const ScratchDir& d) {
         std::string p = StFile(d, Safetensors(kOkHeader, Floats(4)));
         WriteFile(d / "m/config.json", "{\"model_type\": ");
         return p;
       },
       "config.json: not valid JSON"},
      {"onnx truncated",
       [](const ScratchDir& d) {
         fs::create_directories(d / "o");
         std::string good = testing::ReadFile(testing::SharedModel("stories260K/model.onnx"));
         WriteFile(d / "o/model.onnx", good.substr(0, good.size() / 2));
         return d / "o/model.onnx";
       },
       "not a valid ONNX model"},
      {"onnx external data absolute path",
       [](const ScratchDir& d) { return OnnxWithExternal(d, "/etc/passwd", 16, ""); },
       "refers to absolute path '/etc/passwd'"},
      {"onnx external data escapes with ..",
       [](const ScratchDir& d) { return OnnxWithExternal(d, "../w.bin", 16, ""); },
       "path '../w.bin' escapes the model folder"},
      {"onnx external data through a symlink out of the folder",
       [](const ScratchDir& d) {
         std::string p = OnnxWithExternal(d, "link.bin", 16, "");
         WriteFile(d / "secret.bin", Floats(4));
         fs::create_symlink(d / "secret.bin", d / "o/link.bin");
         return p;
       },
       "resolves outside the model folder"},
      {"onnx external data past the end",
       [](const ScratchDir& d) { return OnnxWithExternal(d, "w.bin", -1, Floats(2)); },
       "lies past the end of 'w.bin' (8 bytes); truncated?"},
      {"onnx external length lies",
       [](const ScratchDir& d) { return OnnxWithExternal(d, "w.bin", 12, Floats(4)); },
       "external length 12 but f32 [4] needs 16 bytes"},
      {"onnx raw_data size lies",
       [](const ScratchDir& d) {
         fs::create_directories(d / "o");
         onnx::ModelProto m;
         m.set_ir_version(8);
         auto* t = m.mutable_graph()->add_initializer();
         t->set_name("W");
         t->set_data_type(onnx::TensorProto::FLOAT);
         t->add_dims(3);
         t->set_raw_data(std::string(8, '\0'));
         WriteFile(d / "o/model.onnx", m.SerializeAsString());
         return d / "o/model.onnx";
       },
       "raw_data has 8 bytes but f32 [3] needs 12"},
      {"not a model at all",
       [](const ScratchDir& d) {
         WriteFile(d / "notes.txt", "hello");
         return d / "notes.txt";
       },
       "unrecognized model"},
  };
}

TEST(BadInput, EveryCaseFailsCleanlyWithExitCode2AndNoOutput) {
  const auto corpus = Corpus();
  ASSERT_GE(corpus.size(), 15u);
  for (const auto& c : corpus) {
    SCOPED_TRACE(c.name);
    ScratchDir d;
    std::string model = c.make(d);
    for (const std::string& cmd :
         {"inspect '" + model + "'", "run '" + model + "' -p cast -o '" + (d / "out") + "'"}) {
      auto r = testing::RunCompress(cmd, d.path().string());
      EXPECT_EQ(r.exit_code, 2) << cmd << "\n" << r.err;
      EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
      EXPECT_TRUE(r.err.starts_with("compress: error: ")) << r.err;
      EXPECT_NE(r.err.find(c.expect), std::string::npos) << "got: " << r.err;
      EXPECT_FALSE(fs::exists(d / "out")) << "partial output left behind";
      for (const auto& e : fs::directory_iterator(d.path())) {
        EXPECT_FALSE(e.path().filename().string().starts_with(".out.tmp")) << "staging left behind";
      }
    }
  }
}

TEST(BadInput, UsageErrorsExitWith1) {
  ScratchDir d;
  EXPECT_EQ(testing::RunCompress("run", d.path().string()).exit_code, 1);
  EXPECT_EQ(testing::RunCompress("frobnicate", d.path().string()).exit_code, 1);
  EXPECT_EQ(testing::RunCompress("run x", d.path().string()).exit_code, 1);
  auto r = testing::RunCompress("run x -p cast -r y.yaml", d.path().string());
  EXPECT_EQ(r.exit_code, 1);
}

TEST(BadInput, BadPipelineIsExit2WithPosition) {
  ScratchDir d;
  auto r = testing::RunCompress(
      "run '" + testing::SharedModel("pycode-tiny") + "' -p 'cast{dtpye=f16}' -o '" + (d / "out") + "'",
      d.path().string());
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_EQ(r.err,
            "compress: error: pipeline:1:6: unknown option 'dtpye' for pass 'cast'; options: dtype, include, "
            "exclude\n");
  EXPECT_FALSE(fs::exists(d / "out"));
}

}  // namespace
}  // namespace compress
