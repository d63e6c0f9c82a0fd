// PassManager: ordered execution with timing, analysis invalidation and reporting.
#include "core/pass_manager.h"

#include <chrono>

namespace compress {

absl::Status PassManager::Run(Model& model, const std::vector<PipelineStep>& steps, RunReport& report) {
  report.pipeline = CanonicalPipeline(steps);
  for (const PipelineStep& step : steps) {
    if (step.info->needs_calibration && !opts_.calibration) {
      return FailedPrecondition("pass '{}' needs calibration data; give --calibration FILE", step.info->name);
    }
  }
  for (size_t i = 0; i < steps.size(); ++i) {
    const PipelineStep& step = steps[i];
    PassReport pr;
    pr.name = step.info->name;
    pr.canonical = step.canonical;
    pr.origin = step.info->origin;
    auto start = std::chrono::steady_clock::now();
    auto pass = step.info->create(step.values);
    if (!pass.ok()) return Annotate(pass.status(), fmt::format("pass '{}'", pr.name));
    PassContext ctx{analyses_, pr, opts_.progress, opts_.calibration};
    auto preserved = (*pass)->Run(model, ctx);
    if (opts_.progress) opts_.progress->Done();
    if (!preserved.ok()) {
      return Annotate(preserved.status(), fmt::format("pass {} of {} '{}'", i + 1, steps.size(), pr.name));
    }
    analyses_.Invalidate(*preserved);
    pr.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    report.passes.push_back(std::move(pr));
    if (opts_.after_pass) opts_.after_pass(step, model);
  }
  return absl::OkStatus();
}

}  // namespace compress
