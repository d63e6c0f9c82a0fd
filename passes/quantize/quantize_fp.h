// 4-bit codebook quantization of linear weights: LLM-FP4-style FP4 with format and clipping
// search, NF4 (QLoRA) and MXFP4 (OCP Microscaling). Every weight becomes 4-bit codes that
// index a 16-value table (core/codebook.h) and one scale per group of inputs; w' = level * s.
//
// quantize-fp4{format=auto|e2m1|e3m0|e1m2, group-size=128, search=true, min-clip=0.5, weighted=true}
//   (LLM-FP4, Liu et al. 2023): per group s = r * max|w| / max|level|; with search the clip
//   ratio r is the one of 33 evenly spaced values in [min-clip, 1] minimising
//   sum_k h_k (w_k - w'_k)^2, where h_k = E[x_k^2] from calibration data when the pipeline
//   has it (and weighted=true), else 1. format=auto tries the three exponent/mantissa splits per tensor and keeps
//   the one with the smallest weighted error (the exponent bias is a power-of-two factor the
//   per-group scale absorbs, so searching scales covers the bias search). The report gives
//   the chosen format and weighted error per tensor.
// quantize-nf4{block=64}: QLoRA NormalFloat-4, s = max|w| per block of inputs, code = nearest
//   of the 16 published NF4 levels to w / s.
// quantize-mxfp4: OCP MX v1.0 MXFP4: blocks of 32 inputs share s = 2^(floor(log2 max|w|) - 2)
//   (an E8M0 exponent), elements are E2M1 of w / s rounded to nearest even, saturating at +-6.
// Preconditions: 2-D weights of known linear layers whose input dimension the group divides.
// Invalidates all analyses.
#pragma once

#include "core/pass.h"

namespace compress {

PassInfo QuantizeFp4PassInfo();
PassInfo QuantizeNf4PassInfo();
PassInfo QuantizeMxfp4PassInfo();

}  // namespace compress
