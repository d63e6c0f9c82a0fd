// GGUF layout facts shared by the writer and the reader: alignment, block sizes, value types,
// ggml tensor types, tensor names and the rope row order of llama.cpp's `llama` graph.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

#include "absl/status/statusor.h"
#include "core/dtype.h"

namespace compress::gguf {

constexpr uint32_t kMagic = 0x46554747;  // "GGUF" little-endian
constexpr uint32_t kVersion = 3;
constexpr uint64_t kAlignment = 32;  // the default when general.alignment is absent
constexpr int64_t kBlock = 32;       // elements per Q8_0 / Q4_0 / MXFP4 block

// Metadata value types.
enum ValueType : uint32_t {
  kU8 = 0,
  kI8 = 1,
  kU16 = 2,
  kI16 = 3,
  kU32 = 4,
  kI32 = 5,
  kF32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kU64 = 10,
  kI64 = 11,
  kF64 = 12,
};

// ggml tensor types that compress writes and reads (values of ggml's enum ggml_type).
enum class TensorType : uint32_t {
  kF32 = 0,
  kF16 = 1,
  kQ4_0 = 2,
  kQ4_1 = 3,
  kQ5_0 = 6,
  kQ5_1 = 7,
  kQ8_0 = 8,
  kQ2_K = 10,
  kQ3_K = 11,
  kQ4_K = 12,
  kQ5_K = 13,
  kQ6_K = 14,
  kIQ4_NL = 20,
  kIQ4_XS = 23,
  kBF16 = 30,
  kMXFP4 = 39,
};

// Whether compress reads and writes ggml type `t` (a value read from a file).
bool KnownType(uint32_t t);
// ggml's name of a known type ("Q4_K").
std::string_view TypeName(TensorType t);
// Elements per block: 1 for F32/F16/BF16, 32 or 256 for the block types.
int64_t TypeBlock(TensorType t);
// Bytes of one row of `cols` elements (a multiple of TypeBlock).
uint64_t RowBytes(TensorType t, int64_t cols);
// The DType holding a block type's bytes as they are (core/block_quant.h), and back; nullopt
// for F32/F16/BF16/MXFP4 and for element types.
std::optional<DType> BlockDType(TensorType t);
std::optional<TensorType> TypeOfBlockDType(DType t);
// llama.cpp's general.file_type (enum llama_ftype) for a file whose main weight type is `t`:
// the K-quant types name their _M mix (Q3_K_M, Q4_K_M, Q5_K_M).
uint32_t FileTypeOf(TensorType t);

// The 4-bit block layout shared by Q4_0 and MXFP4: byte j of a block's 16 code bytes holds
// element j in its low nibble and element j + 16 in its high one, each stored as code + bias
// (8 for Q4_0's signed codes, 0 for MXFP4's E2M1 bit patterns).
void PackNibbles(const int8_t* codes, int bias, uint8_t* qs);
void UnpackNibbles(const uint8_t* qs, int bias, int8_t* codes);

// llama.cpp's architecture name for a model family (Architecture::family): llama for Llama,
// Mistral and Mixtral, deci for DeciLM / Nemotron-NAS (FinerCut students), qwen2, qwen2moe,
// qwen3, qwen3moe, phi3, gemma, gemma2, gemma3, gpt2; "" for families GGUF output does not take.
std::string GgufArchitecture(std::string_view family);

// llama.cpp's deci graph ends a layer whose FFN width is 0 before the attention's residual add
// (the attention is lost too), so a DeciLM layer with a kept attention and a no-op FFN is written
// with an all-zero FFN this many neurons wide (F32 ffn_norm of ones, gate / up / down of zeros:
// it adds exactly nothing), and read back as a no-op FFN.
inline constexpr int64_t kDeciPlaceholderFfn = 1;

// GGUF name of a Hugging Face Llama/Qwen2 tensor name; "" for tensors llama.cpp recomputes
// (rotary inv_freq); an error for names with no GGUF place.
absl::StatusOr<std::string> GgufName(const std::string& hf, std::string_view arch = "llama");
// A mixture-of-experts expert weight (model.layers.N.mlp.experts.E.gate_proj.weight, Mixtral's
// model.layers.N.block_sparse_moe.experts.E.w1.weight, ...): the GGUF name of the 3-D tensor
// that holds every expert of the block (blk.N.ffn_gate_exps.weight) and E; nullopt otherwise.
std::optional<std::pair<std::string, int64_t>> GgufExpertName(const std::string& hf);
// GgufName for a weight of a model of `family` (Architecture::family): the family's GGUF
// architecture, or llama's tensor names for families GGUF output does not take (the importance
// matrix of such a model is still keyed the way llama.cpp names the common tensors).
absl::StatusOr<std::string> GgufWeightName(const std::string& hf, std::string_view family);  // container decoder names too
// The inverse of GgufExpertName for a GGUF file of architecture `arch` (llama: Mixtral's
// block_sparse_moe names; qwen2moe, qwen3moe: mlp.experts): expert `expert` of a merged
// blk.N.ffn_{gate,up,down}_exps.weight; nullopt for other names and architectures.
std::optional<std::string> HfExpertName(const std::string& gguf, int64_t expert, std::string_view arch);
// The inverse of GgufName; an error for GGUF names compress does not map.
absl::StatusOr<std::string> HfName(const std::string& gguf, std::string_view arch = "llama");

// Reorders the rows of a q/k projection with `heads` heads between Hugging Face's
// rotate-half order and llama.cpp's interleaved order (to_gguf) or back. `rows` rows of
// `row_bytes` bytes each, in place.
void PermuteRopeRows(uint8_t* data, int64_t rows, uint64_t row_bytes, int64_t heads, bool to_gguf);

// The attention-score scale llama.cpp's gemma2 / gemma3 graphs use, as the query_pre_attn_scalar
// it stands for: hidden / heads (integer division) for the 27B sizes, which llama.cpp knows by
// their block count (46 for Gemma 2, 62 for Gemma 3), else head_dim.
int64_t LlamaCppGemmaQueryScalar(std::string_view arch, int64_t layers, int64_t hidden, int64_t heads,
                                 int64_t head_dim);

}  // namespace compress::gguf
