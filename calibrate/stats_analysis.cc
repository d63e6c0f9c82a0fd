// The calibration-statistics analysis.
#include "calibrate/stats_analysis.h"

namespace compress {

absl::StatusOr<CalibrationStatistics::Result> CalibrationStatistics::Compute(const Model& model,
                                                                             AnalysisManager& am) {
  if (!am.calibration()) return FailedPrecondition("calibration data is needed; give --calibration FILE");
  Result r;
  RETURN_IF_ERROR(RunCalibration(model, *am.calibration(), {false, false, &r.experts},
                                 [&](int, const std::map<std::string, LinearStats>& stats) -> absl::Status {
                                   for (const auto& [name, s] : stats) r.layers[name] = s;
                                   return absl::OkStatus();
                                 }));
  for (ExpertCoverage& e : r.experts) e.data_free = false;  // counted here, not a fallback
  return r;
}

}  // namespace compress
