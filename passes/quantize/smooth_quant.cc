// SmoothQuant: per-feature factors moved from the activations into the weights.
#include "passes/quantize/smooth_quant.h"

#include <algorithm>
#include <cmath>

#include "calibrate/stats_analysis.h"
#include "core/family.h"

namespace compress {
namespace {

// Multiplies (or divides) every element of tensor `name` by s[i], i its index along `axis`
// (1-D tensors: axis 0). Gemma's (1 + w) norms divide as (1 + w) / s - 1 (`offset` 1).
absl::Status Rescale(Model& m, const std::string& name, int axis, std::span<const float> s, bool divide,
                     float offset = 0) {
  const Tensor& t = m.tensors.at(name);
  if (t.quant() || t.factors()) {
    return FailedPrecondition("smooth-quant: '{}' is already quantized or factorized; run smooth-quant before "
                              "quantization passes",
                              name);
  }
  ASSIGN_OR_RETURN(std::vector<float> v, t.ToF32());
  const int64_t rows = t.shape()[0], cols = t.shape().size() == 2 ? t.shape()[1] : 1;
  if (static_cast<int64_t>(s.size()) != (axis == 0 ? rows : cols))
    return Internal("smooth-quant: '{}' has {} features along axis {}, factors {}", name, axis == 0 ? rows : cols,
                    axis, s.size());
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) {
      float& x = v[r * cols + c];
      const float f = s[axis == 0 ? r : c];
      x = divide ? (x + offset) / f - offset : x * f;
    }
  ASSIGN_OR_RETURN(Tensor out, Tensor::FromF32(v, t.shape(), t.dtype()));
  m.tensors.Set(name, std::move(out));
  return absl::OkStatus();
}

// max |W_.j| over the input features j of a weight ([out, in], or [in, out] when out_axis 1).
absl::StatusOr<std::vector<float>> ColumnMax(const Model& m, const std::string& name, int out_axis) {
  const Tensor& t = m.tensors.at(name);
  ASSIGN_OR_RETURN(std::vector<float> v, t.ToF32());
  const int64_t rows = t.shape()[0], cols = t.shape()[1];
  std::vector<float> mx(out_axis == 0 ? cols : rows, 0.f);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) {
      float& x = mx[out_axis == 0 ? c : r];
      x = std::max(x, std::fabs(v[r * cols + c]));
    }
  return mx;
}

// Input statistics of a layer whose input x is now x / s (feature-wise).
void DivideInputs(LinearStats& st, std::span<const float> s) {
  const int64_t n = st.in_features;
  if (static_cast<int64_t>(s.size()) != n) return;
  for (int64_t j = 0; j < n; ++j) {
    const double f = s[j];
    if (!st.absmax.empty()) st.absmax[j] = static_cast<float>(st.absmax[j] / f);
    if (!st.sum_abs.empty()) st.sum_abs[j] /= f;
    if (!st.sum_sq.empty()) st.sum_sq[j] /= f * f;
  }
  if (!st.xtx.empty())
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < n; ++j) st.xtx[i * n + j] /= static_cast<double>(s[i]) * s[j];
  for (int64_t r = 0; r < st.sample_rows; ++r)
    for (int64_t j = 0; j < n; ++j) st.samples[r * n + j] /= s[j];
}

struct Reader {
  std::string weight;
  int out_axis = 0;
};

class SmoothQuantPass final : public Pass {
 public:
  struct Options {
    double alpha = 0.5;
    bool fold_all = false;  // fold=all (else norms)
  };
  explicit SmoothQuantPass(const Options& o) : alpha_(o.alpha), fold_all_(o.fold_all) {}

  absl::StatusOr<PreservedAnalyses> Run(Model& model, PassContext& ctx) override {
    if (model.format == ModelFormat::kOnnx)
      return Unimplemented("smooth-quant: ONNX graphs are not supported yet (safetensors LLM checkpoints only)");
    const FamilySpec* fam = FindFamily(model.arch.family);
    if (!fam) return FailedPrecondition("smooth-quant: {} is not an LLM family the runtime knows", model.source);
    // The inputs as the model is now (not block-sequential: smoothing does not change what
    // later blocks see), shared with the passes around it through the analysis.
    ASSIGN_OR_RETURN(const CalibrationStatistics::Result* cs, ctx.analyses.Get<CalibrationStatistics>(model));
    const std::map<std::string, LinearStats>& stats = cs->layers;
    for (size_t i = 0; i < model.arch.blocks.size(); ++i) {
      RETURN_IF_ERROR(SmoothBlock(model, *fam, model.arch.blocks[i], stats, ctx));
      ctx.Progress("smooth-quant", static_cast<int64_t>(i) + 1, static_cast<int64_t>(model.arch.blocks.size()));
    }
    // Every input this pass divided by s is what calibration would now see, up to the
    // weights' rounding: the analysis stays valid with the same division.
    if (CalibrationStatistics::Result* upd = ctx.analyses.CachedForUpdate<CalibrationStatistics>()) {
      for (const auto& [weight, s] : divided_) {
        auto it = upd->layers.find(weight);
        if (it != upd->layers.end() && !it->second.data_free) DivideInputs(it->second, s);
      }
    }
    ctx.report.stats["groups_smoothed"] = groups_;
    ctx.report.stats["max_input_absmax_before"] = before_;
    ctx.report.stats["max_input_absmax_after"] = after_;
    ctx.report.notes.push_back(fmt::format(
        "s_j = max|x_j|^{} / max|W_.j|^{}: the largest input magnitude the readers see went from {:.4g} to {:.4g}",
        alpha_, 1 - alpha_, before_, after_));
    return PreservedAnalyses::None();
  }

 private:
  // Factors for one group of readers of an input whose per-feature max |x| is `amax`.
  absl::StatusOr<std::vector<float>> Factors(const Model& m, const std::vector<Reader>& readers,
                                             std::span<const float> amax) {
    std::vector<float> wmax(amax.size(), 0.f);
    for (const Reader& r : readers) {
      ASSIGN_OR_RETURN(std::vector<float> c, ColumnMax(m, r.weight, r.out_axis));
      if (c.size() != wmax.size()) return Internal("smooth-quant: '{}' reads {} features, not {}", r.weight, c.size(), wmax.size());
      for (size_t j = 0; j < c.size(); ++j) wmax[j] = std::max(wmax[j], c[j]);
    }
    std::vector<float> s(amax.size(), 1.f);
    float after = 0;
    for (size_t j = 0; j < s.size(); ++j) {
      if (amax[j] > 0 && wmax[j] > 0) {
        const double f = std::pow(static_cast<double>(amax[j]), alpha_) / std::pow(static_cast<double>(wmax[j]), 1 - alpha_);
        s[j] = static_cast<float>(std::clamp(f, 1e-4, 1e4));
      }
      before_ = std::max(before_, static_cast<double>(amax[j]));
      after = std::max(after, amax[j] / s[j]);
    }
    after_ = std::max(after_, static_cast<double>(after));
    ++groups_;
    return s;
  }

  absl::Status ScaleReaders(Model& m, const std::vector<Reader>& readers, std::span<const float> s) {
    for (const Reader& r : readers) {
      RETURN_IF_ERROR(Rescale(m, r.weight, r.out_axis == 0 ? 1 : 0, s, false));
      Divided(r.weight, s);
    }
    return absl::OkStatus();
  }

  // Records that the input of `weight` is now divided by s (feature-wise).
  void Divided(const std::string& weight, std::span<const float> s) {
    auto [it, fresh] = divided_.try_emplace(weight, s.begin(), s.end());
    if (!fresh)
      for (size_t j = 0; j < s.size(); ++j) it->second[j] *= s[j];
  }

  // Divides the norm `weight` (and its LayerNorm bias) by s.
  absl::Status ScaleNorm(Model& m, const FamilySpec& fam, const std::string& weight, std::span<const float> s) {
    RETURN_IF_ERROR(Rescale(m, weight, 0, s, true, fam.norm == NormKind::kRmsOffset ? 1.f : 0.f));
    if (fam.norm == NormKind::kLayerNorm) {
      const std::string bias = weight.substr(0, weight.size() - 6) + "bias";
      if (m.tensors.contains(bias)) RETURN_IF_ERROR(Rescale(m, bias, 0, s, true));
    }
    return absl::OkStatus();
  }

  absl::Status SmoothBlock(Model& m, const FamilySpec& fam, const Block& b,
                           const std::map<std::string, LinearStats>& stats, PassContext& ctx) {
    auto norm = [&](std::initializer_list<std::string_view> suffixes) -> std::string {
      for (std::string_view suf : suffixes)
        for (const auto& n : b.norms)
          if (n.ends_with(suf)) return n;
      return "";
    };
    const std::string attn_norm = norm({".input_layernorm.weight", ".ln_1.weight"});
    const std::string ffn_norm = fam.sandwich_norms ? norm({".pre_feedforward_layernorm.weight"})
                                                    : norm({".post_attention_layernorm.weight", ".ln_2.weight"});
    std::vector<Reader> attn, ffn;
    for (const LinearLayer& l : b.attention)
      if (l.kind == "q_proj" || l.kind == "k_proj" || l.kind == "v_proj" || l.kind == "qkv_proj" || l.kind == "c_attn")
        attn.push_back({l.weight, l.out_axis});
    for (const LinearLayer& l : b.mlp)
      if (l.kind == "gate_proj" || l.kind == "up_proj" || l.kind == "gate_up_proj" || l.kind == "c_fc")
        ffn.push_back({l.weight, l.out_axis});
    if (b.moe()) ffn.push_back({b.router, 0});
    if (!b.shared_expert_gate.empty()) ffn.push_back({b.shared_expert_gate, 0});
    auto smooth = [&](const std::string& norm_name, const std::vector<Reader>& readers, const std::string& key) -> absl::Status {
      const auto it = stats.find(key);
      if (norm_name.empty() || readers.empty() || it == stats.end() || it->second.data_free) {
        ctx.report.notes.push_back(fmt::format("block {}: left the group reading '{}' alone (no norm or statistics)", b.index, key));
        return absl::OkStatus();
      }
      ASSIGN_OR_RETURN(std::vector<float> s, Factors(m, readers, it->second.absmax));
      RETURN_IF_ERROR(ScaleNorm(m, fam, norm_name, s));
      return ScaleReaders(m, readers, s);
    };
    if (!attn.empty()) RETURN_IF_ERROR(smooth(attn_norm, attn, attn.front().weight));
    if (!ffn.empty()) RETURN_IF_ERROR(smooth(ffn_norm, ffn, b.moe() ? b.router : ffn.front().weight));
    if (fold_all_) RETURN_IF_ERROR(FoldProducts(m, b, stats));
    return absl::OkStatus();
  }

  // v -> o and up -> down, where the product between them is linear in the scaled rows.
  absl::Status FoldProducts(Model& m, const Block& b, const std::map<std::string, LinearStats>& stats) {
    const LinearLayer *v = nullptr, *o = nullptr;
    for (const LinearLayer& l : b.attention) {
      if (l.kind == "v_proj") v = &l;
      if (l.kind == "o_proj") o = &l;
    }
    const int64_t H = m.arch.num_heads, KV = m.arch.num_kv_heads, hd = m.arch.head_dim;
    if (v && o && v->out_axis == 0 && o->out_axis == 0 && v->out_features == KV * hd && o->in_features == H * hd &&
        stats.count(o->weight) && !stats.at(o->weight).data_free) {
      const std::vector<float>& a = stats.at(o->weight).absmax;
      ASSIGN_OR_RETURN(std::vector<float> w, ColumnMax(m, o->weight, 0));
      std::vector<float> av(KV * hd, 0.f), wv(KV * hd, 0.f);
      for (int64_t h = 0; h < H; ++h)
        for (int64_t d = 0; d < hd; ++d) {
          const int64_t c = (h / (H / KV)) * hd + d;
          av[c] = std::max(av[c], a[h * hd + d]);
          wv[c] = std::max(wv[c], w[h * hd + d]);
        }
      std::vector<float> s(KV * hd, 1.f), so(H * hd);
      for (int64_t c = 0; c < KV * hd; ++c)
        if (av[c] > 0 && wv[c] > 0)
          s[c] = static_cast<float>(std::clamp(std::pow(av[c], alpha_) / std::pow(wv[c], 1 - alpha_), 1e-4, 1e4));
      for (int64_t h = 0; h < H; ++h)
        for (int64_t d = 0; d < hd; ++d) so[h * hd + d] = s[(h / (H / KV)) * hd + d];
      RETURN_IF_ERROR(Rescale(m, v->weight, 0, s, true));
      if (!v->bias.empty()) RETURN_IF_ERROR(Rescale(m, v->bias, 0, s, true));
      RETURN_IF_ERROR(Rescale(m, o->weight, 1, so, false));
      Divided(o->weight, so);
      ++groups_;
    }
    for (const LinearLayer& up : b.mlp) {
      if (up.kind != "up_proj" || up.out_axis != 0) continue;
      for (const LinearLayer& down : b.mlp) {
        if (down.kind != "down_proj" || down.expert != up.expert || down.shared_expert != up.shared_expert) continue;
        const auto it = stats.find(down.weight);
        if (it == stats.end() || it->second.data_free || down.out_axis != 0) continue;
        ASSIGN_OR_RETURN(std::vector<float> s, Factors(m, {{down.weight, 0}}, it->second.absmax));
        RETURN_IF_ERROR(Rescale(m, up.weight, 0, s, true));
        if (!up.bias.empty()) RETURN_IF_ERROR(Rescale(m, up.bias, 0, s, true));
        RETURN_IF_ERROR(Rescale(m, down.weight, 1, s, false));
        Divided(down.weight, s);
      }
    }
    return absl::OkStatus();
  }

  double alpha_;
  bool fold_all_;
  std::map<std::string, std::vector<float>> divided_;  // weight -> factors its input is now divided by
  double groups_ = 0, before_ = 0, after_ = 0;
};

}  // namespace

PassInfo SmoothQuantPassInfo() {
  PassInfo info;
  info.name = "smooth-quant";
  info.summary = "SmoothQuant: move activation outliers into the weights (exact), before a W8A8 pass";
  info.selects_tensors = false;
  info.needs_calibration = true;
  using O = SmoothQuantPass::Options;
  OptionBinding<O> b;
  b.Float(&O::alpha, "alpha", "migration strength: s = max|x|^alpha / max|w|^(1-alpha)", 0.0, 1.0)
      .Choice(&O::fold_all, "fold", "norms: into the norms before q/k/v and gate/up; all: also v -> o and up -> down",
              {{"norms", false}, {"all", true}});
  BindPassOptions(
      info, std::move(b), [](const O& o, TensorSelector) { return std::make_unique<SmoothQuantPass>(o); },
      [](const O&) { return std::vector<std::string>{CalibrationStatistics::kName}; });
  // It divides the inputs it smooths in the cached statistics by the same factors.
  info.preserved_analyses = {CalibrationStatistics::kName};
  return info;
}

}  // namespace compress
