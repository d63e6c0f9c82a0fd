// PassManager: ordered execution with timing, analysis invalidation and reporting.
#include "core/pass_manager.h"

#include <chrono>

namespace compress {

namespace {

bool Unchanged(const TensorStore& a, const TensorStore& b) {
  if (a.names() != b.names()) return false;
  for (const auto& n : a.names()) {
    if (!a.at(n).SameAs(b.at(n))) return false;
  }
  return true;
}

}  // namespace

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
    const TensorStore before = model.tensors;  // shares every tensor's storage: cheap
    const nlohmann::json config_before = model.config;
    auto preserved = (*pass)->Run(model, ctx);
    if (opts_.progress) opts_.progress->Done();
    if (!preserved.ok()) {
      return Annotate(preserved.status(), fmt::format("pass {} of {} '{}'", i + 1, steps.size(), pr.name));
    }
    analyses_.Invalidate(*preserved);
    if (step.info->selects_tensors && Unchanged(before, model.tensors) && config_before == model.config) {
      report.warnings.push_back(fmt::format(
          "pass {} '{}' changed nothing: its selection matched no tensor it can change (check include/exclude)",
          i + 1, pr.name));
    }
    pr.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    report.passes.push_back(std::move(pr));
    if (opts_.after_pass) opts_.after_pass(step, model);
  }
  return absl::OkStatus();
}

}  // namespace compress
