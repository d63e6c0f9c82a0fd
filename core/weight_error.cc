// Weight error metrics in fixed chunks (core/weight_error.h).
#include "core/weight_error.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace compress {

WeightError CombineWeightErrorChunks(std::span<const WeightErrorChunk> chunks) {
  WeightError e;
  double e2 = 0, r2 = 0;
  for (const WeightErrorChunk& c : chunks) {
    e2 += c.err2;
    r2 += c.ref2;
    e.max_abs = std::max(e.max_abs, c.max_abs);
  }
  e.rel_fro = r2 > 0 ? std::sqrt(e2 / r2) : 0.0;
  return e;
}

WeightError CompareWeights(std::span<const float> reference, std::span<const float> changed) {
  const int64_t n = static_cast<int64_t>(reference.size());
  const int64_t chunks = (n + kWeightErrorChunk - 1) / kWeightErrorChunk;
  std::vector<WeightErrorChunk> parts(chunks);
#pragma omp parallel for schedule(static) if (chunks > 1)
  for (int64_t c = 0; c < chunks; ++c) {
    WeightErrorChunk p;
    for (int64_t i = c * kWeightErrorChunk; i < std::min(n, (c + 1) * kWeightErrorChunk); ++i) {
      p.Add(reference[i], changed[i]);
    }
    parts[c] = p;
  }
  return CombineWeightErrorChunks(parts);
}

}  // namespace compress
