// LLM.int8(): int8 vector-wise weights with f16 outlier input features.
#include "passes/quantize/llm_int8.h"

#include <algorithm>
#include <cmath>

#include "passes/layer_walk.h"
#include "passes/quantize/quantize_act.h"

namespace compress {
namespace {

struct LlmInt8Options {
  double threshold = 6.0;
  double weight_threshold = 6.0;
  bool activations = true;  // activations=int8
};

class LlmInt8Pass final : public Pass {
 public:
  LlmInt8Pass(LlmInt8Options o, TensorSelector sel)
      : threshold_(o.threshold),
        weight_threshold_(o.weight_threshold),
        activations_(o.activations),
        sel_(std::move(sel)) {}

  absl::StatusOr<PreservedAnalyses> Run(Model& model, PassContext& ctx) override {
    if (activations_ && model.format == ModelFormat::kOnnx) {
      return Unimplemented(
          "llm-int8{{activations=int8}}: the 8-bit activation half is not written for ONNX graphs yet; "
          "llm-int8{{activations=none}} writes the weight-only form");
    }
    const bool calibrated = ctx.calibration != nullptr;
    ActivationQuant act;  // LLM.int8(): per-token int8 inputs, f16 outlier features
    act.f16_outliers = true;
    int64_t total_outliers = 0;
    RETURN_IF_ERROR(ForEachLinear(
        model, ctx, sel_, calibrated, /*need_xtx=*/false, /*accept_quantized=*/false, "llm-int8",
        [&](const std::string& name, const LinearLayer& layer, const LinearStats* st) -> absl::Status {
          const Tensor src = model.tensors.at(name);
          const int64_t rows = src.shape()[0], cols = src.shape()[1];
          const int axis = layer.out_axis;
          const int64_t channels = axis == 0 ? rows : cols, in = axis == 0 ? cols : rows;
          auto at = [&](int64_t ch, int64_t k) { return axis == 0 ? ch * cols + k : k * cols + ch; };
          ASSIGN_OR_RETURN(std::vector<float> w, FiniteWeights(src, name));
          src.ReleasePages();
          std::vector<int64_t> outliers;
          if (st) {
            for (int64_t k = 0; k < in; ++k) {
              if (st->absmax[k] >= threshold_) outliers.push_back(k);
            }
          } else {
            std::vector<float> colmax(in, 0.f);
            for (int64_t ch = 0; ch < channels; ++ch) {
              for (int64_t k = 0; k < in; ++k) colmax[k] = std::max(colmax[k], std::fabs(w[at(ch, k)]));
            }
            std::vector<float> sorted = colmax;
            std::nth_element(sorted.begin(), sorted.begin() + in / 2, sorted.end());
            const double median = sorted[in / 2];
            for (int64_t k = 0; k < in; ++k) {
              if (median > 0 && colmax[k] >= weight_threshold_ * median) outliers.push_back(k);
            }
          }
          const int64_t n = static_cast<int64_t>(outliers.size());
          std::vector<float> rest = w, values(channels * n);
          for (int64_t ch = 0; ch < channels; ++ch) {
            for (int64_t j = 0; j < n; ++j) {
              float& v = rest[at(ch, outliers[j])];
              values[ch * n + j] = F16ToF32(F32ToF16(v));
              v = 0.f;
            }
          }
          ASSIGN_OR_RETURN(auto q, QuantizeRtn(rest, rows, cols, 8, true, axis, 0));
          q.second.original_dtype = src.dtype();
          q.second.outlier_inputs = outliers;
          q.second.outlier_values = std::move(values);
          Tensor out = Tensor::Quantized(src.shape(), std::move(q.first), std::move(q.second));
          ASSIGN_OR_RETURN(std::vector<float> back, out.ToF32());
          TensorChange change = WeightChange(
              name, src, out,
              activations_ ? "llm.int8 vector-wise + f16 outliers, inputs " + act.Describe()
                           : std::string("llm.int8 vector-wise + f16 outliers (weights only)"),
              w, back);
          change.metrics["outlier_inputs"] = static_cast<double>(n);
          if (st)
            change.metrics["max_abs_activation"] = *std::max_element(st->absmax.begin(), st->absmax.end());
          AddActivationMetrics(change, activations_ ? &act : nullptr, st, threshold_);
          if (activations_) {
            ActivationQuant a = act;
            a.f16_outliers = n > 0;
            AddOutputErrors(change, st, w, back, axis, a, outliers);
          }
          if (n > 0) {
            std::string dims;
            for (int64_t j = 0; j < n && j < 32; ++j) dims += (j ? ", " : "") + std::to_string(outliers[j]);
            if (n > 32) dims += fmt::format(", ... ({} more)", n - 32);
            ctx.report.notes.push_back(fmt::format("{}: outlier inputs [{}]", name, dims));
          }
          total_outliers += n;
          ctx.report.tensors.push_back(std::move(change));
          model.tensors.Set(name, std::move(out));
          if (activations_) {
            ActivationQuant a = act;
            a.f16_outliers = n > 0;  // no outlier features: plain per-token int8, stored as such
            model.input_quant[name] = a;
          }
          return absl::OkStatus();
        },
        kErrorRows));
    ctx.report.stats["tensors_quantized"] = static_cast<double>(ctx.report.tensors.size());
    ctx.report.stats["outlier_inputs"] = static_cast<double>(total_outliers);
    ctx.report.notes.push_back(calibrated ? fmt::format("outliers: calibration max |x| >= {}", threshold_)
                                          : fmt::format("outliers: no calibration data, weight columns with "
                                                        "max |w| >= {} x the layer's median column max",
                                                        weight_threshold_));
    return PreservedAnalyses::None();
  }

 private:
  double threshold_, weight_threshold_;
  bool activations_;
  TensorSelector sel_;
};

}  // namespace

PassInfo LlmInt8PassInfo() {
  PassInfo info;
  info.name = "llm-int8";
  info.summary = "LLM.int8(): vector-wise int8 weights with outlier input features kept in f16";
  info.planned_quant = [](const OptionValues&) -> std::optional<PlannedQuant> {
    return PlannedQuant{"int", 8, true, 0, "f32", /*outlier_inputs=*/true};
  };
  OptionBinding<LlmInt8Options> b;
  b.Float(&LlmInt8Options::threshold, "threshold", "activation magnitude that makes an input an outlier", 0.0, 1e9)
      .Float(&LlmInt8Options::weight_threshold, "weight-threshold",
             "without calibration: column max |w| over the median column max that makes an outlier", 1.0, 1e9)
      .Choice(&LlmInt8Options::activations, "activations",
              "int8: 8-bit matmul (per-token int8 inputs, f16 outlier features); none: weight-only",
              {{"int8", true}, {"none", false}});
  BindPassOptions(info, std::move(b), [](const LlmInt8Options& o, TensorSelector sel) {
    return std::make_unique<LlmInt8Pass>(o, std::move(sel));
  });
  return info;
}

}  // namespace compress
