// How far a changed weight is from its reference: the error metrics every pass reports.
//
// Sums run over fixed chunks of kWeightErrorChunk elements, each summed in fixed lanes (below)
// and the chunks then combined in order, so the result is the same for any thread count and
// for a kernel that measures while it converts (QuantizeRtnMeasured) as for CompareWeights.
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
  double err2 = 0, ref2 = 0;  // ||changed - reference||_F^2 and ||reference||_F^2
};
WeightError CompareWeights(std::span<const float> reference, std::span<const float> changed);

inline constexpr int64_t kWeightErrorChunk = int64_t{1} << 16;

// One chunk's partial sums, in kWeightErrorLanes lanes: element i (its index in the tensor)
// goes to lane i % kWeightErrorLanes, and each lane adds its elements in order. The lanes
// make the sums vectorizable while every way of splitting a chunk into spans (AddSpan) gives
// the same bits.
inline constexpr int kWeightErrorLanes = 8;
struct WeightErrorChunk {
  double err2[kWeightErrorLanes] = {}, ref2[kWeightErrorLanes] = {}, max_abs[kWeightErrorLanes] = {};
  void Add(int64_t i, float reference, float changed) {
    const double d = static_cast<double>(changed) - reference;
    const int l = static_cast<int>(i % kWeightErrorLanes);
    max_abs[l] = std::max(max_abs[l], std::fabs(d));
    err2[l] += d * d;
    ref2[l] += static_cast<double>(reference) * reference;
  }
  // Elements i0 .. i0 + n - 1.
  void AddSpan(int64_t i0, const float* reference, const float* changed, int64_t n);

};
// The chunks of one tensor, in element order.
WeightError CombineWeightErrorChunks(std::span<const WeightErrorChunk> chunks);

}  // namespace compress
