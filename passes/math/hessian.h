// Second-order helpers shared by GPTQ and SparseGPT: the damped inverse-Hessian Cholesky
// factor and the layer output error measured through H = X^T X.
#pragma once

#include <Eigen/Core>
#include <functional>
#include <span>
#include <vector>

#include "absl/status/statusor.h"

namespace compress {

using MatD = Eigen::MatrixXd;
using RowMatD = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// From H = sum x x^T [cols, cols] and W [rows, cols]: inputs that never fire (H_ii = 0) get
// H_ii = 1 and zero weights; H += damp * mean(diag H) * I (retried with 10x more, up to
// 4 times, if H stays indefinite); returns the upper Cholesky factor U of H^-1 (H^-1 = U^T U).
absl::StatusOr<MatD> InverseHessianFactor(std::span<const double> xtx, int64_t cols, double damp, MatD& w);

// The column sweep of GPTQ and SparseGPT (lazy batch updates): columns left to right in
// batches of `batch`; at batch start begin(i1, count, W1), when given, runs once (W1 = the
// batch's columns of W as updated so far); then, for each column i of the batch and each row r, the weight
// v = W1(r, i) is replaced by y = column(...)'s value, its error e = (v - y) / U(col, col) is
// spread over the batch's later columns (W1(r, j) -= e U(col, j)), and at batch end over the
// later columns of W (W -= E U). Every step is row-local, so rows run in fixed panels over the
// threads with one barrier per batch, bit-identical to one thread.
// column(r0, r1, i, col, W1, y) fills y[r - r0] for the rows [r0, r1) of column i; it may read
// rows [r0, r1) of W1 anywhere (e.g. to fit group scales when a group starts at col) and may
// write only per-row state of those rows.
using SweepBegin = std::function<void(int64_t i1, int64_t count, const MatD& W1)>;
using SweepColumn =
    std::function<void(int64_t r0, int64_t r1, int64_t i, int64_t col, const MatD& W1, double* y)>;
void ErrorFeedbackSweep(MatD& W, const MatD& U, int64_t batch, const SweepColumn& column,
                        const SweepBegin& begin = {});

// W as a double matrix from row-major f32.
MatD ToDouble(std::span<const float> w, int64_t rows, int64_t cols);

// ||(W - W') X||^2 / ||W X||^2 computed from H = X^T X.
double RelativeOutputError(std::span<const float> w, std::span<const float> w_hat, int64_t rows, int64_t cols,
                           std::span<const double> xtx);
// The same for several approximations W' of one W (||W X||^2 computed once).
std::vector<double> RelativeOutputErrors(std::span<const float> w, std::span<const std::span<const float>> w_hats,
                                         int64_t rows, int64_t cols, std::span<const double> xtx);

}  // namespace compress
