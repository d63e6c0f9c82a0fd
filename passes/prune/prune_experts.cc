// Expert pruning by routing frequency.
#include "passes/prune/prune_experts.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "calibrate/calibration.h"
#include "calibrate/stats_analysis.h"
#include "core/status.h"
#include "core/checkpoint_edit.h"

namespace compress {
namespace {

// "PREFIX.experts.E.REST" with E replaced by `to`.
std::string Renumbered(const std::string& name, int from, int to) {
  const std::string old_part = ".experts." + std::to_string(from) + ".";
  const size_t at = name.find(old_part);
  return name.substr(0, at) + ".experts." + std::to_string(to) + "." + name.substr(at + old_part.size());
}

class PruneExpertsPass final : public Pass {
 public:
  explicit PruneExpertsPass(double ratio) : ratio_(ratio) {}

  absl::StatusOr<PreservedAnalyses> Run(Model& model, PassContext& ctx) override {
    const Architecture& a = model.arch;
    if (model.format != ModelFormat::kSafetensors || a.num_experts == 0) {
      return Unimplemented("prune-structured{{target=experts}} needs a mixture-of-experts safetensors checkpoint "
                           "(this one has no routed experts)");
    }
    ASSIGN_OR_RETURN(const CheckpointEditor* editor, ctx.Editor("prune-structured{target=experts}"));
    if (!ctx.calibration) {
      return FailedPrecondition(
          "prune-structured{{target=experts}} ranks experts by how often the router picks them: give --calibration FILE");
    }
    int64_t experts = 0;
    for (const Block& b : a.blocks) {
      if (!b.moe()) continue;
      if (experts && b.num_experts != experts) {
        return Unimplemented("MoE blocks hold different expert counts ({} and {})", experts, b.num_experts);
      }
      experts = b.num_experts;
    }
    const int64_t keep = std::max<int64_t>(std::max<int64_t>(1, a.experts_per_token),
                                           std::llround((1.0 - ratio_) * static_cast<double>(experts)));
    if (keep >= experts) {
      ctx.report.notes.push_back(fmt::format("kept all {} experts: ratio {} with {} experts per token leaves {}",
                                             experts, ratio_, a.experts_per_token, keep));
      return PreservedAnalyses::All();
    }
    // Routing counts of every expert over the calibration tokens (the calibration-statistics
    // analysis: shared with other passes until one changes the model).
    ASSIGN_OR_RETURN(const CalibrationStatistics::Result* cs, ctx.analyses.Get<CalibrationStatistics>(model));
    const std::vector<ExpertCoverage>& counts = cs->experts;
    std::map<int, std::vector<int64_t>> tokens;  // block -> count per expert
    for (const ExpertCoverage& c : counts) {
      auto& v = tokens[c.block];
      v.resize(experts, 0);
      v[c.expert] = c.tokens;
    }
    ctx.report.experts = counts;
    int64_t removed = 0;
    for (const Block& b : std::vector<Block>(a.blocks)) {
      if (!b.moe()) continue;
      const std::vector<int64_t>& n = tokens[b.index];
      std::vector<int> order(experts);
      std::iota(order.begin(), order.end(), 0);
      std::stable_sort(order.begin(), order.end(), [&](int x, int y) { return n[x] > n[y]; });
      std::vector<int> kept(order.begin(), order.begin() + keep);
      std::sort(kept.begin(), kept.end());
      std::vector<bool> keep_expert(experts, false);
      for (int e : kept) keep_expert[e] = true;
      std::string dropped;
      for (const LinearLayer& l : b.mlp) {
        if (l.expert < 0 || keep_expert[l.expert]) continue;
        model.tensors.Erase(l.weight);
        if (!l.bias.empty()) model.tensors.Erase(l.bias);
      }
      for (int e = 0; e < experts; ++e) {
        if (!keep_expert[e]) {
          dropped += fmt::format("{}{} ({} tokens)", dropped.empty() ? "" : ", ", e, n[e]);
          ++removed;
        }
      }
      // Kept experts renumbered in increasing order: each new name is free by then.
      for (size_t k = 0; k < kept.size(); ++k) {
        if (kept[k] == static_cast<int>(k)) continue;
        for (const LinearLayer& l : b.mlp) {
          if (l.expert != kept[k]) continue;
          for (const std::string& t : {l.weight, l.bias}) {
            if (t.empty()) continue;
            Tensor moved = model.tensors.at(t);
            model.tensors.Replace(t, Renumbered(t, kept[k], static_cast<int>(k)), std::move(moved));
          }
        }
      }
      // Router rows of the kept experts.
      const Tensor& r = model.tensors.at(b.router);
      if (r.quant() || r.factors()) return FailedPrecondition("router '{}' is quantized or factorized", b.router);
      ASSIGN_OR_RETURN(std::vector<float> rw, r.ToF32());
      const int64_t hidden = r.shape()[1];
      std::vector<float> rows;
      for (int e : kept) rows.insert(rows.end(), rw.begin() + e * hidden, rw.begin() + (e + 1) * hidden);
      ASSIGN_OR_RETURN(Tensor nr, Tensor::FromF32(rows, {keep, hidden}, r.dtype()));
      model.tensors.Set(b.router, std::move(nr));
      ctx.report.notes.push_back(fmt::format("block {}: dropped experts {}", b.index, dropped));
    }
    RETURN_IF_ERROR(editor->SetExpertCount(model, keep));
    ctx.report.stats["experts_removed"] = static_cast<double>(removed);
    ctx.report.stats["experts_kept_per_block"] = static_cast<double>(keep);
    return PreservedAnalyses::None();
  }

 private:
  double ratio_;
};

}  // namespace

std::unique_ptr<Pass> MakePruneExpertsPass(double ratio) { return std::make_unique<PruneExpertsPass>(ratio); }

}  // namespace compress
