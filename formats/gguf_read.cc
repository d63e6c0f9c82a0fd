// GGUF reader: llama/qwen2 files with F32/F16/BF16/Q8_0/Q4_0/MXFP4 tensors, back into a Hugging Face
// style model (names, config.json, rotate-half q/k rows) that the runtime and passes take.
#include <cmath>
#include <cstring>
#include <map>
#include <set>

#include "core/block_quant.h"
#include "core/checked_math.h"
#include "core/codebook.h"
#include "core/dtype.h"
#include "core/status.h"
#include "formats/gguf.h"
#include "formats/gguf_layout.h"
#include "formats/hf_config.h"
#include "nlohmann/json.hpp"

namespace compress {
namespace {

using namespace gguf;  // NOLINT: value and tensor type names

// Bounds-checked cursor over the mapped file; every failure names the file and the offset.
class Cursor {
 public:
  Cursor(const std::string& path, const uint8_t* data, size_t size) : path_(path), data_(data), size_(size) {}
  absl::Status Need(uint64_t n, const char* what) {
    if (n > size_ - pos_) {
      return DataLoss("{}: truncated GGUF: {} needs {} bytes at offset {}, the file has {}", path_, what, n,
                      pos_, size_);
    }
    return absl::OkStatus();
  }
  template <typename T>
  absl::StatusOr<T> Pod(const char* what) {
    RETURN_IF_ERROR(Need(sizeof(T), what));
    T v;
    std::memcpy(&v, data_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  absl::StatusOr<std::string> Str(const char* what) {
    ASSIGN_OR_RETURN(uint64_t n, Pod<uint64_t>(what));
    RETURN_IF_ERROR(Need(n, what));
    std::string s(reinterpret_cast<const char*>(data_ + pos_), n);
    pos_ += n;
    return s;
  }
  size_t pos() const { return pos_; }

 private:
  const std::string& path_;
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
};

// A metadata value as JSON (numbers, bools, strings and arrays of them).
absl::StatusOr<nlohmann::json> ReadValue(Cursor& c, uint32_t type, const std::string& path, int depth = 0) {
  switch (type) {
    case kU8:
      return c.Pod<uint8_t>("a u8 value");
    case kI8:
      return c.Pod<int8_t>("an i8 value");
    case kU16:
      return c.Pod<uint16_t>("a u16 value");
    case kI16:
      return c.Pod<int16_t>("an i16 value");
    case kU32:
      return c.Pod<uint32_t>("a u32 value");
    case kI32:
      return c.Pod<int32_t>("an i32 value");
    case kU64:
      return c.Pod<uint64_t>("a u64 value");
    case kI64:
      return c.Pod<int64_t>("an i64 value");
    case kF32:
      return c.Pod<float>("an f32 value");
    case kF64:
      return c.Pod<double>("an f64 value");
    case kBool: {
      ASSIGN_OR_RETURN(uint8_t b, c.Pod<uint8_t>("a bool value"));
      return b != 0;
    }
    case kString:
      return c.Str("a string value");
    case kArray: {
      if (depth > 0) return DataLoss("{}: nested GGUF arrays are not supported", path);
      ASSIGN_OR_RETURN(uint32_t et, c.Pod<uint32_t>("an array type"));
      ASSIGN_OR_RETURN(uint64_t n, c.Pod<uint64_t>("an array length"));
      RETURN_IF_ERROR(c.Need(n, "the array's elements"));  // every element takes >= 1 byte
      nlohmann::json a = nlohmann::json::array();
      for (uint64_t i = 0; i < n; ++i) {
        ASSIGN_OR_RETURN(nlohmann::json v, ReadValue(c, et, path, depth + 1));
        a.push_back(std::move(v));
      }
      return a;
    }
  }
  return DataLoss("{}: unknown GGUF metadata value type {} at offset {}", path, type, c.pos());
}

struct Info {
  std::string name;
  std::vector<uint64_t> ne;
  TensorType type;
  uint64_t offset = 0;
};

absl::StatusOr<uint64_t> GetU(const std::map<std::string, nlohmann::json>& kv, const std::string& key,
                              const std::string& path) {
  auto it = kv.find(key);
  if (it == kv.end() || !it->second.is_number_integer() || it->second.get<int64_t>() < 0) {
    return DataLoss("{}: GGUF metadata '{}' is missing or not a non-negative integer", path, key);
  }
  return it->second.get<uint64_t>();
}

}  // namespace

absl::StatusOr<Model> LoadGguf(const std::string& path) {
  ASSIGN_OR_RETURN(auto file, MappedFile::Open(path));
  Cursor c(path, file->data(), file->size());
  ASSIGN_OR_RETURN(uint32_t magic, c.Pod<uint32_t>("the magic"));
  if (magic != kMagic) return DataLoss("{}: not a GGUF file (bad magic)", path);
  ASSIGN_OR_RETURN(uint32_t version, c.Pod<uint32_t>("the version"));
  if (version != 2 && version != 3)
    return Unimplemented("{}: GGUF version {} (compress reads 2 and 3)", path, version);
  ASSIGN_OR_RETURN(uint64_t n_tensors, c.Pod<uint64_t>("the tensor count"));
  ASSIGN_OR_RETURN(uint64_t n_kv, c.Pod<uint64_t>("the metadata count"));
  if (n_tensors > file->size() / 8 || n_kv > file->size() / 8) {
    return DataLoss("{}: GGUF header claims {} tensors and {} metadata entries, more than the file holds",
                    path, n_tensors, n_kv);
  }
  std::map<std::string, nlohmann::json> kv;
  for (uint64_t i = 0; i < n_kv; ++i) {
    ASSIGN_OR_RETURN(std::string key, c.Str("a metadata key"));
    ASSIGN_OR_RETURN(uint32_t type, c.Pod<uint32_t>("a metadata type"));
    ASSIGN_OR_RETURN(nlohmann::json v, ReadValue(c, type, path));
    if (!kv.emplace(key, std::move(v)).second) {
      return DataLoss("{}: GGUF metadata key '{}' appears twice", path, key);
    }
  }
  uint64_t alignment = kAlignment;
  if (kv.count("general.alignment")) {
    ASSIGN_OR_RETURN(alignment, GetU(kv, "general.alignment", path));
    if (alignment == 0 || (alignment & (alignment - 1)) || alignment > (1u << 20)) {
      return DataLoss("{}: general.alignment {} is not a power of two up to 1 MiB", path, alignment);
    }
  }
  std::vector<Info> infos;
  std::set<std::string> names;
  for (uint64_t i = 0; i < n_tensors; ++i) {
    Info t;
    ASSIGN_OR_RETURN(t.name, c.Str("a tensor name"));
    if (!names.insert(t.name).second) return DataLoss("{}: tensor '{}' appears twice", path, t.name);
    ASSIGN_OR_RETURN(uint32_t dims, c.Pod<uint32_t>("a tensor rank"));
    if (dims < 1 || dims > 2)
      return Unimplemented("{}: tensor '{}' has {} dimensions (1 or 2 here)", path, t.name, dims);
    for (uint32_t d = 0; d < dims; ++d) {
      ASSIGN_OR_RETURN(uint64_t n, c.Pod<uint64_t>("a tensor dimension"));
      if (n == 0 || n > (1ull << 32))
        return DataLoss("{}: tensor '{}' dimension {} is {}", path, t.name, d, n);
      t.ne.push_back(n);
    }
    ASSIGN_OR_RETURN(uint32_t type, c.Pod<uint32_t>("a tensor type"));
    if (!KnownType(type)) {
      return Unimplemented(
          "{}: tensor '{}' has ggml type {}; compress reads F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, "
          "Q2_K..Q6_K, IQ4_NL, IQ4_XS and MXFP4",
          path, t.name, type);
    }
    t.type = static_cast<TensorType>(type);
    if (t.ne[0] % TypeBlock(t.type)) {
      return DataLoss("{}: tensor '{}' has {} columns, not a multiple of {}'s {}-element block", path, t.name,
                      t.ne[0], TypeName(t.type), TypeBlock(t.type));
    }
    ASSIGN_OR_RETURN(t.offset, c.Pod<uint64_t>("a tensor offset"));
    if (t.offset % alignment)
      return DataLoss("{}: tensor '{}' offset {} is not aligned", path, t.name, t.offset);
    infos.push_back(std::move(t));
  }
  const uint64_t data_start = (c.pos() + alignment - 1) / alignment * alignment;
  if (!infos.empty() && data_start > file->size()) {
    return DataLoss("{}: truncated GGUF: tensor data would start at offset {}, the file has {} bytes", path,
                    data_start, file->size());
  }

  const std::string arch = kv.count("general.architecture") && kv["general.architecture"].is_string()
                               ? kv["general.architecture"].get<std::string>()
                               : std::string();
  const bool gemma = arch == "gemma" || arch == "gemma2" || arch == "gemma3";
  if (arch != "llama" && arch != "qwen2" && arch != "qwen3" && arch != "phi3" && !gemma) {
    return Unimplemented("{}: GGUF architecture '{}' (compress reads llama, qwen2, qwen3, phi3, gemma, gemma2 and "
                         "gemma3)",
                         path, arch);
  }
  const std::string k = arch + ".";
  ASSIGN_OR_RETURN(uint64_t layers, GetU(kv, k + "block_count", path));
  ASSIGN_OR_RETURN(uint64_t hidden, GetU(kv, k + "embedding_length", path));
  ASSIGN_OR_RETURN(uint64_t heads, GetU(kv, k + "attention.head_count", path));
  ASSIGN_OR_RETURN(uint64_t ffn, GetU(kv, k + "feed_forward_length", path));
  if (heads == 0) return DataLoss("{}: {}attention.head_count is 0", path, k);
  uint64_t kv_heads = heads, head_dim = hidden / heads, ctx = 2048;
  if (kv.count(k + "attention.head_count_kv")) {
    ASSIGN_OR_RETURN(kv_heads, GetU(kv, k + "attention.head_count_kv", path));
  }
  if (kv.count(k + "attention.key_length")) {
    ASSIGN_OR_RETURN(head_dim, GetU(kv, k + "attention.key_length", path));
  }
  if (kv.count(k + "context_length")) {
    ASSIGN_OR_RETURN(ctx, GetU(kv, k + "context_length", path));
  }
  auto get_f = [&](const std::string& key, double fallback) {
    auto it = kv.find(key);
    return it != kv.end() && it->second.is_number() ? it->second.get<double>() : fallback;
  };

  Model m;
  m.format = ModelFormat::kSafetensors;  // held with Hugging Face names and config from here on
  m.source = path;
  m.inputs.push_back(path);
  m.metadata["compress.source_format"] = "gguf";
  int64_t vocab = 0;
  for (const Info& t : infos) {
    ASSIGN_OR_RETURN(std::string hf, HfName(t.name, arch));
    const int64_t cols = static_cast<int64_t>(t.ne[0]);
    const int64_t rows = t.ne.size() == 2 ? static_cast<int64_t>(t.ne[1]) : 1;
    const uint64_t row_bytes = RowBytes(t.type, cols);
    const std::optional<uint64_t> size = CheckedMulU(row_bytes, static_cast<uint64_t>(rows));
    if (!size || *size > file->size() || t.offset > file->size() - data_start ||
        *size > file->size() - data_start - t.offset) {
      return DataLoss("{}: tensor '{}' ([{} x {}] at data offset {}) runs past the end of the file", path,
                      t.name, rows, cols, t.offset);
    }
    const uint64_t nbytes = *size;
    const uint8_t* src = file->data() + data_start + t.offset;
    const Shape shape = t.ne.size() == 2 ? Shape{rows, cols} : Shape{cols};
    if (hf == "model.embed_tokens.weight") vocab = rows;
    const bool rope =
        arch == "llama" && (t.name.ends_with("attn_q.weight") || t.name.ends_with("attn_k.weight"));
    const int64_t rope_heads = t.name.ends_with("attn_q.weight") ? heads : kv_heads;
    if (rope && CheckedMul(rope_heads, static_cast<int64_t>(head_dim)) != rows) {
      return DataLoss("{}: tensor '{}' has {} rows, not {} heads x {}", path, t.name, rows, rope_heads,
                      head_dim);
    }
    const bool quantized =
        t.type == TensorType::kQ8_0 || t.type == TensorType::kQ4_0 || t.type == TensorType::kMXFP4;
    // Other block types stay in their bytes, as a block DType (decoded when values are needed).
    const DType dense = t.type == TensorType::kF32   ? DType::kF32
                        : t.type == TensorType::kF16 ? DType::kF16
                        : t.type == TensorType::kBF16
                            ? DType::kBF16
                            : *BlockDType(t.type);  // used when !quantized
    if (IsBlockType(dense) && t.ne.size() != 2) {
      return DataLoss("{}: {} tensor '{}' is not 2-D", path, TypeName(t.type), t.name);
    }
    if (gemma && t.ne.size() == 1 && t.type == TensorType::kF32 && hf.ends_with("norm.weight")) {
      std::vector<float> w(cols);  // llama.cpp's gemma norms hold 1 + w
      std::memcpy(w.data(), src, nbytes);
      for (float& x : w) x -= 1.f;
      ASSIGN_OR_RETURN(Tensor nt, Tensor::FromF32(w, shape, DType::kF32));
      m.tensors.Set(hf, std::move(nt));
      continue;
    }
    if (!rope && !quantized) {  // dense and in place: a view of the mapping
      m.tensors.Set(hf,
                    Tensor(dense, shape, std::make_shared<SliceBuffer>(file, data_start + t.offset, nbytes)));
      continue;
    }
    std::vector<uint8_t> bytes(src, src + nbytes);
    if (rope) PermuteRopeRows(bytes.data(), rows, row_bytes, rope_heads, /*to_gguf=*/false);
    if (quantized) {
      if (t.ne.size() != 2) return DataLoss("{}: quantized tensor '{}' is not 2-D", path, t.name);
      QuantInfo q;
      q.bits = t.type == TensorType::kQ8_0 ? 8 : 4;
      q.symmetric = true;
      q.group_size = kBlock;
      q.channels = rows;
      q.groups = cols / kBlock;
      q.original_dtype = DType::kF16;
      q.scales.resize(rows * q.groups);
      std::vector<int8_t> codes(rows * cols);
      const uint64_t block_bytes = row_bytes / q.groups;
      if (t.type == TensorType::kMXFP4) {
        ASSIGN_OR_RETURN(const Codebook* book, FindCodebook("mxfp4"));
        q.format = "mxfp4";
        q.levels.assign(book->levels.begin(), book->levels.end());
      }
      for (int64_t i = 0; i < rows * q.groups; ++i) {
        const uint8_t* b = bytes.data() + i * block_bytes;
        int8_t* out = codes.data() + i * kBlock;
        if (t.type == TensorType::kMXFP4) {  // E8M0 scale; codes are E2M1 bit patterns
          if (b[0] == 255) return DataLoss("{}: tensor '{}' has a NaN (0xFF) E8M0 scale", path, t.name);
          q.scales[i] = std::ldexp(1.f, static_cast<int>(b[0]) - 127);
          UnpackNibbles(b + 1, 0, out);
          continue;
        }
        uint16_t d;
        std::memcpy(&d, b, 2);
        q.scales[i] = F16ToF32(d);
        if (t.type == TensorType::kQ8_0) {
          std::memcpy(out, b + 2, kBlock);
        } else {
          UnpackNibbles(b + 2, 8, out);
        }
      }
      m.tensors.Set(hf, Tensor::Quantized(shape, std::move(codes), std::move(q)));
    } else {
      m.tensors.Set(hf, Tensor(dense, shape, std::make_shared<OwnedBuffer>(std::move(bytes))));
    }
  }
  if (vocab == 0) return DataLoss("{}: no token_embd.weight tensor", path);

  const std::map<std::string, std::string> kClass = {{"llama", "LlamaForCausalLM"},
                                                     {"qwen2", "Qwen2ForCausalLM"},
                                                     {"qwen3", "Qwen3ForCausalLM"},
                                                     {"phi3", "Phi3ForCausalLM"},
                                                     {"gemma", "GemmaForCausalLM"},
                                                     {"gemma2", "Gemma2ForCausalLM"},
                                                     {"gemma3", "Gemma3ForCausalLM"}};
  nlohmann::json cfg = {
      {"architectures", {kClass.at(arch)}},
      {"model_type", arch == "gemma3" ? "gemma3_text" : arch},
      {"hidden_size", hidden},
      {"num_hidden_layers", layers},
      {"num_attention_heads", heads},
      {"num_key_value_heads", kv_heads},
      {"head_dim", head_dim},
      {"intermediate_size", ffn},
      {"vocab_size", vocab},
      {"max_position_embeddings", ctx},
      {"rms_norm_eps", get_f(k + "attention.layer_norm_rms_epsilon", 1e-6)},
      {"rope_theta", get_f(k + "rope.freq_base", 10000.0)},
      {"tie_word_embeddings", !m.tensors.contains("lm_head.weight")},
      {"hidden_act", "silu"},
  };
  if (kv.count(k + "rope.dimension_count")) {
    ASSIGN_OR_RETURN(uint64_t rot, GetU(kv, k + "rope.dimension_count", path));
    if (rot != head_dim && rot > 0 && rot < head_dim) {
      cfg["partial_rotary_factor"] = static_cast<double>(rot) / static_cast<double>(head_dim);
    }
  }
  if (kv.count(k + "attention.sliding_window")) {
    ASSIGN_OR_RETURN(uint64_t window, GetU(kv, k + "attention.sliding_window", path));
    cfg["sliding_window"] = window;
  }
  if (gemma) {
    cfg["hidden_act"] = "gelu_pytorch_tanh";
    cfg["query_pre_attn_scalar"] = head_dim;
    cfg["tie_word_embeddings"] = true;
    cfg["rope_local_base_freq"] = get_f(k + "rope.freq_base_swa", 10000.0);
    if (auto it = kv.find(k + "attention.sliding_window_pattern"); it != kv.end() && it->second.is_array()) {
      nlohmann::json types = nlohmann::json::array();
      for (const auto& b : it->second) types.push_back(b.is_boolean() && b.get<bool>() ? "sliding_attention" : "full_attention");
      if (types.size() == layers) cfg["layer_types"] = types;
    }
    if (auto it = kv.find(k + "rope.scaling.type"); it != kv.end() && it->second == "linear") {
      cfg["rope_scaling"] = {{"rope_type", "linear"}, {"factor", get_f(k + "rope.scaling.factor", 1.0)}};
    }
    if (kv.count(k + "final_logit_softcapping")) cfg["final_logit_softcapping"] = get_f(k + "final_logit_softcapping", 0);
    if (kv.count(k + "attn_logit_softcapping")) cfg["attn_logit_softcapping"] = get_f(k + "attn_logit_softcapping", 0);
  }
  for (const char* key : {"bos", "eos"}) {
    const std::string g = fmt::format("tokenizer.ggml.{}_token_id", key);
    if (kv.count(g) && kv[g].is_number_integer()) cfg[fmt::format("{}_token_id", key)] = kv[g];
  }
  m.config = std::move(cfg);
  ASSIGN_OR_RETURN(HfConfig hc, ParseHfConfig(m.config, path));
  ASSIGN_OR_RETURN(m.arch, BuildHfArchitecture(hc, m.tensors, path));
  return m;
}

}  // namespace compress
