// precision-align{output-bits=8, coverage=0.9, budget=0, group-size=128, group-search=false,
//                 error=sum|addend, apply=true}
//
// AlignedKV's precision-alignment criterion applied to weights (and, as a plan, to the KV
// cache); docs/precision_align.md derives it. In y_j = sum_k W_jk x_k, the sum keeps `output-
// bits` significant bits aligned to its largest addend T_j = max_k |W_jk| a_k (a_k = RMS of x_k
// on the calibration data), so its last kept bit is u_j = 2^(floor(log2 T_j) - output-bits +
// 1). Changing W_jk by d moves y_j by d a_k, which is lost in rounding while |d| a_k <= u_j /
// 2: W_jk needs only the resolution D_jk = u_j / (2 a_k); finer bits are wasted. Per row and
// group of inputs, symmetric int-b with step s = M / (2^(b-1) - 1) (M = the group's max |w|)
// meets every D_jk of the group when b >= 1 + log2(1 + M / (2 min_k D_jk)) (error=addend). The
// default error=sum asks the same of the row's summed rounding error (uniform-noise model, RMS
// step / sqrt(12) per addend): b >= 1 + log2(1 + sqrt(sum_g M_g^2 sum_{k in g} a_k^2 / 3) /
// u_j), one need per row. A layer needs the `coverage` quantile of that over its rows (and
// groups); it is stored as int-ceil(b) (group-size inputs per scale, int8 per channel, bf16
// when b > 8). With group-search the need is also evaluated for group-size/2, /4, ... (down to
// 16; smaller groups have smaller M, so they need fewer bits but store more scales) and each
// layer takes the (bits, group) that stores fewest bits. With `budget` (bits per parameter over
// the selected layers) the output precision is lowered uniformly until the plan fits, which
// keeps each layer's bits in proportion to its alignment need; what rounding up leaves of the
// budget goes, a bit at a time, to the layers whose need comes closest to their bits. The
// report gives per layer the needed bits, the mean significant bits per weight (floor(log2
// |W_jk|) - floor(log2 D_jk)), and a KV-cache plan: K channels from the q.k products (q and k
// channel RMS from W X^T X W^T), V channels from the o_proj products they feed. Needs
// calibration data (Llama-family runtime).
#pragma once

#include "core/pass.h"

namespace compress {

PassInfo PrecisionAlignPassInfo();

}  // namespace compress
