// Model summaries for reports.
#include "core/report.h"

#include <algorithm>
#include <cmath>

#include "fmt/format.h"

namespace compress {

WeightError CompareWeights(std::span<const float> reference, std::span<const float> changed) {
  WeightError e;
  double err2 = 0, ref2 = 0;
  for (size_t i = 0; i < reference.size(); ++i) {
    const double d = static_cast<double>(changed[i]) - reference[i];
    e.max_abs = std::max(e.max_abs, std::fabs(d));
    err2 += d * d;
    ref2 += static_cast<double>(reference[i]) * reference[i];
  }
  e.rel_fro = ref2 > 0 ? std::sqrt(err2 / ref2) : 0.0;
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
