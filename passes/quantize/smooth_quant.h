// smooth-quant{alpha, fold=norms|all}: SmoothQuant's migration of activation outliers into
// the weights. For each group of linear layers reading one normed input, per input feature j
//   s_j = max|x_j|^alpha / max|W_.j|^(1 - alpha)     (max|x_j| from calibration data)
// divides the norm's weight (and LayerNorm bias) by s_j and multiplies column j of every
// reader (q/k/v; gate/up, a MoE block's router, experts and shared expert) by s_j: the model
// computes the same function, with flatter inputs for a W8A8 pass that follows. fold=all also
// moves v -> o (per V channel, over the query heads reading it) and up -> down (per neuron),
// where those products are exact. Quantize afterwards: `smooth-quant,quantize-w8a8`.
#pragma once

#include "core/pass.h"

namespace compress {

PassInfo SmoothQuantPassInfo();

}  // namespace compress
