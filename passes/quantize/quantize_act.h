// Activation and KV-cache quantization passes (specs in core/act_quant.h):
//  quantize-w8a8{type=int8|fp8, activations=dynamic|static}: per-channel int8 or FP8 E4M3
//    weights, and 8-bit inputs (dynamic per token, or static per tensor from calibration).
//  quantize-kv{type=int8|fp8|int4, k, v}: the attention cache, K per channel (static, from
//    calibration) and V per token and head (dynamic) by default.
#pragma once

#include "calibrate/calibration.h"
#include "core/pass.h"

namespace compress {

PassInfo QuantizeW8A8PassInfo();
PassInfo QuantizeKvPassInfo();

// The activation-spec options llm-int8 and quantize-w8a8 share, and the report metrics of
// one layer's input: its largest |x|, the features at or past `outlier_threshold`, and the
// static scale when there is one.
void AddActivationMetrics(TensorChange& change, const ActivationQuant* spec, const LinearStats* stats,
                          double outlier_threshold = 6.0);

// The layer's relative output error on the calibration rows kept in `stats->samples`:
// ||X W^T - X W'^T||_F / ||X W^T||_F (`output_rel_error_weights_only`) and, with the inputs
// quantized as `spec` says, ||X W^T - Q(X) W'^T||_F / ||X W^T||_F (`output_rel_error`).
// `w` and `back` are the weight before and after in its stored layout ([out, in], or
// [in, out] when out_axis 1); `keep`: LLM.int8()'s f16 features. Nothing without samples.
void AddOutputErrors(TensorChange& change, const LinearStats* stats, std::span<const float> w,
                     std::span<const float> back, int out_axis, const ActivationQuant& spec,
                     std::span<const int64_t> keep = {});

// sum_j ||W_.j||^2 over the input features j of a weight in its stored layout ([out, in], or
// [in, out] when out_axis 1): how much an error on input j moves the layer's output.
std::vector<double> InputColumnNorms(std::span<const float> w, int64_t in_features, int out_axis);
// sum over the kept calibration rows of sum_j colnorm_j (x_j - x'_j)^2, x' = the inputs
// quantized as `spec` says (the output error the inputs' rounding causes, cross terms dropped);
// `scratch` is reused between calls.
double WeightedInputError(const ActivationQuant& spec, const LinearStats& st, std::span<const double> colnorm,
                          std::vector<float>& scratch);

// OK for safetensors checkpoints; for ONNX graphs the refusal every activation pass gives
// (their activation quantization is not written yet), naming `pass`.
absl::Status RefuseOnnxActivations(const Model& model, std::string_view pass);

// The clipping of `range` (0.3 .. 1 in steps of 0.05) whose static per-tensor scale
// clip x range / spec.Qmax() has the smallest WeightedInputError; `spec` gives the format,
// channel exponents and (ignored) scale.
struct ClipChoice {
  float clip = 1, scale = 1;
  double error = -1;
};
ClipChoice SearchClipping(const ActivationQuant& spec, float range, const LinearStats& st,
                          std::span<const double> colnorm);

// Calibration rows the activation passes keep per layer for AddOutputErrors.
inline constexpr int64_t kErrorRows = 256;

}  // namespace compress
