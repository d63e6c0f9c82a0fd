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

}  // namespace compress
