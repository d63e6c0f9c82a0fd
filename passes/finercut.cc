// FinerCut: greedy removal of attention / FFN sublayers by output change on calibration data.
#include "passes/finercut.h"

#include <cmath>
#include <regex>
#include <set>

#include "calibrate/calibration.h"
#include "formats/hf_config.h"
#include "runtime/llama.h"

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

// Output change of the current runtime configuration on each sample against the teacher.
class Scorer {
 public:
  Scorer(const LlamaRuntime& rt, const CalibrationData& data, int64_t samples, bool js) : rt_(rt), js_(js) {
    for (int64_t s = 0; s < std::min<int64_t>(samples, data.windows.size()); ++s)
      ids_.push_back(data.windows[s]);
  }
  int64_t tokens() const {
    int64_t n = 0;
    for (const auto& w : ids_) n += static_cast<int64_t>(w.size());
    return n;
  }

  absl::Status CaptureTeacher() {
    for (const auto& ids : ids_) {
      ASSIGN_OR_RETURN(RowMatrix x, rt_.Embed(ids));
      for (int b = 0; b < rt_.num_blocks(); ++b) rt_.RunBlock(b, x);
      rt_.FinalNorm(x);
      teacher_.push_back(js_ ? LogSoftmax(rt_.Logits(x)) : x);
    }
    return absl::OkStatus();
  }

  // Hidden states entering every block under the current configuration.
  absl::Status CacheInputs() {
    inputs_.assign(ids_.size(), {});
    for (size_t s = 0; s < ids_.size(); ++s) {
      ASSIGN_OR_RETURN(RowMatrix x, rt_.Embed(ids_[s]));
      for (int b = 0; b < rt_.num_blocks(); ++b) {
        inputs_[s].push_back(x);
        rt_.RunBlock(b, x);
      }
    }
    return absl::OkStatus();
  }

  // Mean divergence with the runtime as configured now, starting from the cached inputs of
  // block `from` (blocks before it are unchanged since CacheInputs).
  double Score(int from) const {
    double total = 0;
    int64_t count = 0;
    for (size_t s = 0; s < ids_.size(); ++s) {
      RowMatrix x = inputs_[s][from];
      for (int b = from; b < rt_.num_blocks(); ++b) rt_.RunBlock(b, x);
      rt_.FinalNorm(x);
      const RowMatrix& t = teacher_[s];
      if (js_) {
        const RowMatrix lq = LogSoftmax(rt_.Logits(x));
        for (Eigen::Index i = 0; i < lq.rows(); ++i) total += Js(t.row(i), lq.row(i));
      } else {
        for (Eigen::Index i = 0; i < x.rows(); ++i) {
          const double c = static_cast<double>(t.row(i).dot(x.row(i))) /
                           std::max(1e-30, static_cast<double>(t.row(i).norm()) * x.row(i).norm());
          total += std::acos(std::clamp(c, -1.0, 1.0)) / M_PI;
        }
      }
      count += x.rows();
    }
    return count ? total / count : 0.0;
  }

 private:
  static RowMatrix LogSoftmax(RowMatrix z) {
    for (Eigen::Index i = 0; i < z.rows(); ++i) {
      const float mx = z.row(i).maxCoeff();
      const double lse = mx + std::log((z.row(i).array() - mx).exp().cast<double>().sum());
      z.row(i).array() -= static_cast<float>(lse);
    }
    return z;
  }
  template <typename A, typename B>
  static double Js(const A& lp, const B& lq) {
    double d = 0;
    for (Eigen::Index j = 0; j < lp.size(); ++j) {
      const double p = std::exp(static_cast<double>(lp(j))), q = std::exp(static_cast<double>(lq(j)));
      const double m = 0.5 * (p + q);
      if (m <= 0) continue;
      if (p > 0) d += 0.5 * p * (lp(j) - std::log(m));
      if (q > 0) d += 0.5 * q * (lq(j) - std::log(m));
    }
    return std::max(0.0, d);
  }

  const LlamaRuntime& rt_;
  bool js_;
  std::vector<std::vector<int32_t>> ids_;
  std::vector<RowMatrix> teacher_;
  std::vector<std::vector<RowMatrix>> inputs_;
};

std::string LayerMapSvg(int blocks, const std::vector<Removal>& removed, const std::string& title) {
  std::map<std::pair<int, int>, int> step;  // (block, 0 attention / 1 ffn) -> removal step
  for (size_t i = 0; i < removed.size(); ++i) {
    if (removed[i].unit.attention) step[{removed[i].unit.block, 0}] = static_cast<int>(i) + 1;
    if (removed[i].unit.mlp) step[{removed[i].unit.block, 1}] = static_cast<int>(i) + 1;
  }
  const int cw = 36, ch = 28, left = 70, top = 40;
  const int width = left + blocks * cw + 20, height = top + 2 * ch + 60;
  std::string svg = fmt::format(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\" font-family=\"sans-serif\" "
      "font-size=\"11\">\n<text x=\"10\" y=\"20\" font-size=\"13\">{}</text>\n",
      width, height, title);
  const char* rows[2] = {"attention", "ffn"};
  for (int r = 0; r < 2; ++r) {
    svg += fmt::format("<text x=\"10\" y=\"{}\">{}</text>\n", top + r * ch + 18, rows[r]);
    for (int b = 0; b < blocks; ++b) {
      auto it = step.find({b, r});
      const bool gone = it != step.end();
      svg += fmt::format("<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"{}\" stroke=\"#333\"/>\n",
                         left + b * cw, top + r * ch, cw - 4, ch - 4, gone ? "#f4cccc" : "#6fa8dc");
      if (gone) {
        svg += fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n",
                           left + b * cw + (cw - 4) / 2, top + r * ch + 17, it->second);
      }
    }
  }
  for (int b = 0; b < blocks; ++b) {
    svg += fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n",
                       left + b * cw + (cw - 4) / 2, top + 2 * ch + 14, b);
  }
  svg += fmt::format(
      "<text x=\"10\" y=\"{}\">blue: kept; red: removed (number = removal step); columns: teacher "
      "block</text>\n",
      top + 2 * ch + 40);
  return svg + "</svg>\n";
}

// Writes the removals into the model: zero o_proj / down_proj, drop fully removed blocks.
absl::StatusOr<nlohmann::json> ApplyRemovals(Model& model, const std::vector<Removal>& removed) {
  const int L = static_cast<int>(model.arch.blocks.size());
  std::vector<bool> attn_gone(L, false), mlp_gone(L, false);
  for (const auto& r : removed) {
    if (r.unit.attention) attn_gone[r.unit.block] = true;
    if (r.unit.mlp) mlp_gone[r.unit.block] = true;
  }
  auto zero = [&](const std::string& name) -> absl::Status {
    if (name.empty()) return absl::OkStatus();
    const Tensor& t = model.tensors.at(name);
    const DType dt = t.quant() ? t.quant()->original_dtype : t.dtype();
    ASSIGN_OR_RETURN(Tensor z, Tensor::FromF32(std::vector<float>(t.numel(), 0.f), t.shape(), dt));
    model.tensors.Set(name, std::move(z));
    return absl::OkStatus();
  };
  for (const Block& b : model.arch.blocks) {
    for (const auto& l : b.attention) {
      if (attn_gone[b.index] && l.kind == "o_proj") {
        RETURN_IF_ERROR(zero(l.weight));
        RETURN_IF_ERROR(zero(l.bias));
      }
    }
    for (const auto& l : b.mlp) {
      if (mlp_gone[b.index] && l.kind == "down_proj") {
        RETURN_IF_ERROR(zero(l.weight));
        RETURN_IF_ERROR(zero(l.bias));
      }
    }
  }
  // Drop blocks with both sublayers removed and renumber the rest.
  nlohmann::json student = nlohmann::json::array();
  std::vector<int> new_index(L, -1);
  int next = 0;
  for (int b = 0; b < L; ++b) {
    if (attn_gone[b] && mlp_gone[b]) continue;
    new_index[b] = next;
    student.push_back(
        {{"student_block", next}, {"teacher_block", b}, {"attention", !attn_gone[b]}, {"ffn", !mlp_gone[b]}});
    ++next;
  }
  if (next == 0) return FailedPrecondition("FinerCut would remove every block; lower ratio");
  if (next < L) {
    static const std::regex kLayer(R"(^(model\.layers\.)(\d+)(\..*)$)");
    const std::vector<std::string> names = model.tensors.names();
    for (const auto& n : names) {
      std::smatch m;
      if (!std::regex_match(n, m, kLayer)) continue;
      const int b = std::stoi(m[2]);
      if (b >= L) continue;
      Tensor t = model.tensors.at(n);
      if (new_index[b] < 0) {
        model.tensors.Erase(n);
      } else if (new_index[b] != b) {
        model.tensors.Replace(n, fmt::format("{}{}{}", m[1].str(), new_index[b], m[3].str()), std::move(t));
      }
    }
    model.config["num_hidden_layers"] = next;
    if (model.config.contains("layer_types") && model.config["layer_types"].is_array() &&
        static_cast<int>(model.config["layer_types"].size()) == L) {
      nlohmann::json lt = nlohmann::json::array();
      for (int b = 0; b < L; ++b)
        if (new_index[b] >= 0) lt.push_back(model.config["layer_types"][b]);
      model.config["layer_types"] = lt;
    }
    RETURN_IF_ERROR(RebuildHfArchitecture(model));
  }
  return student;
}

class FinerCutPass final : public Pass {
 public:
  explicit FinerCutPass(Options o) : o_(std::move(o)) {}

  absl::StatusOr<PreservedAnalyses> Run(Model& model, PassContext& ctx) override {
    if (model.format != ModelFormat::kSafetensors || !model.config.is_object() || model.arch.blocks.empty() ||
        model.arch.family == "gpt2") {
      return Unimplemented(
          "remove-layers-finercut needs a Llama-family safetensors checkpoint with config.json");
    }
    const int L = static_cast<int>(model.arch.blocks.size());
    std::vector<Unit> units;
    for (int b = 0; b < L; ++b) {
      if (o_.candidates == "blocks") {
        units.push_back({b, true, true});
        continue;
      }
      if (o_.candidates != "ffn") units.push_back({b, true, false});
      if (o_.candidates != "attn") units.push_back({b, false, true});
    }
    int64_t block_params = 0;
    std::map<std::pair<int, bool>, int64_t> params;  // (block, is_attention) -> parameters
    for (const Block& b : model.arch.blocks) {
      params[{b.index, true}] = LayerParams(model, b.attention);
      params[{b.index, false}] = LayerParams(model, b.mlp);
      block_params += params[{b.index, true}] + params[{b.index, false}];
    }
    auto unit_params = [&](const Unit& u) {
      return (u.attention ? params[{u.block, true}] : 0) + (u.mlp ? params[{u.block, false}] : 0);
    };
    const int64_t target_count = o_.param_ratio > 0
                                     ? static_cast<int64_t>(units.size())
                                     : std::llround(o_.ratio * static_cast<double>(units.size()));
    const int64_t target_params = static_cast<int64_t>(o_.param_ratio * block_params);

    ASSIGN_OR_RETURN(auto rt, LlamaRuntime::Create(model));
    Scorer scorer(*rt, *ctx.calibration, o_.samples, o_.metric == "js");
    RETURN_IF_ERROR(scorer.CaptureTeacher());
    std::vector<Removal> removed;
    std::vector<bool> taken(units.size(), false);
    int64_t removed_params = 0;
    auto done = [&] {
      return o_.param_ratio > 0 ? removed_params >= target_params
                                : static_cast<int64_t>(removed.size()) >= target_count;
    };
    auto apply = [&](const Unit& u, bool on) -> absl::Status {
      auto [a, m] = rt->Skipped(u.block);
      return rt->SetSkipped(u.block, u.attention ? on : a, u.mlp ? on : m);
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
        RETURN_IF_ERROR(scorer.CacheInputs());
        best_score = scorer.Score(0);
        RETURN_IF_ERROR(apply(units[best], false));
      } else {
        RETURN_IF_ERROR(scorer.CacheInputs());
        for (size_t i = 0; i < units.size(); ++i) {
          if (taken[i]) continue;
          RETURN_IF_ERROR(apply(units[i], true));
          const double s = scorer.Score(units[i].block);
          RETURN_IF_ERROR(apply(units[i], false));
          if (best < 0 || s < best_score) best = static_cast<int>(i), best_score = s;
        }
      }
      taken[best] = true;
      RETURN_IF_ERROR(apply(units[best], true));
      removed.push_back({units[best], best_score});
      removed_params += unit_params(units[best]);
    }
    RETURN_IF_ERROR(scorer.CacheInputs());
    const double final_score = scorer.Score(0);

    ASSIGN_OR_RETURN(nlohmann::json student, ApplyRemovals(model, removed));
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
    ctx.report.stats["calibration_tokens"] = static_cast<double>(scorer.tokens());
    ctx.report.notes.push_back("distillation map (student block <- teacher block): " + student.dump());
    ctx.report.artifacts["layers.svg"] =
        LayerMapSvg(L, removed,
                    fmt::format("FinerCut: {} of {} sublayers removed ({}, {} search)",
                                ctx.report.stats["sublayers_removed"], 2 * L, o_.metric, o_.search));
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
  info.options = {
      {"ratio", OptionType::kFloat, "0.25", "fraction of the candidates to remove", {}, 0.0, 1.0},
      {"param-ratio",
       OptionType::kFloat,
       "0",
       "if > 0: remove until this fraction of the blocks' parameters is gone (overrides ratio)",
       {},
       0.0,
       1.0},
      {"metric",
       OptionType::kEnum,
       "js",
       "output change: Jensen-Shannon of next-token distributions, or angular "
       "distance of final hidden states",
       {"js", "angular"}},
      {"candidates",
       OptionType::kEnum,
       "sublayers",
       "what may be removed",
       {"sublayers", "attn", "ffn", "blocks"}},
      {"search",
       OptionType::kEnum,
       "greedy",
       "greedy search, or drop from the top (baseline)",
       {"greedy", "last"}},
      {"samples", OptionType::kInt, "16", "calibration windows used for scoring", {}, 1, 1 << 20},
  };
  info.create = [](const OptionValues& v) -> absl::StatusOr<std::unique_ptr<Pass>> {
    Options o;
    o.ratio = v.GetFloat("ratio");
    o.param_ratio = v.GetFloat("param-ratio");
    o.metric = v.GetString("metric");
    o.candidates = v.GetString("candidates");
    o.search = v.GetString("search");
    o.samples = v.GetInt("samples");
    return std::make_unique<FinerCutPass>(std::move(o));
  };
  return info;
}

}  // namespace compress
