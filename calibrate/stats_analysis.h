// Calibration statistics as a cached analysis: every linear layer's input statistics over the
// run's calibration windows (per-input-channel max |x|, mean |x|, sum of x^2, token count; no
// X^T X) with the windows propagated through the model as it is (not block-sequential), and
// each MoE expert's routed-token count. The pass manager computes it on a pass's first request
// and keeps it until a pass that does not preserve it changes the model; the report says when
// a pass computed, recomputed (and because of which pass) or reused it.
//
// Passes whose statistics depend on their own changes block by block (GPTQ, SparseGPT, Wanda
// and LLM.int8 in sequential mode) run the driver themselves (calibrate/calibration.h).
#pragma once

#include <map>
#include <string>
#include <vector>

#include "calibrate/calibration.h"
#include "core/pass.h"

namespace compress {

struct CalibrationStatistics {
  static constexpr const char* kName = "calibration-statistics";
  struct Result {
    std::map<std::string, LinearStats> layers;  // weight name -> input statistics
    std::vector<ExpertCoverage> experts;        // routed tokens per MoE expert
  };
  // FailedPrecondition when the run has no calibration data.
  static absl::StatusOr<Result> Compute(const Model& model, AnalysisManager& am);
};

}  // namespace compress
