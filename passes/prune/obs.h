// prune-obs{sparsity=0.5, block=1, damp=0.01, hessian=xtx|fisher, fisher-block=64,
//           fisher-samples=token|window, fisher-memory=4096}: Optimal Brain Surgeon pruning with the
// layer Hessian H = X^T X from calibration data, exact per output row (as in Optimal Brain
// Compression), and the Optimal BERT Surgeon block variant (block > 1: groups of `block`
// consecutive inputs are pruned together).
//
// For each row w with H^-1 (damped; inputs that never fire get zero weights): repeatedly
// remove the group G with the smallest loss increase  1/2 w_G^T [(H^-1)_GG]^-1 w_G, move the
// surviving weights by  dw = -H^-1_{:,G} [(H^-1)_GG]^-1 w_G  (the optimal compensation), and
// drop G from the inverse:  H^-1 <- H^-1 - H^-1_{:,G} [(H^-1)_GG]^-1 H^-1_{G,:}.  Every row
// ends with exactly round(sparsity x groups) groups removed. Cost O(rows x in^3 x sparsity),
// so layers with more than 4096 inputs are refused (use prune-sparsegpt or hessian=fisher). The report gives
// sparsity and the relative output error ||(W - W')X^T||^2 / ||W X^T||^2 per layer.
//
// hessian=fisher uses an empirical Fisher F = (1/N) sum_n g_n g_n^T of the calibration
// windows' next-token losses instead (the Optimal BERT Surgeon's choice), block-diagonal:
// one fisher-block x fisher-block matrix per output row and run of inputs, so each row's
// greedy removals pick the cheapest group over all its blocks and compensate inside the
// block. A sample g_n is one position's gradient term (fisher-samples=token, the default:
// windows x tokens samples) or one window's loss gradient (window: the textbook form, rank
// <= windows per block, so it needs many windows). The gradients come from the LLM runtime's
// backward pass (safetensors checkpoints of the Llama family), computed on the model as
// pruned so far, fisher-memory MiB of Fisher blocks at a time. The report adds the predicted
// loss increase 1/2 dw^T F dw per layer (fisher_loss_increase).
// Invalidates all analyses.
#pragma once

#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "core/pass.h"
#include "calibrate/fisher.h"

namespace compress {

PassInfo PruneObsPassInfo();

// OBS / block-OBS on W [rows, cols] (row-major) with H = sum x x^T [cols, cols].
absl::StatusOr<std::vector<float>> ObsPrune(std::span<const float> w, int64_t rows, int64_t cols,
                                            std::span<const double> xtx, double sparsity, int64_t block,
                                            double damp);

struct FisherObsResult {
  std::vector<float> weights;  // [rows, cols]
  double predicted_loss = 0;   // sum of the removals' 1/2 w_G^T [(F^-1)_GG]^-1 w_G
};
// OBS / block-OBS on W [f.rows, f.cols] with the block-diagonal Fisher `f` (damped by
// damp x its mean diagonal); `block` divides f.block.
absl::StatusOr<FisherObsResult> ObsPruneFisher(std::span<const float> w, const FisherBlocks& f,
                                               double sparsity, int64_t block, double damp);

}  // namespace compress
