// Damped inverse-Hessian factorization and output-error measurement.
#include "passes/math/hessian.h"

#include <Eigen/Cholesky>
#include <algorithm>
#include <cmath>

#include "core/parallel_gemm.h"
#include "core/status.h"

namespace compress {

void ErrorFeedbackSweep(MatD& W, const MatD& U, int64_t batch, const SweepColumn& column, const SweepBegin& begin) {
  const int64_t rows = W.rows(), cols = W.cols();
  constexpr int64_t kRowPanel = 64;
  const int64_t panels = (rows + kRowPanel - 1) / kRowPanel;
  for (int64_t i1 = 0; i1 < cols; i1 += batch) {
    const int64_t i2 = std::min(i1 + batch, cols), count = i2 - i1;
    MatD W1 = W.middleCols(i1, count);
    MatD Err1(rows, count);
    if (begin) begin(i1, count, W1);
#pragma omp parallel for schedule(dynamic, 1) if (panels > 1 && rows * count * (cols - i1) > (1 << 20))
    for (int64_t p = 0; p < panels; ++p) {
      const int64_t r0 = p * kRowPanel, r1 = std::min(rows, r0 + kRowPanel), nr = r1 - r0;
      std::vector<double> y(static_cast<size_t>(nr));
      for (int64_t i = 0; i < count; ++i) {
        const int64_t col = i1 + i;
        column(r0, r1, i, col, W1, y.data());
        const double d = U(col, col);
        for (int64_t r = r0; r < r1; ++r) Err1(r, i) = (W1(r, i) - y[r - r0]) / d;
        if (i + 1 < count) {
          W1.block(r0, i + 1, nr, count - i - 1).noalias() -=
              Err1.col(i).segment(r0, nr) * U.block(col, col + 1, 1, count - i - 1);
        }
      }
    }
    if (i2 < cols) SubMulAB(W.rightCols(cols - i2), Err1, U.block(i1, i2, count, cols - i2));
  }
}

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
    // L^-1 by solving L X = I in fixed column panels over the threads: each panel's columns
    // come out bit-identical to one solve of the whole identity (Eigen's triangular solve sums
    // each right-hand column on its own), and this inverse cost four times the factorization.
    MatD U = MatD::Identity(cols, cols);
    ForEachGemmPanel(cols, cols, cols, [&](int64_t c0, int64_t w) {
      auto panel = U.middleCols(c0, w);
      llt.matrixL().solveInPlace(panel);
    });
    U.reverseInPlace();
    return U;
  }
  return FailedPrecondition("the Hessian stayed indefinite after dampening up to {}x its mean diagonal",
                            damp * 1e4);
}

std::vector<double> RelativeOutputErrors(std::span<const float> w, std::span<const std::span<const float>> w_hats,
                                         int64_t rows, int64_t cols, std::span<const double> xtx) {
  // tr(M H M^T) for M = W and each E = W - W' with f32 products summed in f64: a report
  // figure, which needs four digits, not the f64 products that made it cost more than the
  // GPTQ solve it reports on. H is symmetric, so each row m of M adds
  // sum_i H_ii m_i^2 + 2 sum_j (m L)_j m_j with L H's strictly lower triangle: a triangular
  // product, half a full one. Rows in fixed blocks over the threads (every form of a block in
  // one product), each block's sums kept and added in block order: the same value for any
  // thread count.
  using RowMatF = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  const RowMatF H = Eigen::Map<const RowMatD>(xtx.data(), cols, cols).cast<float>();
  const int64_t forms = 1 + static_cast<int64_t>(w_hats.size());
  constexpr int64_t kRows = 128;
  const int64_t blocks = (rows + kRows - 1) / kRows;
  std::vector<double> part(static_cast<size_t>(blocks * forms), 0.0);
#pragma omp parallel for schedule(dynamic, 1) if (blocks > 1 && rows * cols * cols > (1 << 22))
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t r0 = b * kRows, nr = std::min(kRows, rows - r0);
    RowMatF M(forms * nr, cols);
    for (int64_t f = 0; f < forms; ++f) {
      const float* x = w.data() + r0 * cols;
      const float* y = f > 0 ? w_hats[f - 1].data() + r0 * cols : nullptr;
      float* m = M.data() + f * nr * cols;
      for (int64_t i = 0; i < nr * cols; ++i) m[i] = y ? static_cast<float>(static_cast<double>(x[i]) - y[i]) : x[i];
    }
    const RowMatF P = M * H.triangularView<Eigen::StrictlyLower>();
    for (int64_t f = 0; f < forms; ++f) {
      double sum = 0;
      for (int64_t r = f * nr; r < (f + 1) * nr; ++r) {
        double diag = 0, off = 0;
        for (int64_t j = 0; j < cols; ++j) {
          const double mj = M(r, j);
          diag += static_cast<double>(H(j, j)) * mj * mj;
          off += static_cast<double>(P(r, j)) * mj;
        }
        sum += diag + 2 * off;
      }
      part[b * forms + f] = sum;
    }
  }
  std::vector<double> total(static_cast<size_t>(forms), 0.0);
  for (int64_t b = 0; b < blocks; ++b)
    for (int64_t f = 0; f < forms; ++f) total[f] += part[b * forms + f];
  std::vector<double> out;
  for (int64_t f = 1; f < forms; ++f) out.push_back(total[0] > 0 ? total[f] / total[0] : 0.0);
  return out;
}

double RelativeOutputError(std::span<const float> w, std::span<const float> w_hat, int64_t rows, int64_t cols,
                           std::span<const double> xtx) {
  const std::span<const float> one[] = {w_hat};
  return RelativeOutputErrors(w, one, rows, cols, xtx)[0];
}

}  // namespace compress
