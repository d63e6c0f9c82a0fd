// Structured pruning of ONNX decoder graphs: attention heads (KV groups; weight slicing plus
// the shape constants and head-repeat indices that count heads) and FFN neurons.
#include <cstring>
#include <set>

#include "calibrate/calibration.h"
#include "core/graph_ir.h"
#include "core/status.h"
#include "passes/layers/finercut_onnx.h"
#include "passes/layer_walk.h"
#include "passes/prune/prune_heads.h"
#include "passes/prune/prune_structured.h"

namespace compress {
namespace {

absl::StatusOr<std::vector<int64_t>> ReadI64(const Tensor& t) {
  if (t.dtype() != DType::kI64) return InvalidArgument("not an int64 tensor");
  ASSIGN_OR_RETURN(auto buf, t.Data());
  std::vector<int64_t> v(t.numel());
  std::memcpy(v.data(), buf->data(), v.size() * sizeof(int64_t));
  return v;
}

Tensor I64Tensor(const std::vector<int64_t>& v, const Shape& shape) {
  auto buf = std::make_shared<OwnedBuffer>(v.size() * sizeof(int64_t));
  std::memcpy(buf->mutable_data(), v.data(), v.size() * sizeof(int64_t));
  return Tensor(DType::kI64, shape, std::move(buf));
}

// One attention sublayer's projections and the constants that count its heads.
struct Attention {
  const LinearLayer *q = nullptr, *k = nullptr, *v = nullptr, *o = nullptr;
  std::map<const LinearLayer*, std::string> bias;  // 1-D initializer added to a projection's output
  std::string q_shape, kv_shape, o_shape;          // Reshape shape constants
  std::string repeat;                              // GQA head-repeat Gather indices ("" = none)
};

// The weight-bearing MatMul/Gemm nodes of a sublayer's branch, in graph order.
std::vector<std::pair<int, const LinearLayer*>> Projections(const Model& model, const GraphView& g,
                                                            const OnnxSublayer& sl) {
  std::vector<std::pair<int, const LinearLayer*>> out;
  for (int i : sl.nodes) {
    const auto& n = g.node(i);
    if ((n.op_type() != "MatMul" && n.op_type() != "Gemm") || n.input_size() < 2) continue;
    if (const LinearLayer* l = model.arch.LayerOfWeight(n.input(1)); l && l->weight == n.input(1))
      out.push_back({i, l});
  }
  return out;
}

// Stores [rows, cols] values computed on the [out, in] view `like` of `name` back in its
// layout and dtype, with a report entry.
absl::Status SetOutIn(Model& model, PassContext& ctx, const std::string& name, OutInWeight like,
                      std::vector<float> out_in, int64_t rows, int64_t cols, const std::string& note,
                      std::map<std::string, double> metrics) {
  const Tensor old = model.tensors.at(name);
  like.rows = rows, like.cols = cols;
  const Shape shape = like.transposed ? Shape{cols, rows} : Shape{rows, cols};
  ASSIGN_OR_RETURN(Tensor t, Tensor::FromF32(StoredLayout(like, out_in), shape, old.dtype()));
  ctx.report.tensors.push_back({name, old.shape(), shape, std::string(DTypeName(old.dtype())),
                                std::string(DTypeName(old.dtype())), old.storage_bytes(), t.storage_bytes(),
                                note, std::move(metrics)});
  model.tensors.Set(name, std::move(t));
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<PreservedAnalyses> PruneOnnxHeads(Model& model, PassContext& ctx, double ratio,
                                                 const std::string& score) {
  const GraphView* graph = ModelGraph(model);
  if (!graph) return InvalidArgument("not an ONNX model");
  const GraphView& g = *graph;
  ASSIGN_OR_RETURN(std::vector<OnnxSublayer> subs, FindOnnxSublayers(model));
  auto readers = [&](const std::string& value) {  // the nodes reading `value`
    std::vector<int> nodes;
    for (const GraphUse& u : g.Consumers(value)) nodes.push_back(u.node);
    return nodes;
  };
  auto is_const = [&](const std::string& n) { return model.tensors.contains(n); };
  // The first node of `nodes` reading `value` with op `op`.
  auto reader = [&](const std::string& value, const char* op, const std::set<int>& nodes) -> int {
    for (int i : readers(value))
      if (nodes.count(i) && g.node(i).op_type() == op) return i;
    return -1;
  };
  std::vector<Attention> atts;
  int64_t H = 0, KV = 0, d = 0;
  std::set<int> attention_nodes;
  for (const auto& sl : subs) {
    if (!sl.attention) continue;
    const std::set<int> nodes(sl.nodes.begin(), sl.nodes.end());
    attention_nodes.insert(sl.nodes.begin(), sl.nodes.end());
    const auto projections = Projections(model, g, sl);
    if (projections.size() != 4) {
      return Unimplemented(
          "attention sublayer ending at '{}' has {} weight-bearing MatMuls; head pruning "
          "needs q, k, v and o",
          sl.add_output, projections.size());
    }
    Attention a;
    a.o = projections.back().second;  // the last product feeds the residual Add
    // q/k/v: each output (after an optional bias Add) is reshaped to [..., heads, head_dim]
    // by a constant shape; q is the one with the most heads.
    std::vector<std::tuple<int64_t, int64_t, const LinearLayer*, std::string>>
        qkv;  // heads, dim, layer, shape
    for (size_t p = 0; p < 3; ++p) {
      const auto& [i, l] = projections[p];
      std::string out = g.node(i).output(0);
      const int add = reader(out, "Add", nodes);
      if (add >= 0) {
        const auto& an = g.node(add);
        const std::string& other = an.input(0) == out ? an.input(1) : an.input(0);
        if (is_const(other) && model.tensors.at(other).shape().size() == 1) {
          a.bias[l] = other;
          out = an.output(0);
        }
      }
      const int rs = reader(out, "Reshape", nodes);
      if (rs < 0 || g.node(rs).input_size() < 2 || !is_const(g.node(rs).input(1))) {
        return Unimplemented(
            "projection '{}' is not followed by a Reshape to a constant shape [..., heads, "
            "head_dim]; head pruning cannot find its head count",
            l->weight);
      }
      ASSIGN_OR_RETURN(std::vector<int64_t> shape, ReadI64(model.tensors.at(g.node(rs).input(1))));
      if (shape.size() < 2 || shape[shape.size() - 1] <= 0 || shape[shape.size() - 2] <= 0 ||
          shape[shape.size() - 1] * shape[shape.size() - 2] != l->out_features) {
        return Unimplemented("the Reshape after '{}' does not split its {} outputs into [heads, head_dim]",
                             l->weight, l->out_features);
      }
      qkv.emplace_back(shape[shape.size() - 2], shape.back(), l, g.node(rs).input(1));
    }
    std::stable_sort(qkv.begin(), qkv.end(),
                     [](const auto& x, const auto& y) { return std::get<0>(x) > std::get<0>(y); });
    a.q = std::get<2>(qkv[0]), a.k = std::get<2>(qkv[1]), a.v = std::get<2>(qkv[2]);
    a.q_shape = std::get<3>(qkv[0]);
    a.kv_shape = std::get<3>(qkv[1]);
    const int64_t h = std::get<0>(qkv[0]), kv = std::get<0>(qkv[1]), hd = std::get<1>(qkv[0]);
    if (std::get<0>(qkv[2]) != kv || std::get<1>(qkv[1]) != hd || std::get<1>(qkv[2]) != hd || h % kv != 0) {
      return Unimplemented(
          "attention sublayer ending at '{}': q/k/v head shapes do not form {} query heads "
          "over key/value heads",
          sl.add_output, h);
    }
    if (std::get<3>(qkv[2]) != a.kv_shape) {
      return Unimplemented("k and v of the attention sublayer ending at '{}' use different shape constants",
                           sl.add_output);
    }
    if (H == 0) H = h, KV = kv, d = hd;
    if (h != H || kv != KV || hd != d) return Unimplemented("attention sublayers differ in head counts");
    // o_proj's input: a Reshape to [..., heads * head_dim] by a constant shape.
    const int o_node = projections.back().first;
    const std::string& o_in = g.node(o_node).input(0);
    int rs = -1;
    for (int i : sl.nodes)
      if (g.node(i).op_type() == "Reshape" && g.node(i).output(0) == o_in) rs = i;
    if (rs < 0 || !is_const(g.node(rs).input(1))) {
      return Unimplemented("o_proj '{}' does not read a Reshape to a constant shape", a.o->weight);
    }
    ASSIGN_OR_RETURN(std::vector<int64_t> oshape, ReadI64(model.tensors.at(g.node(rs).input(1))));
    if (oshape.empty() || oshape.back() != H * d) {
      return Unimplemented("the Reshape before o_proj '{}' does not merge {} heads", a.o->weight, H);
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
          return Unimplemented(
              "Gather '{}' repeats key/value heads in an order head pruning does not rewrite",
              n.name().empty() ? n.output(0) : n.name());
        }
        if (!a.repeat.empty() && a.repeat != n.input(1))
          return Unimplemented("two different head-repeat index constants in one attention sublayer");
        a.repeat = n.input(1);
      }
      if (a.repeat.empty()) {
        return Unimplemented(
            "attention sublayer ending at '{}' has {} query heads over {} key/value heads but no "
            "constant head-repeat Gather; head pruning cannot rewrite how it repeats them",
            sl.add_output, H, KV);
      }
    }
    atts.push_back(std::move(a));
  }
  if (atts.empty()) return FailedPrecondition("prune-structured: no attention sublayer found in the graph");
  // Constants that count heads must only be read inside attention sublayers.
  for (const auto& a : atts) {
    for (const std::string& c : {a.q_shape, a.kv_shape, a.o_shape, a.repeat}) {
      if (c.empty()) continue;
      for (int i : readers(c)) {
        if (!attention_nodes.count(i)) {
          return Unimplemented("shape constant '{}' is also read outside the attention sublayers", c);
        }
      }
    }
  }
  std::map<std::string, std::vector<double>> o_in_sq;
  if (score == "wanda") {
    ASSIGN_OR_RETURN(o_in_sq, InputSquareSums(model, ctx));
  }
  const int64_t per = H / KV;
  const int64_t keep = std::max<int64_t>(1, std::llround((1.0 - ratio) * KV));
  std::vector<std::string> changed_values;
  for (size_t ai = 0; ai < atts.size(); ++ai) {
    const Attention& a = atts[ai];
    ctx.Progress("prune heads", static_cast<int64_t>(ai), static_cast<int64_t>(atts.size()));
    std::map<const LinearLayer*, OutInWeight> w;
    for (const LinearLayer* l : {a.q, a.k, a.v, a.o}) {
      const Tensor& t = model.tensors.at(l->weight);
      if (t.quant() || t.factors() || !IsFloating(t.dtype()))
        return FailedPrecondition("'{}': prune-structured must run before quantization/factorization",
                                  l->weight);
      ASSIGN_OR_RETURN(w[l], ReadOutIn(t, l));
    }
    const int64_t D = w[a.q].cols, O = w[a.o].rows;
    const HeadCut cut = ChooseHeads({w[a.q].w, w[a.k].w, w[a.v].w, w[a.o].w}, {H, KV, d, D, O}, keep, score,
                                    o_in_sq.count(a.o->weight) ? &o_in_sq[a.o->weight] : nullptr);
    const std::string note = fmt::format("structured: kept {} of {} {} ({}), removed [{}]", keep, KV,
                                         per > 1 ? "KV groups" : "heads", score, cut.removed);
    auto put = [&](const LinearLayer* l, std::vector<float> out_in, int64_t rows, int64_t cols) {
      return SetOutIn(model, ctx, l->weight, w[l], std::move(out_in), rows, cols, note,
                      {{"heads_removed", static_cast<double>((KV - keep) * per)}});
    };
    RETURN_IF_ERROR(put(a.q, TakeRows(w[a.q].w, D, cut.q_rows, d), keep * per * d, D));
    RETURN_IF_ERROR(put(a.k, TakeRows(w[a.k].w, D, cut.kv_rows, d), keep * d, D));
    RETURN_IF_ERROR(put(a.v, TakeRows(w[a.v].w, D, cut.kv_rows, d), keep * d, D));
    RETURN_IF_ERROR(put(a.o, TakeCols(w[a.o].w, O, H * d, cut.q_rows, d), O, keep * per * d));
    for (const auto& [l, name] : a.bias) {
      const Tensor old = model.tensors.at(name);
      ASSIGN_OR_RETURN(std::vector<float> b, old.ToF32());
      const auto& rows = l == a.q ? cut.q_rows : cut.kv_rows;
      const int64_t n = static_cast<int64_t>(rows.size()) * d;
      ASSIGN_OR_RETURN(Tensor t, Tensor::FromF32(TakeRows(b, 1, rows, d), {n}, old.dtype()));
      model.tensors.Set(name, std::move(t));
    }
  }
  // Head counts in the shape constants and the repeat indices (shared constants once).
  std::set<std::string> done;
  auto rewrite_dim = [&](const std::string& name, int64_t from, int64_t to,
                         bool second_last) -> absl::Status {
    if (!done.insert(name).second) return absl::OkStatus();
    const Tensor old = model.tensors.at(name);
    ASSIGN_OR_RETURN(std::vector<int64_t> v, ReadI64(old));
    int64_t& x = v[v.size() - (second_last ? 2 : 1)];
    if (x != from) return Internal("shape constant '{}' changed under head pruning", name);
    x = to;
    model.tensors.Set(name, I64Tensor(v, old.shape()));
    return absl::OkStatus();
  };
  for (const auto& a : atts) {
    RETURN_IF_ERROR(rewrite_dim(a.q_shape, H, keep * per, true));
    if (a.kv_shape != a.q_shape) RETURN_IF_ERROR(rewrite_dim(a.kv_shape, KV, keep, true));
    RETURN_IF_ERROR(rewrite_dim(a.o_shape, H * d, keep * per * d, false));
    if (!a.repeat.empty() && done.insert(a.repeat).second) {
      std::vector<int64_t> idx(keep * per);
      for (int64_t j = 0; j < keep * per; ++j) idx[j] = j / per;
      model.tensors.Set(a.repeat, I64Tensor(idx, {keep * per}));
    }
  }
  // Shapes inside the attention sublayers changed: drop their value_info hints.
  for (int i : attention_nodes)
    for (const auto& o : g.node(i).outputs()) changed_values.push_back(o);
  RETURN_IF_ERROR(DropGraphValueInfo(model, changed_values));
  ctx.report.stats["attention_heads_before"] = static_cast<double>(H);
  ctx.report.stats["attention_heads_after"] = static_cast<double>(keep * per);
  ctx.report.stats["kv_heads_before"] = static_cast<double>(KV);
  ctx.report.stats["kv_heads_after"] = static_cast<double>(keep);
  ctx.report.stats["attention_sublayers"] = static_cast<double>(atts.size());
  return PreservedAnalyses::None();
}

absl::StatusOr<PreservedAnalyses> PruneOnnxNeurons(Model& model, PassContext& ctx, double ratio,
                                                   const std::string& score) {
  const GraphView* graph = ModelGraph(model);
  if (!graph) return InvalidArgument("not an ONNX model");
  const GraphView& g = *graph;
  ASSIGN_OR_RETURN(std::vector<OnnxSublayer> subs, FindOnnxSublayers(model));
  static const std::set<std::string> kElementwise = {
      "Sigmoid", "Mul",      "Add",       "Sub",         "Div",       "Tanh", "Relu", "Erf",
      "Gelu",    "FastGelu", "Softplus",  "Neg",         "Pow",       "Sqrt", "Exp",  "Identity",
      "Cast",    "Clip",     "LeakyRelu", "HardSigmoid", "HardSwish", "Mish", "Elu",  "Selu"};
  struct Ffn {
    const LinearLayer *gate, *up, *down;
    std::vector<std::string> consts;  // per-neuron constants of the nodes between them
  };
  std::vector<Ffn> ffns;
  int64_t inter = 0, hidden = 0;
  std::vector<std::string> changed_values;
  for (const auto& sl : subs) {
    if (sl.attention) continue;
    const auto projections = Projections(model, g, sl);
    if (projections.size() != 3) {
      return Unimplemented(
          "FFN sublayer ending at '{}' has {} weight-bearing MatMuls; neuron pruning needs "
          "gate, up and down",
          sl.add_output, projections.size());
    }
    Ffn f{projections[0].second, projections[1].second, projections[2].second, {}};
    // Shapes from the layer table ([out, in] whatever the stored layout); weights are read once, below.
    const LinearLayer &gl = *f.gate, &ul = *f.up, &dl = *f.down;
    if (gl.out_features != ul.out_features || gl.out_features != dl.in_features ||
        gl.in_features != ul.in_features) {
      return Unimplemented("FFN sublayer ending at '{}': gate/up/down shapes do not chain", sl.add_output);
    }
    if (inter == 0) inter = gl.out_features, hidden = gl.in_features;
    if (gl.out_features != inter) return Unimplemented("FFN sublayers differ in intermediate size");
    // The nodes between gate/up and down run per neuron: elementwise ops whose constants are
    // scalars or one value per neuron.
    std::set<std::string> reached{g.node(projections[0].first).output(0),
                                  g.node(projections[1].first).output(0)};
    const int down_node = projections[2].first;
    for (int i : sl.nodes) {
      if (i <= std::min(projections[0].first, projections[1].first) || i >= down_node) continue;
      const auto& n = g.node(i);
      bool from = false;
      for (const auto& in : n.inputs()) from = from || reached.count(in);
      if (!from) continue;
      if (!kElementwise.count(n.op_type())) {
        return Unimplemented(
            "node '{}' ({}) between the FFN projections is not elementwise; neuron pruning "
            "does not rewrite it",
            n.name().empty() ? n.output(0) : n.name(), n.op_type());
      }
      for (const auto& in : n.inputs()) {
        if (!model.tensors.contains(in)) continue;
        const int64_t numel = model.tensors.at(in).numel();
        if (numel == 1) continue;
        if (numel != inter || model.tensors.at(in).shape().back() != inter) {
          return Unimplemented("constant '{}' of node '{}' is neither a scalar nor one value per neuron", in,
                               n.name().empty() ? n.output(0) : n.name());
        }
        f.consts.push_back(in);
      }
      for (const auto& o : n.outputs()) reached.insert(o), changed_values.push_back(o);
    }
    if (!reached.count(g.node(down_node).input(0))) {
      return Unimplemented("down projection '{}' does not read the gate/up product", f.down->weight);
    }
    for (int i : {projections[0].first, projections[1].first}) changed_values.push_back(g.node(i).output(0));
    ffns.push_back(std::move(f));
  }
  if (ffns.empty()) return FailedPrecondition("prune-structured: no FFN sublayer found in the graph");
  std::map<std::string, std::vector<double>> act_norm;  // down input norms (wanda)
  if (score == "wanda") {
    ASSIGN_OR_RETURN(act_norm, InputSquareSums(model, ctx));
    for (auto& [name, v] : act_norm) v = Sqrt(std::move(v));
  }
  const int64_t keep = std::max<int64_t>(1, std::llround((1.0 - ratio) * inter));
  std::set<std::string> sliced;
  for (size_t fi = 0; fi < ffns.size(); ++fi) {
    const Ffn& f = ffns[fi];
    ctx.Progress("prune-structured", static_cast<int64_t>(fi), static_cast<int64_t>(ffns.size()));
    std::map<const LinearLayer*, OutInWeight> w;
    for (const LinearLayer* l : {f.gate, f.up, f.down}) {
      const Tensor& t = model.tensors.at(l->weight);
      if (t.quant() || t.factors() || !IsFloating(t.dtype()))
        return FailedPrecondition("'{}': prune-structured must run before quantization/factorization",
                                  l->weight);
      ASSIGN_OR_RETURN(w[l], ReadOutIn(t, l));
    }
    const std::vector<int64_t> kept =
        ChooseNeurons(w[f.gate].w, w[f.up].w, w[f.down].w, inter, hidden, keep, score,
                      act_norm.count(f.down->weight) ? &act_norm[f.down->weight] : nullptr);
    const std::string note = fmt::format("structured: kept {} of {} neurons ({})", keep, inter, score);
    auto put = [&](const LinearLayer* l, std::vector<float> out_in, int64_t rows, int64_t cols) {
      return SetOutIn(model, ctx, l->weight, w[l], std::move(out_in), rows, cols, note,
                      {{"neurons_removed", static_cast<double>(inter - keep)}});
    };
    RETURN_IF_ERROR(put(f.gate, TakeRows(w[f.gate].w, hidden, kept, 1), keep, hidden));
    RETURN_IF_ERROR(put(f.up, TakeRows(w[f.up].w, hidden, kept, 1), keep, hidden));
    RETURN_IF_ERROR(put(f.down, TakeCols(w[f.down].w, hidden, inter, kept, 1), hidden, keep));
    for (const auto& c : f.consts) {
      if (!sliced.insert(c).second) {
        return Unimplemented("per-neuron constant '{}' is shared by several FFN sublayers", c);
      }
      const Tensor old = model.tensors.at(c);
      ASSIGN_OR_RETURN(std::vector<float> v, old.ToF32());
      Shape shape = old.shape();
      shape.back() = keep;
      ASSIGN_OR_RETURN(Tensor t, Tensor::FromF32(TakeRows(v, 1, kept, 1), shape, old.dtype()));
      model.tensors.Set(c, std::move(t));
    }
  }
  RETURN_IF_ERROR(DropGraphValueInfo(model, changed_values));
  ctx.report.stats["intermediate_size_before"] = static_cast<double>(inter);
  ctx.report.stats["intermediate_size_after"] = static_cast<double>(keep);
  ctx.report.stats["ffn_sublayers"] = static_cast<double>(ffns.size());
  return PreservedAnalyses::None();
}

}  // namespace compress
