// The checkpoint editor for ONNX decoder graphs.
#include "formats/onnx_edit.h"

#include <cstring>
#include <set>

#include "core/graph_ir.h"
#include "core/status.h"
#include "formats/onnx_io.h"
#include "formats/onnx_structure.h"

namespace compress {
namespace {

const GraphView& Graph(const Model& model) { return *ModelGraph(model); }

// The outputs of `nodes`: values whose shapes a head or neuron cut changes.
std::vector<std::string> Outputs(const GraphView& g, const std::vector<int>& nodes) {
  std::vector<std::string> out;
  for (int i : nodes)
    for (const auto& o : g.node(i).outputs()) out.push_back(o);
  return out;
}

class OnnxEditor final : public CheckpointEditor {
 public:
  absl::Status CheckEditable(const Model& model, StructuralEdit edit) const override {
    const GraphView* g = ModelGraph(model);
    if (!g) return InvalidArgument("{}: not an ONNX model", model.source);
    switch (edit) {
      case StructuralEdit::kAttentionHeads:
        return Annotate(DescribeOnnxAttentions(*g, model).status(), model.source);
      case StructuralEdit::kFfnWidth:
        return Annotate(DescribeOnnxFfns(*g, model).status(), model.source);
      case StructuralEdit::kExpertCount:
        return Unimplemented("{}: expert pruning of ONNX graphs is not supported (no MoE routing is recognised in graphs)",
                             model.source);
      case StructuralEdit::kSublayers:
        return Annotate(FindOnnxSublayers(*g, model).status(), model.source);
    }
    return absl::OkStatus();
  }

  absl::StatusOr<bool> SplitFused(Model&) const override { return false; }
  absl::Status Fuse(Model&) const override { return absl::OkStatus(); }

  // The pass sliced q/k/v/o and their biases; the view still has the old head counts, which
  // is how the constants are found.
  absl::Status SetAttentionHeads(Model& model, int64_t heads, int64_t kv_heads, int64_t head_dim) const override {
    ASSIGN_OR_RETURN(const std::vector<OnnxAttention> atts, DescribeOnnxAttentions(Graph(model), model));
    const int64_t H = atts[0].heads, KV = atts[0].kv_heads, d = atts[0].head_dim;
    if (head_dim != d || heads % kv_heads != 0 || heads / kv_heads != H / KV) {
      return Unimplemented("{}: ONNX head pruning keeps head_dim {} and {} query heads per key/value head", model.source,
                           d, H / KV);
    }
    std::set<std::string> done;  // constants shared by several sublayers are rewritten once
    auto rewrite_dim = [&](const std::string& name, int64_t from, int64_t to, bool second_last) -> absl::Status {
      if (!done.insert(name).second) return absl::OkStatus();
      const Tensor old = model.tensors.at(name);
      ASSIGN_OR_RETURN(std::vector<int64_t> v, ReadI64(old));
      int64_t& x = v[v.size() - (second_last ? 2 : 1)];
      if (x != from) return Internal("shape constant '{}' changed under head pruning", name);
      x = to;
      model.tensors.Set(name, I64Tensor(v, old.shape()));
      return absl::OkStatus();
    };
    const int64_t per = heads / kv_heads;
    std::vector<std::string> changed;
    for (const OnnxAttention& a : atts) {
      RETURN_IF_ERROR(rewrite_dim(a.q_shape, H, heads, true));
      if (a.kv_shape != a.q_shape) RETURN_IF_ERROR(rewrite_dim(a.kv_shape, KV, kv_heads, true));
      RETURN_IF_ERROR(rewrite_dim(a.o_shape, H * d, heads * d, false));
      if (!a.repeat.empty() && done.insert(a.repeat).second) {
        std::vector<int64_t> idx(heads);
        for (int64_t j = 0; j < heads; ++j) idx[j] = j / per;
        model.tensors.Set(a.repeat, I64Tensor(idx, {heads}));
      }
      for (auto& v : Outputs(Graph(model), a.sublayer.nodes)) changed.push_back(std::move(v));
    }
    RETURN_IF_ERROR(DropGraphValueInfo(model, changed));
    RebuildOnnxArchitecture(model);
    return absl::OkStatus();
  }

  absl::Status KeepFfnNeurons(Model& model, const std::map<std::string, std::vector<int64_t>>& kept_by_down) const override {
    // Each FFN is described just before it is cut (its own constants are still whole; the
    // earlier FFNs' are cut already, and CheckEditable made sure none is shared).
    ASSIGN_OR_RETURN(const std::vector<OnnxSublayer> subs, FindOnnxSublayers(model));
    size_t done = 0;
    for (const OnnxSublayer& sl : subs) {
      if (sl.attention) continue;
      const std::vector<OnnxProjection> proj = OnnxSublayerProjections(Graph(model), model, sl);
      const auto it = proj.empty() ? kept_by_down.end() : kept_by_down.find(proj.back().weight);
      if (it == kept_by_down.end()) continue;
      const std::vector<int64_t>& kept = it->second;
      ++done;
      ASSIGN_OR_RETURN(const OnnxFfn f, DescribeOnnxFfn(Graph(model), model, sl));
      for (const std::string& c : f.per_neuron) {
        const Tensor old = model.tensors.at(c);
        if (old.shape().back() != f.width) return Internal("per-neuron constant '{}' was cut twice", c);
        ASSIGN_OR_RETURN(std::vector<float> v, old.ToF32());
        const int64_t rows = old.numel() / f.width, keep = static_cast<int64_t>(kept.size());
        std::vector<float> cut(rows * keep);
        for (int64_t r = 0; r < rows; ++r)
          for (int64_t i = 0; i < keep; ++i) cut[r * keep + i] = v[r * f.width + kept[i]];
        Shape shape = old.shape();
        shape.back() = keep;
        ASSIGN_OR_RETURN(Tensor t, Tensor::FromF32(cut, shape, old.dtype()));
        model.tensors.Set(c, std::move(t));
      }
    }
    if (done != kept_by_down.size())
      return NotFound("{}: {} of the FFNs to cut have no FFN sublayer in the graph", model.source, kept_by_down.size() - done);
    return absl::OkStatus();
  }

  absl::Status SetFfnWidth(Model& model, int64_t dense, int64_t expert, int64_t shared) const override {
    if (expert > 0 || shared > 0) return Unimplemented("{}: ONNX graphs have no experts", model.source);
    // The values between gate/up and down changed width: drop their shape hints.
    ASSIGN_OR_RETURN(const std::vector<OnnxSublayer> subs, FindOnnxSublayers(model));
    std::vector<std::string> changed;
    const GraphView& g = Graph(model);
    for (const OnnxSublayer& sl : subs) {
      if (sl.attention) continue;
      std::vector<int> inner;
      const std::vector<OnnxProjection> proj = OnnxSublayerProjections(g, model, sl);
      if (proj.size() != 3) continue;
      for (int i : sl.nodes)
        if (i < proj[2].node) inner.push_back(i);
      for (auto& v : Outputs(g, inner)) changed.push_back(std::move(v));
    }
    RETURN_IF_ERROR(DropGraphValueInfo(model, changed));
    RebuildOnnxArchitecture(model);
    if (dense > 0 && model.arch.intermediate_size != dense)
      return Internal("{}: FFN width {} after pruning, expected {}", model.source, model.arch.intermediate_size, dense);
    return absl::OkStatus();
  }

  absl::Status SetExpertCount(Model& model, int64_t) const override {
    return CheckEditable(model, StructuralEdit::kExpertCount);
  }

  // Bypasses the residual Adds of the removed sublayers; the graph keeps no trace of them,
  // so the blocks are those of the graph as it is (a second cut numbers the student's).
  absl::StatusOr<std::pair<std::vector<bool>, std::vector<bool>>> RemoveSublayers(
      Model& model, std::vector<bool> attention, std::vector<bool> mlp) const override {
    ASSIGN_OR_RETURN(const std::vector<OnnxSublayer> subs, FindOnnxSublayers(model));
    const size_t L = static_cast<size_t>(subs.back().block + 1);
    if (attention.size() != L || mlp.size() != L)
      return InvalidArgument("{}: sublayer removal needs one entry per block ({})", model.source, L);
    std::map<std::string, std::string> bypass;
    bool all = true;
    for (const OnnxSublayer& sl : subs) {
      const bool gone = sl.attention ? attention[sl.block] : mlp[sl.block];
      if (gone) bypass[sl.add_output] = sl.residual;
      all = all && gone;
    }
    if (all) return FailedPrecondition("FinerCut would remove every block; lower ratio");
    RETURN_IF_ERROR(BypassGraphValues(model, bypass).status());
    return std::pair{std::move(attention), std::move(mlp)};
  }

  absl::Status SetStorageType(Model&, DType) const override { return absl::OkStatus(); }
};

}  // namespace

const CheckpointEditor& OnnxCheckpointEditor() {
  static const OnnxEditor editor;
  return editor;
}

}  // namespace compress
