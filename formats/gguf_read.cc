// GGUF reader: the architectures GGUF output writes (formats/gguf_layout.h GgufArchitecture) with
// dense, Q8_0/Q4_0/MXFP4 and ggml block tensors, back into a Hugging Face style model (names,
// config.json, rotate-half q/k rows, per-expert weights) that the runtime and passes take.
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <map>
#include <optional>
#include <set>

#include "absl/strings/numbers.h"
#include "core/block_quant.h"
#include "core/checked_math.h"
#include "core/codebook.h"
#include "core/dtype.h"
#include "core/status.h"
#include "formats/gguf.h"
#include "formats/gguf_container.h"
#include "formats/gguf_layout.h"
#include "formats/gguf_tokenizer.h"
#include "formats/hf_config.h"
#include "formats/quantized_safetensors.h"
#include "nlohmann/json.hpp"

namespace compress {

using namespace gguf;  // NOLINT: value and tensor type names

namespace {

// GGUF holds GPT-2's block weights as rows of inputs ([out, in]); the model holds them as
// Hugging Face's Conv1D [in, out]. Integer and MXFP4 codes move with their scales (channel
// axis 1) as the quantized-safetensors reader restores them; dense values are transposed in
// their type; other ggml block types are decoded to f32 first (exact values; the blocks
// themselves cannot run along Conv1D columns).
absl::Status TransposeToConv1D(Model& m) {
  RETURN_IF_ERROR(RestoreConv1dQuantized(m, {"transformer.h"}));
  TensorStore& tensors = m.tensors;
  for (const std::string& name : tensors.names()) {
    if (!name.starts_with("transformer.h.") || !name.ends_with(".weight")) continue;
    const Tensor& t = tensors.at(name);
    if (t.shape().size() != 2 || t.quant()) continue;
    const int64_t out = t.shape()[0], in = t.shape()[1];
    ASSIGN_OR_RETURN(std::vector<float> v, t.ToF32());
    std::vector<float> moved(v.size());
    for (int64_t o = 0; o < out; ++o) {
      for (int64_t i = 0; i < in; ++i) moved[i * out + o] = v[o * in + i];
    }
    const DType keep = IsBlockType(t.dtype()) ? DType::kF32 : t.dtype();
    ASSIGN_OR_RETURN(Tensor nt, Tensor::FromF32(moved, Shape{in, out}, keep));
    tensors.Set(name, std::move(nt));
  }
  return absl::OkStatus();
}

// What the GGUF metadata says about the model's shape (general.architecture and its keys).
struct GgufShape {
  std::string arch, k;  // k: the key prefix "<arch>."
  bool gemma = false, deci = false, qwen_moe = false, gpt2 = false;
  uint64_t experts = 0, experts_used = 0, expert_ffn = 0, shared_ffn = 0;
  uint64_t layers = 0, hidden = 0, heads = 0, ffn = 0, kv_heads = 0, head_dim = 0, ctx = 2048;
  // deci: the layers whose attention / FFN is a no-op; placeholder_ffn: no-op FFNs written as a
  // zero FFN kDeciPlaceholderFfn wide under a kept attention (their tensors are checked and dropped).
  std::vector<bool> no_attention, no_ffn, placeholder_ffn;
};

// A number of the metadata; an f32 value becomes the shortest decimal that reads back as that
// float (1e-06, not 9.999999974752427e-07, in the config.json written from it).
double GetF(const Container& g, const std::string& key, double fallback) {
  auto it = g.kv.find(key);
  if (it == g.kv.end() || !it->second.is_number()) return fallback;
  const double v = it->second.get<double>();
  const float f = static_cast<float>(v);
  if (!std::isfinite(v) || static_cast<double>(f) != v) return v;
  return std::strtod(fmt::format("{}", f).c_str(), nullptr);
}

absl::StatusOr<GgufShape> ReadShape(const Container& g, const std::string& path) {
  const auto& kv = g.kv;
  GgufShape s;
  s.arch = g.GetStr("general.architecture");
  const std::string& arch = s.arch;
  s.gemma = arch == "gemma" || arch == "gemma2" || arch == "gemma3";
  s.deci = arch == "deci";
  s.qwen_moe = arch == "qwen2moe" || arch == "qwen3moe";
  s.gpt2 = arch == "gpt2";
  const bool gemma = s.gemma, deci = s.deci, qwen_moe = s.qwen_moe, gpt2 = s.gpt2;
  if (arch != "llama" && arch != "qwen2" && arch != "qwen3" && arch != "phi3" && !gemma && !deci && !qwen_moe &&
      !gpt2) {
    return Unimplemented("{}: GGUF architecture '{}' (compress reads llama (Mixtral too), deci, gpt2, qwen2, "
                         "qwen2moe, qwen3, qwen3moe, phi3, gemma, gemma2 and gemma3)",
                         path, arch);
  }
  s.k = arch + ".";
  const std::string& k = s.k;
  // Mixture of experts: llama with experts is Mixtral; qwen2moe and qwen3moe always have them.
  uint64_t& experts = s.experts;
  if (kv.count(k + "expert_count")) {
    ASSIGN_OR_RETURN(experts, g.GetU(k + "expert_count"));
  }
  if (experts > 0 && (arch == "llama" || qwen_moe)) {
    ASSIGN_OR_RETURN(s.experts_used, g.GetU(k + "expert_used_count"));
    if (s.experts_used == 0 || s.experts_used > experts || experts > (1u << 16)) {
      return DataLoss("{}: {}expert_used_count {} with {} experts", path, k, s.experts_used, experts);
    }
    if (kv.count(k + "expert_feed_forward_length")) {
      ASSIGN_OR_RETURN(s.expert_ffn, g.GetU(k + "expert_feed_forward_length"));
    }
    if (kv.count(k + "expert_shared_feed_forward_length")) {
      ASSIGN_OR_RETURN(s.shared_ffn, g.GetU(k + "expert_shared_feed_forward_length"));
    }
  } else if (qwen_moe) {
    return DataLoss("{}: a {} file without {}expert_count", path, arch, k);
  } else {
    experts = 0;
  }
  ASSIGN_OR_RETURN(s.layers, g.GetU(k + "block_count"));
  ASSIGN_OR_RETURN(s.hidden, g.GetU(k + "embedding_length"));
  const uint64_t layers = s.layers;
  // Every block holds tensors: a count past the file's tensors is bad metadata (and would size
  // the per-block tables below by it; found by fuzz_gguf).
  if (layers == 0 || layers > g.tensors.size()) {
    return DataLoss("{}: {}block_count {} with {} tensors in the file", path, k, layers, g.tensors.size());
  }
  // deci: per-layer head counts and FFN widths, 0 for a no-op sublayer; compress takes the
  // other layers alike (one value besides 0).
  s.no_attention.assign(layers, false);
  s.no_ffn.assign(layers, false);
  s.placeholder_ffn.assign(layers, false);
  auto per_layer = [&](const std::string& key, std::vector<bool>* zero,
                       std::vector<bool>* placeholder = nullptr) -> absl::StatusOr<uint64_t> {
    auto it = kv.find(key);
    if (!deci || it == kv.end() || !it->second.is_array()) return g.GetU(key);
    if (it->second.size() != layers) return DataLoss("{}: {} has {} entries for {} layers", path, key, it->second.size(), layers);
    uint64_t value = 0;
    for (uint64_t l = 0; l < layers; ++l) {
      const auto& v = it->second[l];
      if (!v.is_number_integer() || v.get<int64_t>() < 0) return DataLoss("{}: {}[{}] is not a count", path, key, l);
      const uint64_t n = v.get<uint64_t>();
      if (placeholder && n == static_cast<uint64_t>(kDeciPlaceholderFfn) && !s.no_attention[l]) {
        (*placeholder)[l] = true;
        (*zero)[l] = true;
        continue;
      }
      if (n == 0) {
        if (zero) (*zero)[l] = true;
        continue;
      }
      if (value && n != value) {
        return Unimplemented("{}: {} differs between layers ({} and {}); compress runs uniform layers", path, key,
                             value, n);
      }
      value = n;
    }
    return value;
  };
  ASSIGN_OR_RETURN(s.heads, per_layer(k + "attention.head_count", &s.no_attention));
  s.ffn = s.expert_ffn;  // Qwen MoE files may leave out the dense width they never use
  if (!qwen_moe || kv.count(k + "feed_forward_length")) {
    ASSIGN_OR_RETURN(s.ffn, per_layer(k + "feed_forward_length", &s.no_ffn, &s.placeholder_ffn));
  }
  if (s.heads == 0) return DataLoss("{}: {}attention.head_count is 0", path, k);
  s.kv_heads = s.heads;
  s.head_dim = s.hidden / s.heads;
  if (kv.count(k + "attention.head_count_kv")) {
    std::vector<bool> no_kv(layers, false);
    ASSIGN_OR_RETURN(s.kv_heads, per_layer(k + "attention.head_count_kv", &no_kv));
    if (no_kv != s.no_attention) {
      return Unimplemented("{}: a layer with attention heads but no KV heads (DeciLM's linear attention) is not run "
                           "by compress",
                           path);
    }
  }
  if (kv.count(k + "attention.key_length")) {
    ASSIGN_OR_RETURN(s.head_dim, g.GetU(k + "attention.key_length"));
  }
  if (kv.count(k + "context_length")) {
    ASSIGN_OR_RETURN(s.ctx, g.GetU(k + "context_length"));
  }
  return s;
}

absl::StatusOr<QuantInfo> LegacyLayout(TensorType type, int64_t rows, int64_t cols);
absl::Status LegacyScales(const std::string& path, const TensorInfo& t, std::span<const uint8_t> bytes, int64_t cols,
                          QuantInfo& q);
// The int8 codes of Q8_0 / Q4_0 / MXFP4 blocks, element by element (LegacyScales has the scales).
std::shared_ptr<const Buffer> LegacyCodes(TensorType type, std::span<const uint8_t> bytes, int64_t rows, int64_t cols);

// Reads the tensors of a GGUF file into a Hugging Face style model: names, rotate-half q/k
// rows, per-expert matrices, Gemma's (1 + w) norms, legacy block types as quantized tensors.
// The layer of a deci placeholder FFN's tensor (blk.N.ffn_{norm,gate,up,down}.weight of a layer
// in `placeholder`); nullopt for every other tensor.
std::optional<int64_t> PlaceholderFfnLayer(const std::string& name, const std::vector<bool>& placeholder) {
  if (!name.starts_with("blk.")) return std::nullopt;
  const size_t dot = name.find('.', 4);
  if (dot == std::string::npos) return std::nullopt;
  int64_t layer = 0;
  if (!absl::SimpleAtoi(absl::string_view(name.data() + 4, dot - 4), &layer) || layer < 0 ||
      layer >= static_cast<int64_t>(placeholder.size()) || !placeholder[layer]) {
    return std::nullopt;
  }
  const std::string_view rest = std::string_view(name).substr(dot + 1);
  if (rest != "ffn_norm.weight" && rest != "ffn_gate.weight" && rest != "ffn_up.weight" && rest != "ffn_down.weight") {
    return std::nullopt;
  }
  return layer;
}

// A placeholder FFN's down projection holds zeros only (F32 / F16 / BF16: a one-neuron-wide
// tensor has no ggml block form).
absl::Status CheckZero(const Container& g, const TensorInfo& t, int64_t layer, const std::string& path) {
  const uint64_t n = t.ne.size() == 2 ? t.ne[0] * t.ne[1] : t.ne[0];
  const int width = t.type == TensorType::kF32 ? 4 : (t.type == TensorType::kF16 || t.type == TensorType::kBF16) ? 2 : 0;
  if (width == 0) {
    return Unimplemented("{}: layer {}'s one-neuron FFN '{}' is {}; compress reads it as a no-op FFN only in F32 / F16 / "
                         "BF16",
                         path, layer, t.name, TypeName(t.type));
  }
  const uint8_t* d = g.Data(t);
  const uint32_t sign = width == 4 ? 0x80000000u : 0x8000u;
  for (uint64_t i = 0; i < n * width; i += width) {
    uint32_t v = 0;
    std::memcpy(&v, d + i, width);
    if ((v & ~sign) != 0) {
      return Unimplemented("{}: layer {} has an FFN {} neuron wide with nonzero '{}'; compress runs FFNs of one width",
                           path, layer, kDeciPlaceholderFfn, t.name);
    }
  }
  return absl::OkStatus();
}

class TensorReader {
 public:
  // defer_values: Q8_0 / Q4_0 / MXFP4 block scales are read when used (LoadOptions'
  // check_codes = false: the run's read-back of its own output), not at load.
  TensorReader(const Container& g, const GgufShape& s, const std::string& path, Model& m, bool defer_values)
      : g_(g), s_(s), path_(path), m_(m), defer_values_(defer_values) {}

  // Every tensor of the file; llama.cpp's per-dimension rope divisors go to the factors.
  absl::Status ReadAll();
  int64_t vocab() const { return vocab_; }
  // llama3 scaling (llama, deci), longrope's short and long factors (phi3).
  std::vector<double> rope_freqs, rope_short, rope_long;

 private:
  // One Hugging Face tensor from `rows` rows of `t` starting `first_row` rows in (a 3-D expert
  // tensor holds one such matrix per expert).
  absl::Status Add(const TensorInfo& t, const std::string& hf, int64_t first_row, int64_t rows, const Shape& shape);

  const Container& g_;
  const GgufShape& s_;
  const std::string& path_;
  Model& m_;
  bool defer_values_ = false;
  int64_t vocab_ = 0;
};

absl::Status TensorReader::Add(const TensorInfo& t, const std::string& hf, int64_t first_row, int64_t rows,
                               const Shape& shape) {
  const std::string& arch = s_.arch;
  const std::string& path = path_;
  const Container& g = g_;
  const int64_t cols = static_cast<int64_t>(t.ne[0]);
  const uint64_t row_bytes = RowBytes(t.type, cols);
  const uint64_t nbytes = static_cast<uint64_t>(rows) * row_bytes;  // inside the file (ReadContainer)
  const uint64_t start = static_cast<uint64_t>(first_row) * row_bytes;
  const uint8_t* src = g.Data(t) + start;
  if (t.name == "token_embd.weight") vocab_ = rows;
  const bool rope = (arch == "llama" || s_.deci) && (t.name.ends_with("attn_q.weight") || t.name.ends_with("attn_k.weight") ||
                                                     t.name.ends_with("attn_q.bias") || t.name.ends_with("attn_k.bias"));
  const bool rope_bias = rope && t.name.ends_with(".bias");
  const int64_t rope_heads = t.name.find(".attn_q.") != std::string::npos ? s_.heads : s_.kv_heads;
  if (rope && CheckedMul(rope_heads, static_cast<int64_t>(s_.head_dim)) != (rope_bias ? cols : rows)) {
    return DataLoss("{}: tensor '{}' has {} outputs, not {} heads x {}", path, t.name, rope_bias ? cols : rows,
                    rope_heads, s_.head_dim);
  }
  if (rope_bias) {  // one value per q/k output row, back in rotate-half order
    if (t.type != TensorType::kF32 || t.ne.size() != 1) return DataLoss("{}: {} is not an F32 vector", path, t.name);
    std::vector<float> v(cols);
    std::memcpy(v.data(), src, nbytes);
    PermuteRopeRows(reinterpret_cast<uint8_t*>(v.data()), cols, sizeof(float), rope_heads, /*to_gguf=*/false);
    ASSIGN_OR_RETURN(Tensor nt, Tensor::FromF32(v, shape, DType::kF32));
    m_.tensors.Set(hf, std::move(nt));
    return absl::OkStatus();
  }
  const bool quantized =
      t.type == TensorType::kQ8_0 || t.type == TensorType::kQ4_0 || t.type == TensorType::kMXFP4;
  // Other block types stay in their bytes, as a block DType (decoded when values are needed).
  const DType dense = t.type == TensorType::kF32   ? DType::kF32
                      : t.type == TensorType::kF16 ? DType::kF16
                      : t.type == TensorType::kBF16
                          ? DType::kBF16
                          : *BlockDType(t.type);  // used when !quantized
  if ((IsBlockType(dense) || quantized) && shape.size() != 2) {
    return DataLoss("{}: {} tensor '{}' is not a matrix", path, TypeName(t.type), t.name);
  }
  if (s_.gemma && t.ne.size() == 1 && t.type == TensorType::kF32 && hf.ends_with("norm.weight")) {
    std::vector<float> w(cols);  // llama.cpp's gemma norms hold 1 + w
    std::memcpy(w.data(), src, nbytes);
    for (float& x : w) x -= 1.f;
    ASSIGN_OR_RETURN(Tensor nt, Tensor::FromF32(w, shape, DType::kF32));
    m_.tensors.Set(hf, std::move(nt));
    return absl::OkStatus();
  }
  if (!rope && !quantized) {  // dense and in place: a view of the mapping
    m_.tensors.Set(hf, Tensor(dense, shape,
                             std::make_shared<SliceBuffer>(g.file, g.data_start + t.offset + start, nbytes)));
    return absl::OkStatus();
  }
  // The tensor's bytes as the model holds them (q/k rows back in rotate-half order), read from
  // the file whenever they are needed (pread: cheaper than faulting the mapping in) and released
  // from memory after: loading a model keeps only block scales, so a GGUF larger than memory loads.
  const uint64_t offset = g.data_start + t.offset + start;
  auto read = [file = g.file, offset, nbytes, rope, rows, row_bytes,
               rope_heads]() -> absl::StatusOr<std::shared_ptr<UninitBuffer>> {
    auto bytes = std::make_shared<UninitBuffer>(nbytes);
    RETURN_IF_ERROR(file->ReadAt(offset, nbytes, bytes->mutable_data()));
    if (rope) PermuteRopeRows(bytes->mutable_data(), rows, row_bytes, rope_heads, /*to_gguf=*/false);
    file->Release(offset, nbytes);
    return bytes;
  };
  if (!quantized) {
    m_.tensors.Set(hf, Tensor::Lazy(dense, shape, [read]() -> absl::StatusOr<std::shared_ptr<const Buffer>> {
                     ASSIGN_OR_RETURN(std::shared_ptr<UninitBuffer> bytes, read());
                     return std::shared_ptr<const Buffer>(std::move(bytes));
                   }));
    return absl::OkStatus();
  }
  ASSIGN_OR_RETURN(QuantInfo q, LegacyLayout(t.type, rows, cols));
  const TensorType type = t.type;
  if (defer_values_) {
    // One read of the tensor's bytes gives its scales and, when asked first, its codes.
    QuantInfo info = DeferredQuant::MakeDeferred(
        q,
        [read, q, t, path, type, rows, cols](bool want_codes) -> absl::StatusOr<DeferredQuant::Produced> {
          ASSIGN_OR_RETURN(std::shared_ptr<UninitBuffer> bytes, read());
          DeferredQuant::Produced p{nullptr, q};
          RETURN_IF_ERROR(LegacyScales(path, t, {bytes->data(), bytes->size()}, cols, p.info));
          if (want_codes) p.codes = LegacyCodes(type, {bytes->data(), bytes->size()}, rows, cols);
          return p;
        },
        [read, type, rows, cols](const QuantInfo&) -> absl::StatusOr<std::shared_ptr<const Buffer>> {
          ASSIGN_OR_RETURN(std::shared_ptr<UninitBuffer> bytes, read());
          return LegacyCodes(type, {bytes->data(), bytes->size()}, rows, cols);
        });
    m_.tensors.Set(hf, Tensor::DeferredQuantized(shape, std::move(info)));
    return absl::OkStatus();
  }
  {
    ASSIGN_OR_RETURN(std::shared_ptr<UninitBuffer> bytes, read());
    RETURN_IF_ERROR(LegacyScales(path, t, {bytes->data(), bytes->size()}, cols, q));
  }  // only the scales stay
  m_.tensors.Set(hf, Tensor::LazyQuantized(shape, std::move(q),
                                           [read, type, rows, cols]() -> absl::StatusOr<std::shared_ptr<const Buffer>> {
                                             ASSIGN_OR_RETURN(std::shared_ptr<UninitBuffer> bytes, read());
                                             return LegacyCodes(type, {bytes->data(), bytes->size()}, rows, cols);
                                           }));
  return absl::OkStatus();
}

// The layout of Q8_0 / Q4_0 / MXFP4 blocks of a rows x cols tensor as int / mxfp4 quantization
// parameters, without the scales (LegacyScales reads them, LegacyCodes the codes).
absl::StatusOr<QuantInfo> LegacyLayout(TensorType type, int64_t rows, int64_t cols) {
  QuantInfo q;
  q.bits = type == TensorType::kQ8_0 ? 8 : 4;
  q.symmetric = true;
  q.group_size = kBlock;
  q.channels = rows;
  q.groups = cols / kBlock;
  q.original_dtype = DType::kF16;
  if (type == TensorType::kMXFP4) {
    ASSIGN_OR_RETURN(const Codebook* book, FindCodebook("mxfp4"));
    q.set_format("mxfp4", {book->levels.begin(), book->levels.end()});
  }
  return q;
}

// The block scales of `t` (`bytes` as the file holds them) into `q` (LegacyLayout's).
absl::Status LegacyScales(const std::string& path, const TensorInfo& t, std::span<const uint8_t> bytes, int64_t cols,
                          QuantInfo& q) {
  const int64_t n = q.channels * q.groups;
  q.mutable_scales().resize(n);
  const uint64_t block_bytes = RowBytes(t.type, cols) / q.groups;
  float* scales = q.mutable_scales().data();
  for (int64_t i = 0; i < n; ++i) {
    const uint8_t* b = bytes.data() + i * block_bytes;
    if (t.type == TensorType::kMXFP4) {  // E8M0 scale
      if (b[0] == 255) return DataLoss("{}: tensor '{}' has a NaN (0xFF) E8M0 scale", path, t.name);
      scales[i] = std::ldexp(1.f, static_cast<int>(b[0]) - 127);
      continue;
    }
    uint16_t d;
    std::memcpy(&d, b, 2);
    scales[i] = F16ToF32(d);
  }
  return absl::OkStatus();
}

std::shared_ptr<const Buffer> LegacyCodes(TensorType type, std::span<const uint8_t> bytes, int64_t rows, int64_t cols) {
  const int64_t blocks = rows * (cols / kBlock);
  const uint64_t block_bytes = RowBytes(type, cols) / (cols / kBlock);
  auto codes = std::make_shared<UninitBuffer>(rows * cols);  // every block fills its 32 codes
  for (int64_t i = 0; i < blocks; ++i) {
    const uint8_t* b = bytes.data() + i * block_bytes;
    int8_t* out = reinterpret_cast<int8_t*>(codes->mutable_data()) + i * kBlock;
    if (type == TensorType::kMXFP4) {
      UnpackNibbles(b + 1, 0, out);  // codes are E2M1 bit patterns
    } else if (type == TensorType::kQ8_0) {
      std::memcpy(out, b + 2, kBlock);
    } else {
      UnpackNibbles(b + 2, 8, out);
    }
  }
  return codes;
}

absl::Status TensorReader::ReadAll() {
  const std::string& arch = s_.arch;
  const std::string& path = path_;
  const Container& g = g_;
  for (const TensorInfo& t : g.tensors) {
    const int64_t cols = static_cast<int64_t>(t.ne[0]);
    std::vector<double>* factors = t.name == "rope_freqs.weight" && (arch == "llama" || s_.deci) ? &rope_freqs
                                   : t.name == "rope_factors_short.weight" && arch == "phi3"  ? &rope_short
                                   : t.name == "rope_factors_long.weight" && arch == "phi3"   ? &rope_long
                                                                                              : nullptr;
    if (factors) {
      if (t.ne.size() != 1 || t.type != TensorType::kF32) return DataLoss("{}: {} is not an F32 vector", path, t.name);
      const auto* v = reinterpret_cast<const float*>(g.Data(t));
      for (int64_t i = 0; i < cols; ++i) {
        if (!(v[i] > 0) || !std::isfinite(v[i])) return DataLoss("{}: {}[{}] is {}", path, t.name, i, v[i]);
        factors->push_back(v[i]);
      }
      continue;
    }
    if (t.ne.size() == 3) {  // a block's experts: {cols, rows, experts}
      const int64_t rows = static_cast<int64_t>(t.ne[1]), n = static_cast<int64_t>(t.ne[2]);
      if (!HfExpertName(t.name, 0, arch)) {
        return Unimplemented("{}: 3-D tensor '{}' is not an expert tensor compress maps for {}", path, t.name, arch);
      }
      if (n != static_cast<int64_t>(s_.experts)) {
        return DataLoss("{}: tensor '{}' holds {} experts but {}expert_count is {}", path, t.name, n, s_.k, s_.experts);
      }
      for (int64_t e = 0; e < n; ++e) {
        RETURN_IF_ERROR(Add(t, *HfExpertName(t.name, e, arch), e * rows, rows, Shape{rows, cols}));
      }
      continue;
    }
    if (auto layer = PlaceholderFfnLayer(t.name, s_.placeholder_ffn)) {
      // A no-op FFN written as a zero FFN: its down projection must be all zeros (then the
      // layer adds nothing whatever gate / up hold), and the model holds no tensors for it.
      if (t.name.ends_with("ffn_down.weight")) RETURN_IF_ERROR(CheckZero(g, t, *layer, path));
      continue;
    }
    ASSIGN_OR_RETURN(std::string hf, HfName(t.name, arch));
    const int64_t rows = t.ne.size() == 2 ? static_cast<int64_t>(t.ne[1]) : 1;
    Shape shape = t.ne.size() == 2 ? Shape{rows, cols} : Shape{cols};
    if (t.ne.size() == 1 && t.name.ends_with("ffn_gate_inp_shexp.weight")) shape = {1, cols};  // a [1, hidden] Linear
    RETURN_IF_ERROR(Add(t, hf, 0, rows, shape));
  }
  return absl::OkStatus();
}

// DeciLM / Nemotron-NAS per-layer configs: no-op sublayers where the file has 0 heads / width.
nlohmann::json DeciBlockConfigs(const GgufShape& s) {
  nlohmann::json blocks = nlohmann::json::array();
  for (uint64_t l = 0; l < s.layers; ++l) {
    nlohmann::json attn = {{"no_op", static_cast<bool>(s.no_attention[l])}, {"replace_with_linear", false}};
    attn["n_heads_in_group"] = s.no_attention[l] ? nlohmann::json() : nlohmann::json(s.heads / std::max<uint64_t>(1, s.kv_heads));
    nlohmann::json f = {{"no_op", static_cast<bool>(s.no_ffn[l])}, {"replace_with_linear", false}};
    f["ffn_mult"] = s.no_ffn[l] ? nlohmann::json() : nlohmann::json(3.0 * static_cast<double>(s.ffn) / (2.0 * static_cast<double>(s.hidden)));
    blocks.push_back({{"attention", attn}, {"ffn", f}});
  }
  return blocks;
}

// Rope scaling outside Gemma: llama3's divisors as per-dimension factors (transformers'
// longrope with equal short and long factors and no attention scaling is exactly that), linear
// and yarn from their keys.
absl::Status AddRopeScaling(const Container& g, const GgufShape& s, const TensorReader& r, const std::string& path,
                            nlohmann::json& cfg) {
  const auto& kv = g.kv;
  const std::string& k = s.k;
  const bool gemma = s.gemma;
  const uint64_t ctx = s.ctx;
  auto get_f = [&](const std::string& key, double fallback) { return GetF(g, key, fallback); };
  if (!gemma && !r.rope_freqs.empty()) {
    cfg["rope_scaling"] = {{"rope_type", "longrope"}, {"short_factor", r.rope_freqs}, {"long_factor", r.rope_freqs},
                           {"attention_factor", 1.0}};
  } else if (!r.rope_short.empty() || !r.rope_long.empty()) {
    if (r.rope_short.size() != r.rope_long.size()) {
      return DataLoss("{}: rope_factors_short has {} entries, rope_factors_long {}", path, r.rope_short.size(),
                      r.rope_long.size());
    }
    cfg["rope_scaling"] = {{"rope_type", "longrope"}, {"short_factor", r.rope_short}, {"long_factor", r.rope_long},
                           {"attention_factor", get_f(k + "rope.scaling.attn_factor", 1.0)}};
    if (kv.count(k + "rope.scaling.original_context_length")) {
      ASSIGN_OR_RETURN(uint64_t orig, g.GetU(k + "rope.scaling.original_context_length"));
      cfg["original_max_position_embeddings"] = orig;
    }
  } else if (auto it = kv.find(k + "rope.scaling.type"); !gemma && it != kv.end() && it->second.is_string()) {
    const std::string type = it->second.get<std::string>();
    const double factor = get_f(k + "rope.scaling.factor", 1.0);
    if (type == "linear" && factor != 1.0) {
      cfg["rope_scaling"] = {{"rope_type", "linear"}, {"factor", factor}};
    } else if (type == "yarn") {
      cfg["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", factor}};
      if (kv.count(k + "rope.scaling.original_context_length")) {
        ASSIGN_OR_RETURN(uint64_t orig, g.GetU(k + "rope.scaling.original_context_length"));
        // transformers takes factor = max_positions / original when the original is given
        if (orig > 0 && std::abs(static_cast<double>(ctx) / static_cast<double>(orig) - factor) <= 1e-5 * factor) {
          cfg["rope_scaling"]["original_max_position_embeddings"] = orig;
        } else if (orig != ctx) {
          return Unimplemented("{}: yarn factor {} with original context {} of {}: no transformers config says that",
                               path, factor, orig, ctx);
        }
      }
    } else if (type != "linear" && type != "none") {
      return Unimplemented("{}: rope scaling type '{}' is not read by compress", path, type);
    }
  }
  return absl::OkStatus();
}

// The Hugging Face config.json of the model the file holds.
absl::StatusOr<nlohmann::json> BuildConfig(const Container& g, const GgufShape& s, const TensorReader& r,
                                           const Model& m, const std::string& path) {
  const auto& kv = g.kv;
  const std::string& arch = s.arch;
  const std::string& k = s.k;
  const bool gemma = s.gemma, deci = s.deci, qwen_moe = s.qwen_moe, gpt2 = s.gpt2;
  const uint64_t experts = s.experts, layers = s.layers, hidden = s.hidden, heads = s.heads, kv_heads = s.kv_heads,
                 head_dim = s.head_dim, ffn = s.ffn, ctx = s.ctx;
  const int64_t vocab = r.vocab();
  auto get_f = [&](const std::string& key, double fallback) { return GetF(g, key, fallback); };
  const std::map<std::string, std::string> kClass = {{"llama", "LlamaForCausalLM"},
                                                     {"deci", "DeciLMForCausalLM"},
                                                     {"qwen2", "Qwen2ForCausalLM"},
                                                     {"qwen3", "Qwen3ForCausalLM"},
                                                     {"gpt2", "GPT2LMHeadModel"},
                                                     {"qwen2moe", "Qwen2MoeForCausalLM"},
                                                     {"qwen3moe", "Qwen3MoeForCausalLM"},
                                                     {"phi3", "Phi3ForCausalLM"},
                                                     {"gemma", "GemmaForCausalLM"},
                                                     {"gemma2", "Gemma2ForCausalLM"},
                                                     {"gemma3", "Gemma3ForCausalLM"}};
  const bool mixtral = arch == "llama" && experts > 0;
  const std::string model_type = arch == "gemma3"     ? "gemma3_text"
                                 : deci               ? "nemotron-nas"
                                 : mixtral            ? "mixtral"
                                 : arch == "qwen2moe" ? "qwen2_moe"
                                 : arch == "qwen3moe" ? "qwen3_moe"
                                                      : arch;
  nlohmann::json cfg = {
      {"architectures", {mixtral ? std::string("MixtralForCausalLM") : kClass.at(arch)}},
      {"model_type", model_type},
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
  if (experts > 0) {  // llama.cpp's graphs: every layer sparse; only qwen2moe leaves top-k unnormalized
    cfg[mixtral ? "num_local_experts" : "num_experts"] = experts;
    cfg["num_experts_per_tok"] = s.experts_used;
    cfg["norm_topk_prob"] = arch != "qwen2moe";
    if (qwen_moe) {
      cfg["moe_intermediate_size"] = s.expert_ffn ? s.expert_ffn : ffn;
      cfg["decoder_sparse_step"] = 1;
      cfg["mlp_only_layers"] = nlohmann::json::array();
    }
    if (arch == "qwen2moe") cfg["shared_expert_intermediate_size"] = s.shared_ffn ? s.shared_ffn : ffn;
  }
  if (deci) cfg["block_configs"] = DeciBlockConfigs(s);
  if (arch == "llama" || deci) {  // Llama's (DeciLM's) flags for biases on every projection of a sublayer
    for (const std::string& name : m.tensors.names()) {
      if (name.ends_with("self_attn.o_proj.bias")) cfg["attention_bias"] = true;
      if (name.ends_with("mlp.down_proj.bias")) cfg["mlp_bias"] = true;
    }
  }
  if (kv.count(k + "rope.dimension_count")) {
    ASSIGN_OR_RETURN(uint64_t rot, g.GetU(k + "rope.dimension_count"));
    if (rot != head_dim && rot > 0 && rot < head_dim) {
      cfg["partial_rotary_factor"] = static_cast<double>(rot) / static_cast<double>(head_dim);
    }
  }
  if (kv.count(k + "attention.sliding_window")) {
    ASSIGN_OR_RETURN(uint64_t window, g.GetU(k + "attention.sliding_window"));
    cfg["sliding_window"] = window;
  }
  if (gemma) {
    cfg["hidden_act"] = "gelu_pytorch_tanh";
    cfg["query_pre_attn_scalar"] = LlamaCppGemmaQueryScalar(arch, layers, hidden, heads, head_dim);
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
  // Said either way: a config class's own default (Phi-3's pad 32000, eos 32000) may lie
  // outside this vocabulary, and transformers sizes the embedding's padding row by it.
  for (const auto& [key, name] : {std::pair{"bos", "bos"}, std::pair{"eos", "eos"}, std::pair{"padding", "pad"}}) {
    // llama.cpp's id (its default for the tokenizer kind when the file names none, as the
    // tokenizer read from the file takes it); an id past the vocabulary, which llama.cpp
    // tolerates, would make transformers refuse the checkpoint: said as none.
    const int64_t id = GgufSpecialTokenId(g, key);
    cfg[fmt::format("{}_token_id", name)] = id >= 0 && id < vocab ? nlohmann::json(id) : nlohmann::json();
  }
  RETURN_IF_ERROR(AddRopeScaling(g, s, r, path, cfg));
  if (gpt2) {  // GPT-2's own config keys
    cfg = {{"architectures", {"GPT2LMHeadModel"}},
           {"model_type", "gpt2"},
           {"n_embd", hidden},
           {"n_layer", layers},
           {"n_head", heads},
           {"n_inner", ffn},
           {"n_positions", ctx},
           {"vocab_size", vocab},
           {"layer_norm_epsilon", get_f(k + "attention.layer_norm_epsilon", 1e-5)},
           {"activation_function", "gelu_new"},
           {"tie_word_embeddings", !m.tensors.contains("lm_head.weight")}};
  }
  // The keys above are laid out as transformers 4.x writes them (rope_theta at the top level).
  // Naming the version also keeps transformers 5 from taking a large byte-level vocabulary
  // beside a config without one for a Mistral tokenizer (it warns that the split pattern is
  // wrong, for Llama-3's and Qwen's correct patterns too).
  cfg["transformers_version"] = "4.57.0";
  return cfg;
}

}  // namespace

absl::StatusOr<Model> LoadGguf(const std::string& path, const LoadOptions& opts) {
  ASSIGN_OR_RETURN(Container g, ReadContainer(path, /*max_dims=*/3));
  ASSIGN_OR_RETURN(GgufShape s, ReadShape(g, path));
  Model m;
  m.format = ModelFormat::kSafetensors;  // held with Hugging Face names and config from here on
  m.source = path;
  m.inputs.push_back(path);
  m.metadata["compress.source_format"] = "gguf";
  TensorReader reader(g, s, path, m, !opts.check_codes);
  RETURN_IF_ERROR(reader.ReadAll());
  if (reader.vocab() == 0) return DataLoss("{}: no token_embd.weight tensor", path);
  if (s.gpt2) RETURN_IF_ERROR(TransposeToConv1D(m));
  ASSIGN_OR_RETURN(m.config, BuildConfig(g, s, reader, m, path));
  ASSIGN_OR_RETURN(HfConfig hc, ParseHfConfig(m.config, path));
  ASSIGN_OR_RETURN(m.arch, BuildHfArchitecture(hc, m.tensors, path));
  return m;
}

}  // namespace compress
