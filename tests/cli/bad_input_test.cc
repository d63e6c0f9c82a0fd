// The bad-input corpus: every malformed model gives one clear line, exit code 2 and no output.
#include <gtest/gtest.h>

#include <sys/stat.h>

#include <cstring>
#include <filesystem>
#include <limits>

#include "fmt/format.h"
#include "nlohmann/json.hpp"
#include "onnx/onnx_pb.h"
#include "tests/onnx_test_util.h"
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
  onnx::ModelProto m = testing::NewOnnxModel();
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

// A valid one-block llama checkpoint whose config.json gets `patch` merged in.
std::string WithConfig(const ScratchDir& d, const nlohmann::json& patch) {
  std::string p = StFile(
      d,
      Safetensors(
          R"({"model.embed_tokens.weight":{"dtype":"F32","shape":[8,4],"data_offsets":[0,128]},"model.layers.0.self_attn.q_proj.weight":{"dtype":"F32","shape":[4,4],"data_offsets":[128,192]}})",
          Floats(48)));
  nlohmann::json c = nlohmann::json::parse(LlamaConfig(1));
  c.merge_patch(patch);
  WriteFile(d / "m/config.json", c.dump());
  return p;
}

// The Gemma 3 multimodal container fixture (tests/golden/families/gemma3) with its config.json
// patched (`patch` merged in).
std::string ContainerWithConfig(const ScratchDir& d, const nlohmann::json& patch) {
  const fs::path src = fs::path(COMPRESS_SOURCE_DIR) / "tests/golden/families/gemma3";
  fs::create_directories(d / "m");
  fs::copy_file(src / "model.safetensors", d / "m/model.safetensors");
  nlohmann::json c = nlohmann::json::parse(testing::ReadFile(src / "config.json"));
  c.merge_patch(patch);
  WriteFile(d / "m/config.json", c.dump());
  return d / "m";
}

// A GGUF file for the llama architecture: `extra` metadata appended, one tensor info per
// entry of `tensors` (name, dims, ggml type, offset) and `data` after the aligned header.
struct GgufTensor {
  std::string name;
  std::vector<uint64_t> dims;
  uint32_t type = 0;
  uint64_t offset = 0;
};
class GgufBytes {
 public:
  void U32(uint32_t v) { b_.append(reinterpret_cast<const char*>(&v), 4); }
  void U64(uint64_t v) { b_.append(reinterpret_cast<const char*>(&v), 8); }
  void Str(const std::string& s) {
    U64(s.size());
    b_ += s;
  }
  void KvStr(const std::string& k, const std::string& v) { Str(k), U32(8), Str(v); }
  void KvU32(const std::string& k, uint32_t v) { Str(k), U32(4), U32(v); }
  std::string& bytes() { return b_; }

 private:
  std::string b_;
};
std::string Gguf(const std::vector<std::pair<std::string, uint32_t>>& extra_u32,
                 const std::vector<GgufTensor>& tensors, size_t data_bytes) {
  const std::vector<std::pair<std::string, uint32_t>> base = {{"llama.block_count", 1},
                                                              {"llama.embedding_length", 4},
                                                              {"llama.attention.head_count", 1},
                                                              {"llama.feed_forward_length", 4}};
  GgufBytes g;
  g.bytes() = "GGUF";
  g.U32(3);
  g.U64(tensors.size());
  g.U64(1 + base.size() + extra_u32.size());
  g.KvStr("general.architecture", "llama");
  for (const auto& [k, v] : base) g.KvU32(k, v);
  for (const auto& [k, v] : extra_u32) g.KvU32(k, v);
  for (const auto& t : tensors) {
    g.Str(t.name);
    g.U32(static_cast<uint32_t>(t.dims.size()));
    for (uint64_t d : t.dims) g.U64(d);
    g.U32(t.type);
    g.U64(t.offset);
  }
  while (g.bytes().size() % 32) g.bytes() += '\0';
  return g.bytes() + std::string(data_bytes, '\0');
}
std::string GgufFile(const ScratchDir& d, const std::string& bytes) {
  WriteFile(d / "m.gguf", bytes);
  return d / "m.gguf";
}

// An ONNX model with one float initializer 'W' of `dims` and no data.
std::string OnnxInitializerOnly(const ScratchDir& d, const std::vector<int64_t>& dims) {
  fs::create_directories(d / "o");
  onnx::ModelProto m = testing::NewOnnxModel();
  auto* t = m.mutable_graph()->add_initializer();
  t->set_name("W");
  t->set_data_type(onnx::TensorProto::FLOAT);
  for (int64_t x : dims) t->add_dims(x);
  WriteFile(d / "o/model.onnx", m.SerializeAsString());
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
      {"gguf tensor dims overflow the byte size",
       [](const ScratchDir& d) {
         return GgufFile(d, Gguf({}, {{"token_embd.weight", {1ull << 32, 1ull << 30}, 0, 0}}, 64));
       },
       "runs past the end of the file"},
      {"gguf alignment 2^31",
       [](const ScratchDir& d) {
         return GgufFile(d, Gguf({{"general.alignment", 1u << 31}}, {{"token_embd.weight", {4, 4}, 0, 0}}, 64));
       },
       "general.alignment 2147483648 is not a power of two up to 1 MiB"},
      {"gguf duplicate tensor",
       [](const ScratchDir& d) {
         return GgufFile(d, Gguf({}, {{"token_embd.weight", {4, 4}, 0, 0}, {"token_embd.weight", {4, 4}, 0, 64}},
                                 128));
       },
       "tensor 'token_embd.weight' appears twice"},
      {"gguf duplicate metadata key",
       [](const ScratchDir& d) {
         return GgufFile(d, Gguf({{"llama.block_count", 1}}, {{"token_embd.weight", {4, 4}, 0, 0}}, 64));
       },
       "metadata key 'llama.block_count' appears twice"},
      {"onnx initializer [2^62, 4] without data",
       [](const ScratchDir& d) { return OnnxInitializerOnly(d, {int64_t{1} << 62, 4}); },
       "holds more than"},
      {"onnx initializer [2^32, 2^32] without data",
       [](const ScratchDir& d) { return OnnxInitializerOnly(d, {int64_t{1} << 32, int64_t{1} << 32}); },
       "holds more than"},
      {"a FIFO in place of model.safetensors",
       [](const ScratchDir& d) {
         fs::create_directories(d / "m");
         ::mkfifo((d / "m/model.safetensors").c_str(), 0600);
         return d / "m";
       },
       "not a regular file"},
      {"model_type a number", [](const ScratchDir& d) { return WithConfig(d, {{"model_type", 5}}); },
       "config.json: 'model_type' must be a string, not 5"},
      {"a container's text_config model_type a number",
       [](const ScratchDir& d) { return ContainerWithConfig(d, {{"text_config", {{"model_type", 5}}}}); },
       "config.json (text_config): 'model_type' must be a string, not 5"},
      {"a container's text_config nesting another",
       [](const ScratchDir& d) {
         return ContainerWithConfig(d, {{"text_config", {{"hidden_size", nullptr}, {"text_config", {{"a", 1}}}}}});
       },
       "text_config nests another text_config"},
      {"a container whose text_config names more layers than its decoder has",
       [](const ScratchDir& d) {
         return ContainerWithConfig(
             d, {{"text_config",
                  {{"num_hidden_layers", 3},
                   {"layer_types", {"sliding_attention", "full_attention", "sliding_attention"}}}}});
       },
       "config.json says num_hidden_layers=3 but the tensors hold 2 blocks"},
      {"tie_word_embeddings a string",
       [](const ScratchDir& d) { return WithConfig(d, {{"tie_word_embeddings", "yes"}}); },
       "'tie_word_embeddings' must be true or false"},
      {"rope_type a number",
       [](const ScratchDir& d) { return WithConfig(d, {{"rope_scaling", {{"rope_type", 3}}}}); },
       "'rope_scaling.rope_type' must be a string"},
      {"block_configs of the wrong length",
       [](const ScratchDir& d) { return WithConfig(d, {{"block_configs", nlohmann::json::array()}}); },
       "block_configs must be an array of num_hidden_layers=1 objects"},
      {"block_configs no-op attention with its weights present",
       [](const ScratchDir& d) {
         return WithConfig(d, {{"model_type", "nemotron-nas"},
                               {"block_configs",
                                {{{"attention", {{"no_op", true}}}, {"ffn", {{"no_op", false}, {"ffn_mult", 1.5}}}}}}});
       },
       "makes block 0's attention a no-op, but"},
      {"block_configs linear attention",
       [](const ScratchDir& d) {
         return WithConfig(d, {{"block_configs",
                                {{{"attention", {{"replace_with_linear", true}}}, {"ffn", {{"ffn_mult", 1.5}}}}}}});
       },
       "replaces the sublayer with a linear map"},
      {"rope_theta 0", [](const ScratchDir& d) { return WithConfig(d, {{"rope_theta", 0}}); },
       "'rope_theta' is 0"},
      {"rms_norm_eps -1", [](const ScratchDir& d) { return WithConfig(d, {{"rms_norm_eps", -1}}); },
       "'rms_norm_eps' is -1"},
      {"hidden_size a string", [](const ScratchDir& d) { return WithConfig(d, {{"hidden_size", "4"}}); },
       "'hidden_size' must be an integer"},
      {"quantization bits a string",
       [](const ScratchDir& d) {
         return WithConfig(d, {{"quantization_config",
                                {{"quant_method", "compress"},
                                 {"format_version", 1},
                                 {"layers", {{"model.layers.0.self_attn.q_proj", {{"format", "int"}, {"bits", "4"}}}}}}}});
       },
       "'quantization_config.layers['model.layers.0.self_attn.q_proj'].bits' must be an integer"},
      {"a 20-digit block index",
       [](const ScratchDir& d) {
         std::string p = StFile(
             d,
             Safetensors(
                 R"({"model.layers.12345678901234567890.self_attn.q_proj.weight":{"dtype":"F32","shape":[4,4],"data_offsets":[0,64]}})",
                 Floats(16)));
         WriteFile(d / "m/config.json", LlamaConfig(1));
         return p;
       },
       "block index 12345678901234567890"},
      {"duplicate tensor in the header",
       [](const ScratchDir& d) {
         return StFile(
             d,
             Safetensors(
                 R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                 Floats(2)));
       },
       "key 'a' appears twice"},
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
      auto r = testing::RunCompress(cmd, d.path().string(), /*timeout_s=*/60);
      EXPECT_EQ(r.exit_code, 2) << cmd << "\n" << r.err;
      EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
      EXPECT_TRUE(r.err.starts_with("compress: error: ")) << r.err;
      EXPECT_NE(r.err.find(c.expect), std::string::npos) << "got: " << r.err;
      EXPECT_FALSE(fs::exists(d / "out")) << "partial output left behind";
      for (const auto& e : fs::directory_iterator(d.path())) {
        EXPECT_FALSE(e.path().filename().string().starts_with(".out.compress-staging.")) << "staging left behind";
      }
    }
  }
}

// Input a pass refuses (a NaN weight) is bad input too: one line naming the model file's folder,
// the pass and the tensor, exit 2, no output, the input unchanged.
TEST(BadInput, APassRefusingAWeightNamesTheModel) {
  ScratchDir d;
  std::string data = Floats(32);  // embed_tokens
  std::string q(64, '\0');
  for (int i = 0; i < 16; ++i) {
    const float v = i == 6 ? std::numeric_limits<float>::quiet_NaN() : 0.25f * static_cast<float>(i - 8);
    std::memcpy(q.data() + 4 * i, &v, 4);
  }
  const std::string bytes = Safetensors(
      R"({"model.embed_tokens.weight":{"dtype":"F32","shape":[8,4],"data_offsets":[0,128]},"model.layers.0.self_attn.q_proj.weight":{"dtype":"F32","shape":[4,4],"data_offsets":[128,192]}})",
      data + q);
  const std::string model = StFile(d, bytes);
  WriteFile(d / "m/config.json", LlamaConfig(1));
  for (const std::string pass : {"quantize-int8", "quantize-nf4{block=4}", "quantize-int{bits=4,group-size=4}"}) {
    SCOPED_TRACE(pass);
    auto r = testing::RunCompress("run '" + model + "' -q -p '" + pass + "' -o '" + (d / "out") + "'",
                                  d.path().string(), /*timeout_s=*/60);
    EXPECT_EQ(r.exit_code, 2) << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
    EXPECT_TRUE(r.err.starts_with("compress: error: " + model + ": pass 1 of 1 '")) << r.err;
    EXPECT_NE(r.err.find("tensor 'model.layers.0.self_attn.q_proj.weight' holds nan at [1, 2]"), std::string::npos)
        << r.err;
    EXPECT_FALSE(fs::exists(d / "out"));
    EXPECT_EQ(testing::ReadFile(d / "m/model.safetensors"), bytes);
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
            "compress: error: pipeline:1:6: unknown option 'dtpye' for pass 'cast' (did you mean 'dtype'?); options: dtype, include, "
            "exclude\n");
  EXPECT_FALSE(fs::exists(d / "out"));
}

}  // namespace
}  // namespace compress

namespace compress {
namespace {

// A graph y = Relu(Reshape(x, shape)) with x float [1, 8] (or `x_dims`, a symbolic name
// for negative entries) and the int64 initializer `shape`.
std::string ReshapeGraph(const ScratchDir& d, const std::vector<int64_t>& x_dims,
                         const std::vector<int64_t>& shape) {
  onnx::ModelProto m = testing::NewOnnxModel();
  auto* g = m.mutable_graph();
  auto* x = g->add_input();
  x->set_name("x");
  auto* tt = x->mutable_type()->mutable_tensor_type();
  tt->set_elem_type(onnx::TensorProto::FLOAT);
  for (int64_t v : x_dims) {
    auto* dim = tt->mutable_shape()->add_dim();
    if (v < 0)
      dim->set_dim_param("batch");
    else
      dim->set_dim_value(v);
  }
  g->add_output()->set_name("y");
  auto* s = g->add_initializer();
  s->set_name("shape");
  s->set_data_type(onnx::TensorProto::INT64);
  s->add_dims(static_cast<int64_t>(shape.size()));
  for (int64_t v : shape) s->add_int64_data(v);
  auto* r = g->add_node();
  r->set_op_type("Reshape");
  r->add_input("x");
  r->add_input("shape");
  r->add_output("r");
  auto* relu = g->add_node();
  relu->set_op_type("Relu");
  relu->add_input("r");
  relu->add_output("y");
  WriteFile(d / "g.onnx", m.SerializeAsString());
  return d / "g.onnx";
}

TEST(BadInput, HugeShapesInTheInterpreterFailCleanly) {
  struct Case {
    std::string name;
    std::vector<int64_t> x_dims, shape;
    std::string flags, expect;
  };
  const std::vector<Case> cases = {
      {"reshape to [2^61+1, 8]", {1, 8}, {(int64_t{1} << 61) + 1, 8}, "", "is too large"},
      {"reshape to [2^62, -1]", {1, 8}, {int64_t{1} << 62, -1}, "", "cannot infer -1"},
      {"graph input [2^62, 4]", {int64_t{1} << 62, 4}, {-1}, "", "over 2^30 elements"},
      {"--dim batch=2^62", {-1, 8}, {-1}, "--dim batch=4611686018427387904", "over 2^30 elements"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    ScratchDir d;
    const std::string model = ReshapeGraph(d, c.x_dims, c.shape);
    auto r = testing::RunCompress("eval '" + model + "' --samples 1 " + c.flags, d.path().string(), 60);
    EXPECT_EQ(r.exit_code, 2) << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
    EXPECT_NE(r.err.find(c.expect), std::string::npos) << r.err;
  }
}

}  // namespace
}  // namespace compress

namespace compress {
namespace {

TEST(BadInput, BrokenTokenizerJsonIsExit2) {
  const std::string sample = std::string(COMPRESS_SOURCE_DIR) + "/samples/pycode-tiny";
  const nlohmann::json good = nlohmann::json::parse(testing::ReadFile(sample + "/tokenizer.json"));
  struct Case {
    std::string name;
    std::function<void(nlohmann::json&)> edit;
    std::string expect;
  };
  const std::vector<Case> cases = {
      {"model.type a number", [](nlohmann::json& j) { j["model"]["type"] = 7; }, "wrong type"},
      {"vocab id 2^30", [](nlohmann::json& j) { j["model"]["vocab"]["zzz"] = 1 << 30; }, "is not a valid id"},
      {"added token id 2^30",
       [](nlohmann::json& j) { j["added_tokens"] = {{{"id", 1 << 30}, {"content", "<x>"}}}; }, "beyond"},
      {"merges not a list", [](nlohmann::json& j) { j["model"]["merges"] = 3; }, "tokenizer.json"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    ScratchDir d;
    fs::copy(sample, d / "m");
    nlohmann::json j = good;
    c.edit(j);
    fs::remove(d / "m/tokenizer.json");
    WriteFile(d / "m/tokenizer.json", j.dump());
    WriteFile(d / "t.txt", "def f(x):\n    return x + 1\n");
    auto r = testing::RunCompress("eval '" + (d / "m") + "' --text '" + (d / "t.txt") + "'", d.path().string(), 60);
    EXPECT_EQ(r.exit_code, 2) << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
    EXPECT_NE(r.err.find(c.expect), std::string::npos) << r.err;
  }
}

TEST(BadInput, ManySmallTensorsScaleLinearly) {
  // 200,000 tensors: a quadratic step anywhere in read, cast or write takes minutes.
  ScratchDir d;
  std::string header = "{";
  for (int i = 0; i < 200000; ++i) {
    header += fmt::format("{}\"t{}\":{{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[{},{}]}}", i ? "," : "",
                          i, 8 * i, 8 * i + 8);
  }
  header += "}";
  fs::create_directories(d / "m");
  WriteFile(d / "m/model.safetensors", Safetensors(header, std::string(8 * 200000, '\0')));
#ifdef COMPRESS_SANITIZED
  constexpr int kSeconds = 1200;  // AddressSanitizer: about 10x slower, still far from quadratic
#else
  constexpr int kSeconds = 120;
#endif
  auto r = testing::RunCompress("run '" + (d / "m") + "' -q -p cast{dtype=f16} -o '" + (d / "out") + "'",
                                d.path().string(), kSeconds);
  EXPECT_EQ(r.exit_code, 0) << r.err;
}

// A GGUF output of a quantization no ggml block type holds is refused before the work (a
// GPTQ run of hours must not fail at the write), unless a later pass turns it into one.
TEST(BadInput, GgufOutputOfAQuantizationItCannotHoldIsRefusedBeforeTheWork) {
  const std::string sample = std::string(COMPRESS_SOURCE_DIR) + "/samples/pycode-tiny";
  ScratchDir d;
  WriteFile(d / "t.txt", std::string(4000, 'a'));
  struct Case {
    std::string pipeline, expect;
  };
  const std::vector<Case> refused = {
      {"quantize-gptq{bits=4,group-size=128}", "pass 1 'quantize-gptq' makes weights no GGUF block type stores (group size 128"},
      {"quantize-int8", "one scale per output channel"},
      {"quantize-int{bits=4,group-size=32}", "f32 scales"},
      {"quantize-nf4", "format nf4"},
      {"cast{dtype=f16},quantize-int{bits=4,group-size=32,symmetric=false,scale-dtype=f16}", "pass 2 'quantize-int'"},
  };
  for (const auto& c : refused) {
    SCOPED_TRACE(c.pipeline);
    auto r = testing::RunCompress("run '" + sample + "' -p '" + c.pipeline + "' -o '" + (d / "o.gguf") +
                                      "' --calibration '" + (d / "t.txt") + "' --calib-samples 2 --calib-seqlen 16",
                                  d.path().string(), 60);
    EXPECT_EQ(r.exit_code, 2) << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
    EXPECT_NE(r.err.find(c.expect), std::string::npos) << r.err;
    EXPECT_FALSE(fs::exists(d / "o.gguf"));
  }
  // Dequantized again before the write: accepted.
  auto r = testing::RunCompress("run '" + sample + "' -q -p 'quantize-int8,dequantize{dtype=f16}' -o '" +
                                    (d / "o.gguf") + "'",
                                d.path().string(), 60);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(fs::exists(d / "o.gguf"));
}

}  // namespace
}  // namespace compress
