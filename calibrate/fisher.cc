// Empirical Fisher blocks from per-window gradients.
#include "calibrate/fisher.h"

#include "core/status.h"

namespace compress {

FisherBlocks MakeFisherBlocks(int64_t rows, int64_t cols, int64_t block) {
  FisherBlocks f;
  f.rows = rows, f.cols = cols, f.block = block;
  f.sums.assign(rows * cols * block, 0.f);
  return f;
}

void AccumulateFisher(const RowMatrix& grad, FisherBlocks& f) {
  const int64_t B = f.block, nb = f.cols / B;
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < f.rows; ++r) {
    for (int64_t j = 0; j < nb; ++j) {
      const float* g = grad.data() + r * f.cols + j * B;
      float* out = f.sums.data() + (r * nb + j) * B * B;
      for (int64_t a = 0; a < B; ++a) {
        const float ga = g[a];
        for (int64_t b = 0; b < B; ++b) out[a * B + b] += ga * g[b];
      }
    }
  }
  ++f.samples;
}

void AccumulateFisherTokens(const RowMatrix& dy, const RowMatrix& x, float scale, FisherBlocks& f) {
  const int64_t B = f.block, nb = f.cols / B, T = x.rows();
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < f.rows; ++r) {
    // Row r's samples are the rows of x scaled by scale * dy[:, r].
    const RowMatrix y = (x.array().colwise() * (scale * dy.col(r)).array()).matrix();
    for (int64_t j = 0; j < nb; ++j) {
      Eigen::Map<RowMatrix> out(f.sums.data() + (r * nb + j) * B * B, B, B);
      out.noalias() += y.middleCols(j * B, B).transpose() * y.middleCols(j * B, B);
    }
  }
  f.samples += T;
}

absl::StatusOr<std::map<std::string, FisherBlocks>> ComputeFisher(
    const LlamaRuntime& rt, const CalibrationData& data, const std::map<std::string, FisherBlocks>& shapes,
    FisherSample sample, const std::function<void(int64_t, int64_t)>& progress) {
  if (data.windows.empty()) {
    return FailedPrecondition(
        "the empirical Fisher needs token windows as calibration data (text or token ids)");
  }
  std::map<std::string, FisherBlocks> out = shapes;
  const auto wanted = [&](const std::string& w) { return out.contains(w); };
  const int64_t n = static_cast<int64_t>(data.windows.size());
  for (int64_t i = 0; i < n; ++i) {
    std::map<std::string, bool> seen;
    auto loss = rt.Gradients(
        data.windows[i],
        [&](const std::string& w, const RowMatrix& dy, const RowMatrix& x) -> absl::Status {
          FisherBlocks& f = out.at(w);
          if (dy.cols() != f.rows || x.cols() != f.cols) {
            return Internal("gradient of '{}' is [{}, {}], expected [{}, {}]", w, dy.cols(), x.cols(), f.rows,
                            f.cols);
          }
          if (sample == FisherSample::kWindow) {
            AccumulateFisher(RowMatrix(dy.transpose() * x), f);
          } else {
            // The loss is a mean over T - 1 predictions: one position's own loss gradient is
            // (T - 1) times its term.
            AccumulateFisherTokens(dy, x, static_cast<float>(dy.rows() - 1), f);
          }
          seen[w] = true;
          return absl::OkStatus();
        },
        wanted);
    if (!loss.ok()) return Annotate(loss.status(), fmt::format("calibration window {}", i));
    if (seen.size() != out.size()) {
      for (const auto& [w, f] : out)
        if (!seen.contains(w)) return NotFound("the runtime computed no gradient for '{}'", w);
    }
    if (progress) progress(i + 1, n);
  }
  return out;
}

}  // namespace compress
