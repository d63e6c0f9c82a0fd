// The calibration-statistics analysis.
#include "calibrate/stats_analysis.h"

#include "calibrate/stats_file.h"
#include "core/distributed.h"

namespace compress {

absl::StatusOr<CalibrationStatistics::Result> CalibrationStatistics::Compute(const Model& model,
                                                                             AnalysisManager& am) {
  if (!am.calibration()) return FailedPrecondition("calibration data is needed; give --calibration FILE");
  const std::string& file = am.calibration()->stats_file;
  uint64_t key = 0;
  if (!file.empty()) {
    ASSIGN_OR_RETURN(key, StatisticsKey(model, *am.calibration()));
    ASSIGN_OR_RETURN(std::optional<Result> saved, LoadStatistics(file, key));
    if (saved) {
      am.MarkLoaded(kName);
      am.Note(fmt::format("read analysis '{}' from {} (key {:016x}: same model state and calibration)", kName, file,
                          key));
      return *std::move(saved);
    }
  }
  Result r;
  RETURN_IF_ERROR(RunCalibration(model, *am.calibration(), {false, false, &r.experts},
                                 [&](int, const std::map<std::string, LinearStats>& stats) -> absl::Status {
                                   for (const auto& [name, s] : stats) r.layers[name] = s;
                                   return absl::OkStatus();
                                 }));
  for (ExpertCoverage& e : r.experts) e.data_free = false;  // counted here, not a fallback
  if (!file.empty() && dist::Rank() == 0) {
    RETURN_IF_ERROR(SaveStatistics(file, key, r));
    am.Note(fmt::format("saved analysis '{}' to {} (key {:016x})", kName, file, key));
  }
  return r;
}

}  // namespace compress
