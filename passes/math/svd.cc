// Exact and randomized truncated SVD, whitening and rank rules.
// GCC 12 reports false maybe-uninitialized warnings inside Eigen's reductions at -O3.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include "passes/math/svd.h"

#include <Eigen/Cholesky>
#include <Eigen/QR>
#include <Eigen/SVD>
#include <random>

#include "core/status.h"

namespace compress {

Svd ExactSvd(const MatD& w) {
  Eigen::BDCSVD<MatD> svd(w, Eigen::ComputeThinU | Eigen::ComputeThinV);
  return {svd.matrixU(), svd.matrixV(), svd.singularValues()};
}

namespace {
MatD Orthonormal(const MatD& y) {
  Eigen::HouseholderQR<MatD> qr(y);
  return qr.householderQ() * MatD::Identity(y.rows(), y.cols());
}
}  // namespace

Svd RandomizedSvd(const MatD& w, int64_t k, int64_t oversample, int power_iterations, uint64_t seed) {
  const int64_t m = w.rows(), n = w.cols();
  const int64_t l = std::min<int64_t>(std::min(m, n), k + oversample);
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> nd;
  MatD g(n, l);
  for (int64_t j = 0; j < l; ++j)
    for (int64_t i = 0; i < n; ++i) g(i, j) = nd(rng);
  MatD q = Orthonormal(w * g);
  for (int it = 0; it < power_iterations; ++it) {
    q = Orthonormal(w.transpose() * q);
    q = Orthonormal(w * q);
  }
  const MatD b = q.transpose() * w;  // [l, n]
  Eigen::BDCSVD<MatD> svd(b, Eigen::ComputeThinU | Eigen::ComputeThinV);
  const int64_t r = std::min<int64_t>(k, l);
  return {q * svd.matrixU().leftCols(r), svd.matrixV().leftCols(r), svd.singularValues().head(r)};
}

absl::StatusOr<MatD> WhiteningFactor(std::span<const double> xtx, int64_t n, double damp) {
  if (static_cast<int64_t>(xtx.size()) != n * n)
    return Internal("X^T X has {} entries for {} inputs", xtx.size(), n);
  MatD h = Eigen::Map<const Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>(
      xtx.data(), n, n);
  const double mean = h.diagonal().mean();
  double lambda = damp * (mean > 0 ? mean : 1.0);
  for (int attempt = 0; attempt < 5; ++attempt, lambda *= 10) {
    MatD hd = h;
    hd.diagonal().array() += lambda;
    Eigen::LLT<MatD> llt(hd);
    if (llt.info() == Eigen::Success) return MatD(llt.matrixL());
  }
  return FailedPrecondition("X^T X stays indefinite after dampening; raise damp");
}

void TruncatedFactors(const Svd& svd, int64_t r, const MatD* whiten, MatD& a, MatD& b) {
  const Eigen::VectorXd root = svd.S.head(r).cwiseSqrt();
  a = svd.U.leftCols(r) * root.asDiagonal();
  b = root.asDiagonal() * svd.V.leftCols(r).transpose();
  if (whiten) {
    // B L^-1: solve X L = B, i.e. L^T X^T = B^T.
    b = whiten->transpose().triangularView<Eigen::Upper>().solve(b.transpose()).transpose();
  }
}

int64_t RankForEnergy(const Eigen::VectorXd& s, double energy) {
  const double total = s.squaredNorm();
  if (total <= 0) return 1;
  double kept = 0;
  for (int64_t i = 0; i < s.size(); ++i) {
    kept += s(i) * s(i);
    if (kept >= energy * total * (1 - 1e-12)) return i + 1;
  }
  return s.size();
}

int64_t RankForRatio(int64_t m, int64_t n, double ratio) {
  return std::max<int64_t>(1, static_cast<int64_t>(std::floor(ratio * static_cast<double>(m) * n / (m + n))));
}

}  // namespace compress
