// Damped inverse-Hessian factorization and output-error measurement.
#include "passes/math/hessian.h"

#include <Eigen/Cholesky>
#include <cmath>

#include "core/parallel_gemm.h"
#include "core/status.h"

namespace compress {

MatD ToDouble(std::span<const float> w, int64_t rows, int64_t cols) {
  return Eigen::Map<const Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>(w.data(),
                                                                                                 rows, cols)
      .cast<double>();
}

absl::StatusOr<MatD> InverseHessianFactor(std::span<const double> xtx, int64_t cols, double damp, MatD& w) {
  if (static_cast<int64_t>(xtx.size()) != cols * cols) return Internal("Hessian has the wrong size");
  // Two cols x cols matrices at most (a 13824-input down_proj: 1.5 GB each): the factor is
  // computed in place and inverted into the result, H is read from `xtx` as it stands.
  Eigen::Map<const RowMatD> H(xtx.data(), cols, cols);
  std::vector<char> dead(cols, 0);  // an input that never fires: its weights cannot matter (H_ii = 1)
  double mean_diag = 0;  // (a plain loop: GCC 12 misreads Eigen's reduction as uninitialized)
  for (int64_t i = 0; i < cols; ++i) {
    dead[i] = H(i, i) == 0;
    if (dead[i]) w.col(i).setZero();
    mean_diag += (dead[i] ? 1.0 : H(i, i)) / static_cast<double>(cols);
  }
  MatD A(cols, cols);
  for (int attempt = 0; attempt < 5; ++attempt) {
    // With J the exchange matrix and J H J = L L^T, H^-1 = U^T U for the upper-triangular
    // U = J L^-1 J: one Cholesky and one triangular inverse instead of inverting H first.
    // A = J H J + damping (column-major A, row-major H: A(r, c) = H(n-1-r, n-1-c)).
#pragma omp parallel for schedule(static)
    for (int64_t c = 0; c < cols; ++c) {
      for (int64_t r = 0; r < cols; ++r) A(r, c) = H(cols - 1 - r, cols - 1 - c);
    }
    for (int64_t i = 0; i < cols; ++i) {
      if (dead[cols - 1 - i]) A(i, i) = 1;
    }
    A.diagonal().array() += damp * std::pow(10.0, attempt) * mean_diag;
    Eigen::LLT<Eigen::Ref<MatD>> llt(A);  // L in A's lower triangle
    if (llt.info() != Eigen::Success) continue;
    MatD U = MatD::Identity(cols, cols);
    llt.matrixL().solveInPlace(U);
    U.reverseInPlace();
    return U;
  }
  return FailedPrecondition("the Hessian stayed indefinite after dampening up to {}x its mean diagonal",
                            damp * 1e4);
}

double RelativeOutputError(std::span<const float> w, std::span<const float> w_hat, int64_t rows, int64_t cols,
                           std::span<const double> xtx) {
  MatD W = ToDouble(w, rows, cols);
  MatD E = W - ToDouble(w_hat, rows, cols);
  Eigen::Map<const RowMatD> H(xtx.data(), cols, cols);
  // Over the threads in fixed column panels (core/parallel_gemm.h): this metric's two products
  // cost as much as a GPTQ solve, and one thread did them.
  const auto EH = MulAB(E, H), WH = MulAB(W, H);
  double num = 0, den = 0;  // tr(E H E^T) and tr(W H W^T)
  for (Eigen::Index c = 0; c < W.cols(); ++c) {
    for (Eigen::Index r = 0; r < W.rows(); ++r) {
      num += EH(r, c) * E(r, c);
      den += WH(r, c) * W(r, c);
    }
  }
  return den > 0 ? num / den : 0.0;
}

}  // namespace compress
