// Model summaries for reports.
#include "core/report.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "fmt/format.h"

namespace compress {

WeightError CompareWeights(std::span<const float> reference, std::span<const float> changed) {
  // Fixed chunks summed in order: the same result for any thread count.
  constexpr int64_t kChunk = int64_t{1} << 16;
  const int64_t n = static_cast<int64_t>(reference.size()), chunks = (n + kChunk - 1) / kChunk;
  std::vector<double> err2(chunks, 0.0), ref2(chunks, 0.0), max_abs(chunks, 0.0);
#pragma omp parallel for schedule(static) if (chunks > 1)
  for (int64_t c = 0; c < chunks; ++c) {
    double e2 = 0, r2 = 0, m = 0;
    for (int64_t i = c * kChunk; i < std::min(n, (c + 1) * kChunk); ++i) {
      const double d = static_cast<double>(changed[i]) - reference[i];
      m = std::max(m, std::fabs(d));
      e2 += d * d;
      r2 += static_cast<double>(reference[i]) * reference[i];
    }
    err2[c] = e2, ref2[c] = r2, max_abs[c] = m;
  }
  WeightError e;
  double e2 = 0, r2 = 0;
  for (int64_t c = 0; c < chunks; ++c) {
    e2 += err2[c];
    r2 += ref2[c];
    e.max_abs = std::max(e.max_abs, max_abs[c]);
  }
  e.rel_fro = r2 > 0 ? std::sqrt(e2 / r2) : 0.0;
  return e;
}

ModelSummary Summarize(const Model& m) {
  ModelSummary s;
  s.path = m.source;
  s.format = std::string(ModelFormatName(m.format));
  for (const auto& name : m.tensors.names()) {
    const Tensor& t = m.tensors.at(name);
    std::string dt = t.quant() ? fmt::format("int{}", t.quant()->bits) : std::string(DTypeName(t.dtype()));
    s.parameters += t.numel();
    s.bytes += t.storage_bytes();
    s.parameters_by_dtype[dt] += t.numel();
    s.bytes_by_dtype[dt] += t.storage_bytes();
  }
  s.tensors = static_cast<int64_t>(m.tensors.size());
  return s;
}

}  // namespace compress
