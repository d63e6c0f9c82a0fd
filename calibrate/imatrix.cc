// Importance matrices from calibration statistics (calibrate/imatrix.h).
#include "calibrate/imatrix.h"

#include <map>

#include "core/status.h"
#include "formats/gguf_layout.h"

namespace compress {

absl::StatusOr<ImatrixResult> CollectImatrix(const Model& model, const CalibrationData& data,
                                             const std::string& dataset,
                                             std::function<void(int64_t, int64_t)> progress) {
  if (model.format != ModelFormat::kSafetensors) {
    return FailedPrecondition("{}: importance matrices are for llama.cpp models (safetensors or GGUF LLMs), not ONNX",
                              model.source);
  }
  const int64_t experts = std::max<int64_t>(1, model.arch.num_experts);
  ImatrixResult r;
  r.matrix.datasets = {dataset};
  r.matrix.chunk_size = static_cast<uint32_t>(data.options.seqlen);
  r.matrix.chunk_count = static_cast<uint32_t>(data.windows.size());
  std::map<std::string, ImatrixEntry>& entries = r.matrix.entries;
  auto add = [&](const std::string& gname, int64_t mat, int64_t n_mat, const LinearStats& s) -> absl::Status {
    ImatrixEntry& e = entries[gname];
    if (e.counts.empty()) {
      e.n_per_row = s.in_features;
      e.sums.assign(static_cast<size_t>(s.in_features * n_mat), 0.f);
      e.counts.assign(static_cast<size_t>(n_mat), 0.f);
    }
    if (e.n_per_row != s.in_features || mat < 0 || mat >= e.n_mat()) {
      return Internal("imatrix entry '{}': matrix {} of {} inputs does not fit [{} x {}]", gname, mat, s.in_features,
                      e.n_per_row, e.n_mat());
    }
    if (s.data_free) return absl::OkStatus();  // count 0: llama.cpp takes importance 1 for every input
    for (int64_t i = 0; i < s.in_features; ++i) e.sums[mat * e.n_per_row + i] = static_cast<float>(s.sum_sq[i]);
    e.counts[mat] = static_cast<float>(s.rows);
    return absl::OkStatus();
  };
  DriverOptions opts;
  opts.collect_xtx = false;
  opts.sequential = false;
  RETURN_IF_ERROR(RunCalibration(
      model, data, opts,
      [&](int, const std::map<std::string, LinearStats>& stats) -> absl::Status {
        for (const auto& [name, s] : stats) {
          if (s.rows == 0 && !s.data_free) continue;
          if (auto ex = gguf::GgufExpertName(name)) {
            if (ex->second >= experts) return Internal("expert weight '{}' beyond the model's {} experts", name, experts);
            RETURN_IF_ERROR(add(ex->first, ex->second, experts, s));
            continue;
          }
          absl::StatusOr<std::string> g = gguf::GgufWeightName(name, model.arch.family);
          if (!g.ok() || g->empty()) {
            r.skipped.push_back(name);
            continue;
          }
          RETURN_IF_ERROR(add(*g, 0, 1, s));
        }
        return absl::OkStatus();
      },
      std::move(progress)));
  if (entries.empty()) {
    return FailedPrecondition("{}: calibration gave no statistics for any weight with a GGUF name", model.source);
  }
  return r;
}

}  // namespace compress
