// Structured FFN-neuron pruning with consistent gate/up/down surgery.
#include "passes/prune/prune_structured.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>

#include "calibrate/calibration.h"
#include "calibrate/stats_analysis.h"
#include "core/checkpoint_edit.h"
#include "passes/prune/prune_channels.h"
#include "passes/prune/prune_experts.h"
#include "passes/prune/prune_heads.h"

namespace compress {
namespace {

struct Ffn {
  const LinearLayer *gate = nullptr, *up = nullptr, *down = nullptr;
};

}  // namespace

absl::StatusOr<std::map<std::string, std::vector<double>>> InputSquareSums(Model& model, PassContext& ctx) {
  if (!ctx.calibration) return FailedPrecondition("score=wanda needs calibration data; give --calibration FILE");
  ASSIGN_OR_RETURN(const CalibrationStatistics::Result* cs, ctx.analyses.Get<CalibrationStatistics>(model));
  std::map<std::string, std::vector<double>> out;
  for (const auto& [name, s] : cs->layers) out[name] = s.sum_sq;
  return out;
}

absl::Status SetCut(Model& model, PassReport& report, const std::string& name, const std::vector<float>& values,
                    const Shape& shape, std::string method, std::map<std::string, double> metrics) {
  const Tensor old = model.tensors.at(name);
  ASSIGN_OR_RETURN(Tensor t, Tensor::FromF32(values, shape, old.dtype()));
  const std::string type(DTypeName(old.dtype()));
  report.tensors.push_back({name, old.shape(), shape, type, type, old.storage_bytes(), t.storage_bytes(),
                            std::move(method), std::move(metrics)});
  model.tensors.Set(name, std::move(t));
  return absl::OkStatus();
}

absl::Status SetOutIn(Model& model, PassReport& report, const std::string& name, OutInWeight like,
                      std::vector<float> out_in, int64_t rows, int64_t cols, std::string method,
                      std::map<std::string, double> metrics) {
  like.rows = rows, like.cols = cols;
  const Shape shape = like.transposed ? Shape{cols, rows} : Shape{rows, cols};
  return SetCut(model, report, name, StoredLayout(like, out_in), shape, std::move(method), std::move(metrics));
}

std::vector<double> Sqrt(std::vector<double> v) {
  for (double& x : v) x = std::sqrt(x);
  return v;
}

std::vector<int64_t> ChooseNeurons(const std::vector<float>& g, const std::vector<float>& u,
                                   const std::vector<float>& dn, int64_t inter, int64_t D, int64_t keep,
                                   const std::string& score_kind, const std::vector<double>* act_norm) {
  std::vector<double> score(inter, 0.0);
  for (int64_t j = 0; j < inter; ++j) {
    double down2 = 0, s = 0;
    for (int64_t k = 0; k < D; ++k) {
      const double dv = dn[k * inter + j];
      down2 += dv * dv;
      s += score_kind == "l1" ? std::fabs(dv) : dv * dv;
    }
    if (score_kind == "wanda") {
      score[j] = std::sqrt(down2) * (act_norm ? (*act_norm)[j] : 0.0);
      continue;
    }
    for (int64_t k = 0; k < D; ++k) {
      const double gv = g[j * D + k], uv = u[j * D + k];
      s += score_kind == "l1" ? std::fabs(gv) + std::fabs(uv) : gv * gv + uv * uv;
    }
    score[j] = score_kind == "l1" ? s : std::sqrt(s);
  }
  std::vector<int64_t> order(inter);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t c) { return score[a] > score[c]; });
  std::vector<int64_t> kept(order.begin(), order.begin() + keep);
  std::sort(kept.begin(), kept.end());
  return kept;
}

namespace {

// One SwiGLU FFN of a block: the dense FFN, one routed expert or the shared expert.
struct FfnGroup {
  Ffn f;
  int expert = -1;  // routed expert, or -1
  bool shared = false;
};

std::vector<FfnGroup> FfnGroups(const Block& b) {
  std::map<std::pair<int, bool>, FfnGroup> groups;
  for (const auto& l : b.mlp) {
    FfnGroup& g = groups[{l.expert, l.shared_expert}];
    g.expert = l.expert;
    g.shared = l.shared_expert;
    if (l.kind == "gate_proj") g.f.gate = &l;
    if (l.kind == "up_proj") g.f.up = &l;
    if (l.kind == "down_proj") g.f.down = &l;
  }
  std::vector<FfnGroup> out;
  for (auto& [key, g] : groups) out.push_back(g);
  return out;
}

class PruneNeuronsPass final : public Pass {
 public:
  PruneNeuronsPass(double ratio, std::string score) : ratio_(ratio), score_(std::move(score)) {}

  absl::StatusOr<PreservedAnalyses> Run(Model& model, PassContext& ctx) override {
    ASSIGN_OR_RETURN(const CheckpointEditor* editor, ctx.Editor("prune-structured{target=neurons}"));
    RETURN_IF_ERROR(editor->CheckEditable(model, StructuralEdit::kFfnWidth));
    // Phi-3's fused gate/up: cut on the separate projections, fused again at the end.
    ASSIGN_OR_RETURN(const bool fused, editor->SplitFused(model));
    // Each kind of FFN keeps the same fraction of its neurons: dense blocks, routed experts
    // and shared experts each end with one width, as config.json states them.
    const Architecture& a = model.arch;
    auto kept_width = [&](int64_t width) {
      return std::max<int64_t>(1, static_cast<int64_t>(std::llround((1.0 - ratio_) * width)));
    };
    const int64_t dense_keep = kept_width(a.intermediate_size), expert_keep = kept_width(a.expert_intermediate_size),
                  shared_keep = kept_width(a.shared_expert_intermediate_size);
    bool any_dense = false, any_expert = false, any_shared = false;
    // Wanda scores need the down_proj input norms of every FFN.
    std::map<std::string, std::vector<double>> act_norm;
    if (score_ == "wanda") {
      ASSIGN_OR_RETURN(act_norm, InputSquareSums(model, ctx));
      for (auto& [name, v] : act_norm) v = Sqrt(std::move(v));
    }
    int64_t done = 0, before = 0, after = 0;
    std::map<std::string, std::vector<int64_t>> kept_by_down;  // for the editor
    for (const Block& b : a.blocks) {
      ctx.Progress("prune-structured", done++, static_cast<int64_t>(a.blocks.size()));
      for (const FfnGroup& grp : FfnGroups(b)) {
        const Ffn& f = grp.f;
        if (a.family == "gpt2") {
          ASSIGN_OR_RETURN(const int64_t inter, PruneGpt2Mlp(model, ctx, b, dense_keep, act_norm));
          any_dense = true;
          before += inter, after += dense_keep;
          continue;
        }
        if (!f.gate || !f.up || !f.down) {
          return Unimplemented("block {} has no gate/up/down projections (SwiGLU FFN required)", b.index);
        }
        std::map<const LinearLayer*, OutInWeight> w;  // [out, in] whatever the stored layout
        for (const LinearLayer* l : {f.gate, f.up, f.down}) {
          const Tensor& t = model.tensors.at(l->weight);
          if (t.quant() || t.factors() || !IsFloating(t.dtype()))
            return FailedPrecondition("block {}: prune-structured must run before quantization", b.index);
          ASSIGN_OR_RETURN(w[l], ReadOutIn(t, l));
        }
        const int64_t inter = w[f.gate].rows, D = w[f.down].rows;
        const int64_t keep = grp.shared ? shared_keep : grp.expert >= 0 ? expert_keep : dense_keep;
        (grp.shared ? any_shared : grp.expert >= 0 ? any_expert : any_dense) = true;
        if (keep > inter) return Internal("block {}: FFN of width {} cannot keep {}", b.index, inter, keep);
        before += inter, after += keep;
        const std::vector<int64_t> kept =
            ChooseNeurons(w[f.gate].w, w[f.up].w, w[f.down].w, inter, D, keep, score_,
                          act_norm.count(f.down->weight) ? &act_norm[f.down->weight] : nullptr);
        const std::string method = fmt::format("structured: kept {} of {} neurons ({})", keep, inter, score_);
        const std::map<std::string, double> metrics = {{"neurons_removed", static_cast<double>(inter - keep)}};
        auto put = [&](const LinearLayer* l, std::vector<float> out_in, int64_t rows, int64_t cols) {
          return SetOutIn(model, ctx.report, l->weight, w[l], std::move(out_in), rows, cols, method, metrics);
        };
        RETURN_IF_ERROR(put(f.gate, TakeRows(w[f.gate].w, D, kept, 1), keep, D));
        RETURN_IF_ERROR(put(f.up, TakeRows(w[f.up].w, D, kept, 1), keep, D));
        RETURN_IF_ERROR(put(f.down, TakeCols(w[f.down].w, D, inter, kept, 1), D, keep));
        for (const LinearLayer* l : {f.gate, f.up}) {
          if (l->bias.empty()) continue;
          ASSIGN_OR_RETURN(std::vector<float> bias, model.tensors.at(l->bias).ToF32());
          RETURN_IF_ERROR(SetCut(model, ctx.report, l->bias, TakeRows(bias, 1, kept, 1), {keep}, method, metrics));
        }
        kept_by_down[f.down->weight] = kept;
      }
    }
    RETURN_IF_ERROR(editor->KeepFfnNeurons(model, kept_by_down));
    const int64_t dense_before = a.intermediate_size, expert_before = a.expert_intermediate_size,
                  shared_before = a.shared_expert_intermediate_size;
    RETURN_IF_ERROR(editor->SetFfnWidth(model, any_dense ? dense_keep : 0, any_expert ? expert_keep : 0,
                                                any_shared ? shared_keep : 0));
    if (any_dense) {
      ctx.report.stats["intermediate_size_before"] = static_cast<double>(dense_before);
      ctx.report.stats["intermediate_size_after"] = static_cast<double>(dense_keep);
    }
    if (any_expert) {
      ctx.report.stats["expert_intermediate_size_before"] = static_cast<double>(expert_before);
      ctx.report.stats["expert_intermediate_size_after"] = static_cast<double>(expert_keep);
    }
    if (any_shared) {
      ctx.report.stats["shared_expert_intermediate_size_before"] = static_cast<double>(shared_before);
      ctx.report.stats["shared_expert_intermediate_size_after"] = static_cast<double>(shared_keep);
    }
    ctx.report.stats["neurons_removed"] = static_cast<double>(before - after);
    if (fused) RETURN_IF_ERROR(editor->Fuse(model));
    return PreservedAnalyses::None();
  }

 private:
  // GPT-2's MLP, gelu(x W1 + b1) W2 with Conv1D weights W1 [D, I] (c_fc) and W2 [I, D]
  // (c_proj): neuron j owns column j of W1, b1[j] and row j of W2. Scored as the SwiGLU
  // neurons are, with W1's column standing for gate's row and no up. Returns the old width.
  absl::StatusOr<int64_t> PruneGpt2Mlp(Model& model, PassContext& ctx, const Block& b, int64_t keep,
                                       std::map<std::string, std::vector<double>>& act_norm) const {
    const LinearLayer *fc = nullptr, *proj = nullptr;
    for (const auto& l : b.mlp) {
      if (l.kind == "c_fc") fc = &l;
      if (l.kind == "c_proj") proj = &l;
    }
    if (!fc || !proj || fc->bias.empty()) return Unimplemented("GPT-2 block {} has no c_fc / c_proj MLP", b.index);
    const Tensor w1 = model.tensors.at(fc->weight), b1 = model.tensors.at(fc->bias), w2 = model.tensors.at(proj->weight);
    for (const Tensor* t : {&w1, &b1, &w2}) {
      if (t->quant() || t->factors() || !IsFloating(t->dtype())) {
        return FailedPrecondition("block {}: prune-structured must run before quantization", b.index);
      }
    }
    const int64_t D = w1.shape()[0], inter = w1.shape()[1];
    if (w2.shape() != Shape{inter, D} || b1.numel() != inter) {
      return FailedPrecondition("GPT-2 block {}: c_fc {} and c_proj {} do not make an MLP", b.index,
                                ShapeString(w1.shape()), ShapeString(w2.shape()));
    }
    if (keep > inter) return Internal("block {}: MLP of width {} cannot keep {}", b.index, inter, keep);
    ASSIGN_OR_RETURN(std::vector<float> v1, w1.ToF32());
    ASSIGN_OR_RETURN(std::vector<float> vb, b1.ToF32());
    ASSIGN_OR_RETURN(std::vector<float> v2, w2.ToF32());
    std::vector<float> g(inter * D), none(inter * D, 0.f), dn(D * inter);  // [I, D], [I, D], [D, I]
    for (int64_t k = 0; k < D; ++k) {
      for (int64_t j = 0; j < inter; ++j) {
        g[j * D + k] = v1[k * inter + j];
        dn[k * inter + j] = v2[j * D + k];
      }
    }
    const std::vector<int64_t> kept = ChooseNeurons(
        g, none, dn, inter, D, keep, score_, act_norm.count(proj->weight) ? &act_norm[proj->weight] : nullptr);
    std::vector<float> n1(D * keep), nb(keep), n2(keep * D);
    for (int64_t i = 0; i < keep; ++i) {
      for (int64_t k = 0; k < D; ++k) n1[k * keep + i] = v1[k * inter + kept[i]];
      nb[i] = vb[kept[i]];
      std::copy_n(v2.begin() + kept[i] * D, D, n2.begin() + i * D);
    }
    const std::string method = fmt::format("structured: kept {} of {} neurons ({})", keep, inter, score_);
    for (auto [name, values, shape] : {std::tuple{fc->weight, &n1, Shape{D, keep}}, std::tuple{fc->bias, &nb, Shape{keep}},
                                       std::tuple{proj->weight, &n2, Shape{keep, D}}}) {
      RETURN_IF_ERROR(SetCut(model, ctx.report, name, *values, shape, method,
                             {{"neurons_removed", static_cast<double>(inter - keep)}}));
    }
    return inter;
  }

  double ratio_;
  std::string score_;
};

}  // namespace

PassInfo PruneStructuredPassInfo() {
  PassInfo info;
  info.name = "prune-structured";
  info.summary = "remove whole FFN neurons, attention heads or ONNX channels, with real shape changes";
  info.selects_tensors = false;
  struct O {
    std::string target = "neurons";
    double ratio = 0.25;
    std::string score = "l2";
  };
  OptionBinding<O> b;
  b.Choice(&O::target, "target",
           "FFN neurons or attention heads (KV groups under GQA) of LLM checkpoints; experts: whole experts of MoE "
           "blocks by routing frequency (needs calibration); channels: Conv->Conv and MatMul->MatMul chains of ONNX "
           "graphs",
           {"neurons", "heads", "experts", "channels"})
      .Float(&O::ratio, "ratio", "fraction of neurons / heads / experts / channels removed in every block or chain", 0,
             0.99)
      .Choice(&O::score, "score", "l2 / l1 weight norms, or wanda (needs calibration)", {"l2", "l1", "wanda"});
  BindPassOptions(
      info, std::move(b),
      [](const O& o, TensorSelector) -> std::unique_ptr<Pass> {
        if (o.target == "channels") return MakePruneChannelsPass(o.ratio, o.score);
        if (o.target == "experts") return MakePruneExpertsPass(o.ratio);
        if (o.target == "heads") return MakePruneHeadsPass(o.ratio, o.score);
        return std::make_unique<PruneNeuronsPass>(o.ratio, o.score);
      },
      [](const O& o) {
        // Routing counts (experts) and input square sums (wanda) come from the calibration statistics.
        return o.target == "experts" || o.score == "wanda" ? std::vector<std::string>{CalibrationStatistics::kName}
                                                           : std::vector<std::string>{};
      });
  return info;
}

}  // namespace compress
