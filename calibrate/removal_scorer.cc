// FinerCut's removal scorers: LLM checkpoints on runtime/llama, ONNX graphs on the interpreter.
#include "calibrate/removal_scorer.h"

#include <algorithm>
#include <cmath>
#include <set>

#include "core/graph_ir.h"
#include "core/status.h"
#include "formats/onnx_structure.h"
#include "runtime/onnx/interpreter.h"

namespace compress {

RowMatrix LogSoftmaxRows(RowMatrix z) {
  for (Eigen::Index i = 0; i < z.rows(); ++i) {
    const float mx = z.row(i).maxCoeff();
    const double lse = mx + std::log((z.row(i).array() - mx).exp().cast<double>().sum());
    z.row(i).array() -= static_cast<float>(lse);
  }
  return z;
}

double JsDivergence(const float* lp, const float* lq, int64_t n) {
  double d = 0;
  for (int64_t j = 0; j < n; ++j) {
    const double p = std::exp(static_cast<double>(lp[j])), q = std::exp(static_cast<double>(lq[j]));
    const double m = 0.5 * (p + q);
    if (m <= 0) continue;
    if (p > 0) d += 0.5 * p * (lp[j] - std::log(m));
    if (q > 0) d += 0.5 * q * (lq[j] - std::log(m));
  }
  return std::max(0.0, d);
}

std::map<std::string, std::string> ResidualBypass(
    const std::map<std::pair<int, bool>, std::pair<std::string, std::string>>& residual_adds,
    const std::set<std::pair<int, bool>>& removed) {
  std::map<std::string, std::string> bypass;
  for (const auto& [key, add] : residual_adds) {
    if (removed.count(key)) bypass[add.first] = add.second;
  }
  return bypass;
}

namespace {

// The graph's logits for one window as rows of log-probabilities.
absl::StatusOr<RowMatrix> LogProbs(const onnxrt::Interpreter& interp, const std::vector<int32_t>& ids) {
  ASSIGN_OR_RETURN(auto feeds, onnxrt::TokenFeeds(interp, ids));
  ASSIGN_OR_RETURN(auto outs, interp.Run(feeds));
  const std::string& name = interp.outputs().at(0).name;
  ASSIGN_OR_RETURN(onnxrt::Value logits, onnxrt::CastValue(outs.at(name), DType::kF32));
  const int64_t T = static_cast<int64_t>(ids.size());
  if (T <= 0 || logits.rank() < 2 || logits.shape[logits.rank() - 2] != T || logits.numel() % T) {
    return InvalidArgument("ONNX output '{}' has shape {}; FinerCut expects logits [1, {}, vocab]", name,
                           ShapeString(logits.shape), T);
  }
  const int64_t V = logits.numel() / T;
  return LogSoftmaxRows(Eigen::Map<const RowMatrix>(logits.data<float>(), T, V));
}

// The scored windows (the first `samples` of the calibration data) and the teacher's output
// on each, shared by both scorers.
class WindowScorer : public RemovalScorer {
 public:
  WindowScorer(const CalibrationData& data, int64_t samples) {
    for (int64_t s = 0; s < std::min<int64_t>(samples, data.windows.size()); ++s) ids_.push_back(data.windows[s]);
  }
  int64_t tokens() const override {
    int64_t n = 0;
    for (const auto& w : ids_) n += static_cast<int64_t>(w.size());
    return n;
  }

 protected:
  std::vector<std::vector<int32_t>> ids_;
  std::vector<RowMatrix> teacher_;  // per window: log-probabilities (JS) or final hidden states
};

// Output change of the runtime's current configuration on each sample against the teacher.
class LlmRemovalScorer final : public WindowScorer {
 public:
  LlmRemovalScorer(std::unique_ptr<LlamaRuntime> rt, const CalibrationData& data, int64_t samples, bool js)
      : WindowScorer(data, samples), owned_(std::move(rt)), rt_(*owned_), js_(js) {}

  absl::Status CaptureTeacher() {
    for (const auto& ids : ids_) {
      ASSIGN_OR_RETURN(RowMatrix x, rt_.Embed(ids));
      for (int b = 0; b < rt_.num_blocks(); ++b) rt_.RunBlock(b, x);
      rt_.FinalNorm(x);
      teacher_.push_back(js_ ? LogSoftmaxRows(rt_.Logits(x)) : x);
    }
    return absl::OkStatus();
  }

  absl::Status SetRemoved(int block, bool attention, bool mlp, bool removed) override {
    auto [a, m] = rt_.Skipped(block);
    return rt_.SetSkipped(block, attention ? removed : a, mlp ? removed : m);
  }

  // Caches the hidden states entering every block under the current configuration.
  absl::Status Refresh() override {
    inputs_.assign(ids_.size(), {});
    for (size_t s = 0; s < ids_.size(); ++s) {
      ASSIGN_OR_RETURN(RowMatrix x, rt_.Embed(ids_[s]));
      for (int b = 0; b < rt_.num_blocks(); ++b) {
        inputs_[s].push_back(x);
        rt_.RunBlock(b, x);
      }
    }
    return absl::OkStatus();
  }

  // Mean divergence with the runtime as configured now, starting from the cached inputs of
  // block `from` (blocks before it are unchanged since CacheInputs).
  absl::StatusOr<double> Score(int from) override {
    double total = 0;
    int64_t count = 0;
    for (size_t s = 0; s < ids_.size(); ++s) {
      RowMatrix x = inputs_[s][from];
      for (int b = from; b < rt_.num_blocks(); ++b) rt_.RunBlock(b, x);
      rt_.FinalNorm(x);
      const RowMatrix& t = teacher_[s];
      if (js_) {
        const RowMatrix lq = LogSoftmaxRows(rt_.Logits(x));
        for (Eigen::Index i = 0; i < lq.rows(); ++i)
          total += JsDivergence(t.row(i).data(), lq.row(i).data(), lq.cols());
      } else {
        for (Eigen::Index i = 0; i < x.rows(); ++i) {
          const double c = static_cast<double>(t.row(i).dot(x.row(i))) /
                           std::max(1e-30, static_cast<double>(t.row(i).norm()) * x.row(i).norm());
          total += std::acos(std::clamp(c, -1.0, 1.0)) / M_PI;
        }
      }
      count += x.rows();
    }
    return count ? total / count : 0.0;
  }

 private:
  std::unique_ptr<LlamaRuntime> owned_;
  LlamaRuntime& rt_;
  bool js_;
  std::vector<std::vector<RowMatrix>> inputs_;
};

// The graph re-run with the removed sublayers' residual Adds bypassed.
class OnnxRemovalScorer final : public WindowScorer {
 public:
  OnnxRemovalScorer(const Model& model, const CalibrationData& data, int64_t samples,
                    std::map<std::pair<int, bool>, std::pair<std::string, std::string>> residual_adds)
      : WindowScorer(data, samples), model_(model), adds_(std::move(residual_adds)) {}

  absl::Status CaptureTeacher() {
    ASSIGN_OR_RETURN(auto interp, onnxrt::Interpreter::Create(model_));
    teacher_.clear();
    for (const auto& ids : ids_) {
      ASSIGN_OR_RETURN(RowMatrix lp, LogProbs(*interp, ids));
      teacher_.push_back(std::move(lp));
    }
    return absl::OkStatus();
  }

  absl::Status SetRemoved(int block, bool attention, bool mlp, bool removed) override {
    for (bool attn : {true, false}) {
      if (!(attn ? attention : mlp)) continue;
      if (removed) {
        gone_.insert({block, attn});
      } else {
        gone_.erase({block, attn});
      }
    }
    return absl::OkStatus();
  }

  absl::Status Refresh() override { return absl::OkStatus(); }

  absl::StatusOr<double> Score(int) override {
    Model m = model_;  // tensors share their buffers; the graph is copied on write
    RETURN_IF_ERROR(BypassGraphValues(m, ResidualBypass(adds_, gone_)).status());
    ASSIGN_OR_RETURN(auto interp, onnxrt::Interpreter::Create(m));
    double total = 0;
    int64_t count = 0;
    for (size_t s = 0; s < ids_.size(); ++s) {
      ASSIGN_OR_RETURN(RowMatrix lq, LogProbs(*interp, ids_[s]));
      const RowMatrix& lp = teacher_[s];
      for (Eigen::Index i = 0; i < lq.rows(); ++i)
        total += JsDivergence(lp.row(i).data(), lq.row(i).data(), lq.cols());
      count += lq.rows();
    }
    return count ? total / count : 0.0;
  }

 private:
  const Model& model_;
  std::map<std::pair<int, bool>, std::pair<std::string, std::string>> adds_;
  std::set<std::pair<int, bool>> gone_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<RemovalScorer>> MakeLlmRemovalScorer(const Model& model,
                                                                    const CalibrationData& data,
                                                                    int64_t samples, RemovalMetric metric) {
  ASSIGN_OR_RETURN(std::unique_ptr<LlamaRuntime> rt, LlamaRuntime::Create(model));
  auto scorer =
      std::make_unique<LlmRemovalScorer>(std::move(rt), data, samples, metric == RemovalMetric::kJs);
  RETURN_IF_ERROR(scorer->CaptureTeacher());
  return scorer;
}

absl::StatusOr<std::unique_ptr<RemovalScorer>> MakeOnnxRemovalScorer(
    const Model& model, const CalibrationData& data, int64_t samples,
    std::map<std::pair<int, bool>, std::pair<std::string, std::string>> residual_adds) {
  auto scorer = std::make_unique<OnnxRemovalScorer>(model, data, samples, std::move(residual_adds));
  RETURN_IF_ERROR(scorer->CaptureTeacher());
  return scorer;
}

absl::StatusOr<std::unique_ptr<RemovalScorer>> MakeRemovalScorer(const Model& model, const CalibrationData& data,
                                                                 int64_t samples, RemovalMetric metric) {
  if (model.format != ModelFormat::kOnnx) return MakeLlmRemovalScorer(model, data, samples, metric);
  if (metric != RemovalMetric::kJs) {
    return InvalidArgument(
        "remove-layers-finercut on ONNX graphs scores with metric=js (the graph gives logits, not the final hidden "
        "states metric=angular needs)");
  }
  ASSIGN_OR_RETURN(const std::vector<OnnxSublayer> subs, FindOnnxSublayers(model));
  std::map<std::pair<int, bool>, std::pair<std::string, std::string>> residual_adds;
  for (const auto& sl : subs) residual_adds[{sl.block, sl.attention}] = {sl.add_output, sl.residual};
  return MakeOnnxRemovalScorer(model, data, samples, std::move(residual_adds));
}

}  // namespace compress
