// Second-order helpers shared by GPTQ and SparseGPT: the damped inverse-Hessian Cholesky
// factor and the layer output error measured through H = X^T X.
#pragma once

#include <Eigen/Core>
#include <span>

#include "absl/status/statusor.h"

namespace compress {

using MatD = Eigen::MatrixXd;
using RowMatD = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// From H = sum x x^T [cols, cols] and W [rows, cols]: inputs that never fire (H_ii = 0) get
// H_ii = 1 and zero weights; H += damp * mean(diag H) * I (retried with 10x more, up to
// 4 times, if H stays indefinite); returns the upper Cholesky factor U of H^-1 (H^-1 = U^T U).
absl::StatusOr<MatD> InverseHessianFactor(std::span<const double> xtx, int64_t cols, double damp, MatD& w);

// W as a double matrix from row-major f32.
MatD ToDouble(std::span<const float> w, int64_t rows, int64_t cols);

// ||(W - W') X||^2 / ||W X||^2 computed from H = X^T X.
double RelativeOutputError(std::span<const float> w, std::span<const float> w_hat, int64_t rows, int64_t cols,
                           std::span<const double> xtx);

}  // namespace compress
