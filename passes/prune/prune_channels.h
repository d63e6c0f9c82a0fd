// prune-structured{target=channels} on ONNX graphs: removes whole channels between two
// weight-bearing nodes, with real shape changes.
//
// A prunable chain is   P -> [BatchNormalization | per-channel Add/Mul | unary activation]* -> C
// where every value on it has exactly one reader and is no graph output, and P / C are
//   Conv (group 1; W [M, C/1, k...], channel = output channel, axis 0 of W) -> Conv (group 1;
//     its input channel, axis 1 of W), or
//   MatMul (W [in, M], channel = output column, axis 1) -> MatMul (W [M, out], axis 0)
// with initializer weights read by no other node. Channel c of such a chain only ever flows
// through channel c of every op on it, so deleting it (P's row/column and bias entry, the
// per-channel parameters, C's input slice) leaves the graph computing exactly what the
// original computes with C's weights for c zeroed. Scores: l2 / l1 over P's and C's weights
// of the channel, or wanda: ||C's weights of c|| * ||C's input channel c|| on calibration
// data. Each chain loses round(ratio * M) channels (at least one is kept); value_info shape
// hints of the chain's values are dropped. Other convolutions (grouped, residual, feeding
// Reshape/Flatten/Concat) are left alone and named in the report's notes.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "core/pass.h"

namespace compress {

std::unique_ptr<Pass> MakePruneChannelsPass(double ratio, std::string score);

}  // namespace compress
