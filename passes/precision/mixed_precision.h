// mixed-precision{budget=4.5 | size=, candidates=[bf16,int8,fp4,nf4,int4,int3], group-size=128}
//
// Per-layer format allocation under a size budget. For every selected linear weight and
// every candidate format (passes/precision/weight_formats.h) the pass measures the layer's
// sensitivity: with calibration data the relative output error ||(W - W')X^T||^2 / ||W X^T||^2
// from the layer's X^T X, without it the relative weight error ||W - W'||^2 / ||W||^2.
// It then picks one format per layer minimising the summed sensitivity subject to the
// stored bytes of the selected layers fitting `budget` bits per parameter (or `size`
// bytes): a Lagrangian relaxation (each layer minimises D + lambda x bytes, lambda
// bisected to the budget), then a greedy fill of the remaining bytes by best error reduction
// per byte. The report gives each layer's choice and sensitivity, the per-format counts,
// and an SVG of the size/error trade-off curve traced by lambda with the chosen point.
// Invalidates all analyses.
#pragma once

#include "core/pass.h"

namespace compress {

PassInfo MixedPrecisionPassInfo();

}  // namespace compress
