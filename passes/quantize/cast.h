// cast{dtype=f16|bf16|f32}: converts the selected floating-point tensors to another float type.
//
// Before: tensors of any floating dtype. After: selected tensors hold
//   W' = round_to_nearest_even_{dtype}(W)
// (values past the target's range become +-inf for f16; NaN stays NaN). Default scope:
// every floating-point tensor. The conversion is lazy: the writer streams each tensor
// through it, so peak memory stays near one tensor. Reports per tensor the max absolute
// error and the relative Frobenius error ||W' - W||_F / ||W||_F.
// For safetensors, config.json's torch_dtype/dtype follow when every float tensor ends up
// in one type. Invalidates all analyses.
#pragma once

#include "core/pass.h"

namespace compress {

PassInfo CastPassInfo();

}  // namespace compress
