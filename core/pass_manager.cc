// PassManager: ordered execution with timing, analysis invalidation and reporting.
#include "core/pass_manager.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <set>

#include "core/resume_journal.h"

namespace compress {

namespace {

// Whether tensor `x` (before) and `y` (after) hold different values: other type, shape,
// encoding or bytes. Only same-typed dense tensors are compared byte by byte.
bool Differs(const Tensor& x, const Tensor& y) {
  if (x.SameAs(y)) return false;
  if (x.dtype() != y.dtype() || x.shape() != y.shape() || x.quant() || y.quant() || x.factors() || y.factors()) {
    return true;
  }
  auto a = x.Data();
  auto b = y.Data();
  if (!a.ok() || !b.ok()) return true;
  return (*a)->size() != (*b)->size() || std::memcmp((*a)->data(), (*b)->data(), (*a)->size()) != 0;
}

// Makes the pass's list of changed tensors the true one: entries for tensors whose values
// did not change are dropped (a pass that rewrote a tensor unchanged), and tensors that were
// removed, added or changed without an entry get a plain one (structural passes).
void ReconcileChanges(const TensorStore& before, const TensorStore& after, PassReport& pr) {
  std::set<std::string> changed;
  for (const auto& n : before.names()) {
    if (!after.contains(n) || Differs(before.at(n), after.at(n))) changed.insert(n);
  }
  for (const auto& n : after.names()) {
    if (!before.contains(n)) changed.insert(n);
  }
  std::set<std::string> listed;
  std::vector<TensorChange> kept;
  for (auto& t : pr.tensors) {
    if (!changed.count(t.name) || !listed.insert(t.name).second) continue;
    kept.push_back(std::move(t));
  }
  for (const auto& n : changed) {
    if (listed.count(n)) continue;
    TensorChange c;
    c.name = n;
    if (const Tensor* t = before.find(n)) {
      c.shape_before = t->shape(), c.dtype_before = std::string(DTypeName(t->dtype()));
      c.bytes_before = t->storage_bytes();
    }
    if (const Tensor* t = after.find(n)) {
      c.shape_after = t->shape(), c.dtype_after = std::string(DTypeName(t->dtype()));
      c.bytes_after = t->storage_bytes();
    }
    c.method = !after.contains(n) ? "removed" : !before.contains(n) ? "added" : "changed";
    kept.push_back(std::move(c));
  }
  pr.tensors = std::move(kept);
}

}  // namespace

std::vector<std::string> RequiredAnalyses(const PipelineStep& step) {
  return step.info->required_analyses ? step.info->required_analyses(step.values) : std::vector<std::string>{};
}

std::vector<std::vector<std::string>> PlanAnalyses(const std::vector<PipelineStep>& steps) {
  std::map<std::string, size_t> cached_by;        // analysis -> step (1-based) that computed it
  std::map<std::string, size_t> dropped_by;       // analysis -> step that last invalidated it
  std::vector<std::vector<std::string>> plan(steps.size());
  for (size_t i = 0; i < steps.size(); ++i) {
    for (const std::string& a : RequiredAnalyses(steps[i])) {
      if (auto it = cached_by.find(a); it != cached_by.end()) {
        plan[i].push_back(fmt::format("reuses {} (computed by pass {})", a, it->second));
      } else if (auto d = dropped_by.find(a); d != dropped_by.end()) {
        plan[i].push_back(fmt::format("recomputes {} (pass {} '{}' changes the model)", a, d->second,
                                      steps[d->second - 1].info->name));
        cached_by[a] = i + 1;
      } else {
        plan[i].push_back(fmt::format("computes {}", a));
        cached_by[a] = i + 1;
      }
    }
    const auto& keep = steps[i].info->preserved_analyses;
    for (auto it = cached_by.begin(); it != cached_by.end();) {
      if (std::find(keep.begin(), keep.end(), it->first) != keep.end()) {
        ++it;
      } else {
        dropped_by[it->first] = i + 1;
        it = cached_by.erase(it);
      }
    }
  }
  return plan;
}

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
    PassContext ctx{analyses_,         pr, opts_.progress, opts_.calibration, opts_.checkpoint, opts_.journal,
                    fmt::format("pass {} of {} '{}'", i + 1, steps.size(), pr.name)};
    if (opts_.journal) opts_.journal->BeginPass(i);
    analyses_.SetCalibration(opts_.calibration);
    const std::vector<std::string> declared = RequiredAnalyses(step);
    analyses_.SetDeclared(&pr.name, &declared);
    std::map<std::string, std::pair<int, int>> used_before;  // analysis -> (computations, hits)
    std::map<std::string, int> loads_before;
    for (const auto& name : analyses_.Known()) {
      used_before[name] = {analyses_.computations(name), analyses_.hits(name)};
      loads_before[name] = analyses_.loads(name);
    }
    const TensorStore before = model.tensors;  // shares every tensor's storage: cheap
    const nlohmann::json config_before = model.config;
    const auto input_quant_before = model.input_quant;
    const auto kv_before = model.kv_cache;
    // Held, so a graph edit copies the payload (graph_ir.h's copy-on-write) and shows as a new pointer.
    const std::shared_ptr<FormatPayload> payload_before = model.payload;
    auto preserved = (*pass)->Run(model, ctx);
    analyses_.SetDeclared(nullptr, nullptr);
    if (opts_.progress) opts_.progress->Done();
    if (!preserved.ok()) {
      return Annotate(preserved.status(), ctx.label);
    }
    // Say when a pass computed an analysis, recomputed it after an earlier pass changed the
    // model, or reused it.
    const std::vector<std::string> analysis_notes = analyses_.TakeNotes();
    for (const auto& name : analyses_.Known()) {
      // An analysis read from a file (--stats) says so in its own note instead of "computed".
      if (analyses_.loads(name) > loads_before[name]) continue;
      const auto [c0, h0] = used_before.count(name) ? used_before[name] : std::pair<int, int>{0, 0};
      const int computed = analyses_.computations(name) - c0, reused = analyses_.hits(name) - h0;
      if (computed > 0 && c0 > 0) {
        pr.notes.push_back(fmt::format("recomputed analysis '{}': pass {} '{}' changed the model since it was last "
                                       "computed",
                                       name, last_invalidator_[name].first, last_invalidator_[name].second));
      } else if (computed > 0) {
        pr.notes.push_back(fmt::format("computed analysis '{}'", name));
      } else if (reused > 0) {
        pr.notes.push_back(fmt::format("reused analysis '{}' (still valid)", name));
      }
    }
    for (const std::string& note : analysis_notes) pr.notes.push_back(note);
    ReconcileChanges(before, model.tensors, pr);
    // Analyses depend on the model's tensors, config, activation scheme and graph: a pass
    // that changed none of them keeps them all, and one that did keeps what it says it keeps.
    const bool changed = !pr.tensors.empty() || config_before != model.config ||
                         input_quant_before != model.input_quant || kv_before != model.kv_cache ||
                         payload_before != model.payload;
    PreservedAnalyses keep = changed ? *preserved : PreservedAnalyses::All();
    for (const auto& name : step.info->preserved_analyses) keep.Preserve(name);
    for (const auto& name : analyses_.Known()) {
      if (analyses_.IsCached(name) && !keep.IsPreserved(name)) last_invalidator_[name] = {i + 1, pr.name};
    }
    analyses_.Invalidate(keep);
    // Nothing about experts is skipped silently: each starved one is named with its fallback.
    for (const ExpertCoverage& e : pr.experts) {
      if (!e.data_free) continue;
      pr.notes.push_back(fmt::format(
          "expert {} of block {} saw {} calibration tokens (fewer than --min-expert-tokens): its layers got "
          "data-free statistics (GPTQ rounds to nearest, SparseGPT/Wanda prune by magnitude)",
          e.expert, e.block, e.tokens));
    }
    for (const std::string& w : pr.warnings) report.warnings.push_back(fmt::format("pass {} '{}': {}", i + 1, pr.name, w));
    pr.warnings.clear();
    if (step.info->selects_tensors && pr.tensors.empty() && config_before == model.config) {
      report.warnings.push_back(fmt::format(
          "pass {} '{}' changed nothing: no selected tensor ended up different (check include/exclude and "
          "the options)",
          i + 1, pr.name));
    }
    pr.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    report.passes.push_back(std::move(pr));
    if (opts_.after_pass) opts_.after_pass(step, model);
  }
  return absl::OkStatus();
}

}  // namespace compress
