// Activation and KV-cache quantization: what a target runtime does to the input of a
// linear layer and to the attention cache, carried by a Model beside its weights, and the
// quantize-dequantize that our runtime applies to reproduce it (so every perplexity printed
// for a W8A8 model or a quantized cache is the one the target runtime gets).
//
// Element rule, for a scale s > 0 (symmetric; the one asymmetric form is below):
//   int b bits:  x' = clamp(round_half_even(x / s), -(2^(b-1)-1), 2^(b-1)-1) * s
//   fp8 e4m3:    x' = e4m3(x / s) * s   (round to nearest even, saturating at +-448)
// A dynamic scale is max|x| over its group / qmax (qmax = 2^(b-1)-1, or 448 for e4m3); an
// all-zero group keeps s = 1. A static scale comes from calibration and values past it clip.
// The group of a dynamic per-tensor scale is every row given (one forward pass's tokens).
// ActivationQuant::zero_point is the one asymmetric form (ONNX Runtime's dynamic inputs).
#pragma once

#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace compress {

// kFp4: a 4-bit minifloat table of core/codebook.h (fp4-e2m1 / e3m0 / e1m2), x' = level * s
// for the level nearest x / s (LLM-FP4's activations; the exponent bias is the scale).
enum class ActFormat { kInt, kFp8E4M3, kFp4 };

// The largest code magnitude of a format: 2^(bits-1)-1 for int, 448 for e4m3 (fp4: its table's).
float ActQmax(ActFormat f, int bits);
// One value through the element rule above (int and fp8); int codes saturate to
// [-qmax - 1, qmax].
float FakeQuantValue(ActFormat f, int bits, float x, float s);
// Scale of a group whose largest magnitude is `amax` (1 when amax is 0 or not finite).
float ActScale(ActFormat f, int bits, float amax);

// The entropy (KL-divergence) calibration threshold of TensorRT and ONNX Runtime for a
// symmetric uniform quantizer with `levels` magnitudes (128 for int8): |values| go into
// `bins` histogram bins over [0, max |x|]; for every candidate edge i >= levels, P is the
// histogram up to i with everything beyond added to its last bin, Q the same range merged
// into `levels` groups and spread back evenly over the bins of each group where P is
// non-zero; the threshold
// is the bin edge i with the smallest KL(P || Q) (ties: the smallest i). Returns max |x| when
// there are no more bins than levels or no non-zero values.
float EntropyThreshold(std::span<const float> values, int levels, int bins = 2048);

// What happens to the input of one linear layer.
struct ActivationQuant {
  ActFormat format = ActFormat::kInt;
  int bits = 8;
  enum class Granularity { kTensor, kToken, kGroup } granularity = Granularity::kToken;
  int64_t group_size = 0;  // kGroup: consecutive input features sharing one scale (per token)
  bool dynamic = true;     // scales computed from each input; else the calibrated `scale`
  // 8-bit dynamic per-tensor inputs with a zero point, ONNX's DynamicQuantizeLinear (what ONNX
  // Runtime's dynamic quantization runs): lo = min(0, min x), hi = max(0, max x),
  // s = (hi - lo) / 255, zp = clamp(round_half_even(-lo / s), 0, 255),
  // x' = (clamp(round_half_even(x / s) + zp, 0, 255) - zp) * s (x' = 0 when s = 0). The same
  // values as compressed-tensors' asymmetric int8 per-tensor dynamic scheme.
  bool zero_point = false;
  float scale = 0;         // static per-tensor scale (granularity kTensor, !dynamic)
  // LLM.int8(): the input features where the weight keeps its f16 outlier columns bypass
  // quantization and are rounded to f16; the rest are quantized as above.
  bool f16_outliers = false;
  // kFp4: the table ("fp4-e2m1", "fp4-e3m0", "fp4-e1m2").
  std::string fp4_format;
  // LLM-FP4's per-channel exponent biases, reparameterised into the weights: input feature j
  // is quantized with the static scale x 2^channel_exp[j] (empty: all 0).
  std::vector<int8_t> channel_exp;

  float Qmax() const;  // ActQmax, with the fp4 table's largest level

  // "int8 dynamic per-token", "fp8-e4m3 static per-tensor (s=0.0123)", ...
  std::string Describe() const;
  // The format's own checks plus those against the layer's input width.
  absl::Status Validate(int64_t in_features) const;
  bool operator==(const ActivationQuant&) const = default;
};

// Quantize-dequantize the rows of x [rows, cols] (row-major) in place. `keep` lists the
// features (ascending) that bypass quantization (rounded to f16) when q.f16_outliers.
// With `steps` (only when CodedActGroup(q, cols) > 0), also each row's scale per group of
// CodedActGroup inputs, [rows, cols / group]: every quantized x is then code x step, or with
// a zero point (code + offset) x step, code in [-128, 127] and `offset` = 128 - zp (0 without
// one; given whenever steps are).
void FakeQuantize(const ActivationQuant& q, std::span<const int64_t> keep, float* x, int64_t rows, int64_t cols,
                  std::vector<float>* steps = nullptr, float* offset = nullptr);
// Inputs sharing one scale when q makes integer codes an integer product can take as they are
// (int format of at most 8 bits: cols for per-tensor and per-token scales, the group size for
// groups, and cols for 8-bit inputs with a zero point, whose codes FakeQuantize shifts into int8; an FP4 table whose levels times a power of two m are integers: cols, the step
// s / m); 0 otherwise. With LLM-FP4's per-channel exponents (static, per tensor) the step is
// s x 2^e0 / m for the smallest exponent e0, and feature j's code is its level x m x 2^(e_j - e0).
int64_t CodedActGroup(const ActivationQuant& q, int64_t cols);
// The features (ascending) whose codes under CodedActGroup's step can leave int8 (their channel
// exponent is too far above the smallest): a product on the codes keeps them apart, in f32.
std::vector<int64_t> CodedActApart(const ActivationQuant& q);

// The attention cache: K after its norm and RoPE, V as projected, each [tokens, kv_heads x
// head_dim] per block.
struct KvCacheQuant {
  ActFormat format = ActFormat::kInt;
  int bits = 8;
  // kTensor / kChannel: static calibrated scales per block ([1] / [kv_dim]); kHead: a dynamic
  // scale per token and KV head (over head_dim elements); kChannelGroup: a dynamic scale per
  // channel over each complete group of `token_group` consecutive tokens, the tokens after the
  // last complete group kept unquantized (KIVI's key cache and transformers' QuantizedCache:
  // a group is quantized once it is full; evaluating a whole window at once quantizes every
  // complete group for every query, slightly more than a decoder would).
  enum class Granularity { kTensor, kChannel, kHead, kChannelGroup };
  Granularity k = Granularity::kChannel, v = Granularity::kHead;
  int64_t token_group = 32;
  struct Scales {
    std::vector<float> k, v;
    // AlignedKV: int bits per channel (2..8) for per-channel K / V (empty: `bits` for all).
    std::vector<int8_t> k_bits, v_bits;
    bool operator==(const Scales&) const = default;
  };
  std::map<int, Scales> scales;  // block -> static scales (entries only for static granularities)

  bool operator==(const KvCacheQuant&) const = default;
  std::string Describe() const;
  // Checks formats, bits and that every block in [0, blocks) that needs static scales has
  // them with `kv_dim` (or 1) entries, all finite and > 0.
  absl::Status Validate(int blocks, int64_t kv_dim) const;
};

// Quantize-dequantize one block's K or V [rows, kv_dim] in place.
void FakeQuantizeKv(const KvCacheQuant& q, bool key, int block, int64_t head_dim, float* x, int64_t rows,
                    int64_t cols);

std::string_view ActFormatName(ActFormat f, int bits);  // "int8", "int4", "fp8-e4m3"
std::string_view KvGranularityName(KvCacheQuant::Granularity g);

// compressed-tensors QuantizationArgs (num_bits, type, symmetric, strategy, group_size,
// dynamic) for an activation spec, and back. "f16_outliers" is compress's own extension.
nlohmann::json ActivationArgsJson(const ActivationQuant& q);
absl::StatusOr<ActivationQuant> ActivationArgsFromJson(const nlohmann::json& j, const std::string& where);
// One side of the cache as QuantizationArgs: static strategy tensor / channel, or the
// per-token-per-head dynamic form as dynamic strategy group with group_size = head_dim.
nlohmann::json KvArgsJson(const KvCacheQuant& q, bool key, int64_t head_dim);
absl::Status KvArgsFromJson(const nlohmann::json& j, bool key, int64_t head_dim, KvCacheQuant& q,
                            const std::string& where);

}  // namespace compress
