// quantize-w4a4{method=llm-fp4|int, group-size, shift, samples}: 4-bit weights and 4-bit
// static per-tensor inputs from calibration data (LLM-FP4, Liu et al. 2023).
//  llm-fp4: weights FP4 with the format (e2m1 / e3m0 / e1m2) and clipping searched per
//    tensor, weighted by E[x^2] (quantize-fp4's search); inputs FP4 with the format and the
//    clipping searched per layer on calibration rows, minimising sum_j ||W_.j||^2 (x_j - x'_j)^2
//    (the output error the inputs' rounding causes, cross terms dropped); with shift=true the
//    input features whose calibration max exceeds the layer's median by 2^e (e >= 1) get the
//    exponent bias e (their scale x 2^e): LLM-FP4's per-channel activation scales, which the
//    target kernel folds into the weights as pre-shifted exponent biases.
//  int: the baseline of the same granularity: int4 weights (RTN, symmetric) and int4 static
//    per-tensor inputs with the clipping searched the same way, no shifts.
// Layers whose calibration rows are missing (experts that saw too few tokens) keep dynamic
// per-token 4-bit inputs and say so in the report.
#pragma once

#include "core/pass.h"

namespace compress {

PassInfo QuantizeW4A4PassInfo();

}  // namespace compress
