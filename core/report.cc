// Model summaries for reports.
#include "core/report.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <vector>

#include "core/status.h"
#include "fmt/format.h"

namespace compress {

namespace {

// What a quantized tensor holds, for the summaries: int4, nf4, fp4-e2m1, mxfp4, fp8-e4m3 ...
// (a codebook chosen while writing says so until it is chosen).
std::string QuantLabel(const QuantInfo& q) {
  if (q.fp8() || q.e8m0_scales()) return q.format();
  if (q.format_pending()) return fmt::format("codebook{}", q.bits);
  if (q.codebook()) return q.format();
  return fmt::format("int{}", q.bits);
}

}  // namespace

ModelSummary Summarize(const Model& m) {
  ModelSummary s;
  s.path = m.source;
  // A GGUF file is held with Hugging Face names (ModelFormat::kSafetensors); say what was read.
  const bool gguf = std::filesystem::path(m.source).extension() == ".gguf";
  s.format = gguf ? std::string("gguf") : std::string(ModelFormatName(m.format));
  for (const auto& name : m.tensors.names()) {
    const Tensor& t = m.tensors.at(name);
    std::string dt = t.quant() ? QuantLabel(*t.quant()) : std::string(DTypeName(t.dtype()));
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
