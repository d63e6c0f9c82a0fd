// Element types and their scalar reference codecs (f16, bf16, fp8, int4, fp4, nf4, ...).
#pragma once

#include <array>
#include <bit>
#include <cmath>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace compress {

enum class DType : uint8_t {
  kF64,
  kF32,
  kF16,
  kBF16,
  kF8E4M3,  // OCP FP8 E4M3 "fn": bias 7, no infinities, max 448, NaN = S.1111.111
  kF8E5M2,  // OCP FP8 E5M2: bias 15, IEEE-like with infinities, max 57344
  kI64,
  kI32,
  kI16,
  kI8,
  kU64,
  kU32,
  kU16,
  kU8,
  kBool,
  kI4,
  kU4,      // packed two per byte, element 0 in the low nibble
  kF4E2M1,  // OCP FP4 E2M1: bias 1, values {0, .5, 1, 1.5, 2, 3, 4, 6}, packed like kI4
  kNF4,     // QLoRA NormalFloat-4 codebook indices, packed like kI4
  // ggml's block types (core/block_quant.h): rows are sequences of blocks with their own scales.
  kQ4_0,
  kQ4_1,
  kQ5_0,
  kQ5_1,
  kQ8_0,
  kQ2_K,
  kQ3_K,
  kQ4_K,
  kQ5_K,
  kQ6_K,
  kIQ4_NL,
  kIQ4_XS,
};

inline constexpr std::array kAllDTypes = {
    DType::kF64,  DType::kF32, DType::kF16, DType::kBF16,   DType::kF8E4M3, DType::kF8E5M2, DType::kI64,
    DType::kI32,  DType::kI16, DType::kI8,  DType::kU64,    DType::kU32,    DType::kU16,    DType::kU8,
    DType::kBool, DType::kI4,  DType::kU4,  DType::kF4E2M1, DType::kNF4,   DType::kQ4_0,   DType::kQ4_1,
    DType::kQ5_0, DType::kQ5_1, DType::kQ8_0, DType::kQ2_K, DType::kQ3_K, DType::kQ4_K, DType::kQ5_K,
    DType::kQ6_K, DType::kIQ4_NL, DType::kIQ4_XS};

// Lower-case short name used in pipelines and reports ("f32", "bf16", "f8e4m3", "int4"...).
std::string_view DTypeName(DType t);
absl::StatusOr<DType> ParseDType(std::string_view name);
// (name, type) pairs for an option that accepts exactly `types` (OptionBinding::Choice).
std::vector<std::pair<std::string, DType>> DTypeChoices(std::initializer_list<DType> types);
int DTypeBits(DType t);     // 0 for the block types (their bits per element are not whole)
bool IsFloating(DType t);  // f64/f32/f16/bf16/fp8 (types a cast can produce)
// Bytes needed for `numel` elements, rounding packed 4-bit types up to whole bytes and block
// types up to whole blocks.
int64_t DTypeBytes(DType t, int64_t numel);

// ---- IEEE half and bfloat16 (inline: they sit in every conversion loop) -------------
// F32ToF16: round to nearest even; overflow -> inf; NaN stays NaN.
// F32ToBF16: round to nearest even; NaN stays (quiet) NaN.
namespace detail {
inline uint32_t FloatBits(float f) { return std::bit_cast<uint32_t>(f); }
inline float BitsFloat(uint32_t u) { return std::bit_cast<float>(u); }
}  // namespace detail

inline float F16ToF32(uint16_t h) {
  uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1F;
  uint32_t mant = h & 0x3FF;
  if (exp == 0) {
    float v = std::ldexp(static_cast<float>(mant), -24);
    return sign ? -v : v;
  }
  if (exp == 31) return detail::BitsFloat(sign | 0x7F800000u | (mant << 13));
  return detail::BitsFloat(sign | ((exp + 112) << 23) | (mant << 13));
}

inline uint16_t F32ToF16(float f) {
  uint32_t x = detail::FloatBits(f);
  uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000);
  x &= 0x7FFFFFFFu;
  if (x >= 0x7F800000u) {  // inf or NaN
    if (x == 0x7F800000u) return sign | 0x7C00;
    return static_cast<uint16_t>(sign | 0x7E00 | ((x >> 13) & 0x3FF));
  }
  if (x >= 0x477FF000u) return sign | 0x7C00;           // >= 65520 rounds to inf
  if (x < 0x38800000u) {                                // below 2^-14: subnormal or zero
    float scaled = detail::BitsFloat(x) * 16777216.0f;  // exact: times 2^24
    return static_cast<uint16_t>(sign | static_cast<uint16_t>(std::nearbyint(scaled)));
  }
  uint32_t odd = (x >> 13) & 1;
  x += 0xFFFu + odd - (112u << 23);
  return static_cast<uint16_t>(sign | (x >> 13));
}

inline float BF16ToF32(uint16_t b) { return detail::BitsFloat(static_cast<uint32_t>(b) << 16); }

inline uint16_t F32ToBF16(float f) {
  uint32_t x = detail::FloatBits(f);
  if ((x & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((x >> 16) | 0x0040);
  x += 0x7FFFu + ((x >> 16) & 1);
  return static_cast<uint16_t>(x >> 16);
}

// ---- Small floats (fp8, fp4) described by their bit layout -----------------------------
struct MiniFloatFormat {
  int exponent_bits;
  int mantissa_bits;
  int bias;
  bool has_inf;  // top exponent reserved for inf/NaN (IEEE style)
  bool has_nan;  // e4m3fn: only all-ones mantissa at top exponent is NaN
  float max_finite;
};
inline constexpr MiniFloatFormat kE4M3{4, 3, 7, false, true, 448.0f};
inline constexpr MiniFloatFormat kE5M2{5, 2, 15, true, true, 57344.0f};
inline constexpr MiniFloatFormat kE2M1{2, 1, 1, false, false, 6.0f};

// Encodes with round-to-nearest-even. With `saturate`, magnitudes past the largest
// finite value clamp to it (and infinities too); otherwise they become inf (if the
// format has it) or NaN. A format with neither always saturates.
uint8_t MiniFloatEncode(float x, const MiniFloatFormat& fmt, bool saturate = true);
float MiniFloatDecode(uint8_t code, const MiniFloatFormat& fmt);

// ---- NF4 ----------------------------------------------------------------------------
// The 16 NormalFloat-4 levels published with QLoRA (Dettmers et al., 2023), ascending.
extern const std::array<float, 16> kNF4Levels;
uint8_t NF4Encode(float x);  // nearest level of x (x is expected in [-1, 1])
inline float NF4Decode(uint8_t code) { return kNF4Levels[code & 0xF]; }

// ---- 4-bit packing ------------------------------------------------------------------
inline uint8_t GetNibble(const uint8_t* packed, int64_t i) { return (packed[i >> 1] >> ((i & 1) * 4)) & 0xF; }
inline void SetNibble(uint8_t* packed, int64_t i, uint8_t v) {
  uint8_t shift = (i & 1) * 4;
  packed[i >> 1] = static_cast<uint8_t>((packed[i >> 1] & ~(0xF << shift)) | ((v & 0xF) << shift));
}

// ---- Whole-buffer conversion --------------------------------------------------------
// Decodes `numel` elements of `src` (laid out as `t`) into f32. Integer types convert
// by value (no scale); 4-bit signed ints sign-extend; block types need whole blocks.
absl::Status DecodeToF32(DType t, const uint8_t* src, int64_t numel, float* dst);
// Encodes f32 values into type `t` (round to nearest even for floats, round and clamp
// for integers, saturating for fp8/fp4, block types by core/block_quant.h's encoder, rows of
// whole blocks). Fails for kBool.
absl::Status EncodeFromF32(DType t, const float* src, int64_t numel, uint8_t* dst);

}  // namespace compress
