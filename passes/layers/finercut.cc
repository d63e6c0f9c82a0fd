// FinerCut: greedy removal of attention / FFN sublayers by output change on calibration data.
#include "passes/layers/finercut.h"

#include <algorithm>
#include <cmath>
#include <regex>
#include <set>

#include "calibrate/calibration.h"
#include "calibrate/removal_scorer.h"
#include "core/checkpoint_edit.h"
#include "passes/layer_walk.h"

namespace compress {
namespace {

struct Unit {
  int block;
  bool attention, mlp;  // what removing this unit takes out
  std::string Name() const {
    return attention && mlp ? fmt::format("block {}", block)
                            : fmt::format("block {} {}", block, attention ? "attention" : "ffn");
  }
};

struct Removal {
  Unit unit;
  double score;
};

struct Options {
  double ratio = 0.25, param_ratio = 0;
  std::string metric = "js", candidates = "sublayers", search = "greedy";
  int64_t samples = 16;
};

int64_t LayerParams(const Model& m, const std::vector<LinearLayer>& ls) {
  int64_t n = 0;
  for (const auto& l : ls) {
    n += m.tensors.at(l.weight).numel();
    if (!l.bias.empty()) n += m.tensors.at(l.bias).numel();
  }
  return n;
}



// Which sublayers of each of L blocks the removals took out.
struct Gone {
  std::vector<bool> attn, mlp;
  Gone(std::vector<bool> a, std::vector<bool> m) : attn(std::move(a)), mlp(std::move(m)) {}
  Gone(int L, const std::vector<Removal>& removed) : attn(L, false), mlp(L, false) {
    for (const auto& r : removed) {
      if (r.unit.attention) attn[r.unit.block] = true;
      if (r.unit.mlp) mlp[r.unit.block] = true;
    }
  }
};

// Student map of blocks whose sublayers were not all removed (shared by both forms).
nlohmann::json StudentMap(const Gone& gone, std::vector<int>* new_index) {
  const int L = static_cast<int>(gone.attn.size());
  nlohmann::json student = nlohmann::json::array();
  new_index->assign(L, -1);
  int next = 0;
  for (int b = 0; b < L; ++b) {
    if (gone.attn[b] && gone.mlp[b]) continue;
    (*new_index)[b] = next;
    student.push_back(
        {{"student_block", next}, {"teacher_block", b}, {"attention", !gone.attn[b]}, {"ffn", !gone.mlp[b]}});
    ++next;
  }
  return student;
}

class FinerCutPass final : public Pass {
 public:
  explicit FinerCutPass(Options o) : o_(std::move(o)) {}

  absl::StatusOr<PreservedAnalyses> Run(Model& model, PassContext& ctx) override {
    ASSIGN_OR_RETURN(const CheckpointEditor* editor, ctx.Editor("remove-layers-finercut"));
    RETURN_IF_ERROR(editor->CheckEditable(model, StructuralEdit::kSublayers));
    // Parameters per (block, is_attention) sublayer; a student's no-op sublayers are no candidates.
    std::map<std::pair<int, bool>, int64_t> params;
    for (const Block& b : model.arch.blocks) {
      if (!b.attention.empty()) params[{b.index, true}] = LayerParams(model, b.attention);
      if (!b.mlp.empty()) params[{b.index, false}] = LayerParams(model, b.mlp);
    }
    const int L = static_cast<int>(model.arch.blocks.size());
    std::vector<Unit> units;
    for (int b = 0; b < L; ++b) {
      const bool has_attn = params.count({b, true}) > 0, has_mlp = params.count({b, false}) > 0;
      if (o_.candidates == "blocks") {
        units.push_back({b, has_attn, has_mlp});
        continue;
      }
      if (o_.candidates != "ffn" && has_attn) units.push_back({b, true, false});
      if (o_.candidates != "attn" && has_mlp) units.push_back({b, false, true});
    }
    int64_t block_params = 0;
    for (const auto& [k, v] : params) block_params += v;
    auto unit_params = [&](const Unit& u) {
      auto p = [&](bool attn) { return params.count({u.block, attn}) ? params.at({u.block, attn}) : 0; };
      return (u.attention ? p(true) : 0) + (u.mlp ? p(false) : 0);
    };
    const int64_t target_count = o_.param_ratio > 0
                                     ? static_cast<int64_t>(units.size())
                                     : std::llround(o_.ratio * static_cast<double>(units.size()));
    const int64_t target_params = static_cast<int64_t>(o_.param_ratio * block_params);

    // Removal scoring (calibrate/removal_scorer.h): the LLM runtime skips sublayers (re-running
    // from the changed block); ONNX graphs are re-run with the removed sublayers' Adds bypassed.
    ASSIGN_OR_RETURN(std::unique_ptr<RemovalScorer> scorer,
                     MakeRemovalScorer(model, *ctx.calibration, o_.samples,
                                       o_.metric == "js" ? RemovalMetric::kJs : RemovalMetric::kAngular));
    auto apply = [&](const Unit& u, bool on) { return scorer->SetRemoved(u.block, u.attention, u.mlp, on); };
    auto refresh = [&] { return scorer->Refresh(); };
    auto score = [&](int from) { return scorer->Score(from); };
    std::vector<Removal> removed;
    std::vector<bool> taken(units.size(), false);
    int64_t removed_params = 0;
    auto done = [&] {
      return o_.param_ratio > 0 ? removed_params >= target_params
                                : static_cast<int64_t>(removed.size()) >= target_count;
    };
    while (!done() && removed.size() < units.size()) {
      ctx.Progress("finercut removals", static_cast<int64_t>(removed.size()),
                   o_.param_ratio > 0 ? static_cast<int64_t>(units.size()) : target_count);
      int best = -1;
      double best_score = 0;
      if (o_.search == "last") {
        for (int i = static_cast<int>(units.size()) - 1; i >= 0 && best < 0; --i)
          if (!taken[i]) best = i;
        RETURN_IF_ERROR(apply(units[best], true));
        RETURN_IF_ERROR(refresh());
        ASSIGN_OR_RETURN(best_score, score(0));
        RETURN_IF_ERROR(apply(units[best], false));
      } else {
        RETURN_IF_ERROR(refresh());
        for (size_t i = 0; i < units.size(); ++i) {
          if (taken[i]) continue;
          RETURN_IF_ERROR(apply(units[i], true));
          ASSIGN_OR_RETURN(const double sc, score(units[i].block));
          RETURN_IF_ERROR(apply(units[i], false));
          if (best < 0 || sc < best_score) best = static_cast<int>(i), best_score = sc;
        }
      }
      taken[best] = true;
      RETURN_IF_ERROR(apply(units[best], true));
      removed.push_back({units[best], best_score});
      removed_params += unit_params(units[best]);
    }
    RETURN_IF_ERROR(refresh());
    ASSIGN_OR_RETURN(const double final_score, score(0));
    const int64_t scored_tokens = scorer->tokens();
    scorer.reset();

    // The checkpoint's form (DeciLM students, renumbered blocks, config, bypassed graph
    // sublayers) is the editor's.
    const Gone cut(L, removed);
    ASSIGN_OR_RETURN(auto all, editor->RemoveSublayers(model, cut.attn, cut.mlp));
    std::vector<int> new_index;
    // Families whose loaders have no per-layer no-op (Qwen3, Gemma, GPT-2, mixtures of experts,
    // windowed Mistral / Qwen2 / Phi-3) keep a removed sublayer of a kept block as zeroed output
    // projections: said, with what gives a smaller file.
    int64_t kept_as_zeros = 0;
    for (int b = 0; b < L; ++b)
      if (!(all.first[b] && all.second[b])) kept_as_zeros += (all.first[b] ? 1 : 0) + (all.second[b] ? 1 : 0);
    if (kept_as_zeros > 0 && model.format != ModelFormat::kOnnx && !model.config.contains("block_configs")) {
      ctx.report.warnings.push_back(fmt::format(
          "{} removed sublayer(s) of kept blocks stay in the file as zeroed output projections: {} checkpoints have "
          "no per-layer no-op form that loaders accept, so the file is smaller only by the blocks dropped whole "
          "(candidates=blocks removes whole blocks only)",
          kept_as_zeros, model.arch.family));
    }
    const nlohmann::json student = StudentMap(Gone(std::move(all.first), std::move(all.second)), &new_index);
    nlohmann::json order = nlohmann::json::array();
    for (size_t i = 0; i < removed.size(); ++i) {
      const Unit& u = removed[i].unit;
      order.push_back({{"step", i + 1},
                       {"teacher_block", u.block},
                       {"sublayer", u.attention && u.mlp ? "block"
                                    : u.attention        ? "attention"
                                                         : "ffn"},
                       {"score", removed[i].score},
                       {"parameters", unit_params(u)}});
      ctx.report.notes.push_back(
          fmt::format("step {}: removed {} ({} = {:.5g})", i + 1, u.Name(), o_.metric, removed[i].score));
    }
    const nlohmann::json meta = {{"method", "finercut"},        {"metric", o_.metric},
                                 {"candidates", o_.candidates}, {"search", o_.search},
                                 {"teacher_blocks", L},         {"student_blocks", student.size()},
                                 {"student", student},          {"removal_order", order}};
    model.metadata["compress.finercut"] = meta.dump();
    ctx.report.stats["sublayers_removed"] = 0;
    for (const auto& r : removed)
      ctx.report.stats["sublayers_removed"] += (r.unit.attention ? 1 : 0) + (r.unit.mlp ? 1 : 0);
    ctx.report.stats["blocks_dropped"] = L - static_cast<double>(student.size());
    ctx.report.stats["parameters_removed"] = static_cast<double>(removed_params);
    ctx.report.stats["block_parameter_fraction_removed"] =
        block_params ? static_cast<double>(removed_params) / block_params : 0;
    ctx.report.stats["final_" + o_.metric] = final_score;
    ctx.report.stats["calibration_tokens"] = static_cast<double>(scored_tokens);
    ctx.report.notes.push_back("distillation map (student block <- teacher block): " + student.dump());
    LayerMapPlot map;
    map.title = fmt::format("FinerCut: {} of {} sublayers removed ({}, {} search)",
                            ctx.report.stats["sublayers_removed"], 2 * L, o_.metric, o_.search);
    map.blocks = L;
    for (const Removal& r : removed) map.removed.push_back({r.unit.block, r.unit.attention, r.unit.mlp});
    ctx.report.plots["layers.svg"] = std::move(map);
    return PreservedAnalyses::None();
  }

 private:
  Options o_;
};

}  // namespace

PassInfo FinerCutPassInfo() {
  PassInfo info;
  info.name = "remove-layers-finercut";
  info.summary =
      "FinerCut: greedily remove the attention/FFN sublayers whose removal changes the output least";
  info.selects_tensors = false;
  info.needs_calibration = true;
  OptionBinding<Options> b;
  b.Float(&Options::ratio, "ratio", "fraction of the candidates to remove", 0.0, 1.0)
      .Float(&Options::param_ratio, "param-ratio",
             "if > 0: remove until this fraction of the blocks' parameters is gone (overrides ratio)", 0.0, 1.0)
      .Choice(&Options::metric, "metric",
              "output change: Jensen-Shannon of next-token distributions, or angular distance of final hidden "
              "states",
              {"js", "angular"})
      .Choice(&Options::candidates, "candidates", "what may be removed", {"sublayers", "attn", "ffn", "blocks"})
      .Choice(&Options::search, "search", "greedy search, or drop from the top (baseline)", {"greedy", "last"})
      .Int(&Options::samples, "samples", "calibration windows used for scoring", 1, 1 << 20);
  BindPassOptions(info, std::move(b),
                  [](const Options& o, TensorSelector) { return std::make_unique<FinerCutPass>(o); });
  return info;
}

}  // namespace compress
