// llm-int8{threshold=6.0, weight-threshold=6.0}: LLM.int8() (Dettmers et al., 2022) weight
// decomposition. Input features of a linear layer that carry outliers stay in 16-bit; the
// rest of the weight is vector-wise int8 (one absmax scale per output channel, computed
// without the outlier inputs):
//   y = x[:, O] W[O, :]^T (f16)  +  x[:, ~O] (s * Q[~O])^T (int8)
// Outlier inputs O come from calibration statistics when the pipeline has them: inputs whose
// activation magnitude reaches `threshold` (the paper's criterion, 6.0), measured as the
// per-input max |x| over the calibration tokens. Without calibration data a weight-based
// rule stands in: input k is an outlier when its weight column's max |w| is at least
// `weight-threshold` times the median over the layer's columns.
// The report lists the outlier inputs of every layer and the int8-path error.
// Preconditions: 2-D float weights of known linear layers. Invalidates all analyses.
#pragma once

#include "core/pass.h"

namespace compress {

PassInfo LlmInt8PassInfo();

}  // namespace compress
