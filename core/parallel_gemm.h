// Matrix products spread over OpenMP threads whose every element is summed in the same
// order for any thread count. Eigen's own parallel GEMM picks its cache blocking from the
// number of threads, so its sums (and a model calibrated with it) changed with --threads;
// compress builds Eigen with EIGEN_DONT_PARALLELIZE and parallelizes here instead: the
// output is cut into panels of a fixed width (a function of the shapes only), and each
// panel is one single-threaded Eigen product.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <cstdint>

namespace compress {

inline constexpr int64_t kGemmPanel = 64;  // output columns per task

// Calls fn(first_column, width) for each fixed panel of `n` output columns, over the
// threads when the product (m x k x n multiply-adds) is large enough to pay for them.
template <class Fn>
void ForEachGemmPanel(int64_t m, int64_t k, int64_t n, Fn&& fn) {
  const int64_t panels = (n + kGemmPanel - 1) / kGemmPanel;
  const double work = static_cast<double>(m) * static_cast<double>(k) * static_cast<double>(n);
#pragma omp parallel for schedule(dynamic, 1) if (work > 4e6 && panels > 1)
  for (int64_t p = 0; p < panels; ++p) fn(p * kGemmPanel, std::min(kGemmPanel, n - p * kGemmPanel));
}

template <class Mat>
using RowMajorOf = Eigen::Matrix<typename Mat::Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// y = a * b^T: a [m, k], b [n, k] (e.g. activations times a [out, in] weight) -> [m, n].
template <class MatA, class MatB>
RowMajorOf<MatA> MulABt(const MatA& a, const MatB& b) {
  RowMajorOf<MatA> y(a.rows(), b.rows());
  ForEachGemmPanel(a.rows(), a.cols(), b.rows(), [&](int64_t c0, int64_t w) {
    y.middleCols(c0, w).noalias() = a * b.middleRows(c0, w).transpose();
  });
  return y;
}

// y = a * b: a [m, k], b [k, n] -> [m, n].
template <class MatA, class MatB>
RowMajorOf<MatA> MulAB(const MatA& a, const MatB& b) {
  RowMajorOf<MatA> y(a.rows(), b.cols());
  ForEachGemmPanel(a.rows(), a.cols(), b.cols(),
                   [&](int64_t c0, int64_t w) { y.middleCols(c0, w).noalias() = a * b.middleCols(c0, w); });
  return y;
}

// dst -= a * b, panel by panel over dst's columns (GPTQ's lazy-batch update).
template <class Dst, class MatA, class MatB>
void SubMulAB(Dst&& dst, const MatA& a, const MatB& b) {
  ForEachGemmPanel(a.rows(), a.cols(), b.cols(),
                   [&](int64_t c0, int64_t w) { dst.middleCols(c0, w).noalias() -= a * b.middleCols(c0, w); });
}

}  // namespace compress
