// GGUF output: layout read back by an independent parser in this file (header, metadata,
// tensor infos, alignment), values bit-exact against the model compress evaluates (dense,
// Q8_0, Q4_0, rope row order), and refusals that leave no file behind. llama.cpp itself
// loads the outputs in tests/llamacpp.
#include <gtest/gtest.h>

#include "core/quant.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <functional>
#include <cstring>
#include <map>
#include <variant>

#include "core/block_quant.h"
#include "core/dtype.h"
#include "core/report.h"
#include "formats/byte_level_splits.h"
#include "formats/gguf.h"
#include "formats/gguf_container.h"
#include "formats/gguf_tokenizer.h"
#include "formats/model_io.h"
#include "formats/safetensors.h"
#include "nlohmann/json.hpp"
#include "runtime/llama.h"
#include "tests/pipeline_util.h"
#include "tests/test_util.h"

namespace compress {
namespace {

using testing::ScratchDir;
using testing::SharedModel;

struct GgufTensor {
  std::vector<uint64_t> ne;
  uint32_t type = 0;
  uint64_t offset = 0;
};
using GgufValue = std::variant<uint64_t, int64_t, double, bool, std::string, std::vector<std::string>,
                               std::vector<int64_t>>;
struct GgufFile {
  uint32_t version = 0;
  std::map<std::string, GgufValue> kv;
  std::vector<std::string> order;
  std::map<std::string, GgufTensor> tensors;
  uint64_t data_start = 0;
  std::string bytes;
};

// A strict reader for what the writer may emit; throws on anything out of bounds.
class Reader {
 public:
  explicit Reader(const std::string& b) : b_(b) {}
  template <typename T>
  T Pod() {
    if (pos_ + sizeof(T) > b_.size()) throw std::runtime_error("read past the end");
    T v;
    std::memcpy(&v, b_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  std::string Str() {
    const uint64_t n = Pod<uint64_t>();
    if (pos_ + n > b_.size()) throw std::runtime_error("string past the end");
    std::string s = b_.substr(pos_, n);
    pos_ += n;
    return s;
  }
  GgufValue Value(uint32_t type) {
    switch (type) {
      case 0:
        return uint64_t{Pod<uint8_t>()};
      case 1:
        return int64_t{Pod<int8_t>()};
      case 2:
        return uint64_t{Pod<uint16_t>()};
      case 3:
        return int64_t{Pod<int16_t>()};
      case 4:
        return uint64_t{Pod<uint32_t>()};
      case 5:
        return int64_t{Pod<int32_t>()};
      case 6:
        return double{Pod<float>()};
      case 7: {
        const uint8_t v = Pod<uint8_t>();
        if (v > 1) throw std::runtime_error("bool not 0/1");
        return v == 1;
      }
      case 8:
        return Str();
      case 9: {
        const uint32_t et = Pod<uint32_t>();
        const uint64_t n = Pod<uint64_t>();
        if (et == 8) {
          std::vector<std::string> v;
          for (uint64_t i = 0; i < n; ++i) v.push_back(Str());
          return v;
        }
        std::vector<int64_t> v;
        for (uint64_t i = 0; i < n; ++i) {
          GgufValue e = Value(et);
          if (auto* s = std::get_if<int64_t>(&e))
            v.push_back(*s);
          else if (auto* u = std::get_if<uint64_t>(&e))
            v.push_back(static_cast<int64_t>(*u));
          else
            v.push_back(0);  // float arrays (SentencePiece scores) are read past, not checked here
        }
        return v;
      }
      case 10:
        return Pod<uint64_t>();
      case 11:
        return Pod<int64_t>();
      case 12:
        return Pod<double>();
    }
    throw std::runtime_error("unknown value type " + std::to_string(type));
  }
  size_t pos() const { return pos_; }

 private:
  const std::string& b_;
  size_t pos_ = 0;
};

GgufFile ReadGguf(const std::string& path) {
  GgufFile f;
  f.bytes = testing::ReadFile(path);
  Reader r(f.bytes);
  if (r.Pod<uint32_t>() != 0x46554747) throw std::runtime_error("bad magic");
  f.version = r.Pod<uint32_t>();
  const uint64_t n_tensors = r.Pod<uint64_t>(), n_kv = r.Pod<uint64_t>();
  for (uint64_t i = 0; i < n_kv; ++i) {
    std::string key = r.Str();
    const uint32_t type = r.Pod<uint32_t>();
    if (f.kv.count(key)) throw std::runtime_error("duplicate key " + key);
    f.kv[key] = r.Value(type);
  }
  for (uint64_t i = 0; i < n_tensors; ++i) {
    std::string name = r.Str();
    GgufTensor t;
    const uint32_t dims = r.Pod<uint32_t>();
    for (uint32_t d = 0; d < dims; ++d) t.ne.push_back(r.Pod<uint64_t>());
    t.type = r.Pod<uint32_t>();
    t.offset = r.Pod<uint64_t>();
    if (t.offset % 32) throw std::runtime_error("unaligned tensor " + name);
    f.order.push_back(name);
    f.tensors[name] = t;
  }
  f.data_start = (r.pos() + 31) / 32 * 32;
  return f;
}

// Values of a GGUF tensor decoded to f32 in GGUF row order.
std::vector<float> Decode(const GgufFile& f, const GgufTensor& t) {
  const int64_t cols = static_cast<int64_t>(t.ne[0]);
  const int64_t rows = t.ne.size() > 1 ? static_cast<int64_t>(t.ne[1]) : 1;
  std::vector<float> out(rows * cols);
  const auto* p = reinterpret_cast<const uint8_t*>(f.bytes.data() + f.data_start + t.offset);
  auto f16 = [](const uint8_t* b) {
    uint16_t h;
    std::memcpy(&h, b, 2);
    return F16ToF32(h);
  };
  for (int64_t i = 0; i < rows * cols; ++i) {
    switch (t.type) {
      case 0:
        std::memcpy(&out[i], p + 4 * i, 4);
        break;
      case 1:
        out[i] = f16(p + 2 * i);
        break;
      case 30: {
        uint16_t h;
        std::memcpy(&h, p + 2 * i, 2);
        out[i] = BF16ToF32(h);
        break;
      }
      case 8: {  // Q8_0: 34-byte blocks
        const uint8_t* blk = p + (i / 32) * 34;
        out[i] = f16(blk) * static_cast<float>(static_cast<int8_t>(blk[2 + i % 32]));
        break;
      }
      case 2: {  // Q4_0: 18-byte blocks, byte j = element j (low) | element j + 16 (high)
        const uint8_t* blk = p + (i / 32) * 18;
        const int j = static_cast<int>(i % 32);
        const int nib = j < 16 ? (blk[2 + j] & 15) : (blk[2 + j - 16] >> 4);
        out[i] = f16(blk) * static_cast<float>(nib - 8);
        break;
      }
      case 39: {  // MXFP4: 17-byte blocks, E8M0 scale then E2M1 codes laid out as Q4_0's
        static const float kE2M1[16] = {0, .5f, 1, 1.5f, 2, 3, 4, 6, -0.f, -.5f, -1, -1.5f, -2, -3, -4, -6};
        const uint8_t* blk = p + (i / 32) * 17;
        const int j = static_cast<int>(i % 32);
        const int nib = j < 16 ? (blk[1 + j] & 15) : (blk[1 + j - 16] >> 4);
        out[i] = std::ldexp(kE2M1[nib], static_cast<int>(blk[0]) - 127);
        break;
      }
      default:
        throw std::runtime_error("unexpected type " + std::to_string(t.type));
    }
  }
  return out;
}

// GGUF row order of llama.cpp's interleaved rope -> Hugging Face's rotate-half order.
std::vector<float> Unpermute(const std::vector<float>& g, int64_t rows, int64_t cols, int64_t heads) {
  const int64_t hd = rows / heads;
  std::vector<float> hf(g.size());
  for (int64_t h = 0; h < heads; ++h)
    for (int64_t i = 0; i < hd / 2; ++i)
      for (int64_t s = 0; s < 2; ++s)
        std::memcpy(&hf[(h * hd + s * hd / 2 + i) * cols], &g[(h * hd + 2 * i + s) * cols],
                    cols * sizeof(float));
  return hf;
}

uint64_t U(const GgufFile& f, const std::string& k) { return std::get<uint64_t>(f.kv.at(k)); }

// Every GGUF tensor decodes to exactly the values compress holds for its source tensor.
void ExpectSameValues(const GgufFile& f, const Model& m, uint32_t linear_type) {
  std::map<std::string, std::string> names = {{"model.embed_tokens.weight", "token_embd.weight"},
                                              {"model.norm.weight", "output_norm.weight"}};
  const char* suffix[][2] = {{"input_layernorm.weight", "attn_norm.weight"},
                             {"self_attn.q_proj.weight", "attn_q.weight"},
                             {"self_attn.k_proj.weight", "attn_k.weight"},
                             {"self_attn.v_proj.weight", "attn_v.weight"},
                             {"self_attn.o_proj.weight", "attn_output.weight"},
                             {"post_attention_layernorm.weight", "ffn_norm.weight"},
                             {"mlp.gate_proj.weight", "ffn_gate.weight"},
                             {"mlp.up_proj.weight", "ffn_up.weight"},
                             {"mlp.down_proj.weight", "ffn_down.weight"}};
  for (size_t b = 0; b < m.arch.blocks.size(); ++b) {
    for (auto& s : suffix)
      names[fmt::format("model.layers.{}.{}", b, s[0])] = fmt::format("blk.{}.{}", b, s[1]);
  }
  ASSERT_EQ(f.tensors.size(), names.size());
  const int64_t heads = U(f, "llama.attention.head_count"), kv = U(f, "llama.attention.head_count_kv");
  for (const auto& [hf, gg] : names) {
    SCOPED_TRACE(gg);
    ASSERT_TRUE(f.tensors.count(gg));
    const GgufTensor& t = f.tensors.at(gg);
    const Tensor& src = m.tensors.at(hf);
    ASSERT_EQ(t.ne[0], static_cast<uint64_t>(src.shape().back()));
    if (src.shape().size() == 2) {
      ASSERT_EQ(t.ne[1], static_cast<uint64_t>(src.shape()[0]));
      if (hf.find("layers") != std::string::npos) {
        EXPECT_EQ(t.type, linear_type);
      }
    } else {
      EXPECT_EQ(t.type, 0u);  // norms in f32
    }
    std::vector<float> got = Decode(f, t);
    if (gg.ends_with("attn_q.weight") || gg.ends_with("attn_k.weight")) {
      got = Unpermute(got, src.shape()[0], src.shape()[1], gg.ends_with("attn_q.weight") ? heads : kv);
    }
    auto want = src.ToF32();
    ASSERT_TRUE(want.ok());
    ASSERT_EQ(got.size(), want->size());
    for (size_t i = 0; i < got.size(); ++i) ASSERT_EQ(got[i], (*want)[i]) << "element " << i;
  }
}

TEST(Gguf, PycodeTinyDenseLayoutMetadataAndValues) {
  const std::string src = SharedModel("pycode-tiny");
  REQUIRE_SHARED(src);
  auto m = LoadModel(src);
  ASSERT_TRUE(m.ok()) << m.status();
  ScratchDir dir;
  auto w = SaveModel(*m, dir / "tiny.gguf", {});
  ASSERT_TRUE(w.ok()) << w.status();
  GgufFile f = ReadGguf(dir / "tiny.gguf");
  EXPECT_EQ(f.version, 3u);
  EXPECT_EQ(std::get<std::string>(f.kv.at("general.architecture")), "llama");
  EXPECT_EQ(U(f, "general.file_type"), 32u);  // mostly BF16, as the checkpoint
  EXPECT_EQ(U(f, "llama.block_count"), 4u);
  EXPECT_EQ(U(f, "llama.embedding_length"), 128u);
  EXPECT_EQ(U(f, "llama.feed_forward_length"), 384u);
  EXPECT_EQ(U(f, "llama.attention.head_count"), 4u);
  EXPECT_EQ(U(f, "llama.attention.head_count_kv"), 2u);
  EXPECT_EQ(U(f, "llama.rope.dimension_count"), 32u);
  EXPECT_EQ(U(f, "llama.context_length"), 1024u);
  EXPECT_FLOAT_EQ(std::get<double>(f.kv.at("llama.attention.layer_norm_rms_epsilon")), 1e-6);
  EXPECT_EQ(std::get<double>(f.kv.at("llama.rope.freq_base")), 10000.0);
  EXPECT_EQ(std::get<std::string>(f.kv.at("tokenizer.ggml.model")), "gpt2");
  EXPECT_EQ(std::get<std::string>(f.kv.at("tokenizer.ggml.pre")), "gpt-2");
  const auto& tokens = std::get<std::vector<std::string>>(f.kv.at("tokenizer.ggml.tokens"));
  const auto& types = std::get<std::vector<int64_t>>(f.kv.at("tokenizer.ggml.token_type"));
  ASSERT_EQ(tokens.size(), 8192u);
  ASSERT_EQ(types.size(), 8192u);
  EXPECT_EQ(tokens[0], "<|endoftext|>");
  EXPECT_EQ(types[0], 3);  // control
  EXPECT_EQ(types[1], 1);
  auto tok = nlohmann::json::parse(testing::ReadFile(src + "/tokenizer.json"));
  EXPECT_EQ(std::get<std::vector<std::string>>(f.kv.at("tokenizer.ggml.merges")).size(),
            tok["model"]["merges"].size());
  for (const auto& [piece, id] : tok["model"]["vocab"].items()) ASSERT_EQ(tokens[id.get<int>()], piece);
  EXPECT_EQ(U(f, "tokenizer.ggml.bos_token_id"), 0u);
  EXPECT_FALSE(std::get<bool>(f.kv.at("tokenizer.ggml.add_bos_token")));
  EXPECT_FALSE(f.tensors.count("output.weight"));  // tied: llama.cpp reuses token_embd
  ExpectSameValues(f, *m, 30);
  // The last tensor ends the file, padded to the alignment.
  uint64_t end = 0;
  for (const auto& [n, t] : f.tensors) end = std::max(end, t.offset);
  EXPECT_EQ(f.bytes.size() % 32, 0u);
  EXPECT_GT(f.bytes.size(), f.data_start + end);
}

// The byte-level split forms llama.cpp names by more than one regex (tests/runtime/
// tokenizer_variants.json: SmolLM / StarCoder's digits then GPT-2's regex, DeepSeek-Coder's and
// DeepSeek-LLM's Split lists, the lists of files without a pre name and of Falcon): the GGUF says
// llama.cpp's name, and reading it back gives the
// same split steps. A form with a step llama.cpp has no name for is refused naming it.
TEST(Gguf, MultiStepPreTokenizersGetLlamaCppsNameAndReadBack) {
  const std::string src = SharedModel("pycode-tiny");
  REQUIRE_SHARED(src);
  const auto variants = nlohmann::json::parse(
      testing::ReadFile(std::string(COMPRESS_SOURCE_DIR) + "/tests/runtime/tokenizer_variants.json"));
  const std::map<std::string, std::string> names = {
      {"smollm_form", "smollm"},        {"deepseek_coder_form", "deepseek-coder"}, {"deepseek_llm_form", "deepseek-llm"},
      {"default_form", "default"},      {"falcon_form", "falcon"}};
  ScratchDir dir;
  auto write = [&](const nlohmann::json& pre) -> absl::StatusOr<std::filesystem::path> {
    const std::filesystem::path copy = dir / "m";
    std::filesystem::remove_all(copy);
    std::filesystem::create_directories(copy);
    for (const char* f : {"config.json", "model.safetensors"})
      std::filesystem::copy_file(std::filesystem::path(src) / f, copy / f);
    auto tok = nlohmann::json::parse(testing::ReadFile(src + "/tokenizer.json"));
    tok["pre_tokenizer"] = pre;
    testing::WriteFile(copy / "tokenizer.json", tok.dump());
    auto m = LoadModel(copy.string());
    if (!m.ok()) return m.status();
    std::filesystem::remove(dir / "out.gguf");
    auto w = SaveModel(*m, dir / "out.gguf", {});
    if (!w.ok()) return w.status();
    return dir / "out.gguf";
  };
  for (const auto& [form, name] : names) {
    SCOPED_TRACE(form);
    const nlohmann::json& pre = variants.at(form).at("pre_tokenizer");
    auto path = write(pre);
    ASSERT_TRUE(path.ok()) << path.status();
    GgufFile f = ReadGguf(*path);
    EXPECT_EQ(std::get<std::string>(f.kv.at("tokenizer.ggml.pre")), name);
    auto g = gguf::ReadContainer(path->string());
    ASSERT_TRUE(g.ok()) << g.status();
    auto back = TokenizerJsonFromGguf(*g);
    ASSERT_TRUE(back.ok()) << back.status();
    auto want = ByteLevelSplits(pre, "want"), got = ByteLevelSplits((*back)["pre_tokenizer"], "got");
    ASSERT_TRUE(want.ok() && got.ok() && *want && *got);
    EXPECT_EQ(**got, **want) << (*back)["pre_tokenizer"].dump();
  }
  // Digits, then a ByteLevel without its regex: no llama.cpp name.
  auto refused = write({{"type", "Sequence"},
                        {"pretokenizers",
                         {{{"type", "Digits"}, {"individual_digits", true}},
                          {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}}}});
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(std::string(refused.status().message()).find("split steps llama.cpp names"), std::string::npos)
      << refused.status();
}

// general.name is the model's folder name, except that llama.cpp refuses a file whose name says
// Phi-3 when the vocabulary lacks the tokens of Phi-3's strip rules (</s>, <unk>, <s>,
// <|endoftext|>): pycode-tiny's has none of them.
TEST(Gguf, NameDoesNotTriggerLlamaCppsPhi3TokenRules) {
  const std::string src = SharedModel("pycode-tiny");
  REQUIRE_SHARED(src);
  ScratchDir dir;
  for (auto [folder, want] : {std::pair{"pycode-tiny", "pycode-tiny"}, std::pair{"My-Phi3-phi-3x", "My-Phi 3-phi 3x"}}) {
    const std::filesystem::path copy = dir / folder;
    std::filesystem::create_directories(copy);
    for (const char* f : {"config.json", "model.safetensors", "tokenizer.json"})
      std::filesystem::copy_file(std::filesystem::path(src) / f, copy / f);
    auto m = LoadModel(copy.string());
    ASSERT_TRUE(m.ok()) << m.status();
    auto w = SaveModel(*m, dir / "out.gguf", {});
    ASSERT_TRUE(w.ok()) << w.status();
    GgufFile f = ReadGguf(dir / "out.gguf");
    EXPECT_EQ(std::get<std::string>(f.kv.at("general.name")), want);
    std::filesystem::remove(dir / "out.gguf");
  }
}

TEST(Gguf, Q8Q4AndMxfp4BlocksHoldTheSameValuesAsTheQuantizedModel) {
  const std::string src = SharedModel("pycode-tiny");
  REQUIRE_SHARED(src);
  for (auto [pipeline, type, ftype] :
       {std::tuple{"quantize-int{bits=8,group-size=32,scale-dtype=f16}", 8u, 7u},
        std::tuple{"quantize-int{bits=4,group-size=32,scale-dtype=f16}", 2u, 2u},
        std::tuple{"quantize-mxfp4", 39u, 38u}}) {
    SCOPED_TRACE(pipeline);
    auto m = LoadModel(src);
    ASSERT_TRUE(m.ok());
    auto r = testing::RunPipeline(*m, pipeline);
    ASSERT_TRUE(r.ok()) << r.status();
    ScratchDir dir;
    auto w = SaveModel(*m, dir / "q.gguf", {});
    ASSERT_TRUE(w.ok()) << w.status();
    GgufFile f = ReadGguf(dir / "q.gguf");
    EXPECT_EQ(U(f, "general.file_type"), ftype);
    EXPECT_EQ(U(f, "general.quantization_version"), 2u);
    ExpectSameValues(f, *m, type);
  }
}

TEST(Gguf, RefusesLayoutsWithoutAnExactGgufTypeAndWritesNothing) {
  const std::string src = SharedModel("pycode-tiny");
  REQUIRE_SHARED(src);
  struct Case {
    std::string pipeline, message;
  } cases[] = {
      {"quantize-int{bits=4,group-size=128,scale-dtype=f16}", "group size 128"},
      {"quantize-int{bits=4,group-size=32}", "scale-dtype=f16"},
      {"quantize-int{bits=8,group-size=32,symmetric=false,scale-dtype=f16}", "asymmetric"},
      {"quantize-nf4{block=32}", "format nf4"},
      {"factorize-svd{rank=8}", "factorized"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.pipeline);
    auto m = LoadModel(src);
    ASSERT_TRUE(m.ok());
    auto r = testing::RunPipeline(*m, c.pipeline);
    ASSERT_TRUE(r.ok()) << r.status();
    ScratchDir dir;
    auto w = SaveModel(*m, dir / "x.gguf", {});
    ASSERT_FALSE(w.ok());
    EXPECT_EQ(w.status().code(), absl::StatusCode::kUnimplemented);
    EXPECT_NE(std::string(w.status().message()).find(c.message), std::string::npos) << w.status();
    EXPECT_TRUE(std::filesystem::is_empty(dir.path())) << "a failed write left files behind";
  }
}

TEST(Gguf, RefusesOnnx) {
  ScratchDir dir;
  const std::string onnx_path = SharedModel("stories260K/model.onnx");
  REQUIRE_SHARED(onnx_path);
  auto onnx = LoadModel(onnx_path);
  ASSERT_TRUE(onnx.ok()) << onnx.status();
  auto w = SaveModel(*onnx, dir / "o.gguf", {});
  ASSERT_FALSE(w.ok());
  EXPECT_NE(std::string(w.status().message()).find("ONNX"), std::string::npos) << w.status();
  EXPECT_TRUE(std::filesystem::is_empty(dir.path()));
}

}  // namespace
}  // namespace compress

namespace compress {
namespace {

TEST(Gguf, ReadBackGivesTheWrittenModel) {
  const std::string src = SharedModel("pycode-tiny");
  REQUIRE_SHARED(src);
  auto m = LoadModel(src);
  ASSERT_TRUE(m.ok());
  ASSERT_TRUE(testing::RunPipeline(*m, "quantize-int{bits=4,group-size=32,scale-dtype=f16}").ok());
  ScratchDir dir;
  ASSERT_TRUE(SaveModel(*m, dir / "q.gguf", {}).ok());
  auto back = LoadModel(dir / "q.gguf");
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->arch.family, "llama");
  EXPECT_EQ(back->arch.blocks.size(), 4u);
  EXPECT_EQ(back->config["num_key_value_heads"], 2);
  EXPECT_EQ(back->config["head_dim"], 32);
  EXPECT_EQ(back->config["tie_word_embeddings"], true);
  EXPECT_EQ(back->metadata.at("compress.source_format"), "gguf");
  EXPECT_EQ(Summarize(*back).format, "gguf");  // what `inspect` and reports call the input
  EXPECT_EQ(Summarize(*m).format, "safetensors");
  ASSERT_EQ(back->tensors.size(), m->tensors.size());
  for (const auto& name : m->tensors.names()) {
    SCOPED_TRACE(name);
    ASSERT_TRUE(back->tensors.contains(name));
    const Tensor& a = m->tensors.at(name);
    const Tensor& b = back->tensors.at(name);
    EXPECT_EQ(a.quant() != nullptr, b.quant() != nullptr);
    auto va = a.ToF32();
    auto vb = b.ToF32();
    ASSERT_TRUE(va.ok() && vb.ok());
    ASSERT_EQ(*va, *vb);  // bit-exact values, q/k rows back in Hugging Face order
  }
}

// The run's read-back (LoadOptions{check_codes = false}) reads no block at load: each quantized
// tensor's scales and codes come from one read when used, equal to a checked load's.
TEST(Gguf, UncheckedLoadReadsBlocksWhenUsed) {
  const std::string src = SharedModel("pycode-tiny");
  REQUIRE_SHARED(src);
  for (const char* pipeline : {"quantize-int{bits=4,group-size=32,scale-dtype=f16}", "quantize-int{bits=8,group-size=32,scale-dtype=f16}",
                               "quantize-mxfp4"}) {
    SCOPED_TRACE(pipeline);
    auto m = LoadModel(src);
    ASSERT_TRUE(m.ok());
    ASSERT_TRUE(testing::RunPipeline(*m, pipeline).ok());
    ScratchDir dir;
    ASSERT_TRUE(SaveModel(*m, dir / "q.gguf", {}).ok());
    auto checked = LoadModel(dir / "q.gguf");
    ASSERT_TRUE(checked.ok()) << checked.status();
    const int64_t produced = DeferredQuant::counts().produced;
    auto lazy = LoadModel(dir / "q.gguf", LoadOptions{.check_codes = false});
    ASSERT_TRUE(lazy.ok()) << lazy.status();
    EXPECT_EQ(DeferredQuant::counts().produced, produced);
    int quantized = 0;
    for (const auto& name : checked->tensors.names()) {
      SCOPED_TRACE(name);
      const Tensor& a = checked->tensors.at(name);
      const Tensor& b = lazy->tensors.at(name);
      ASSERT_EQ(a.quant() != nullptr, b.quant() != nullptr);
      if (!a.quant()) continue;
      EXPECT_TRUE(b.quant()->deferred());
      EXPECT_EQ(b.storage_bytes(), a.storage_bytes());
      EXPECT_EQ(b.quant()->format(), a.quant()->format());
      std::shared_ptr<const Buffer> codes;
      if (quantized++ % 2 == 0) codes = *b.Data();
      EXPECT_EQ(b.quant()->scales(), a.quant()->scales());
      if (!codes) codes = *b.Data();
      const auto ca = *a.Data();
      ASSERT_EQ(codes->size(), ca->size());
      EXPECT_EQ(std::memcmp(codes->data(), ca->data(), ca->size()), 0);
    }
    EXPECT_GT(quantized, 0);
    EXPECT_EQ(DeferredQuant::counts().produced, produced + quantized);
  }
}

TEST(Gguf, TruncatedOrLyingFilesFailWithAClearError) {
  const std::string src = SharedModel("pycode-tiny");
  REQUIRE_SHARED(src);
  auto m = LoadModel(src);
  ASSERT_TRUE(m.ok());
  ScratchDir dir;
  ASSERT_TRUE(SaveModel(*m, dir / "ok.gguf", {}).ok());
  const std::string bytes = testing::ReadFile(dir / "ok.gguf");
  // Cut inside the header, the metadata, the tensor infos and the tensor data.
  for (size_t cut : {size_t{6}, size_t{30}, size_t{5000}, bytes.size() / 2, bytes.size() - 1}) {
    SCOPED_TRACE(cut);
    testing::WriteFile(dir / "cut.gguf", bytes.substr(0, cut));
    auto r = LoadModel(dir / "cut.gguf");
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss) << r.status();
    const std::string msg(r.status().message());
    EXPECT_TRUE(msg.find("truncated") != std::string::npos || msg.find("past the end") != std::string::npos ||
                msg.find("more than the file holds") != std::string::npos)
        << msg;
  }
  std::string lying = bytes;
  const uint64_t huge = 1ull << 40;
  std::memcpy(lying.data() + 8, &huge, 8);  // tensor count
  testing::WriteFile(dir / "lying.gguf", lying);
  auto r = LoadModel(dir / "lying.gguf");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(std::string(r.status().message()).find("more than the file holds"), std::string::npos)
      << r.status();
  std::string magic = bytes;
  magic[0] = 'X';
  testing::WriteFile(dir / "magic.gguf", magic);
  r = LoadModel(dir / "magic.gguf");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(std::string(r.status().message()).find("not a GGUF file"), std::string::npos) << r.status();
}

}  // namespace
}  // namespace compress

namespace compress {
namespace {

// A random-weight Llama whose rows are whole 256-element blocks (hidden 256, FFN 512, 2 blocks,
// 4 heads of 64 with 2 KV heads, untied head), with pycode-tiny's tokenizer (vocab 8192).
std::string WriteWideLlama(const std::string& dir_str) {
  const std::filesystem::path dir(dir_str);
  const int64_t V = 8192, D = 256, F = 512, L = 2;
  std::filesystem::create_directories(dir);
  std::mt19937 rng(7);
  std::vector<std::pair<std::string, Shape>> specs = {{"model.embed_tokens.weight", {V, D}}};
  for (int l = 0; l < L; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    for (auto [n, s] : std::vector<std::pair<std::string, Shape>>{{"input_layernorm.weight", {D}},
                                                                  {"self_attn.q_proj.weight", {D, D}},
                                                                  {"self_attn.k_proj.weight", {128, D}},
                                                                  {"self_attn.v_proj.weight", {128, D}},
                                                                  {"self_attn.o_proj.weight", {D, D}},
                                                                  {"post_attention_layernorm.weight", {D}},
                                                                  {"mlp.gate_proj.weight", {F, D}},
                                                                  {"mlp.up_proj.weight", {F, D}},
                                                                  {"mlp.down_proj.weight", {D, F}}}) {
      specs.emplace_back(p + n, s);
    }
  }
  specs.emplace_back("model.norm.weight", Shape{D});
  specs.emplace_back("lm_head.weight", Shape{V, D});
  nlohmann::json header = nlohmann::json::object();
  std::string data;
  for (const auto& [name, shape] : specs) {
    std::vector<float> v(NumElements(shape));
    std::normal_distribution<float> nd(shape.size() == 1 ? 1.0f : 0.0f,
                                       shape.size() == 1 ? 0.1f : 1.0f / std::sqrt(static_cast<float>(shape.back())));
    for (float& x : v) x = nd(rng);
    header[name] = {{"dtype", "F32"}, {"shape", shape}, {"data_offsets", {data.size(), data.size() + 4 * v.size()}}};
    data.append(reinterpret_cast<const char*>(v.data()), 4 * v.size());
  }
  std::string h = header.dump();
  h.append((8 - h.size() % 8) % 8, ' ');
  std::ofstream out(dir / "model.safetensors", std::ios::binary);
  const uint64_t n = h.size();
  out.write(reinterpret_cast<const char*>(&n), 8);
  out << h << data;
  out.close();
  nlohmann::json cfg = {{"architectures", {"LlamaForCausalLM"}}, {"model_type", "llama"}, {"hidden_size", D},
                        {"intermediate_size", F}, {"num_hidden_layers", L}, {"num_attention_heads", 4},
                        {"num_key_value_heads", 2}, {"head_dim", 64}, {"vocab_size", V},
                        {"max_position_embeddings", 512}, {"rms_norm_eps", 1e-5}, {"rope_theta", 10000.0},
                        {"tie_word_embeddings", false}, {"hidden_act", "silu"}};
  std::ofstream(dir / "config.json") << cfg.dump(2);
  std::filesystem::copy_file(SharedModel("pycode-tiny/tokenizer.json"), dir / "tokenizer.json");
  return dir.string();
}

TEST(Gguf, BlockTypesFollowLlamaQuantizeRulesAndRoundTripBitExactly) {
  REQUIRE_SHARED(SharedModel("pycode-tiny/tokenizer.json"));
  ScratchDir dir;
  const std::string src = WriteWideLlama(dir / "wide");
  struct Case {
    std::string type;
    uint32_t ftype;
    std::map<std::string, DType> expect;  // tensor -> dtype
  };
  const Case cases[] = {
      // use_more_bits(i, 2) holds for block 1 only: its attn_v and ffn_down get Q6_K
      {"Q4_K_M",
       15,
       {{"model.embed_tokens.weight", DType::kQ4_K},
        {"lm_head.weight", DType::kQ6_K},
        {"model.layers.0.self_attn.v_proj.weight", DType::kQ4_K},
        {"model.layers.1.self_attn.v_proj.weight", DType::kQ6_K},
        {"model.layers.0.mlp.down_proj.weight", DType::kQ4_K},
        {"model.layers.1.mlp.down_proj.weight", DType::kQ6_K},
        {"model.layers.0.mlp.up_proj.weight", DType::kQ4_K}}},
      // Q2_K: attn_v Q3_K (2 query heads per KV head), ffn_down and attn_output Q3_K
      {"Q2_K",
       10,
       {{"model.layers.0.self_attn.v_proj.weight", DType::kQ3_K},
        {"model.layers.0.self_attn.o_proj.weight", DType::kQ3_K},
        {"model.layers.0.mlp.down_proj.weight", DType::kQ3_K},
        {"model.layers.0.mlp.gate_proj.weight", DType::kQ2_K},
        {"lm_head.weight", DType::kQ6_K}}},
      // Q3_K_M: the first two attn_v Q5_K, attn_output Q4_K, ffn_down Q5_K below n/16 else Q4_K
      {"Q3_K_M",
       12,
       {{"model.layers.1.self_attn.v_proj.weight", DType::kQ5_K},
        {"model.layers.0.self_attn.o_proj.weight", DType::kQ4_K},
        {"model.layers.0.mlp.down_proj.weight", DType::kQ4_K},
        {"model.layers.0.self_attn.q_proj.weight", DType::kQ3_K}}},
      {"IQ4_XS", 30, {{"model.layers.0.mlp.down_proj.weight", DType::kIQ4_XS}, {"model.layers.0.self_attn.q_proj.weight", DType::kIQ4_XS}}},
      {"Q5_1", 9, {{"model.layers.0.self_attn.q_proj.weight", DType::kQ5_1}, {"lm_head.weight", DType::kQ6_K}}},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.type);
    auto m = LoadModel(src);
    ASSERT_TRUE(m.ok()) << m.status();
    auto r = testing::RunPipeline(*m, "quantize-gguf{type=" + c.type + "}");
    ASSERT_TRUE(r.ok()) << r.status();
    for (const auto& [name, dt] : c.expect) EXPECT_EQ(DTypeName(m->tensors.at(name).dtype()), DTypeName(dt)) << name;
    const std::string out = dir / (c.type + ".gguf");
    ASSERT_TRUE(SaveModel(*m, out, {}).ok());
    GgufFile f = ReadGguf(out);
    EXPECT_EQ(U(f, "general.file_type"), c.ftype);
    auto back = LoadModel(out);
    ASSERT_TRUE(back.ok()) << back.status();
    for (const auto& name : m->tensors.names()) {
      SCOPED_TRACE(name);
      const Tensor& a = m->tensors.at(name);
      const Tensor& b = back->tensors.at(name);
      auto va = a.ToF32(), vb = b.ToF32();
      ASSERT_TRUE(va.ok() && vb.ok());
      ASSERT_EQ(*va, *vb);  // q/k rows permuted and back, blocks and all
      if (a.dtype() == DType::kQ8_0) continue;  // read back as int8 codes with f16 scales (the same values)
      ASSERT_EQ(DTypeName(a.dtype()), DTypeName(b.dtype()));
      if (IsBlockType(a.dtype())) {
        auto da = a.Data(), db = b.Data();
        ASSERT_TRUE(da.ok() && db.ok());
        ASSERT_EQ(0, std::memcmp((*da)->data(), (*db)->data(), (*da)->size())) << "block bytes differ";
      }
    }
    // and back to dense: dequantize gives the decoded values
    ASSERT_TRUE(testing::RunPipeline(*back, "dequantize").ok());
    EXPECT_EQ(back->tensors.at("model.layers.0.mlp.up_proj.weight").dtype(), DType::kF32);
  }
}

TEST(Gguf, BlockTypesAreRefusedBySafetensors) {
  REQUIRE_SHARED(SharedModel("pycode-tiny/tokenizer.json"));
  ScratchDir dir;
  auto m = LoadModel(WriteWideLlama(dir / "wide"));
  ASSERT_TRUE(m.ok());
  ASSERT_TRUE(testing::RunPipeline(*m, "quantize-gguf{type=Q4_K_M}").ok());
  auto w = SaveModel(*m, dir / "out", {});
  ASSERT_FALSE(w.ok());
  EXPECT_NE(std::string(w.status().message()).find("GGUF block type"), std::string::npos) << w.status();
  EXPECT_FALSE(std::filesystem::exists(dir / "out")) << "a refused write left a folder behind";
}

// A GGUF whose weights are already blocks is re-quantized after `dequantize`; quantize-gguf
// alone says so instead of "no weight selected".
TEST(Gguf, RequantizingSaysToDequantizeFirst) {
  REQUIRE_SHARED(SharedModel("pycode-tiny/tokenizer.json"));
  ScratchDir dir;
  auto m = LoadModel(WriteWideLlama(dir / "wide"));
  ASSERT_TRUE(m.ok());
  ASSERT_TRUE(testing::RunPipeline(*m, "quantize-gguf{type=Q4_K_M}").ok());
  ASSERT_TRUE(SaveModel(*m, dir / "q.gguf", {}).ok());
  auto q = LoadModel(dir / "q.gguf");
  ASSERT_TRUE(q.ok()) << q.status();
  auto r = testing::RunPipeline(*q, "quantize-gguf{type=Q8_0}");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(std::string(r.status().message()).find("already quantized"), std::string::npos) << r.status();
  EXPECT_NE(std::string(r.status().message()).find("dequantize,quantize-gguf"), std::string::npos)
      << r.status();
  auto q2 = LoadModel(dir / "q.gguf");
  ASSERT_TRUE(q2.ok());
  ASSERT_TRUE(testing::RunPipeline(*q2, "dequantize,quantize-gguf{type=Q8_0}").ok());
  int64_t q8 = 0;
  for (const std::string& name : q2->tensors.names())
    if (q2->tensors.at(name).dtype() == DType::kQ8_0) ++q8;
  EXPECT_GT(q8, 0);
}

// search=false: the tensors of every block type are llama.cpp's rounding without an importance matrix
// of the weights (tests/core/block_quant_test.cc checks it against ggml's bytes), every row;
// the default search gives a smaller error; GPTQ does not combine with it.
TEST(Gguf, SearchFalseRoundsAsLlamaQuantize) {
  REQUIRE_SHARED(SharedModel("pycode-tiny/tokenizer.json"));
  ScratchDir dir;
  auto m = LoadModel(WriteWideLlama(dir / "wide"));
  ASSERT_TRUE(m.ok());
  const std::string name = "model.layers.0.mlp.up_proj.weight";
  const std::vector<float> w = *m->tensors.at(name).ToF32();
  const Shape shape = m->tensors.at(name).shape();
  for (const std::string t : {"Q4_0", "Q8_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K_S", "Q4_K_S", "Q5_K_S", "Q6_K",
                              "IQ4_NL", "IQ4_XS"}) {
    SCOPED_TRACE(t);
    Model plain = *m, searched = *m;
    ASSERT_TRUE(testing::RunPipeline(plain, "quantize-gguf{type=" + t + ",pure=true,search=false}").ok());
    ASSERT_TRUE(testing::RunPipeline(searched, "quantize-gguf{type=" + t + ",pure=true}").ok());
    const Tensor& q = plain.tensors.at(name);
    std::string lower = t.ends_with("_S") ? t.substr(0, t.size() - 2) : t;  // a mix: its base type
    for (char& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    ASSERT_EQ(q.dtype(), *ParseDType(lower));
    std::vector<uint8_t> want(DTypeBytes(q.dtype(), w.size()));
    const int64_t row_bytes = DTypeBytes(q.dtype(), shape[1]);
    for (int64_t r = 0; r < shape[0]; ++r)
      EncodeBlocksReference(q.dtype(), w.data() + r * shape[1], shape[1], want.data() + r * row_bytes);
    auto bytes = q.Data();
    ASSERT_TRUE(bytes.ok());
    EXPECT_TRUE(std::equal(want.begin(), want.end(), (*bytes)->data())) << "not the reference rounding";
    auto sse = [&](const Tensor& x) {
      const std::vector<float> y = *x.ToF32();
      double e = 0;
      for (size_t i = 0; i < w.size(); ++i) e += (static_cast<double>(w[i]) - y[i]) * (w[i] - y[i]);
      return e;
    };
    EXPECT_LT(sse(searched.tensors.at(name)), sse(q)) << "the search should beat plain rounding";
  }
  Model g = *m;
  auto r = testing::RunPipeline(g, "quantize-gguf{type=Q4_0,search=false,method=gptq}");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(std::string(r.status().message()).find("search=false"), std::string::npos) << r.status();
}

}  // namespace
}  // namespace compress

namespace compress {
namespace {

// A family fixture of tests/golden/families (random weights, vocabulary 96) with a byte-level
// BPE tokenizer of 96 tokens beside it, as GGUF output needs one; `edit` changes config.json.
std::filesystem::path FamilyWithTokenizer(const std::string& family, const std::filesystem::path& dir,
                                          const std::function<void(nlohmann::json&)>& edit = nullptr) {
  namespace fs = std::filesystem;
  const fs::path src = fs::path(COMPRESS_SOURCE_DIR) / "tests/golden/families" / family;
  const fs::path out = dir / family;
  fs::create_directories(out);
  fs::copy_file(src / "model.safetensors", out / "model.safetensors");
  nlohmann::json cfg = nlohmann::json::parse(testing::ReadFile(src / "config.json"));
  if (edit) edit(cfg);
  testing::WriteFile(out / "config.json", cfg.dump());
  nlohmann::json vocab = nlohmann::json::object();
  for (int i = 0; i < 96; ++i) vocab[std::string(1, static_cast<char>(32 + i))] = i;  // ASCII 32..127
  nlohmann::json tok = {{"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", nlohmann::json::array()}}},
                        {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}}},
                        {"added_tokens", nlohmann::json::array()}};
  testing::WriteFile(out / "tokenizer.json", tok.dump());
  return out;
}

// A Mistral whose sliding window is shorter than its context becomes llama.cpp's `llama`, which
// has no sliding window: the output's caveats say so (and `compress run` warns). A window as
// long as the context changes nothing and is not mentioned; Phi-3's window has its GGUF key.
TEST(Gguf, OutputCaveatsNameASlidingWindowLlamaCppDrops) {
  ScratchDir dir;
  for (auto [family, window, warned] : {std::tuple{"mistral", 8, true}, std::tuple{"mistral", 64, false},
                                        std::tuple{"phi3", 8, false}}) {
    SCOPED_TRACE(std::string(family) + " window " + std::to_string(window));
    ScratchDir sub;
    const std::filesystem::path d =
        FamilyWithTokenizer(family, sub.path(), [&](nlohmann::json& c) { c["sliding_window"] = window; });
    auto m = LoadModel(d);
    ASSERT_TRUE(m.ok()) << m.status();
    auto w = SaveModel(*m, sub / "out.gguf", {});
    ASSERT_TRUE(w.ok()) << w.status();
    const auto caveats = GgufOutputCaveats(*m, sub / "out.gguf");
    const bool says = std::any_of(caveats.begin(), caveats.end(), [](const std::string& c) {
      return c.find("sliding window of 8 tokens has no key in GGUF's 'llama' architecture") != std::string::npos;
    });
    EXPECT_EQ(says, warned) << ::testing::PrintToString(caveats);
  }
}

// llama.cpp's gemma2 / gemma3 graphs scale attention scores by head_dim^-1/2, except at the 27B
// block counts (46 / 62), where they use hidden / heads: Gemma-2-27B's and Gemma-3-27B's
// query_pre_attn_scalar. A 46-block Gemma 2 with that scalar is written (and read back with it,
// the same logits); the same model with head_dim's scalar, and a 3-block one with another, are
// refused naming the scalar llama.cpp would use.
TEST(Gguf, Gemma2At27BBlockCountTakesHiddenOverHeadsAsItsScalar) {
  ScratchDir dir;
  const std::filesystem::path d = FamilyWithTokenizer("gemma2", dir.path());
  auto three = LoadModel(d);
  ASSERT_TRUE(three.ok()) << three.status();
  auto refused = SaveModel(*three, dir / "three.gguf", {});
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(std::string(refused.status().message()).find("query_pre_attn_scalar 24 is not the 16"), std::string::npos)
      << refused.status();
  // 46 blocks: copies of blocks 0 (sliding) and 1 (full), alternating as Gemma 2's layer_types do.
  TensorStore store;
  for (const auto& name : three->tensors.names()) {
    const std::string pre = "model.layers.";
    if (!name.starts_with(pre)) {
      store.Set(name, three->tensors.at(name));
      continue;
    }
    const size_t dot = name.find('.', pre.size());
    const int layer = std::stoi(name.substr(pre.size(), dot - pre.size()));
    if (layer > 1) continue;
    for (int l = layer; l < 46; l += 2) store.Set(pre + std::to_string(l) + name.substr(dot), three->tensors.at(name));
  }
  ASSERT_TRUE(WriteSafetensors(store, d.string(), {}).ok());
  nlohmann::json cfg = nlohmann::json::parse(testing::ReadFile(d / "config.json"));
  cfg["num_hidden_layers"] = 46;
  cfg["layer_types"] = nlohmann::json::array();
  for (int l = 0; l < 46; ++l) cfg["layer_types"].push_back(l % 2 == 0 ? "sliding_attention" : "full_attention");
  cfg["query_pre_attn_scalar"] = 8;  // hidden 32 / 4 heads (head_dim 16)
  testing::WriteFile(d / "config.json", cfg.dump());
  auto m = LoadModel(d);
  ASSERT_TRUE(m.ok()) << m.status();
  auto saved = SaveModel(*m, dir / "g27.gguf", {});
  ASSERT_TRUE(saved.ok()) << saved.status();
  auto back = LoadModel(dir / "g27.gguf");
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->config["query_pre_attn_scalar"], 8);
  auto ra = LlamaRuntime::Create(*m);
  auto rb = LlamaRuntime::Create(*back);
  ASSERT_TRUE(ra.ok() && rb.ok());
  const std::vector<int32_t> ids = {5, 17, 3, 44, 90, 12, 8, 61, 30, 2, 77, 19};
  auto la = (*ra)->Forward(ids);
  auto lb = (*rb)->Forward(ids);
  ASSERT_TRUE(la.ok() && lb.ok());
  EXPECT_LE((*la - *lb).cwiseAbs().maxCoeff(), 1e-5 * la->cwiseAbs().maxCoeff());  // (1 + w norms: one rounding)
  cfg["query_pre_attn_scalar"] = 16;
  testing::WriteFile(d / "config.json", cfg.dump());
  auto head_dim_scalar = LoadModel(d);
  ASSERT_TRUE(head_dim_scalar.ok());
  auto wrong = SaveModel(*head_dim_scalar, dir / "wrong.gguf", {});
  ASSERT_FALSE(wrong.ok());
  EXPECT_NE(std::string(wrong.status().message()).find("query_pre_attn_scalar 16 is not the 8"), std::string::npos)
      << wrong.status();
}

// A multimodal container's GGUF is its text decoder alone, as llama.cpp's converter writes it
// (the vision tower goes to a separate mmproj file there): the text family's architecture, every
// decoder tensor under its plain name, nothing of the vision tower; read back, the weights and
// the logits are the container's own, bit for bit.
TEST(Gguf, MultimodalContainersWriteTheirTextDecoder) {
  for (const auto& [family, arch] : std::vector<std::pair<std::string, std::string>>{
           {"gemma3", "gemma3"}, {"mistral3_prefixed", "llama"}, {"llava", "llama"}, {"qwen2_5_vl_prefixed", "qwen2"},
           {"smolvlm", "llama"}}) {
    SCOPED_TRACE(family);
    ScratchDir dir;
    // llama.cpp's gemma3 scales attention by head_dim^-1/2: the fixture's other scalar is refused.
    auto m = LoadModel(FamilyWithTokenizer(family, dir.path(), [](nlohmann::json& c) {
      if (c["text_config"].contains("query_pre_attn_scalar")) c["text_config"]["query_pre_attn_scalar"] = 16;
    }));
    ASSERT_TRUE(m.ok()) << m.status();
    ASSERT_FALSE(m->arch.container.empty());
    auto saved = SaveModel(*m, dir / "text.gguf", {});
    ASSERT_TRUE(saved.ok()) << saved.status();
    GgufFile f = ReadGguf(dir / "text.gguf");
    EXPECT_EQ(std::get<std::string>(f.kv.at("general.architecture")), arch);
    EXPECT_EQ(U(f, arch + ".block_count"), m->arch.blocks.size());
    for (const auto& [name, t] : f.tensors) {
      EXPECT_TRUE(name.starts_with("blk.") || name.starts_with("token_embd") || name.starts_with("output"))
          << name;
    }
    auto back = LoadModel(dir / "text.gguf");
    ASSERT_TRUE(back.ok()) << back.status();
    EXPECT_TRUE(back->arch.container.empty());
    int64_t decoder = 0;
    for (const auto& name : m->tensors.names()) {
      if (m->RoleOf(name) == TensorRole::kOther) continue;
      ++decoder;
      std::string plain = name;
      for (const auto& [from, to] : {std::pair<std::string, std::string>{"model.language_model.", "model."},
                                     {"language_model.model.", "model."},
                                     {"model.text_model.", "model."},
                                     {"language_model.lm_head.", "lm_head."}}) {
        if (name.starts_with(from)) plain = to + name.substr(from.size());
      }
      SCOPED_TRACE(name);
      ASSERT_TRUE(back->tensors.contains(plain)) << plain;
      const std::vector<float> va = *m->tensors.at(name).ToF32(), vb = *back->tensors.at(plain).ToF32();
      ASSERT_EQ(va.size(), vb.size());
      // Gemma's norms go into the file as 1 + w (llama.cpp's form) and come back as w: one rounding.
      const bool gemma_norm = arch == "gemma3" && m->RoleOf(name) == TensorRole::kNorm;
      for (size_t i = 0; i < va.size(); ++i) {
        if (gemma_norm)
          ASSERT_NEAR(va[i], vb[i], 2e-7) << i;
        else
          ASSERT_EQ(va[i], vb[i]) << i;
      }
    }
    EXPECT_EQ(decoder, static_cast<int64_t>(back->tensors.size()));
    const std::vector<int32_t> ids = {5, 17, 3, 44, 90, 12, 8, 61};
    auto ra = LlamaRuntime::Create(*m);
    auto rb = LlamaRuntime::Create(*back);
    ASSERT_TRUE(ra.ok() && rb.ok());
    auto la = (*ra)->Forward(ids);
    auto lb = (*rb)->Forward(ids);
    ASSERT_TRUE(la.ok() && lb.ok());
    EXPECT_LE((*la - *lb).cwiseAbs().maxCoeff(), arch == "gemma3" ? 1e-5 * la->cwiseAbs().maxCoeff() : 0.f);
    // `compress run` says what the file leaves out.
    const std::string src = dir / family;
    auto r = testing::RunCompress("run '" + src + "' -q -p 'quantize-gguf{type=Q8_0}' -o '" + std::string(dir / "q8.gguf") + "'",
                                  dir.path().string());
    EXPECT_EQ(r.exit_code, 0) << r.err;
    EXPECT_NE(r.err.find("the GGUF holds its text decoder only"), std::string::npos) << r.err;
    // llama.cpp's importance matrix of the decoder, keyed by GGUF names, and read back by quantize-gguf.
    testing::WriteFile(dir / "calib.txt", std::string(4000, 'a') + " def f(x): return x + 1\n");
    r = testing::RunCompress("imatrix '" + src + "' -q --calibration '" + std::string(dir / "calib.txt") +
                                 "' --calib-samples 4 --calib-seqlen 32 -o '" + std::string(dir / "m.imatrix") + "'",
                             dir.path().string());
    ASSERT_EQ(r.exit_code, 0) << r.err;
    r = testing::RunCompress("run '" + src + "' -q -p 'quantize-gguf{type=IQ4_XS,imatrix=" +
                                 std::string(dir / "m.imatrix") + "}' -o '" + std::string(dir / "iq4.gguf") + "'",
                             dir.path().string());
    EXPECT_EQ(r.exit_code, 0) << r.err;
  }
}

// Mixtral (llama.cpp's llama with experts) and Qwen3-MoE: each block's experts become one 3-D
// tensor {in, out, experts}, the router ffn_gate_inp, the expert counts and widths metadata; read
// back, every expert comes out bit-exact under its Hugging Face name. (llama.cpp runs these
// files in tests/llamacpp.)
TEST(Gguf, MixtureOfExpertsMergeExpertsIntoOneTensorAndReadBack) {
  for (const auto& [family, arch] : std::vector<std::pair<std::string, std::string>>{{"mixtral", "llama"},
                                                                                      {"qwen3_moe", "qwen3moe"}}) {
    SCOPED_TRACE(family);
    ScratchDir dir;
    auto m = LoadModel(FamilyWithTokenizer(family, dir.path()));
    ASSERT_TRUE(m.ok()) << m.status();
    const Architecture& a = m->arch;
    ASSERT_GT(a.num_experts, 1);
    ASSERT_TRUE(SaveModel(*m, dir / "moe.gguf", {}).ok());
    GgufFile f = ReadGguf(dir / "moe.gguf");
    EXPECT_EQ(std::get<std::string>(f.kv.at("general.architecture")), arch);
    EXPECT_EQ(U(f, arch + ".expert_count"), static_cast<uint64_t>(a.num_experts));
    EXPECT_EQ(U(f, arch + ".expert_used_count"), static_cast<uint64_t>(a.experts_per_token));
    if (arch == "qwen3moe") {
      EXPECT_EQ(U(f, arch + ".expert_feed_forward_length"), static_cast<uint64_t>(a.expert_intermediate_size));
    }
    const uint64_t h = a.hidden_size, ff = a.expert_intermediate_size, e = a.num_experts;
    for (int64_t b = 0; b < static_cast<int64_t>(a.blocks.size()); ++b) {
      const std::string p = "blk." + std::to_string(b) + ".";
      EXPECT_EQ(f.tensors.at(p + "ffn_gate_exps.weight").ne, (std::vector<uint64_t>{h, ff, e}));
      EXPECT_EQ(f.tensors.at(p + "ffn_up_exps.weight").ne, (std::vector<uint64_t>{h, ff, e}));
      EXPECT_EQ(f.tensors.at(p + "ffn_down_exps.weight").ne, (std::vector<uint64_t>{ff, h, e}));
      EXPECT_EQ(f.tensors.at(p + "ffn_gate_inp.weight").ne, (std::vector<uint64_t>{h, e}));
    }
    auto back = LoadModel(dir / "moe.gguf");
    ASSERT_TRUE(back.ok()) << back.status();
    EXPECT_EQ(back->arch.family, family);
    EXPECT_EQ(back->arch.num_experts, a.num_experts);
    EXPECT_EQ(back->arch.experts_per_token, a.experts_per_token);
    EXPECT_EQ(back->arch.expert_intermediate_size, a.expert_intermediate_size);
    for (const auto& name : m->tensors.names()) {
      SCOPED_TRACE(name);
      if (name.ends_with("rotary_emb.inv_freq")) continue;
      ASSERT_TRUE(back->tensors.contains(name));
      auto va = m->tensors.at(name).ToF32();
      auto vb = back->tensors.at(name).ToF32();
      ASSERT_TRUE(va.ok() && vb.ok());
      ASSERT_EQ(*va, *vb);
    }
  }
}

// GPT-2: Conv1D weights [in, out] become ggml rows of inputs (dense values transposed, Q4_0
// codes with their channel-axis-1 scales), LayerNorm biases and learned positions kept, and
// read back into the Conv1D layout bit-exactly. (llama.cpp runs these files in tests/llamacpp.)
TEST(Gguf, Gpt2Conv1DWeightsAreTransposedAndReadBack) {
  for (const std::string pipeline : {"", "quantize-int{bits=4,group-size=32,scale-dtype=f16}"}) {
    SCOPED_TRACE(pipeline);
    ScratchDir dir;
    auto m = LoadModel(FamilyWithTokenizer("gpt2", dir.path()));
    ASSERT_TRUE(m.ok()) << m.status();
    if (!pipeline.empty()) {
      ASSERT_TRUE(testing::RunPipeline(*m, pipeline).ok());
    }
    ASSERT_TRUE(SaveModel(*m, dir / "g.gguf", {}).ok());
    GgufFile f = ReadGguf(dir / "g.gguf");
    EXPECT_EQ(std::get<std::string>(f.kv.at("general.architecture")), "gpt2");
    EXPECT_TRUE(f.kv.count("gpt2.attention.layer_norm_epsilon"));
    const uint64_t h = m->arch.hidden_size;
    EXPECT_EQ(f.tensors.at("blk.0.attn_qkv.weight").ne, (std::vector<uint64_t>{h, 3 * h}));
    EXPECT_EQ(f.tensors.at("blk.0.ffn_down.weight").ne, (std::vector<uint64_t>{4 * h, h}));
    EXPECT_EQ(f.tensors.at("blk.0.attn_qkv.weight").type, pipeline.empty() ? 0u : 2u);  // F32 / Q4_0
    EXPECT_TRUE(f.tensors.count("position_embd.weight"));
    EXPECT_TRUE(f.tensors.count("output_norm.bias"));
    // ggml row o of the qkv weight holds Hugging Face column o
    const Tensor& qkv = m->tensors.at("transformer.h.0.attn.c_attn.weight");
    auto w = qkv.ToF32();
    ASSERT_TRUE(w.ok());
    if (pipeline.empty()) {
      const float* rows = reinterpret_cast<const float*>(f.bytes.data() + f.data_start + f.tensors.at("blk.0.attn_qkv.weight").offset);
      for (uint64_t o : {uint64_t{0}, uint64_t{5}, 3 * h - 1}) {
        for (uint64_t i : {uint64_t{0}, h - 1}) EXPECT_EQ(rows[o * h + i], (*w)[i * 3 * h + o]);
      }
    }
    auto back = LoadModel(dir / "g.gguf");
    ASSERT_TRUE(back.ok()) << back.status();
    EXPECT_EQ(back->arch.family, "gpt2");
    for (const auto& name : m->tensors.names()) {
      SCOPED_TRACE(name);
      ASSERT_TRUE(back->tensors.contains(name));
      EXPECT_EQ(back->tensors.at(name).shape(), m->tensors.at(name).shape());
      EXPECT_EQ(back->tensors.at(name).quant() != nullptr, m->tensors.at(name).quant() != nullptr);
      auto va = m->tensors.at(name).ToF32();
      auto vb = back->tensors.at(name).ToF32();
      ASSERT_TRUE(va.ok() && vb.ok());
      ASSERT_EQ(*va, *vb);
    }
  }
}

// Rope scaling: llama3 becomes llama.cpp's rope_freqs divisors (1 for high frequencies, the factor
// for low ones, smoothed between), yarn and linear the rope.scaling keys; read back, the model
// has the same rotary frequencies (llama3 as equal short/long per-dimension factors); yarn with
// parameters llama.cpp does not take is refused. (llama.cpp runs such files in tests/llamacpp.)
TEST(Gguf, RopeScalingIsWrittenAsLlamaCppComputesIt) {
  ScratchDir dir;
  auto m = LoadModel(FamilyWithTokenizer("llama", dir.path()));  // llama3: factor 4, original 16, 1 / 4
  ASSERT_TRUE(m.ok()) << m.status();
  const nlohmann::json& rp = m->config["rope_parameters"];
  ASSERT_EQ(rp["rope_type"], "llama3");
  const double factor = rp["factor"], orig = rp["original_max_position_embeddings"];
  const double theta = rp["rope_theta"], lo = rp["low_freq_factor"], hi = rp["high_freq_factor"];
  ASSERT_TRUE(SaveModel(*m, dir / "l3.gguf", {}).ok());
  GgufFile f = ReadGguf(dir / "l3.gguf");
  const int64_t hd = m->arch.head_dim;
  ASSERT_EQ(f.tensors.at("rope_freqs.weight").ne, (std::vector<uint64_t>{static_cast<uint64_t>(hd / 2)}));
  const float* d = reinterpret_cast<const float*>(f.bytes.data() + f.data_start + f.tensors.at("rope_freqs.weight").offset);
  int smoothed = 0;
  for (int64_t i = 0; i < hd / 2; ++i) {
    const double wavelen = 2 * M_PI * std::pow(theta, 2.0 * static_cast<double>(i) / static_cast<double>(hd));
    if (wavelen < orig / hi) {
      EXPECT_EQ(d[i], 1.f) << i;
    } else if (wavelen > orig / lo) {
      EXPECT_EQ(d[i], static_cast<float>(factor)) << i;
    } else {
      const double smooth = (orig / wavelen - lo) / (hi - lo);
      EXPECT_NEAR(d[i], 1 / ((1 - smooth) / factor + smooth), 1e-6) << i;
      ++smoothed;
    }
  }
  EXPECT_GT(smoothed, 0);
  auto back = LoadModel(dir / "l3.gguf");
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->config["rope_scaling"]["rope_type"], "longrope");
  back->side_files.push_back(dir / "llama/tokenizer.json");  // a GGUF input brings no tokenizer.json
  auto again = SaveModel(*back, dir / "again.gguf", {});       // and written the same way again
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(ReadGguf(dir / "again.gguf").tensors.at("rope_freqs.weight").ne, f.tensors.at("rope_freqs.weight").ne);

  auto yarn = LoadModel(FamilyWithTokenizer("qwen3", dir / "y", [](nlohmann::json& c) {
    c["rope_parameters"] = {{"rope_theta", 10000.0}, {"rope_type", "yarn"}, {"factor", 4.0},
                            {"original_max_position_embeddings", 16}};
  }));
  ASSERT_TRUE(yarn.ok()) << yarn.status();
  ASSERT_TRUE(SaveModel(*yarn, dir / "yarn.gguf", {}).ok());
  GgufFile y = ReadGguf(dir / "yarn.gguf");
  EXPECT_EQ(std::get<std::string>(y.kv.at("qwen3.rope.scaling.type")), "yarn");
  EXPECT_EQ(U(y, "qwen3.rope.scaling.original_context_length"), 16u);
  // Phi-3's longrope: both factor vectors as tensors, the attention factor sqrt(1 + ln(64/16) / ln 16)
  auto phi = LoadModel(FamilyWithTokenizer("phi3_longrope", dir / "p"));
  ASSERT_TRUE(phi.ok()) << phi.status();
  ASSERT_TRUE(SaveModel(*phi, dir / "phi.gguf", {}).ok());
  GgufFile pf = ReadGguf(dir / "phi.gguf");
  EXPECT_EQ(pf.tensors.at("rope_factors_short.weight").ne, (std::vector<uint64_t>{4}));
  EXPECT_EQ(pf.tensors.at("rope_factors_long.weight").ne, (std::vector<uint64_t>{4}));
  const float* lf = reinterpret_cast<const float*>(pf.bytes.data() + pf.data_start + pf.tensors.at("rope_factors_long.weight").offset);
  EXPECT_EQ(std::vector<float>(lf, lf + 4), (std::vector<float>{1.5f, 2.5f, 4.f, 8.f}));
  EXPECT_NEAR(std::get<double>(pf.kv.at("phi3.rope.scaling.attn_factor")), std::sqrt(1 + std::log(4.0) / std::log(16.0)), 1e-6);
  EXPECT_EQ(U(pf, "phi3.rope.scaling.original_context_length"), 16u);
  auto phi_back = LoadModel(dir / "phi.gguf");
  ASSERT_TRUE(phi_back.ok()) << phi_back.status();
  // GGUF holds the factors as F32, as llama.cpp reads them
  EXPECT_EQ(phi_back->config["rope_scaling"]["short_factor"].get<std::vector<float>>(),
            phi->config["rope_parameters"]["short_factor"].get<std::vector<float>>());

  auto odd = LoadModel(FamilyWithTokenizer("qwen3", dir / "o", [](nlohmann::json& c) {
    c["rope_parameters"] = {{"rope_theta", 10000.0}, {"rope_type", "yarn"}, {"factor", 4.0}, {"attention_factor", 0.5}};
  }));
  ASSERT_TRUE(odd.ok()) << odd.status();
  auto w = SaveModel(*odd, dir / "odd.gguf", {});
  ASSERT_FALSE(w.ok());
  EXPECT_NE(std::string(w.status().message()).find("rope scaling 'yarn'"), std::string::npos) << w.status();
  EXPECT_FALSE(std::filesystem::exists(dir / "odd.gguf"));
}

// Layouts llama.cpp's MoE graphs would compute differently are refused, naming the reason, and
// nothing is written: dense blocks among expert blocks (Qwen's mlp_only_layers), top-k weights
// left unnormalized where llama.cpp's graph normalizes them (qwen3moe; and the reverse for
// qwen2moe, which never normalizes).
TEST(Gguf, RefusesMoeLayoutsLlamaCppWouldComputeDifferently) {
  struct Case {
    std::string family, why;
    std::function<void(nlohmann::json&)> edit;
  };
  const std::vector<Case> cases = {
      {"qwen2_moe", "dense FFN among mixture-of-experts blocks", nullptr},  // the fixture's mlp_only_layers [1]
      {"qwen3_moe", "norm_topk_prob is false", [](nlohmann::json& c) { c["norm_topk_prob"] = false; }},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.why);
    ScratchDir dir;
    auto m = LoadModel(FamilyWithTokenizer(c.family, dir.path(), c.edit));
    ASSERT_TRUE(m.ok()) << m.status();
    auto w = SaveModel(*m, dir / "moe.gguf", {});
    ASSERT_FALSE(w.ok());
    EXPECT_NE(std::string(w.status().message()).find(c.why), std::string::npos) << w.status();
    EXPECT_FALSE(std::filesystem::exists(dir / "moe.gguf"));
  }
}

}  // namespace
}  // namespace compress
