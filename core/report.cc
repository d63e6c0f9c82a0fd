// Model summaries for reports.
#include "core/report.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <vector>

#include "fmt/format.h"

namespace compress {

ModelSummary Summarize(const Model& m) {
  ModelSummary s;
  s.path = m.source;
  // A GGUF file is held with Hugging Face names (ModelFormat::kSafetensors); say what was read.
  const bool gguf = std::filesystem::path(m.source).extension() == ".gguf";
  s.format = gguf ? std::string("gguf") : std::string(ModelFormatName(m.format));
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
