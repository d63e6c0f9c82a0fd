// FinerCut on ONNX graphs: residual sublayers and interpreter-based removal scores.
#include "passes/layers/finercut_onnx.h"

#include <set>

#include "core/graph_ir.h"
#include "core/status.h"

namespace compress {

absl::StatusOr<std::vector<OnnxSublayer>> FindOnnxSublayers(const Model& model) {
  const GraphView* graph = ModelGraph(model);
  if (!graph) return InvalidArgument("not an ONNX model");
  const GraphView& g = *graph;
  const int n = g.node_size();
  auto is_weight_node = [&](const GraphNode& node) {
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
      const int p = g.Producer(v);
      if (p < 0 || p >= end || !up.insert(p).second) continue;
      for (const auto& in : g.node(p).inputs()) stack.push_back(in);
    }
    std::set<std::string> reached{r};
    std::vector<int> nodes;
    for (int i = g.Producer(r) + 1; i < end; ++i) {
      const auto& node = g.node(i);
      bool from_r = false;
      for (const auto& in : node.inputs()) from_r = from_r || reached.count(in);
      if (!from_r) continue;
      for (const auto& o : node.outputs()) reached.insert(o);
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
      if (g.Producer(x) < 0 || model.tensors.contains(r)) continue;  // r is a computed value
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

}  // namespace compress
