// FinerCut on ONNX graphs: residual sublayers and interpreter-based removal scores.
#include "passes/layers/finercut_onnx.h"

#include <cmath>
#include <set>

#include "core/status.h"
#include "formats/onnx_io.h"
#include "onnx/onnx_pb.h"
#include "runtime/onnx/interpreter.h"

namespace compress {

absl::StatusOr<std::vector<OnnxSublayer>> FindOnnxSublayers(const Model& model) {
  const onnx::ModelProto* proto = OnnxModelProto(model);
  if (!proto) return InvalidArgument("not an ONNX model");
  const onnx::GraphProto& g = proto->graph();
  const int n = g.node_size();
  std::map<std::string, int> producer;
  for (int i = 0; i < n; ++i)
    for (const auto& o : g.node(i).output()) producer[o] = i;
  auto is_weight_node = [&](const onnx::NodeProto& node) {
    if ((node.op_type() != "MatMul" && node.op_type() != "Gemm") || node.input_size() < 2) return false;
    auto it = model.arch.roles.find(node.input(1));
    return it != model.arch.roles.end() && it->second == TensorRole::kLinearWeight;
  };
  // Nodes on paths from value r to value x, both produced before node `end`.
  auto branch = [&](const std::string& r, const std::string& x, int end) {
    std::set<int> up;  // ancestors of x
    std::vector<std::string> stack{x};
    while (!stack.empty()) {
      const std::string v = stack.back();
      stack.pop_back();
      auto it = producer.find(v);
      if (it == producer.end() || it->second >= end || !up.insert(it->second).second) continue;
      for (const auto& in : g.node(it->second).input()) stack.push_back(in);
    }
    std::set<std::string> reached{r};
    std::vector<int> nodes;
    const auto pr = producer.find(r);
    for (int i = pr == producer.end() ? 0 : pr->second + 1; i < end; ++i) {
      const auto& node = g.node(i);
      bool from_r = false;
      for (const auto& in : node.input()) from_r = from_r || reached.count(in);
      if (!from_r) continue;
      for (const auto& o : node.output()) reached.insert(o);
      if (up.count(i)) nodes.push_back(i);
    }
    return nodes;
  };
  struct Candidate {
    OnnxSublayer s;
    int node;
  };
  std::vector<Candidate> cands;
  for (int i = 0; i < n; ++i) {
    const auto& node = g.node(i);
    if (node.op_type() != "Add" || node.input_size() != 2 || node.output_size() != 1) continue;
    for (int side = 0; side < 2; ++side) {
      const std::string &r = node.input(side), &x = node.input(1 - side);
      if (!producer.count(x) || model.tensors.contains(r)) continue;  // r is a computed value
      const std::vector<int> nodes = branch(r, x, i);
      if (nodes.empty()) continue;
      OnnxSublayer s{node.output(0), r, false, 0, 0, nodes};
      bool weighted = false;
      for (int b : nodes) {
        const auto& bn = g.node(b);
        s.attention = s.attention || bn.op_type() == "Softmax";
        if (is_weight_node(bn)) {
          weighted = true;
          s.params += model.tensors.at(bn.input(1)).numel();
          if (bn.input_size() > 2 && model.tensors.contains(bn.input(2)))
            s.params += model.tensors.at(bn.input(2)).numel();
        }
      }
      if (weighted) {
        cands.push_back({s, i});
        break;
      }
    }
  }
  // The longest chain of residual Adds, each reading the previous one's output (other
  // candidates, such as an attention mask added to scores, are not part of it).
  std::map<std::string, size_t> by_residual;
  for (size_t c = 0; c < cands.size(); ++c) by_residual.emplace(cands[c].s.residual, c);
  std::vector<OnnxSublayer> best;
  for (size_t c = 0; c < cands.size(); ++c) {
    std::vector<OnnxSublayer> chain{cands[c].s};
    for (auto it = by_residual.find(chain.back().add_output);
         it != by_residual.end() && chain.size() <= cands.size();
         it = by_residual.find(chain.back().add_output))
      chain.push_back(cands[it->second].s);
    if (chain.size() > best.size()) best = std::move(chain);
  }
  if (best.size() < 2) {
    return FailedPrecondition(
        "no residual chain found: sublayer removal and head/neuron pruning of ONNX graphs need a decoder "
        "whose sublayers add into a residual stream (y = r + f(r) with weight-bearing MatMuls in f)");
  }
  int block = -1;
  bool ffn_seen = true;
  for (auto& s : best) {
    if (s.attention || ffn_seen) ++block, ffn_seen = false;
    if (!s.attention) ffn_seen = true;
    s.block = block;
  }
  return best;
}

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

namespace {

// The graph's logits for one window as rows of log-probabilities.
absl::StatusOr<RowMatrix> LogProbs(const onnxrt::Interpreter& interp, const std::vector<int32_t>& ids) {
  ASSIGN_OR_RETURN(auto feeds, onnxrt::TokenFeeds(interp, ids));
  ASSIGN_OR_RETURN(auto outs, interp.Run(feeds));
  const std::string& name = interp.outputs().at(0).name;
  ASSIGN_OR_RETURN(onnxrt::Value logits, onnxrt::CastValue(outs.at(name), DType::kF32));
  const int64_t T = static_cast<int64_t>(ids.size());
  if (logits.rank() < 2 || logits.shape[logits.rank() - 2] != T || logits.numel() % T) {
    return InvalidArgument("ONNX output '{}' has shape {}; FinerCut expects logits [1, {}, vocab]", name,
                           ShapeString(logits.shape), T);
  }
  const int64_t V = logits.numel() / T;
  return LogSoftmaxRows(Eigen::Map<const RowMatrix>(logits.data<float>(), T, V));
}

}  // namespace

OnnxRemovalScorer::OnnxRemovalScorer(const Model& model, const CalibrationData& data, int64_t samples)
    : model_(model) {
  for (int64_t s = 0; s < std::min<int64_t>(samples, data.windows.size()); ++s)
    ids_.push_back(data.windows[s]);
}

int64_t OnnxRemovalScorer::tokens() const {
  int64_t n = 0;
  for (const auto& w : ids_) n += static_cast<int64_t>(w.size());
  return n;
}

absl::Status OnnxRemovalScorer::CaptureTeacher() {
  ASSIGN_OR_RETURN(auto interp, onnxrt::Interpreter::Create(model_));
  teacher_.clear();
  for (const auto& ids : ids_) {
    ASSIGN_OR_RETURN(RowMatrix lp, LogProbs(*interp, ids));
    teacher_.push_back(std::move(lp));
  }
  return absl::OkStatus();
}

absl::StatusOr<double> OnnxRemovalScorer::Score(const std::map<std::string, std::string>& bypass) const {
  Model m = model_;  // tensors share their buffers; the graph is copied on write
  RETURN_IF_ERROR(BypassOnnxValues(m, bypass).status());
  return Divergence(m);
}

absl::StatusOr<double> OnnxRemovalScorer::Divergence(const Model& m) const {
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

}  // namespace compress
