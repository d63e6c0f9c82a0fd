// prune-obs{sparsity=0.5, block=1, damp=0.01}: Optimal Brain Surgeon pruning with the
// layer Hessian H = X^T X from calibration data, exact per output row (as in Optimal Brain
// Compression), and the Optimal BERT Surgeon block variant (block > 1: groups of `block`
// consecutive inputs are pruned together).
//
// For each row w with H^-1 (damped; inputs that never fire get zero weights): repeatedly
// remove the group G with the smallest loss increase  1/2 w_G^T [(H^-1)_GG]^-1 w_G, move the
// surviving weights by  dw = -H^-1_{:,G} [(H^-1)_GG]^-1 w_G  (the optimal compensation), and
// drop G from the inverse:  H^-1 <- H^-1 - H^-1_{:,G} [(H^-1)_GG]^-1 H^-1_{G,:}.  Every row
// ends with exactly round(sparsity x groups) groups removed. Cost O(rows x in^3 x sparsity),
// so layers with more than 4096 inputs are refused (use prune-sparsegpt). The report gives
// sparsity and the relative output error ||(W - W')X^T||^2 / ||W X^T||^2 per layer.
// Empirical-Fisher Hessians are not implemented yet. Invalidates all analyses.
#pragma once

#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "core/pass.h"

namespace compress {

PassInfo PruneObsPassInfo();

// OBS / block-OBS on W [rows, cols] (row-major) with H = sum x x^T [cols, cols].
absl::StatusOr<std::vector<float>> ObsPrune(std::span<const float> w, int64_t rows, int64_t cols,
                                            std::span<const double> xtx, double sparsity, int64_t block,
                                            double damp);

}  // namespace compress
