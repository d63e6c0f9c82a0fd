// W4A4: LLM-FP4's FP4 weights and inputs with searched formats, and the int4 baseline.
#include "passes/quantize/quantize_w4a4.h"

#include <algorithm>
#include <cmath>

#include "passes/layer_walk.h"
#include "passes/quantize/quantize_act.h"

namespace compress {
namespace {

struct InputChoice {
  ActivationQuant spec;
  double rel_error = 0;  // weighted input error over the weighted input energy
  float clip = 1;
};

struct W4A4Options {
  bool fp4 = true;  // method=llm-fp4 (else int)
  int64_t group_size = 0;
  bool shift = true;
  int64_t samples = 1024;
};

class QuantizeW4A4Pass final : public Pass {
 public:
  QuantizeW4A4Pass(const W4A4Options& o, TensorSelector sel)
      : fp4_(o.fp4), group_(o.group_size), shift_(o.shift), samples_(o.samples), sel_(std::move(sel)) {}

  absl::StatusOr<PreservedAnalyses> Run(Model& model, PassContext& ctx) override {
    RETURN_IF_ERROR(RefuseOnnxActivations(model, "quantize-w4a4"));
    std::map<std::string, int> formats;
    int64_t fallbacks = 0;
    RETURN_IF_ERROR(ForEachLinear(
        model, ctx, sel_, /*calibrated=*/true, /*need_xtx=*/false, /*accept_quantized=*/false, "quantize-w4a4",
        [&](const std::string& name, const LinearLayer& layer, const LinearStats* st) -> absl::Status {
          const Tensor src = model.tensors.at(name);
          const int64_t rows = src.shape()[0], cols = src.shape()[1];
          const int64_t in = layer.out_axis == 0 ? cols : rows;
          if (group_ > 0 && in % group_ != 0)
            return InvalidArgument("tensor '{}': in_features {} is not a multiple of group-size {}", name, in, group_);
          ASSIGN_OR_RETURN(std::vector<float> w, FiniteWeights(src, name));
          src.ReleasePages();
          const std::vector<double> colnorm = InputColumnNorms(w, in, layer.out_axis);
          std::vector<double> h(in, 1.0);
          const bool have_rows = st && !st->data_free && st->sample_rows > 0;
          if (st && !st->data_free)
            for (int64_t k = 0; k < in; ++k) h[k] = st->rows ? st->sum_sq[k] / st->rows : 1.0;
          ASSIGN_OR_RETURN(Tensor out, QuantizeWeights(w, rows, cols, layer.out_axis, h, src.dtype()));
          ASSIGN_OR_RETURN(std::vector<float> back, out.ToF32());
          InputChoice choice;
          if (have_rows) {
            ASSIGN_OR_RETURN(choice, SearchInputs(*st, colnorm));
          } else {
            ++fallbacks;
            choice.spec.format = fp4_ ? ActFormat::kFp4 : ActFormat::kInt;
            choice.spec.bits = 4;
            choice.spec.fp4_format = fp4_ ? "fp4-e2m1" : "";
            ctx.report.notes.push_back(
                fmt::format("{}: no calibration rows (too few tokens); inputs use dynamic per-token scales", name));
          }
          TensorChange change = WeightChange(name, src, out,
                                             fmt::format("w4a4 {}: weights {}, inputs {}", fp4_ ? "llm-fp4" : "int",
                                                         StoredTypeName(out), choice.spec.Describe()),
                                             w, back);
          AddActivationMetrics(change, &choice.spec, st);
          AddOutputErrors(change, st, w, back, layer.out_axis, choice.spec);
          if (have_rows) {
            change.metrics["act_weighted_rel_error"] = choice.rel_error;
            change.metrics["act_clip"] = choice.clip;
          }
          ++formats[choice.spec.format == ActFormat::kFp4 ? choice.spec.fp4_format : "int4"];
          ctx.report.tensors.push_back(std::move(change));
          model.tensors.Set(name, std::move(out));
          model.input_quant[name] = std::move(choice.spec);
          return absl::OkStatus();
        },
        samples_));
    ctx.report.stats["tensors_quantized"] = static_cast<double>(ctx.report.tensors.size());
    for (const auto& [f, n] : formats) ctx.report.stats["inputs_" + f] = n;
    if (fallbacks) ctx.report.stats["dynamic_input_fallbacks"] = static_cast<double>(fallbacks);
    return PreservedAnalyses::None();
  }

 private:
  absl::StatusOr<Tensor> QuantizeWeights(const std::vector<float>& w, int64_t rows, int64_t cols, int out_axis,
                                         const std::vector<double>& h, DType original) {
    if (!fp4_) {
      ASSIGN_OR_RETURN(auto q, QuantizeRtn(w, rows, cols, 4, true, out_axis, group_));
      q.second.original_dtype = original;
      return Tensor::Quantized({rows, cols}, std::move(q.first), std::move(q.second));
    }
    CodebookOptions co;
    co.channel_axis = out_axis;
    co.group_size = group_;
    co.scale = CodebookOptions::Scale::kSearch;
    co.input_weight = h;
    ASSIGN_OR_RETURN(CodebookResult best,
                     QuantizeCodebookBest(w, rows, cols, {"fp4-e2m1", "fp4-e3m0", "fp4-e1m2"}, co));
    best.info.original_dtype = original;
    return Tensor::Quantized({rows, cols}, std::move(best.codes), std::move(best.info));
  }

  // The input format (fp4 tables or int4), clipping and channel exponents with the smallest
  // sum over calibration rows of ||W_.j||^2 (x_j - x'_j)^2.
  absl::StatusOr<InputChoice> SearchInputs(const LinearStats& st, const std::vector<double>& colnorm) const {
    const int64_t in = st.in_features, n = st.sample_rows;
    std::vector<int8_t> exps;
    if (fp4_ && shift_) {
      std::vector<float> pos;
      for (float a : st.absmax)
        if (a > 0) pos.push_back(a);
      if (!pos.empty()) {
        std::nth_element(pos.begin(), pos.begin() + pos.size() / 2, pos.end());
        const float med = pos[pos.size() / 2];
        exps.assign(in, 0);
        for (int64_t k = 0; k < in; ++k)
          if (st.absmax[k] > 2 * med) exps[k] = static_cast<int8_t>(std::min(16.f, std::floor(std::log2(st.absmax[k] / med))));
      }
    }
    float shifted_max = 0;
    for (int64_t k = 0; k < in; ++k) shifted_max = std::max(shifted_max, std::ldexp(st.absmax[k], exps.empty() ? 0 : -exps[k]));
    if (!(shifted_max > 0)) shifted_max = 1;
    double energy = 0;
    for (int64_t r = 0; r < n; ++r)
      for (int64_t k = 0; k < in; ++k) energy += colnorm[k] * double(st.samples[r * in + k]) * st.samples[r * in + k];
    std::vector<std::string> tables = fp4_ ? std::vector<std::string>{"fp4-e2m1", "fp4-e3m0", "fp4-e1m2"}
                                           : std::vector<std::string>{""};
    std::optional<InputChoice> best;
    for (const std::string& table : tables) {
      InputChoice c;
      c.spec.format = fp4_ ? ActFormat::kFp4 : ActFormat::kInt;
      c.spec.bits = 4;
      c.spec.fp4_format = table;
      c.spec.granularity = ActivationQuant::Granularity::kTensor;
      c.spec.dynamic = false;
      c.spec.channel_exp = exps;
      const ClipChoice clip = SearchClipping(c.spec, shifted_max, st, colnorm);
      c.spec.scale = clip.scale;
      c.clip = clip.clip;
      c.rel_error = energy > 0 ? clip.error / energy : 0;
      if (!best || c.rel_error < best->rel_error) best = std::move(c);
    }
    return *best;
  }

  bool fp4_;
  int64_t group_;
  bool shift_;
  int64_t samples_;
  TensorSelector sel_;
};

}  // namespace

PassInfo QuantizeW4A4PassInfo() {
  PassInfo info;
  info.name = "quantize-w4a4";
  info.summary = "W4A4: LLM-FP4 (searched FP4 weights and inputs, per-channel exponent biases) or int4 baseline";
  info.needs_calibration = true;
  OptionBinding<W4A4Options> b;
  b.Choice(&W4A4Options::fp4, "method", "llm-fp4, or int (int4 of the same granularity)",
           {{"llm-fp4", true}, {"int", false}})
      .Int(&W4A4Options::group_size, "group-size", "weight inputs sharing one scale; 0 = per output channel", 0,
           1 << 20)
      .Flag(&W4A4Options::shift, "shift", "llm-fp4: per-channel exponent biases for outlier input features")
      .Int(&W4A4Options::samples, "samples", "calibration rows per layer for the input format search", 16, 1 << 20);
  BindPassOptions(info, std::move(b), [](const W4A4Options& o, TensorSelector sel) {
    return std::make_unique<QuantizeW4A4Pass>(o, std::move(sel));
  });
  return info;
}

}  // namespace compress
