// Scoring the removal of attention / FFN sublayers (FinerCut): how far the model's output
// moves from the unmodified model's ("teacher") on calibration windows, with a set of
// sublayers removed. LLM checkpoints run on runtime/llama (skipping sublayers, re-running
// only from the first changed block); ONNX decoder graphs run on the ONNX interpreter with
// the removed sublayers' residual Adds bypassed.
#pragma once

#include <map>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "calibrate/calibration.h"
#include "core/model.h"
#include "runtime/llama.h"

namespace compress {

class RemovalScorer {
 public:
  virtual ~RemovalScorer() = default;
  // Marks the attention and/or FFN sublayer of `block` removed (`removed`) or kept again.
  virtual absl::Status SetRemoved(int block, bool attention, bool mlp, bool removed) = 0;
  // Called after removals are committed: the next Score may start from cached state.
  virtual absl::Status Refresh() = 0;
  // Mean divergence from the teacher over the scored tokens, with the current removals;
  // `from` is the first block whose sublayers changed since Refresh.
  virtual absl::StatusOr<double> Score(int from) = 0;
  // Tokens scored per Score call.
  virtual int64_t tokens() const = 0;
};

enum class RemovalMetric {
  kJs,       // Jensen-Shannon divergence of the next-token distributions (nats)
  kAngular,  // angular distance of the final hidden states / pi (LLM checkpoints only)
};

// The scorer for the model's format: LLM checkpoints on runtime/llama, ONNX decoder graphs on
// the interpreter (metric kJs only; blocks numbered as formats/onnx_structure.h finds them).
// The first `samples` calibration windows of `data`; the teacher is captured here.
absl::StatusOr<std::unique_ptr<RemovalScorer>> MakeRemovalScorer(const Model& model, const CalibrationData& data,
                                                                 int64_t samples, RemovalMetric metric);
// The first `samples` calibration windows of `data`; the teacher is captured here.
absl::StatusOr<std::unique_ptr<RemovalScorer>> MakeLlmRemovalScorer(const Model& model,
                                                                    const CalibrationData& data,
                                                                    int64_t samples, RemovalMetric metric);
// `residual_adds`: (block, is attention) -> (the sublayer's residual Add output, its
// residual input). JS divergence of the graph's first output (logits [1, T, vocab]).
absl::StatusOr<std::unique_ptr<RemovalScorer>> MakeOnnxRemovalScorer(
    const Model& model, const CalibrationData& data, int64_t samples,
    std::map<std::pair<int, bool>, std::pair<std::string, std::string>> residual_adds);

// The value bypass (residual Add output -> its residual input) that removes the sublayers
// `removed` ((block, is attention)) of `residual_adds` (MakeOnnxRemovalScorer's map).
std::map<std::string, std::string> ResidualBypass(
    const std::map<std::pair<int, bool>, std::pair<std::string, std::string>>& residual_adds,
    const std::set<std::pair<int, bool>>& removed);

// Rows of log-probabilities from rows of logits.
RowMatrix LogSoftmaxRows(RowMatrix z);
// Jensen-Shannon divergence (nats) between two rows of log-probabilities.
double JsDivergence(const float* lp, const float* lq, int64_t n);

}  // namespace compress
