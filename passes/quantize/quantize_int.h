// quantize-int{bits, group-size, symmetric} and quantize-int8: round-to-nearest integer
// weight quantization of linear layers (the baseline every calibrated method is compared to).
//
// Before: float weights of linear layers (default selection: no embeddings, lm_head, norms,
// biases). After: each selected weight is an int8-coded tensor with one scale (and zero
// point when asymmetric) per output channel, or per `group-size` inputs of a channel:
//   symmetric  s = max|w| / (2^(b-1)-1),  q = round(w / s)
//   asymmetric s = (max w - min w) / (2^b - 1),  z = round(-2^(b-1) - min w / s),  q = round(w / s) + z
//   w' = (q - z) * s,  |w - w'| <= s / 2  (see core/quant.h).
// quantize-int8 is vector-wise symmetric int8: bits=8, one scale per output row.
// Reports per tensor max-abs and relative Frobenius error and the worst |w - w'| / (s/2).
// Preconditions: 2-D weights of known layers; group-size divides in_features.
// Invalidates all analyses.
#pragma once

#include "core/pass.h"

namespace compress {

PassInfo QuantizeIntPassInfo();
PassInfo QuantizeInt8PassInfo();
// dequantize{dtype}: turns quantized weights back into dense float tensors.
PassInfo DequantizePassInfo();

}  // namespace compress
