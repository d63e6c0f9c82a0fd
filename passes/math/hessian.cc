// Damped inverse-Hessian factorization and output-error measurement.
#include "passes/math/hessian.h"

#include <Eigen/Cholesky>
#include <cmath>

#include "core/status.h"

namespace compress {

MatD ToDouble(std::span<const float> w, int64_t rows, int64_t cols) {
  return Eigen::Map<const Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>(w.data(),
                                                                                                 rows, cols)
      .cast<double>();
}

absl::StatusOr<MatD> InverseHessianFactor(std::span<const double> xtx, int64_t cols, double damp, MatD& w) {
  if (static_cast<int64_t>(xtx.size()) != cols * cols) return Internal("Hessian has the wrong size");
  MatD H = Eigen::Map<const RowMatD>(xtx.data(), cols, cols);
  for (int64_t i = 0; i < cols; ++i) {
    if (H(i, i) == 0) {  // an input that never fires: its weights cannot matter
      H(i, i) = 1;
      w.col(i).setZero();
    }
  }
  double mean_diag = 0;  // (a plain loop: GCC 12 misreads Eigen's reduction as uninitialized)
  for (int64_t i = 0; i < cols; ++i) mean_diag += H(i, i) / static_cast<double>(cols);
  for (int attempt = 0; attempt < 5; ++attempt) {
    // With J the exchange matrix and J H J = L L^T, H^-1 = U^T U for the upper-triangular
    // U = J L^-1 J: one Cholesky and one triangular inverse instead of inverting H first.
    MatD A = H.reverse();
    A.diagonal().array() += damp * std::pow(10.0, attempt) * mean_diag;
    Eigen::LLT<MatD> llt(A);
    if (llt.info() != Eigen::Success) continue;
    MatD linv = llt.matrixL().solve(MatD::Identity(cols, cols));
    return MatD(linv.reverse());
  }
  return FailedPrecondition("the Hessian stayed indefinite after dampening up to {}x its mean diagonal",
                            damp * 1e4);
}

double RelativeOutputError(std::span<const float> w, std::span<const float> w_hat, int64_t rows, int64_t cols,
                           std::span<const double> xtx) {
  MatD W = ToDouble(w, rows, cols);
  MatD E = W - ToDouble(w_hat, rows, cols);
  Eigen::Map<const RowMatD> H(xtx.data(), cols, cols);
  const MatD EH = E * H, WH = W * H;
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
