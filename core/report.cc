// Model summaries for reports.
#include "core/report.h"

namespace compress {

ModelSummary Summarize(const Model& m) {
  ModelSummary s;
  s.path = m.source;
  s.format = std::string(ModelFormatName(m.format));
  for (const auto& name : m.tensors.names()) {
    const Tensor& t = m.tensors.at(name);
    std::string dt(DTypeName(t.dtype()));
    s.parameters += t.numel();
    s.bytes += t.nbytes();
    s.parameters_by_dtype[dt] += t.numel();
    s.bytes_by_dtype[dt] += t.nbytes();
  }
  s.tensors = static_cast<int64_t>(m.tensors.size());
  return s;
}

}  // namespace compress
