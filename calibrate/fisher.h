// Empirical Fisher of linear layers for second-order pruning (prune-obs hessian=fisher):
// F = (1/N) sum_n g_n g_n^T over gradient samples g_n from the LLM runtime's backward pass,
// kept block-diagonal within each output row as the Optimal BERT Surgeon does: one B x B
// block per row and run of B consecutive inputs. A sample is either
//   window: the gradient of one calibration window's mean next-token cross-entropy
//           (N = windows; the textbook empirical Fisher, rank <= N per block), or
//   token:  one position's term of it, (T - 1) dy_t x_t^T, so row r's block sums
//           dy_{t,r}^2 x_t x_t^T over all positions (N = windows x T: a weighted X^T X,
//           far better conditioned, at T times the accumulation cost).
#pragma once

#include <functional>
#include <map>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "calibrate/calibration.h"
#include "runtime/llama.h"

namespace compress {

struct FisherBlocks {
  int64_t rows = 0, cols = 0, block = 0;  // block divides cols
  int64_t samples = 0;                    // N
  std::vector<float> sums;                // [rows, cols / block, block, block]: sum over samples of g g^T
  int64_t bytes() const { return rows * cols * block * 4; }
  std::span<const float> Block(int64_t row, int64_t j) const {
    return std::span<const float>(sums).subspan((row * (cols / block) + j) * block * block, block * block);
  }
};

enum class FisherSample { kWindow, kToken };

FisherBlocks MakeFisherBlocks(int64_t rows, int64_t cols, int64_t block);
// Adds g g^T of every row's block-wide runs of `grad` [rows, cols] and counts one sample.
void AccumulateFisher(const RowMatrix& grad, FisherBlocks& f);
// Adds the per-position samples (scale dy_t) x_t^T of dL/dW = dy^T x (dy [T, rows], x [T, cols])
// and counts T samples.
void AccumulateFisherTokens(const RowMatrix& dy, const RowMatrix& x, float scale, FisherBlocks& f);

// Fisher blocks of `weights` (projection weights of blocks of `rt`, [out, in]) over the
// calibration windows: one forward + backward pass per window. `progress(done, total)` is
// called after each window.
absl::StatusOr<std::map<std::string, FisherBlocks>> ComputeFisher(
    const LlamaRuntime& rt, const CalibrationData& data, const std::map<std::string, FisherBlocks>& shapes,
    FisherSample sample, const std::function<void(int64_t, int64_t)>& progress = nullptr);

}  // namespace compress
