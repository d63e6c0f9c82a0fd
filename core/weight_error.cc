// Weight error metrics in fixed chunks (core/weight_error.h).
#include "core/weight_error.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace compress {

void WeightErrorChunk::AddSpan(int64_t i0, const float* reference, const float* changed, int64_t n) {
  int64_t k = 0;
  for (; k < n && (i0 + k) % kWeightErrorLanes != 0; ++k) Add(i0 + k, reference[k], changed[k]);
  for (; k + kWeightErrorLanes <= n; k += kWeightErrorLanes) {
#pragma omp simd
    for (int l = 0; l < kWeightErrorLanes; ++l) {
      const double d = static_cast<double>(changed[k + l]) - reference[k + l];
      max_abs[l] = std::max(max_abs[l], std::fabs(d));
      err2[l] += d * d;
      ref2[l] += static_cast<double>(reference[k + l]) * reference[k + l];
    }
  }
  for (; k < n; ++k) Add(i0 + k, reference[k], changed[k]);
}

WeightError CombineWeightErrorChunks(std::span<const WeightErrorChunk> chunks) {
  WeightError e;
  double e2 = 0, r2 = 0;
  for (const WeightErrorChunk& c : chunks) {
    for (int l = 0; l < kWeightErrorLanes; ++l) {
      e2 += c.err2[l];
      r2 += c.ref2[l];
      e.max_abs = std::max(e.max_abs, c.max_abs[l]);
    }
  }
  e.rel_fro = r2 > 0 ? std::sqrt(e2 / r2) : 0.0;
  e.err2 = e2;
  e.ref2 = r2;
  return e;
}

WeightError CompareWeights(std::span<const float> reference, std::span<const float> changed) {
  const int64_t n = static_cast<int64_t>(reference.size());
  const int64_t chunks = (n + kWeightErrorChunk - 1) / kWeightErrorChunk;
  std::vector<WeightErrorChunk> parts(chunks);
#pragma omp parallel for schedule(static) if (chunks > 1)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t i0 = c * kWeightErrorChunk, i1 = std::min(n, i0 + kWeightErrorChunk);
    WeightErrorChunk p;
    p.AddSpan(i0, reference.data() + i0, changed.data() + i0, i1 - i0);
    parts[c] = p;
  }
  return CombineWeightErrorChunks(parts);
}

}  // namespace compress
