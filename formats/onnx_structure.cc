// The transformer structure of ONNX decoder graphs (see the header).
#include "formats/onnx_structure.h"

#include <algorithm>
#include <cstring>
#include <set>
#include <tuple>

#include "core/checked_math.h"
#include "core/status.h"

namespace compress {
namespace {

bool IsWeightNode(const GraphNode& node, const Model& model) {
  if ((node.op_type() != "MatMul" && node.op_type() != "Gemm") || node.input_size() < 2) return false;
  auto it = model.arch.roles.find(node.input(1));
  return it != model.arch.roles.end() && it->second == TensorRole::kLinearWeight;
}

// Nodes on paths from value r to value x, both produced before node `end`.
std::vector<int> Branch(const GraphView& g, const std::string& r, const std::string& x, int end) {
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
}

std::string NodeLabel(const GraphNode& n) { return n.name().empty() ? n.output(0) : n.name(); }

}  // namespace

absl::StatusOr<std::vector<int64_t>> ReadI64(const Tensor& t) {
  if (t.dtype() != DType::kI64) return InvalidArgument("not an int64 tensor");
  ASSIGN_OR_RETURN(auto buf, t.Data());
  std::vector<int64_t> v(t.numel());
  std::memcpy(v.data(), buf->data(), v.size() * sizeof(int64_t));
  return v;
}

absl::StatusOr<std::vector<OnnxSublayer>> FindOnnxSublayers(const GraphView& g, const Model& model) {
  struct Candidate {
    OnnxSublayer s;
    int node;
  };
  std::vector<Candidate> cands;
  for (int i = 0; i < g.node_size(); ++i) {
    const auto& node = g.node(i);
    if (node.op_type() != "Add" || node.input_size() != 2 || node.output_size() != 1) continue;
    for (int side = 0; side < 2; ++side) {
      const std::string &r = node.input(side), &x = node.input(1 - side);
      if (g.Producer(x) < 0 || model.tensors.contains(r)) continue;  // r is a computed value
      const std::vector<int> nodes = Branch(g, r, x, i);
      if (nodes.empty()) continue;
      OnnxSublayer s{node.output(0), r, false, 0, 0, nodes};
      bool weighted = false;
      for (int b : nodes) {
        const auto& bn = g.node(b);
        s.attention = s.attention || bn.op_type() == "Softmax";
        if (IsWeightNode(bn, model)) {
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
    for (auto it = by_residual.find(chain.back().add_output); it != by_residual.end() && chain.size() <= cands.size();
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

absl::StatusOr<std::vector<OnnxSublayer>> FindOnnxSublayers(const Model& model) {
  const GraphView* g = ModelGraph(model);
  if (!g) return InvalidArgument("not an ONNX model");
  return FindOnnxSublayers(*g, model);
}

std::vector<OnnxProjection> OnnxSublayerProjections(const GraphView& g, const Model& model, const OnnxSublayer& sl) {
  std::vector<OnnxProjection> out;
  for (int i : sl.nodes) {
    const auto& n = g.node(i);
    if (!IsWeightNode(n, model)) continue;
    const Tensor& w = model.tensors.at(n.input(1));
    if (w.shape().size() != 2) continue;
    OnnxProjection p;
    p.node = i;
    p.weight = n.input(1);
    p.out_axis = n.op_type() == "Gemm" && n.IntAttribute("transB", 0) != 0 ? 0 : 1;
    // Sizes as the architecture view has them: during a structural edit the weights are
    // already cut while the view (and the constants the editor rewrites) are not.
    const LinearLayer* l = model.arch.LayerOfWeight(p.weight);
    p.out_features = l ? l->out_features : w.shape()[p.out_axis];
    p.in_features = l ? l->in_features : w.shape()[1 - p.out_axis];
    if (n.op_type() == "Gemm" && n.input_size() > 2 && model.tensors.contains(n.input(2))) p.bias = n.input(2);
    out.push_back(std::move(p));
  }
  return out;
}

absl::StatusOr<OnnxAttention> DescribeOnnxAttention(const GraphView& g, const Model& model, const OnnxSublayer& sl) {
  const std::set<int> nodes(sl.nodes.begin(), sl.nodes.end());
  auto is_const = [&](const std::string& n) { return model.tensors.contains(n); };
  auto reader = [&](const std::string& value, const char* op) -> int {  // first reader in the branch
    for (const GraphUse& u : g.Consumers(value))
      if (nodes.count(u.node) && g.node(u.node).op_type() == op) return u.node;
    return -1;
  };
  std::vector<OnnxProjection> proj = OnnxSublayerProjections(g, model, sl);
  if (proj.size() != 4) {
    return Unimplemented("attention sublayer ending at '{}' has {} weight-bearing MatMuls; head pruning needs q, k, v and o",
                         sl.add_output, proj.size());
  }
  OnnxAttention a;
  a.sublayer = sl;
  a.o = proj.back();  // the last product feeds the residual Add
  // q/k/v: each output (after an optional bias Add) is reshaped to [..., heads, head_dim] by a
  // constant shape; q is the one with the most heads.
  std::vector<std::tuple<int64_t, int64_t, OnnxProjection, std::string>> qkv;  // heads, dim, product, shape
  for (size_t p = 0; p < 3; ++p) {
    OnnxProjection l = proj[p];
    std::string out = g.node(l.node).output(0);
    if (const int add = reader(out, "Add"); add >= 0 && l.bias.empty()) {
      const auto& an = g.node(add);
      const std::string& other = an.input(0) == out ? an.input(1) : an.input(0);
      if (is_const(other) && model.tensors.at(other).shape().size() == 1) {
        l.bias = other;
        out = an.output(0);
      }
    }
    const int rs = reader(out, "Reshape");
    if (rs < 0 || g.node(rs).input_size() < 2 || !is_const(g.node(rs).input(1))) {
      return Unimplemented(
          "projection '{}' is not followed by a Reshape to a constant shape [..., heads, head_dim]; head pruning "
          "cannot find its head count",
          l.weight);
    }
    ASSIGN_OR_RETURN(std::vector<int64_t> shape, ReadI64(model.tensors.at(g.node(rs).input(1))));
    const size_t n = shape.size();
    if (n < 2 || shape[n - 1] <= 0 || shape[n - 2] <= 0 ||
        CheckedMul(shape[n - 1], shape[n - 2]) != l.out_features) {
      return Unimplemented("the Reshape after '{}' does not split its {} outputs into [heads, head_dim]", l.weight,
                           l.out_features);
    }
    qkv.emplace_back(shape[n - 2], shape[n - 1], std::move(l), g.node(rs).input(1));
  }
  std::stable_sort(qkv.begin(), qkv.end(), [](const auto& x, const auto& y) { return std::get<0>(x) > std::get<0>(y); });
  a.q = std::get<2>(qkv[0]), a.k = std::get<2>(qkv[1]), a.v = std::get<2>(qkv[2]);
  a.q_shape = std::get<3>(qkv[0]);
  a.kv_shape = std::get<3>(qkv[1]);
  a.heads = std::get<0>(qkv[0]), a.kv_heads = std::get<0>(qkv[1]), a.head_dim = std::get<1>(qkv[0]);
  const int64_t H = a.heads, KV = a.kv_heads, d = a.head_dim;
  if (std::get<0>(qkv[2]) != KV || std::get<1>(qkv[1]) != d || std::get<1>(qkv[2]) != d || H % KV != 0) {
    return Unimplemented("attention sublayer ending at '{}': q/k/v head shapes do not form {} query heads over key/value heads",
                         sl.add_output, H);
  }
  if (std::get<3>(qkv[2]) != a.kv_shape) {
    return Unimplemented("k and v of the attention sublayer ending at '{}' use different shape constants", sl.add_output);
  }
  // o's input: a Reshape to [..., heads * head_dim] by a constant shape.
  const std::string& o_in = g.node(a.o.node).input(0);
  int rs = -1;
  for (int i : sl.nodes)
    if (g.node(i).op_type() == "Reshape" && g.node(i).output(0) == o_in) rs = i;
  if (rs < 0 || !is_const(g.node(rs).input(1))) {
    return Unimplemented("o_proj '{}' does not read a Reshape to a constant shape", a.o.weight);
  }
  ASSIGN_OR_RETURN(std::vector<int64_t> oshape, ReadI64(model.tensors.at(g.node(rs).input(1))));
  if (oshape.empty() || oshape.back() != H * d) {
    return Unimplemented("the Reshape before o_proj '{}' does not merge {} heads", a.o.weight, H);
  }
  a.o_shape = g.node(rs).input(1);
  // GQA: a Gather with constant indices [h / (H/KV) for h < H] repeats the key/value heads.
  if (H != KV) {
    for (int i : sl.nodes) {
      const auto& n = g.node(i);
      if (n.op_type() != "Gather" || n.input_size() < 2 || !is_const(n.input(1))) continue;
      auto idx = ReadI64(model.tensors.at(n.input(1)));
      if (!idx.ok() || static_cast<int64_t>(idx->size()) != H) continue;
      bool repeat = true;
      for (int64_t j = 0; j < H; ++j) repeat = repeat && (*idx)[j] == j / (H / KV);
      if (!repeat) {
        return Unimplemented("Gather '{}' repeats key/value heads in an order head pruning does not rewrite",
                             NodeLabel(n));
      }
      if (!a.repeat.empty() && a.repeat != n.input(1))
        return Unimplemented("two different head-repeat index constants in one attention sublayer");
      a.repeat = n.input(1);
    }
    if (a.repeat.empty()) {
      return Unimplemented(
          "attention sublayer ending at '{}' has {} query heads over {} key/value heads but no constant head-repeat "
          "Gather; head pruning cannot rewrite how it repeats them",
          sl.add_output, H, KV);
    }
  }
  return a;
}

absl::StatusOr<OnnxFfn> DescribeOnnxFfn(const GraphView& g, const Model& model, const OnnxSublayer& sl) {
  static const std::set<std::string> kElementwise = {
      "Sigmoid", "Mul",  "Add",  "Sub",  "Div",      "Tanh", "Relu", "Erf",       "Gelu",        "FastGelu",  "Softplus", "Neg",
      "Pow",     "Sqrt", "Exp",  "Identity", "Cast", "Clip", "LeakyRelu", "HardSigmoid", "HardSwish", "Mish", "Elu", "Selu"};
  const std::vector<OnnxProjection> proj = OnnxSublayerProjections(g, model, sl);
  if (proj.size() != 3) {
    return Unimplemented("FFN sublayer ending at '{}' has {} weight-bearing MatMuls; neuron pruning needs gate, up and down",
                         sl.add_output, proj.size());
  }
  OnnxFfn f{sl, proj[0], proj[1], proj[2], 0, 0, {}};
  if (f.gate.out_features != f.up.out_features || f.gate.out_features != f.down.in_features ||
      f.gate.in_features != f.up.in_features) {
    return Unimplemented("FFN sublayer ending at '{}': gate/up/down shapes do not chain", sl.add_output);
  }
  f.width = f.gate.out_features, f.hidden = f.gate.in_features;
  // The nodes between gate/up and down run per neuron: elementwise ops whose constants are
  // scalars or one value per neuron.
  std::set<std::string> reached{g.node(f.gate.node).output(0), g.node(f.up.node).output(0)};
  for (int i : sl.nodes) {
    if (i <= std::min(f.gate.node, f.up.node) || i >= f.down.node) continue;
    const auto& n = g.node(i);
    bool from = false;
    for (const auto& in : n.inputs()) from = from || reached.count(in);
    if (!from) continue;
    if (!kElementwise.count(n.op_type())) {
      return Unimplemented("node '{}' ({}) between the FFN projections is not elementwise; neuron pruning does not rewrite it",
                           NodeLabel(n), n.op_type());
    }
    for (const auto& in : n.inputs()) {
      if (!model.tensors.contains(in)) continue;
      const Tensor& c = model.tensors.at(in);
      if (c.numel() == 1) continue;
      if (c.numel() != f.width || c.shape().back() != f.width) {
        return Unimplemented("constant '{}' of node '{}' is neither a scalar nor one value per neuron", in, NodeLabel(n));
      }
      f.per_neuron.push_back(in);
    }
    for (const auto& o : n.outputs()) reached.insert(o);
  }
  if (!reached.count(g.node(f.down.node).input(0))) {
    return Unimplemented("down projection '{}' does not read the gate/up product", f.down.weight);
  }
  return f;
}

absl::StatusOr<std::vector<OnnxAttention>> DescribeOnnxAttentions(const GraphView& g, const Model& model) {
  ASSIGN_OR_RETURN(const std::vector<OnnxSublayer> subs, FindOnnxSublayers(g, model));
  std::vector<OnnxAttention> out;
  std::set<int> nodes;  // every attention sublayer's
  for (const OnnxSublayer& sl : subs) {
    if (!sl.attention) continue;
    ASSIGN_OR_RETURN(OnnxAttention a, DescribeOnnxAttention(g, model, sl));
    if (!out.empty() && (a.heads != out[0].heads || a.kv_heads != out[0].kv_heads || a.head_dim != out[0].head_dim))
      return Unimplemented("attention sublayers differ in head counts");
    nodes.insert(sl.nodes.begin(), sl.nodes.end());
    out.push_back(std::move(a));
  }
  if (out.empty()) return FailedPrecondition("no attention sublayer found in the graph");
  // Constants that count heads must only be read inside attention sublayers.
  for (const OnnxAttention& a : out) {
    for (const std::string& c : {a.q_shape, a.kv_shape, a.o_shape, a.repeat}) {
      if (c.empty()) continue;
      for (const GraphUse& u : g.Consumers(c))
        if (!nodes.count(u.node)) return Unimplemented("shape constant '{}' is also read outside the attention sublayers", c);
    }
  }
  return out;
}

absl::StatusOr<std::vector<OnnxFfn>> DescribeOnnxFfns(const GraphView& g, const Model& model) {
  ASSIGN_OR_RETURN(const std::vector<OnnxSublayer> subs, FindOnnxSublayers(g, model));
  std::vector<OnnxFfn> out;
  std::set<std::string> consts;
  for (const OnnxSublayer& sl : subs) {
    if (sl.attention) continue;
    ASSIGN_OR_RETURN(OnnxFfn f, DescribeOnnxFfn(g, model, sl));
    if (!out.empty() && f.width != out[0].width) return Unimplemented("FFN sublayers differ in intermediate size");
    for (const std::string& c : f.per_neuron)
      if (!consts.insert(c).second) return Unimplemented("per-neuron constant '{}' is shared by several FFN sublayers", c);
    out.push_back(std::move(f));
  }
  if (out.empty()) return FailedPrecondition("no FFN sublayer found in the graph");
  return out;
}

void BuildOnnxBlocks(const GraphView& g, Model& model) {
  auto subs = FindOnnxSublayers(g, model);
  if (!subs.ok()) return;
  Architecture& a = model.arch;
  std::map<std::string, LinearLayer> by_weight;  // the products found by BuildOnnxArchitecture
  for (const LinearLayer& l : a.other_linears) by_weight.emplace(l.weight, l);
  std::set<std::string> in_blocks;
  bool uniform = true;  // every attention has the same heads, every FFN the same width
  for (const OnnxSublayer& sl : *subs) {
    if (a.blocks.empty() || a.blocks.back().index != sl.block) a.blocks.push_back(Block{.index = sl.block});
    Block& b = a.blocks.back();
    std::vector<LinearLayer>& list = sl.attention ? b.attention : b.mlp;
    std::map<std::string, std::pair<std::string, std::string>> kinds;  // weight -> (kind, bias)
    if (sl.attention) {
      if (auto at = DescribeOnnxAttention(g, model, sl); at.ok()) {
        for (const auto& [p, kind] : {std::pair{&at->q, "q_proj"}, {&at->k, "k_proj"}, {&at->v, "v_proj"}, {&at->o, "o_proj"}})
          kinds[p->weight] = {kind, p->bias};
        if (a.num_heads == 0) a.num_heads = at->heads, a.num_kv_heads = at->kv_heads, a.head_dim = at->head_dim;
        uniform = uniform && a.num_heads == at->heads && a.num_kv_heads == at->kv_heads && a.head_dim == at->head_dim;
      }
    } else if (auto f = DescribeOnnxFfn(g, model, sl); f.ok()) {
      for (const auto& [p, kind] : {std::pair{&f->gate, "gate_proj"}, {&f->up, "up_proj"}, {&f->down, "down_proj"}})
        kinds[p->weight] = {kind, p->bias};
      if (a.intermediate_size == 0) a.intermediate_size = f->width, a.hidden_size = f->hidden;
      uniform = uniform && a.intermediate_size == f->width;
    }
    for (const OnnxProjection& p : OnnxSublayerProjections(g, model, sl)) {
      auto it = by_weight.find(p.weight);
      if (it == by_weight.end() || !in_blocks.insert(p.weight).second) continue;
      LinearLayer l = it->second;
      if (auto k = kinds.find(p.weight); k != kinds.end()) {
        l.kind = k->second.first;
        if (l.bias.empty() && !k->second.second.empty()) {
          l.bias = k->second.second;
          a.roles[l.bias] = TensorRole::kBias;
        }
      }
      list.push_back(std::move(l));
    }
  }
  if (!uniform) a.num_heads = a.num_kv_heads = a.head_dim = a.intermediate_size = 0;
  std::erase_if(a.other_linears, [&](const LinearLayer& l) { return in_blocks.count(l.weight) > 0; });
}

}  // namespace compress
