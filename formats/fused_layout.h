// Fused projections (Phi-3's qkv_proj = [q; k; v] rows and gate_up_proj = [gate; up] rows) as
// separate logical projections and back: structural passes split them, cut heads or neurons
// on the separate q/k/v and gate/up weights like any Llama-family block, and fuse them again,
// so the output keeps the layout the family's loaders expect.
#pragma once

#include "absl/status/statusor.h"
#include "core/model.h"

namespace compress {

// Splits every fused projection of a kFusedPhi3 family checkpoint into q_proj/k_proj/v_proj
// and gate_proj/up_proj (biases too) in place of the fused tensor, and rebuilds the view.
// Returns whether anything was split (false for other families). Dense float weights only.
absl::StatusOr<bool> SplitFusedProjections(Model& model);

// The reverse: concatenates each block's q/k/v (gate/up) rows into qkv_proj (gate_up_proj)
// where q_proj (gate_proj) stood, and rebuilds the view.
absl::Status FuseProjections(Model& model);

}  // namespace compress
