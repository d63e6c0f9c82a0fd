// Integer quantization of 2-D weights: parameters carried by a quantized Tensor, and the
// round-to-nearest quantizer/dequantizer that every int format and writer shares.
//
// Codes are signed int8 values (any bit width 2..8 keeps its codes in the signed range
// [-2^(b-1), 2^(b-1)-1]); a group is `group_size` consecutive elements along the input
// dimension of one output channel, and owns one scale s (and zero point z if asymmetric):
//   symmetric:  s = max|w| / (2^(b-1)-1),          q = clamp(round(w/s), -(2^(b-1)-1), 2^(b-1)-1)
//   asymmetric: s = (max w - min w) / (2^b - 1),   z = clamp(round(-2^(b-1) - min w / s)),
//               q = clamp(round(w/s) + z, -2^(b-1), 2^(b-1)-1)
//   w' = (q - z) * s, and |w - w'| <= s/2 for every element (the bound the tests check).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "core/dtype.h"

namespace compress {

struct QuantInfo {
  int bits = 8;
  bool symmetric = true;
  int channel_axis = 0;    // 0: shape [out, in] (HF Linear); 1: [in, out] (ONNX MatMul B, GPT-2 Conv1D)
  int64_t group_size = 0;  // elements per group along the input axis; == in_features for per-channel
  int64_t channels = 0, groups = 0;
  std::vector<float> scales;        // [channels * groups], channel-major
  std::vector<int8_t> zero_points;  // same layout; empty when symmetric
  DType original_dtype = DType::kF32;

  bool per_channel(int64_t in_features) const { return group_size == in_features; }
  // Index of the scale for element (row, col) of the 2-D weight.
  int64_t ScaleIndex(int64_t row, int64_t col) const {
    const int64_t ch = channel_axis == 0 ? row : col;
    const int64_t k = channel_axis == 0 ? col : row;
    return ch * groups + k / group_size;
  }
};

// The codes b-bit values may take: symmetric [-(2^(b-1)-1), 2^(b-1)-1], asymmetric
// [-2^(b-1), 2^(b-1)-1].
struct CodeRange {
  int lo, hi;
};
inline CodeRange CodeRangeOf(int bits, bool symmetric) {
  const int hi = (1 << (bits - 1)) - 1;
  return {symmetric ? -hi : -(1 << (bits - 1)), hi};
}

// Scale s (and zero point z, 0 when symmetric) of one group from its minimum lo <= 0,
// maximum hi >= 0 and max |w|, as the formulas above define them; an all-zero group gets s = 1.
void GroupScale(float lo, float hi, float amax, int bits, bool symmetric, float* s, int* z);

// Quantizes a row-major 2-D weight `w` of shape [rows, cols]. `group_size` 0 means one
// group per channel. Fails when group_size does not divide the input dimension.
absl::StatusOr<std::pair<std::vector<int8_t>, QuantInfo>> QuantizeRtn(std::span<const float> w, int64_t rows,
                                                                      int64_t cols, int bits, bool symmetric,
                                                                      int channel_axis, int64_t group_size);

// w' = (q - z) * s for every element.
void Dequantize(std::span<const int8_t> codes, int64_t rows, int64_t cols, const QuantInfo& q, float* out);

}  // namespace compress
