// Test helper: runs pipeline text on a model with the built-in passes.
#pragma once

#include <string>

#include "core/pass_manager.h"
#include "formats/model_io.h"
#include "passes/registry.h"

namespace compress::testing {

inline absl::StatusOr<RunReport> RunPipeline(Model& m, const std::string& text,
                                             const CalibrationData* calibration = nullptr) {
  PassRegistry reg;
  RETURN_IF_ERROR(RegisterBuiltinPasses(reg));
  ASSIGN_OR_RETURN(auto raw, ParsePipelineText(text));
  ASSIGN_OR_RETURN(auto steps, ResolvePipeline(reg, raw));
  PassManagerOptions opts;
  opts.calibration = calibration;
  opts.checkpoint = &ModelCheckpointEditor();
  PassManager pm(opts);
  RunReport report;
  RETURN_IF_ERROR(pm.Run(m, steps, report));
  return report;
}

}  // namespace compress::testing
