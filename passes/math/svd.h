// Truncated SVD factorizations of a weight, plain or activation-aware, exact or randomized.
#pragma once

#include <Eigen/Core>
#include <span>

#include "absl/status/statusor.h"
#include "passes/math/hessian.h"

namespace compress {

// W [m, n] ~ U diag(S) V^T with S descending; `rank` columns of U and V (all when exact).
struct Svd {
  MatD U, V;
  Eigen::VectorXd S;
};

// Thin SVD with every singular value (Eigen's divide-and-conquer BDCSVD).
Svd ExactSvd(const MatD& w);

// The leading k singular triplets by the randomized range finder (Halko, Martinsson & Tropp,
// 2011): Y = (W W^T)^q W G with a Gaussian G [n, k + oversample] (QR between power steps),
// Q = orth(Y), then the exact SVD of Q^T W. Deterministic for a given seed.
Svd RandomizedSvd(const MatD& w, int64_t k, int64_t oversample = 10, int power_iterations = 2,
                  uint64_t seed = 1);

// Activation-aware whitening for W [m, n] with inputs of second moment H = X^T X [n, n]:
// L = chol(H + damp * mean(diag H) * I) lower, so ||(W - W') X^T||_F = ||(W - W') L||_F.
// Factorizing W L and multiplying the right factor by L^-1 minimises the output error.
absl::StatusOr<MatD> WhiteningFactor(std::span<const double> xtx, int64_t n, double damp);

// A [m, r] = U_r sqrt(S_r), B [r, n] = sqrt(S_r) V_r^T (times L^-1 when `whiten` is given):
// W' = A B is the best rank-r approximation in the (whitened) Frobenius norm, and
// ||(W - W') L||_F^2 = sum_{i >= r} S_i^2 when the SVD is exact.
void TruncatedFactors(const Svd& svd, int64_t r, const MatD* whiten, MatD& a, MatD& b);

// Rank choices: the smallest r keeping `energy` of sum S_i^2; the largest r whose factors
// hold at most `ratio` of the m x n parameters.
int64_t RankForEnergy(const Eigen::VectorXd& s, double energy);
int64_t RankForRatio(int64_t m, int64_t n, double ratio);

}  // namespace compress
