// Unstructured and N:M weight pruning of linear layers; weights stay dense with exact zeros.
//
// prune-magnitude{sparsity, score=magnitude|wanda}: in each layer, zero the `sparsity`
//   fraction of weights with the smallest score: |w_ij| (magnitude, over the whole layer) or
//   |w_ij| * ||x_j||_2 (Wanda, Sun et al. 2023, compared within each output row; needs
//   calibration data).
// prune-nm{n, m, score}: in every group of m consecutive inputs of an output row keep the
//   n largest scores and zero the rest (n < m), e.g. 2:4 for sparse tensor cores.
// prune-sparsegpt{sparsity | n,m, block-size, damp}: SparseGPT (Frantar & Alistarh, 2023):
//   columns are visited left to right with H = X^T X + damp I and U = chol(H^-1) upper; in
//   each block of columns the mask keeps the weights with the largest w^2 / U_jj^2 (over the
//   block, or per n:m group), each pruned column's error e = (w - w_masked) / U_jj is spread
//   over the columns to its right (W_k -= e U_jk), so the surviving weights absorb it.
// All report per layer the achieved sparsity and, with calibration data, the relative output
// error ||(W - W') X||^2 / ||W X||^2. Invalidate all analyses.
#pragma once

#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "core/pass.h"

namespace compress {

PassInfo PruneMagnitudePassInfo();
PassInfo PruneNmPassInfo();
PassInfo PruneSparseGptPassInfo();

struct SparsityPattern {
  double sparsity = 0.5;  // unstructured fraction, used when m == 0
  int n = 0, m = 0;       // keep n of every m consecutive inputs
};

// Zeroes weights of W [rows, cols] by score; `col_norm` (size cols, optional) turns
// magnitude into the Wanda score. Returns the number of zeros written.
int64_t PruneByScore(std::span<float> w, int64_t rows, int64_t cols, const SparsityPattern& p,
                     std::span<const double> col_norm);

// SparseGPT on W [rows, cols] (row-major) with H = sum x x^T [cols, cols].
absl::StatusOr<std::vector<float>> SparseGpt(std::span<const float> w, int64_t rows, int64_t cols,
                                             std::span<const double> xtx, const SparsityPattern& p,
                                             int64_t block_size, double damp);

}  // namespace compress
