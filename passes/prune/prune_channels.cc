#include "passes/prune/prune_channels.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>
#include <set>

#include "calibrate/calibration.h"
#include "calibrate/stats_analysis.h"
#include "core/graph_ir.h"

namespace compress {
namespace {

const std::set<std::string> kUnary = {"Relu",     "LeakyRelu", "Sigmoid", "Tanh",     "HardSigmoid", "HardSwish",
                                      "Elu",      "Selu",      "Softplus", "Identity", "Gelu",        "Clip",
                                      "Softsign", "Celu",      "PRelu"};

struct PerChannel {  // a 1-channel-per-entry tensor on the chain and the axis holding channels
  std::string name;
  int axis = 0;
};

struct Chain {
  std::string producer_node, consumer_node;
  std::string w_prod, w_cons;
  int prod_axis = 0, cons_axis = 1;  // channel axis of each weight
  int64_t channels = 0;
  int64_t cons_kernel = 1;  // consumer weight elements per input channel per output (Conv kernel size)
  std::vector<PerChannel> params;  // producer bias, BN parameters, per-channel Add/Mul constants
  std::vector<std::string> values;  // chain values (value_info to drop)
  std::vector<std::string> depthwise;  // depthwise Conv nodes on the chain (their group shrinks)
};

// The axis of `t` holding `m` channels when every other dim is 1 (or -1).
int ChannelAxis(const Tensor& t, int64_t m) {
  int axis = -1;
  for (size_t d = 0; d < t.shape().size(); ++d) {
    if (t.shape()[d] == m && axis < 0) {
      axis = static_cast<int>(d);
    } else if (t.shape()[d] != 1) {
      return -1;
    }
  }
  return axis;
}

class ChainFinder {
 public:
  ChainFinder(const Model& m, const GraphView& g) : m_(m), g_(g) {}

  // Why node i starts no chain, or the chain.
  std::variant<std::string, Chain> From(int i) const {
    const auto& p = g_.node(i);
    const bool conv = p.op_type() == "Conv";
    if (!((conv && p.IntAttribute("group", 1) == 1) || p.op_type() == "MatMul") || !p.domain().empty()) return std::string();
    if (p.input_size() < 2 || !Init(p.input(1)) || OnlyReader(p.input(1)) < 0)
      return "weight is not an initializer read only by this node";
    const Tensor& w = m_.tensors.at(p.input(1));
    if (w.quant() || w.factors()) return "weight is already quantized or factorized";
    if (conv ? w.shape().size() < 3 : w.shape().size() != 2) return "unexpected weight rank";
    if (w.numel() == 0) return "weight is empty";
    Chain c;
    c.producer_node = NodeName(i);
    c.w_prod = p.input(1);
    c.prod_axis = conv ? 0 : 1;
    c.channels = w.shape()[c.prod_axis];
    if (conv && p.input_size() >= 3 && !p.input(2).empty()) {
      if (!Init(p.input(2)) || OnlyReader(p.input(2)) < 0) return "bias is not a private initializer";
      c.params.push_back({p.input(2), 0});
    }
    std::string v = p.output(0);
    for (int steps = 0; steps < 64; ++steps) {
      c.values.push_back(v);
      if (g_.IsOutput(v)) return "its output is a graph output";
      const auto& uses = g_.Consumers(v);
      if (uses.size() != 1) return "its output has more than one reader";
      const auto [ni, slot] = uses[0];
      const auto& n = g_.node(ni);
      if (!n.domain().empty()) return "a custom-domain node reads it";
      if (n.op_type() == p.op_type() && slot == 0 && n.input_size() >= 2 && Init(n.input(1)) &&
          OnlyReader(n.input(1)) >= 0 && (!conv || n.IntAttribute("group", 1) == 1)) {
        const Tensor& wc = m_.tensors.at(n.input(1));
        c.cons_axis = conv ? 1 : 0;
        if (wc.quant() || wc.factors() || wc.shape().size() <= static_cast<size_t>(c.cons_axis) ||
            wc.shape()[c.cons_axis] != c.channels || wc.numel() == 0)
          return "the next node's weight does not take these channels";
        c.consumer_node = NodeName(ni);
        c.w_cons = n.input(1);
        if (conv) c.cons_kernel = wc.numel() / (wc.shape()[0] * wc.shape()[1]);
        return c;
      }
      if (conv && n.op_type() == "Conv" && slot == 0 && n.IntAttribute("group", 1) == c.channels && n.input_size() >= 2 &&
          Init(n.input(1)) && OnlyReader(n.input(1)) >= 0 && m_.tensors.at(n.input(1)).shape().size() >= 2 &&
          m_.tensors.at(n.input(1)).shape()[0] == c.channels && m_.tensors.at(n.input(1)).shape()[1] == 1) {
        // Depthwise convolution (one filter per channel): its filters and bias are per-channel.
        c.params.push_back({n.input(1), 0});
        if (n.input_size() >= 3 && !n.input(2).empty()) {
          if (!Init(n.input(2)) || OnlyReader(n.input(2)) < 0) return "a depthwise bias is shared";
          c.params.push_back({n.input(2), 0});
        }
        c.depthwise.push_back(NodeName(ni));
      } else if (n.op_type() == "BatchNormalization" && slot == 0) {
        if (n.IntAttribute("training_mode", 0) != 0) return "training-mode BatchNormalization";
        for (int k = 1; k < 5 && k < n.input_size(); ++k) {
          if (!Init(n.input(k)) || OnlyReader(n.input(k)) < 0) return "BatchNormalization parameters are shared";
          c.params.push_back({n.input(k), 0});
        }
        for (int k = 1; k < n.output_size(); ++k)
          if (!n.output(k).empty()) return "BatchNormalization with training outputs";
      } else if ((n.op_type() == "Add" || n.op_type() == "Mul" || n.op_type() == "Sub" || n.op_type() == "Div" ||
                  n.op_type() == "PRelu") &&
                 n.input_size() == 2) {
        const std::string& other = n.input(1 - slot);
        if (!Init(other)) return "an elementwise op mixes it with a computed value";
        const Tensor& t = m_.tensors.at(other);
        if (t.numel() != 1) {
          // Per-channel constants must be private and broadcast along the channel axis only.
          // Numpy broadcasting aligns t to the activation's last axes: the channel axis of a
          // Conv activation [N, M, spatial...] is 1, of a MatMul activation [..., M] the last.
          const int axis = ChannelAxis(t, c.channels);
          const int rank_t = static_cast<int>(t.shape().size());
          const int act_rank = static_cast<int>(w.shape().size());  // Conv: N, M + spatial dims
          const bool aligned = conv ? act_rank - rank_t + axis == 1 : axis == rank_t - 1;
          if (axis < 0 || OnlyReader(other) < 0 || !aligned) return "a constant is not per-channel";
          c.params.push_back({other, axis});
        }
      } else if (!kUnary.count(n.op_type()) || slot != 0) {
        return fmt::format("a {} node reads it", n.op_type());
      } else if (n.op_type() == "Clip") {
        for (int k = 1; k < n.input_size(); ++k)
          if (!n.input(k).empty() && (!Init(n.input(k)) || m_.tensors.at(n.input(k)).numel() != 1))
            return "Clip with computed bounds";
      }
      v = n.output(0);
    }
    return "the chain is too long";
  }

 private:
  bool Init(const std::string& name) const { return m_.tensors.contains(name); }
  int OnlyReader(const std::string& name) const { return g_.OnlyConsumer(name); }
  std::string NodeName(int i) const { return g_.node(i).DisplayName(); }
  const Model& m_;
  const GraphView& g_;
};

// Keeps indices `keep` (sorted) along `axis`.
absl::StatusOr<Tensor> Slice(const Tensor& t, int axis, const std::vector<int64_t>& keep) {
  const int bits = DTypeBits(t.dtype());
  if (bits < 8) return Unimplemented("slicing a {}-bit tensor", bits);
  const size_t w = bits / 8;
  ASSIGN_OR_RETURN(auto buf, t.Data());
  Shape out = t.shape();
  out[axis] = static_cast<int64_t>(keep.size());
  int64_t outer = 1, inner = 1;
  for (int d = 0; d < axis; ++d) outer *= t.shape()[d];
  for (size_t d = axis + 1; d < t.shape().size(); ++d) inner *= t.shape()[d];
  const int64_t dim = t.shape()[axis];
  std::vector<uint8_t> bytes(NumElements(out) * w);
  for (int64_t o = 0; o < outer; ++o)
    for (size_t k = 0; k < keep.size(); ++k)
      std::memcpy(bytes.data() + ((o * keep.size() + k) * inner) * w, buf->data() + ((o * dim + keep[k]) * inner) * w,
                  inner * w);
  return Tensor(t.dtype(), out, std::make_shared<OwnedBuffer>(std::move(bytes)));
}

// Per-channel sums of |x|^p of `t` along `axis` (p = 1 or 2).
std::vector<double> ChannelNorms(const std::vector<float>& v, const Shape& s, int axis, int p) {
  int64_t outer = 1, inner = 1;
  for (int d = 0; d < axis; ++d) outer *= s[d];
  for (size_t d = axis + 1; d < s.size(); ++d) inner *= s[d];
  const int64_t dim = s[axis];
  std::vector<double> out(dim, 0.0);
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t c = 0; c < dim; ++c)
      for (int64_t i = 0; i < inner; ++i) {
        const double x = std::abs(v[(o * dim + c) * inner + i]);
        out[c] += p == 1 ? x : x * x;
      }
  return out;
}

class PruneChannelsPass final : public Pass {
 public:
  PruneChannelsPass(double ratio, std::string score) : ratio_(ratio), score_(std::move(score)) {}

  absl::StatusOr<PreservedAnalyses> Run(Model& model, PassContext& ctx) override {
    const GraphView* graph = ModelGraph(model);
    if (!graph) return Unimplemented("prune-structured target=channels needs an ONNX model");
    std::vector<Chain> chains;
    {
      ChainFinder finder(model, *graph);
      for (int i = 0; i < graph->node_size(); ++i) {
        auto r = finder.From(i);
        if (auto* c = std::get_if<Chain>(&r)) {
          chains.push_back(std::move(*c));
        } else if (!std::get<std::string>(r).empty()) {
          const auto& n = graph->node(i);
          ctx.report.notes.push_back(
              fmt::format("left {} '{}' alone: {}", n.op_type(), n.DisplayName(), std::get<std::string>(r)));
        }
      }
    }
    if (chains.empty()) {
      std::string why;
      for (size_t i = 0; i < std::min<size_t>(3, ctx.report.notes.size()); ++i) why += "; " + ctx.report.notes[i];
      return FailedPrecondition("prune-structured: no prunable Conv->Conv or MatMul->MatMul chain{}", why);
    }
    static const std::map<std::string, LinearStats> kNone;
    const std::map<std::string, LinearStats>* stats_ptr = &kNone;
    if (score_ == "wanda") {
      if (!ctx.calibration) return FailedPrecondition("score=wanda needs calibration data; give --calibration");
      ASSIGN_OR_RETURN(const CalibrationStatistics::Result* cs, ctx.analyses.Get<CalibrationStatistics>(model));
      stats_ptr = &cs->layers;
    }
    const std::map<std::string, LinearStats>& stats = *stats_ptr;
    std::vector<std::string> values;
    int64_t removed_total = 0, channels_total = 0;
    for (size_t ci = 0; ci < chains.size(); ++ci) {
      const Chain& c = chains[ci];
      ctx.Progress("prune-structured", static_cast<int64_t>(ci), static_cast<int64_t>(chains.size()));
      const Tensor wp = model.tensors.at(c.w_prod), wc = model.tensors.at(c.w_cons);
      ASSIGN_OR_RETURN(std::vector<float> fp, wp.ToF32());
      ASSIGN_OR_RETURN(std::vector<float> fc, wc.ToF32());
      const int p = score_ == "l1" ? 1 : 2;
      std::vector<double> score;
      if (score_ == "wanda") {
        auto it = stats.find(c.w_cons);
        if (it == stats.end() || it->second.sum_sq.empty())
          return Internal("no calibration statistics for '{}'", c.w_cons);
        const auto cn = ChannelNorms(fc, wc.shape(), c.cons_axis, 2);
        score.assign(c.channels, 0.0);
        for (int64_t ch = 0; ch < c.channels; ++ch) {
          double act = 0;
          for (int64_t q = 0; q < c.cons_kernel; ++q) act += it->second.sum_sq[ch * c.cons_kernel + q];
          score[ch] = std::sqrt(cn[ch]) * std::sqrt(act);
        }
      } else {
        const auto a = ChannelNorms(fp, wp.shape(), c.prod_axis, p), b = ChannelNorms(fc, wc.shape(), c.cons_axis, p);
        score.resize(c.channels);
        for (int64_t ch = 0; ch < c.channels; ++ch) score[ch] = p == 1 ? a[ch] + b[ch] : std::sqrt(a[ch] + b[ch]);
      }
      const int64_t remove = std::min<int64_t>(c.channels - 1, std::llround(ratio_ * c.channels));
      std::vector<int64_t> order(c.channels);
      std::iota(order.begin(), order.end(), int64_t{0});
      std::stable_sort(order.begin(), order.end(), [&](int64_t x, int64_t y) { return score[x] > score[y]; });
      std::vector<int64_t> keep(order.begin(), order.begin() + (c.channels - remove));
      std::sort(keep.begin(), keep.end());
      auto cut = [&](const std::string& name, int axis, const std::string& role) -> absl::Status {
        const Tensor t = model.tensors.at(name);
        auto s = Slice(t, axis, keep);
        if (!s.ok()) return Annotate(s.status(), "tensor '" + name + "'");
        ctx.report.tensors.push_back({name, t.shape(), s->shape(), std::string(DTypeName(t.dtype())),
                                      std::string(DTypeName(t.dtype())), t.storage_bytes(), s->storage_bytes(),
                                      fmt::format("channels {} -> {} ({})", c.channels, keep.size(), role),
                                      {{"channels_removed", static_cast<double>(remove)}}});
        model.tensors.Set(name, std::move(*s));
        return absl::OkStatus();
      };
      RETURN_IF_ERROR(cut(c.w_prod, c.prod_axis, "output channels of " + c.producer_node));
      for (const auto& pc : c.params) RETURN_IF_ERROR(cut(pc.name, pc.axis, "per-channel parameter"));
      RETURN_IF_ERROR(cut(c.w_cons, c.cons_axis, "input channels of " + c.consumer_node));
      for (const auto& dw : c.depthwise) {
        RETURN_IF_ERROR(SetGraphNodeAttribute(model, dw, "group", static_cast<int64_t>(keep.size())));
      }
      values.insert(values.end(), c.values.begin(), c.values.end());
      removed_total += remove;
      channels_total += c.channels;
    }
    RETURN_IF_ERROR(DropGraphValueInfo(model, values));
    // Linear-layer shapes in the architecture view follow the tensors.
    for (auto& l : model.arch.other_linears) {
      const Tensor* t = model.tensors.find(l.weight);
      if (!t || t->shape().empty()) continue;
      if (l.kind == "MatMul" && t->shape().size() == 2) {
        l.in_features = t->shape()[0];
        l.out_features = t->shape()[1];
      } else if (l.kind == "Conv") {
        l.out_features = t->shape()[0];
        l.in_features = t->numel() / std::max<int64_t>(1, l.out_features);
      }
    }
    ctx.report.stats["chains_pruned"] = static_cast<double>(chains.size());
    ctx.report.stats["channels_before"] = static_cast<double>(channels_total);
    ctx.report.stats["channels_removed"] = static_cast<double>(removed_total);
    return PreservedAnalyses::None();
  }

 private:
  double ratio_;
  std::string score_;
};

}  // namespace

std::unique_ptr<Pass> MakePruneChannelsPass(double ratio, std::string score) {
  return std::make_unique<PruneChannelsPass>(ratio, std::move(score));
}

}  // namespace compress
