// One weight quantized (or rounded) to a named storage format, for passes that choose
// formats per layer (mixed-precision). Names:
//   bf16, f16            dense, round to nearest even
//   int8                 symmetric, one scale per output channel (vector-wise)
//   int2 .. int7         symmetric, one scale per `group` inputs (per channel if group does
//                        not divide in_features)
//   nf4                  NF4, absmax per block of 64 inputs
//   fp4                  FP4 e2m1 per `group` inputs with the clipping search (weighted by
//                        `h` when given)
//   mxfp4                OCP MXFP4 (blocks of 32)
#pragma once

#include <span>
#include <string>

#include "absl/status/statusor.h"
#include "core/model.h"

namespace compress {

// Whether `name` is one of the formats above.
bool IsWeightFormat(const std::string& name);

// `w` (row-major values of `src`) in format `name`. `h`: per-input importance (E[x^2]) or
// empty.
absl::StatusOr<Tensor> QuantizeWeightAs(const std::string& name, const Tensor& src, std::span<const float> w,
                                        const LinearLayer& layer, int64_t group, std::span<const double> h);

}  // namespace compress
