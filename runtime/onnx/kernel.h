// What an ONNX operator kernel sees: the node (attributes), the model's opset for the
// node's domain, its inputs (null for omitted optional ones) and the outputs to fill.
#pragma once

#include <deque>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "Eigen/Core"
#include "absl/status/status.h"
#include "core/graph_ir.h"
#include "core/status.h"
#include "runtime/onnx/value.h"

namespace compress::onnxrt {

class KernelContext {
 public:
  KernelContext(const GraphNode& node, int opset, std::vector<const Value*> inputs)
      : node_(node), opset_(opset), inputs_(std::move(inputs)), outputs_(node.output_size()) {}

  const GraphNode& node() const { return node_; }
  const std::string& op() const { return node_.op_type(); }
  int opset() const { return opset_; }
  int num_inputs() const { return static_cast<int>(inputs_.size()); }
  int num_outputs() const { return static_cast<int>(outputs_.size()); }
  // Input i, or null when absent (beyond the node's inputs or named "").
  const Value* in(int i) const { return i < num_inputs() ? inputs_[i] : nullptr; }
  // Input i, failing with a clear message when absent.
  absl::StatusOr<const Value*> Required(int i) const;
  // Output i; one the node does not name (a graph may give a node fewer outputs than its op
  // makes) is a scratch value, discarded after the run.
  Value& out(int i) {
    if (i < num_outputs()) return outputs_[i];
    while (static_cast<int>(unnamed_.size()) <= i - num_outputs()) unnamed_.emplace_back();
    return unnamed_[i - num_outputs()];
  }
  std::vector<Value>& outputs() { return outputs_; }

  const GraphAttribute* attr(const std::string& name) const { return node_.attribute(name); }
  int64_t Int(const std::string& name, int64_t def) const { return node_.IntAttribute(name, def); }
  float Float(const std::string& name, float def) const {
    return static_cast<float>(node_.FloatAttribute(name, def));
  }
  std::string String(const std::string& name, const std::string& def) const {
    return node_.StringAttribute(name, def);
  }
  std::vector<int64_t> Ints(const std::string& name) const { return node_.IntsAttribute(name); }  // empty when absent
  std::vector<float> Floats(const std::string& name) const;
  const Tensor* TensorAttr(const std::string& name) const { return node_.TensorAttribute(name); }

  // "Op 'name'" for messages.
  std::string where() const;

 private:
  const GraphNode& node_;
  int opset_;
  std::vector<const Value*> inputs_;
  std::vector<Value> outputs_;
  std::deque<Value> unnamed_;  // a deque: growing it keeps earlier references valid
};

using Kernel = std::function<absl::Status(KernelContext&)>;

// Kernels by "domain::op" ("" is the default ONNX domain, "com.microsoft" the contrib ops).
class KernelRegistry {
 public:
  static const KernelRegistry& Get();
  const Kernel* Find(const std::string& domain, const std::string& op) const;
  std::vector<std::string> Ops() const;  // sorted "op" or "domain::op"
  void Add(const std::string& domain, const std::string& op, Kernel k);

 private:
  std::map<std::string, Kernel> kernels_;
};

template <class T>
using Mat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class T>
using MapC = Eigen::Map<const Mat<T>>;
template <class T>
using MapM = Eigen::Map<Mat<T>>;

// Output value i of `ctx`, allocated with the given type and shape.
Value& Output(KernelContext& ctx, int i, DType t, Shape shape);

// The im2col rows of a Conv node's input X: [N * out positions, C/group * kernel elements]
// (group 1 only), the input its weight multiplies; used for calibration statistics.
absl::StatusOr<Value> ConvPatches(const KernelContext& ctx);

// Fold of a broadcasting binary function over the inputs (elementwise helpers shared by
// kernel files): out[i] = fn(a[ia(i)], b[ib(i)]) with numpy broadcasting.
template <class TA, class TB, class R, class Fn>
absl::Status Broadcast2(const Value& a, const Value& b, DType out_type, const std::string& op, Value& out, Fn fn) {
  // The element types the kernel reads (e.g. PRelu's slope of another type than X's).
  if (a.bytes.size() != static_cast<size_t>(a.numel()) * sizeof(TA) ||
      b.bytes.size() != static_cast<size_t>(b.numel()) * sizeof(TB)) {
    return InvalidArgument("{}: input types {} and {} do not match", op, DTypeName(a.dtype),
                           DTypeName(b.dtype));
  }
  ASSIGN_OR_RETURN(Shape s, BroadcastShapes(a.shape, b.shape, op));
  Value o(out_type, s);
  const TA* pa = a.data<TA>();
  const TB* pb = b.data<TB>();
  R* po = o.data<R>();
  const int64_t n = o.numel();
  const int64_t nb = b.numel();
  auto is_suffix = [&](const Shape& in) {
    if (in.size() > s.size()) return false;
    for (size_t i = 0; i < in.size(); ++i)
      if (in[in.size() - 1 - i] != s[s.size() - 1 - i]) return false;
    return true;
  };
  // b's dims equal the output's leading dims, with ones after them (e.g. [B, T, 1]).
  auto is_prefix = [&](const Shape& in) {
    const size_t off = s.size() - in.size();
    bool ones = true;
    for (size_t i = in.size(); i-- > 0;) {
      if (ones && in[i] == 1 && s[i + off] != 1) continue;
      ones = false;
      if (in[i] != s[i + off]) return false;
    }
    for (size_t i = 0; i < off; ++i)
      if (s[i] != 1) return false;
    return true;
  };
  if (a.shape == s && b.shape == s) {
    for (int64_t i = 0; i < n; ++i) po[i] = fn(pa[i], pb[i]);
  } else if (a.shape == s && nb == 1) {
    const TB v = pb[0];
    for (int64_t i = 0; i < n; ++i) po[i] = fn(pa[i], v);
  } else if (b.shape == s && a.numel() == 1) {
    const TA v = pa[0];
    for (int64_t i = 0; i < n; ++i) po[i] = fn(v, pb[i]);
  } else if (a.shape == s && nb > 0 && is_suffix(b.shape)) {
    for (int64_t i = 0; i < n; ++i) po[i] = fn(pa[i], pb[i % nb]);
  } else if (a.shape == s && nb > 0 && is_prefix(b.shape)) {
    const int64_t inner = n / nb;  // b repeats each element over the trailing dims
    for (int64_t j = 0; j < nb; ++j) {
      const TB v = pb[j];
      for (int64_t i = j * inner; i < (j + 1) * inner; ++i) po[i] = fn(pa[i], v);
    }
  } else {
    const auto ia = BroadcastIndex(a.shape, s);
    const auto ib = BroadcastIndex(b.shape, s);
    for (int64_t i = 0; i < n; ++i) po[i] = fn(pa[ia[i]], pb[ib[i]]);
  }
  out = std::move(o);
  return absl::OkStatus();
}

void RegisterElementwiseKernels(KernelRegistry& r);
void RegisterShapeKernels(KernelRegistry& r);
void RegisterReduceKernels(KernelRegistry& r);
void RegisterNnKernels(KernelRegistry& r);
void RegisterQuantKernels(KernelRegistry& r);
void RegisterResizeKernels(KernelRegistry& r);

}  // namespace compress::onnxrt
