// PassManager: runs resolved pipeline steps in order, times them, invalidates analyses, fills the report.
#pragma once

#include <functional>
#include <map>
#include <string>
#include <vector>

#include "core/pass.h"
#include "core/pipeline.h"

namespace compress {

struct PassManagerOptions {
  ProgressSink* progress = nullptr;
  const CalibrationData* calibration = nullptr;
  // Structural edits of checkpoints (formats/hf_edit.h's HfCheckpointEditor()); passes that
  // change a checkpoint's structure refuse to run without it.
  const CheckpointEditor* checkpoint = nullptr;
  // The run's resume journal (null: none); told which pass runs.
  ResumeJournal* journal = nullptr;
  // Called after each pass (for --print-after); receives the step and the model.
  std::function<void(const PipelineStep&, const Model&)> after_pass;
};

// The analyses `step` requests with its option values (PassInfo::required_analyses).
std::vector<std::string> RequiredAnalyses(const PipelineStep& step);

// What each step will do with the analyses it requests, decided before any work from the
// passes' declarations: per step, lines such as "computes calibration-statistics", "reuses
// calibration-statistics (computed by pass 1)" or "recomputes calibration-statistics (pass 2
// 'gptq' changes the model)". It assumes every pass changes the model; one that ends up
// changing nothing keeps every analysis, so a run never computes more than its plan says.
std::vector<std::vector<std::string>> PlanAnalyses(const std::vector<PipelineStep>& steps);

class PassManager {
 public:
  explicit PassManager(PassManagerOptions opts = {}) : opts_(std::move(opts)) {}
  // Runs every step; on error names the failing pass. Reports go to `report.passes`.
  absl::Status Run(Model& model, const std::vector<PipelineStep>& steps, RunReport& report);
  AnalysisManager& analyses() { return analyses_; }

 private:
  PassManagerOptions opts_;
  AnalysisManager analyses_;
  // Analysis -> the last pass (1-based index, name) that dropped it from the cache.
  std::map<std::string, std::pair<size_t, std::string>> last_invalidator_;
};

}  // namespace compress
