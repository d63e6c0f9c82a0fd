// Model summaries for reports.
#include "core/report.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <vector>

#include "core/status.h"
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

bool PendingMetrics::ready() const {
  std::lock_guard<std::mutex> lock(mu_);
  return value_.has_value();
}

void PendingMetrics::Set(std::map<std::string, double> metrics) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!value_) value_ = std::move(metrics);
}

std::map<std::string, double> PendingMetrics::Get() const {
  std::lock_guard<std::mutex> lock(mu_);
  return value_ ? *value_ : std::map<std::string, double>{};
}

absl::Status ResolvePendingMetrics(RunReport& report) {
  for (PassReport& pass : report.passes) {
    for (TensorChange& change : pass.tensors) {
      if (!change.pending) continue;
      if (!change.pending->ready() && change.measure) {
        RETURN_IF_ERROR(Annotate(change.measure(), fmt::format("measuring '{}'", change.name)));
      }
      for (auto& [k, v] : change.pending->Get()) change.metrics[k] = v;
      change.pending.reset();
      change.measure = nullptr;
    }
    for (auto& f : pass.finish) f(pass);
    pass.finish.clear();
  }
  return absl::OkStatus();
}

}  // namespace compress
