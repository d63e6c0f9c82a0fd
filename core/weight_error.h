// How far a changed weight is from its reference: the error metrics every pass reports.
//
// Sums run over fixed chunks of kWeightErrorChunk elements, each summed in element order and
// the chunks then combined in order, so the result is the same for any thread count and for
// a kernel that measures while it converts (QuantizeRtnMeasured) as for CompareWeights.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <span>

namespace compress {

// max |changed - reference| and ||changed - reference||_F / ||reference||_F (0 for a zero
// reference), in f64, over two value lists of one tensor.
struct WeightError {
  double max_abs = 0, rel_fro = 0;
};
WeightError CompareWeights(std::span<const float> reference, std::span<const float> changed);

inline constexpr int64_t kWeightErrorChunk = int64_t{1} << 16;

// One chunk's partial sums: add elements in order with Add(reference, changed).
struct WeightErrorChunk {
  double err2 = 0, ref2 = 0, max_abs = 0;
  void Add(float reference, float changed) {
    const double d = static_cast<double>(changed) - reference;
    max_abs = std::max(max_abs, std::fabs(d));
    err2 += d * d;
    ref2 += static_cast<double>(reference) * reference;
  }
};
// The chunks of one tensor, in element order.
WeightError CombineWeightErrorChunks(std::span<const WeightErrorChunk> chunks);

}  // namespace compress
