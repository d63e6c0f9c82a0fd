// mixed-precision: per-layer formats under a size budget by Lagrangian allocation.
#include "passes/precision/mixed_precision.h"

#include <cmath>

#include "passes/math/hessian.h"
#include "passes/layer_walk.h"
#include "passes/precision/weight_formats.h"

namespace compress {
namespace {

struct Option {
  std::string format;
  double distortion = 0;
  int64_t bytes = 0;
};

struct LayerChoices {
  std::string name;
  int64_t params = 0;
  std::vector<Option> options;
};

// Index of the option minimising D + lambda * bytes for each layer.
std::vector<int> Allocate(const std::vector<LayerChoices>& layers, double lambda) {
  std::vector<int> pick;
  for (const auto& l : layers) {
    int best = 0;
    for (size_t i = 1; i < l.options.size(); ++i) {
      const auto& o = l.options[i];
      const auto& b = l.options[best];
      if (o.distortion + lambda * o.bytes < b.distortion + lambda * b.bytes) best = static_cast<int>(i);
    }
    pick.push_back(best);
  }
  return pick;
}

std::pair<int64_t, double> Totals(const std::vector<LayerChoices>& layers, const std::vector<int>& pick) {
  int64_t bytes = 0;
  double d = 0;
  for (size_t i = 0; i < layers.size(); ++i) {
    bytes += layers[i].options[pick[i]].bytes;
    d += layers[i].options[pick[i]].distortion;
  }
  return {bytes, d};
}


struct MixedPrecisionOptions {
  double budget = 4.5;  // bits per parameter
  int64_t size = 0;     // bytes, overrides budget when given
  std::vector<std::string> candidates = {"bf16", "int8", "fp4", "nf4", "int4", "int3"};
  int64_t group_size = 128;
};

class MixedPrecisionPass final : public Pass {
 public:
  MixedPrecisionPass(const MixedPrecisionOptions& o, TensorSelector sel)
      : budget_bpp_(o.budget), size_(o.size), candidates_(o.candidates), group_(o.group_size), sel_(std::move(sel)) {}

  absl::StatusOr<PreservedAnalyses> Run(Model& model, PassContext& ctx) override {
    const bool calibrated = ctx.calibration != nullptr;
    std::vector<LayerChoices> layers;
    std::map<std::string, std::vector<double>> importance;  // for fp4's weighted search at apply time
    RETURN_IF_ERROR(ForEachLinear(
        model, ctx, sel_, calibrated, /*need_xtx=*/calibrated, /*accept_quantized=*/false, "sensitivity",
        [&](const std::string& name, const LinearLayer& layer, const LinearStats* st) -> absl::Status {
          const Tensor& src = model.tensors.at(name);
          ASSIGN_OR_RETURN(std::vector<float> w, FiniteWeights(src, name));
          const int64_t rows = src.shape()[0], cols = src.shape()[1];
          std::vector<double> h;
          if (st) {
            for (double v : st->sum_sq) h.push_back(st->rows ? v / st->rows : 1.0);
          }
          LayerChoices lc{name, src.numel(), {}};
          double norm = 0;
          for (float v : w) norm += static_cast<double>(v) * v;
          for (const auto& f : candidates_) {
            auto t = QuantizeWeightAs(f, src, w, layer, group_, h);
            if (!t.ok()) continue;  // e.g. mxfp4 on an in_features not divisible by 32
            ASSIGN_OR_RETURN(std::vector<float> back, t->ToF32());
            double d;
            if (st && layer.out_axis == 0) {
              d = RelativeOutputError(w, back, rows, cols, st->xtx);
            } else if (st) {  // [in, out] (ONNX MatMul): the error on [out, in] values
              ASSIGN_OR_RETURN(OutInWeight a, ReadOutIn(src, &layer));
              ASSIGN_OR_RETURN(OutInWeight b, ReadOutIn(*t, &layer));
              d = RelativeOutputError(a.w, b.w, a.rows, a.cols, st->xtx);
            } else {
              double e = 0;
              for (size_t i = 0; i < w.size(); ++i)
                e += (static_cast<double>(back[i]) - w[i]) * (back[i] - w[i]);
              d = norm > 0 ? e / norm : 0.0;
            }
            lc.options.push_back({f, d, t->storage_bytes()});
          }
          if (lc.options.empty()) return InvalidArgument("tensor '{}': no candidate format applies", name);
          importance[name] = std::move(h);
          layers.push_back(std::move(lc));
          return absl::OkStatus();
        }));
    if (layers.empty()) return FailedPrecondition("mixed-precision: no linear weights selected");
    int64_t params = 0;
    for (const auto& l : layers) params += l.params;
    const int64_t budget = size_ > 0 ? size_ : static_cast<int64_t>(budget_bpp_ * params / 8);
    // The smallest allocation must fit.
    const std::vector<int> smallest = Allocate(layers, 1e30);
    if (Totals(layers, smallest).first > budget) {
      return InvalidArgument(
          "mixed-precision: even the smallest candidates need {:.3f} bits per parameter, over the "
          "budget of {:.3f}",
          8.0 * Totals(layers, smallest).first / params, 8.0 * budget / params);
    }
    // Bisect lambda (log scale) for the least error that fits.
    double lo = 1e-18, hi = 1e6;
    for (int it = 0; it < 200; ++it) {
      const double mid = std::sqrt(lo * hi);
      if (Totals(layers, Allocate(layers, mid)).first <= budget)
        hi = mid;
      else
        lo = mid;
    }
    std::vector<int> pick = Allocate(layers, hi);
    // Greedy fill: best error reduction per extra byte that still fits.
    for (;;) {
      auto [bytes, d] = Totals(layers, pick);
      int bl = -1, bo = -1;
      double best_rate = 0;
      for (size_t i = 0; i < layers.size(); ++i) {
        const Option& cur = layers[i].options[pick[i]];
        for (size_t j = 0; j < layers[i].options.size(); ++j) {
          const Option& o = layers[i].options[j];
          const int64_t extra = o.bytes - cur.bytes;
          const double gain = cur.distortion - o.distortion;
          if (gain <= 0 || bytes + extra > budget) continue;
          const double rate = extra > 0 ? gain / extra : 1e300;
          if (rate > best_rate) best_rate = rate, bl = static_cast<int>(i), bo = static_cast<int>(j);
        }
      }
      if (bl < 0) break;
      pick[bl] = bo;
    }
    // The trade-off curve traced by lambda.
    std::vector<std::pair<double, double>> curve;
    for (int i = 0; i <= 60; ++i) {
      const auto [b, d] = Totals(layers, Allocate(layers, std::pow(10.0, -14 + 0.25 * i)));
      const double bpp = 8.0 * b / params;
      if (curve.empty() || std::fabs(curve.back().first - bpp) > 1e-9) curve.push_back({bpp, d});
    }
    std::sort(curve.begin(), curve.end());
    const auto [total_bytes, total_d] = Totals(layers, pick);

    std::map<std::string, int> counts;
    for (size_t i = 0; i < layers.size(); ++i) {
      const LayerChoices& lc = layers[i];
      const Option& o = lc.options[pick[i]];
      const Tensor src = model.tensors.at(lc.name);
      ASSIGN_OR_RETURN(std::vector<float> w, FiniteWeights(src, lc.name));
      ASSIGN_OR_RETURN(Tensor out, QuantizeWeightAs(o.format, src, w, *model.arch.LayerOfWeight(lc.name),
                                                    group_, importance[lc.name]));
      ASSIGN_OR_RETURN(std::vector<float> back, out.ToF32());
      TensorChange ch = WeightChange(lc.name, src, out, "mixed-precision " + o.format, w, back);
      ch.metrics[calibrated ? "rel_output_error" : "rel_weight_error_sq"] = o.distortion;
      for (const auto& alt : lc.options) ch.metrics["sensitivity_" + alt.format] = alt.distortion;
      ctx.report.tensors.push_back(std::move(ch));
      model.tensors.Set(lc.name, std::move(out));
      ++counts[o.format];
    }
    for (const auto& [f, n] : counts) ctx.report.stats["layers_" + f] = n;
    ctx.report.stats["bits_per_parameter"] = 8.0 * total_bytes / params;
    ctx.report.stats["budget_bits_per_parameter"] = 8.0 * budget / params;
    ctx.report.stats["summed_sensitivity"] = total_d;
    std::string curve_text;
    for (auto [bpp, d] : curve)
      curve_text += fmt::format("{}({:.3f} bpp, {:.4g})", curve_text.empty() ? "" : ", ", bpp, d);
    ctx.report.notes.push_back("size/error curve: " + curve_text);
    ctx.report.notes.push_back(calibrated
                                   ? "sensitivity: relative output error on calibration data"
                                   : "sensitivity: relative squared weight error (no calibration data)");
    CurvePlot plot;
    plot.title = "mixed precision: size vs summed layer error";
    plot.xlabel = "bits per parameter (selected layers)";
    plot.ylabel = calibrated ? "summed relative output error" : "summed relative weight error";
    plot.points = curve;
    plot.chosen = {8.0 * total_bytes / params, total_d};
    plot.budget_x = 8.0 * budget / params;
    ctx.report.plots["tradeoff.svg"] = std::move(plot);
    return PreservedAnalyses::None();
  }

 private:
  double budget_bpp_;
  int64_t size_;
  std::vector<std::string> candidates_;
  int64_t group_;
  TensorSelector sel_;
};

}  // namespace

PassInfo MixedPrecisionPassInfo() {
  PassInfo info;
  info.name = "mixed-precision";
  info.summary = "choose each layer's format (bf16, int8, fp4, nf4, int4, ...) to fit a size budget";
  using O = MixedPrecisionOptions;
  OptionBinding<O> b;
  b.Float(&O::budget, "budget", "average bits per parameter of the selected layers", 0.5, 32.0)
      .Bytes(&O::size, "size", "total bytes for the selected layers instead (e.g. 5MB); overrides budget")
      .List(&O::candidates, "candidates", "formats to choose from")
      .Int(&O::group_size, "group-size", "group size of the grouped int and fp4 formats", 0, 1 << 20);
  BindPassOptions(info, std::move(b), [](const O& o, TensorSelector sel) -> absl::StatusOr<std::unique_ptr<Pass>> {
    for (const auto& f : o.candidates) {
      if (!IsWeightFormat(f)) {
        return InvalidArgument(
            "mixed-precision: unknown candidate '{}' (bf16, f16, int8, int2..int7, nf4, fp4, mxfp4)", f);
      }
    }
    if (o.candidates.empty()) return InvalidArgument("mixed-precision: give at least one candidate");
    return std::make_unique<MixedPrecisionPass>(o, std::move(sel));
  });
  return info;
}

}  // namespace compress
