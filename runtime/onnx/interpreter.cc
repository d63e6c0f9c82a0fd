#include "runtime/onnx/interpreter.h"

#include <optional>
#include <set>

#include "formats/onnx_io.h"
#include "onnx/onnx_pb.h"
#include "runtime/onnx/kernel.h"

namespace compress::onnxrt {
namespace {

// Calls the observer with the rows the weight of a MatMul / Gemm node multiplies.
absl::Status ObserveMatMul(const KernelContext& ctx, const std::string& weight, LinearInputObserver* obs) {
  const Value* a = ctx.in(0);
  const Value* b = ctx.in(1);
  if (!a || !b || b->rank() != 2 || a->rank() < 1) return absl::OkStatus();
  const bool trans_b = ctx.op() == "Gemm" && ctx.Int("transB", 0) != 0;
  const int64_t k = trans_b ? b->shape[1] : b->shape[0];
  ASSIGN_OR_RETURN(Value x, CastValue(*a, DType::kF32));
  if (ctx.op() == "Gemm" && ctx.Int("transA", 0) != 0) {
    if (x.rank() != 2) return absl::OkStatus();
    Value t(DType::kF32, {x.shape[1], x.shape[0]});
    for (int64_t i = 0; i < x.shape[0]; ++i)
      for (int64_t j = 0; j < x.shape[1]; ++j) t.data<float>()[j * x.shape[0] + i] = x.data<float>()[i * x.shape[1] + j];
    x = std::move(t);
  }
  if (k == 0 || x.shape.back() != k) return absl::OkStatus();  // the kernel reports a mismatch
  obs->Observe(weight, x.data<float>(), x.numel() / k, k);
  return absl::OkStatus();
}

}  // namespace

// ---- KernelContext ------------------------------------------------------------------------

absl::StatusOr<const Value*> KernelContext::Required(int i) const {
  const Value* v = in(i);
  if (!v) return InvalidArgument("{}: input {} is required", where(), i);
  return v;
}

std::vector<float> KernelContext::Floats(const std::string& name) const {
  const std::vector<double> d = node_.FloatsAttribute(name);
  return std::vector<float>(d.begin(), d.end());  // stored as f32 in the file: exact
}
std::string KernelContext::where() const {
  return node_.name().empty() ? fmt::format("{} (output '{}')", op(), node_.output_size() ? node_.output(0) : "")
                              : fmt::format("{} '{}'", op(), node_.name());
}

// ---- KernelRegistry -----------------------------------------------------------------------

const KernelRegistry& KernelRegistry::Get() {
  static const KernelRegistry* r = [] {
    auto* reg = new KernelRegistry;
    RegisterElementwiseKernels(*reg);
    RegisterShapeKernels(*reg);
    RegisterReduceKernels(*reg);
    RegisterNnKernels(*reg);
    RegisterQuantKernels(*reg);
    RegisterResizeKernels(*reg);
    return reg;
  }();
  return *r;
}

const Kernel* KernelRegistry::Find(const std::string& domain, const std::string& op) const {
  auto it = kernels_.find(domain.empty() ? op : domain + "::" + op);
  return it == kernels_.end() ? nullptr : &it->second;
}

std::vector<std::string> KernelRegistry::Ops() const {
  std::vector<std::string> out;
  for (const auto& [k, v] : kernels_) out.push_back(k);
  return out;
}

void KernelRegistry::Add(const std::string& domain, const std::string& op, Kernel k) {
  kernels_[domain.empty() ? op : domain + "::" + op] = std::move(k);
}

// ---- Interpreter --------------------------------------------------------------------------

std::vector<std::string> Interpreter::UnsupportedOps(const GraphView& graph) {
  std::set<std::string> out;
  for (int i = 0; i < graph.node_size(); ++i) {
    const GraphNode& n = graph.node(i);
    if (!KernelRegistry::Get().Find(n.domain(), n.op_type()))
      out.insert(n.domain().empty() ? n.op_type() : n.domain() + "::" + n.op_type());
  }
  return {out.begin(), out.end()};
}

absl::Status Interpreter::Init(std::shared_ptr<const GraphView> graph) {
  graph_ = std::move(graph);
  const GraphView& g = *graph_;
  for (int i = 0; i < g.node_size(); ++i) {
    const GraphNode& n = g.node(i);
    if (!KernelRegistry::Get().Find(n.domain(), n.op_type())) {
      return Unimplemented("ONNX op '{}{}' (node '{}') is not supported by the interpreter",
                           n.domain().empty() ? "" : n.domain() + "::", n.op_type(), n.name());
    }
  }
  for (const GraphValueInfo& vi : g.signature().inputs) {
    if (!initializers_.count(vi.name)) inputs_.push_back(vi);
  }
  outputs_ = g.signature().outputs;
  // Each value's last reader, computed once: Run frees intermediates right after it.
  free_after_.assign(g.node_size(), {});
  for (int i = 0; i < g.node_size(); ++i) {
    for (const auto& o : g.node(i).outputs()) {
      const auto& uses = g.Consumers(o);
      if (!o.empty() && !uses.empty() && !g.IsOutput(o)) free_after_[uses.back().node].push_back(o);
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Interpreter>> Interpreter::Create(const Model& model) {
  std::shared_ptr<const GraphView> graph = SharedModelGraph(model);
  if (!graph) return InvalidArgument("the ONNX interpreter runs only models read from .onnx files");
  std::unique_ptr<Interpreter> it(new Interpreter);
  for (const auto& name : model.tensors.names()) {
    auto v = FromTensor(model.tensors.at(name));
    if (!v.ok()) return Annotate(v.status(), "initializer '" + name + "'");
    it->initializers_[name] = std::move(*v);
  }
  it->input_quant_ = model.input_quant;
  RETURN_IF_ERROR(it->Init(std::move(graph)));
  return it;
}

absl::StatusOr<std::unique_ptr<Interpreter>> Interpreter::Create(const onnx::ModelProto& proto) {
  std::unique_ptr<Interpreter> it(new Interpreter);
  for (const auto& init : proto.graph().initializer()) {
    if (it->initializers_.count(init.name()) || init.data_location() == onnx::TensorProto::EXTERNAL) continue;
    if (auto v = FromTensorProto(init); v.ok()) it->initializers_[init.name()] = std::move(*v);
  }
  RETURN_IF_ERROR(it->Init(std::make_shared<const GraphView>(OnnxGraphView(proto))));
  return it;
}

std::vector<Interpreter::WeightNode> Interpreter::WeightNodes() const {
  std::vector<WeightNode> out;
  const GraphView& g = *graph_;
  for (int i = 0; i < g.node_size(); ++i) {
    const GraphNode& n = g.node(i);
    if (!n.domain().empty() || n.input_size() < 2 || !initializers_.count(n.input(1))) continue;
    const bool grouped = n.IntAttribute("group", 1) != 1;
    if (n.op_type() == "MatMul" || n.op_type() == "Gemm" || (n.op_type() == "Conv" && !grouped))
      out.push_back({i, n.input(1), n.input(0)});
  }
  return out;
}

absl::Status Interpreter::Reload(const Model& model, const std::vector<std::string>& names) {
  for (const auto& name : names) {
    const Tensor* t = model.tensors.find(name);
    if (!t) return NotFound("initializer '{}' is not in the model", name);
    auto v = FromTensor(*t);
    if (!v.ok()) return Annotate(v.status(), "initializer '" + name + "'");
    initializers_[name] = std::move(*v);
  }
  return absl::OkStatus();
}

namespace {

// A value's shape has a checked element count and its bytes match it: a kernel that
// computed a shape from untrusted sizes cannot hand an inconsistent value downstream.
absl::Status CheckValue(const Value& v, const std::string& what) {
  auto n = CheckedElements(v.shape);
  if (!n) return InvalidArgument("{}: shape {} holds more than 2^48 elements", what, ShapeString(v.shape));
  if (v.bytes.size() != static_cast<size_t>(DTypeBytes(v.dtype, *n))) {
    return InvalidArgument("{}: {} {} holds {} bytes, not {}", what, DTypeName(v.dtype), ShapeString(v.shape),
                           v.bytes.size(), DTypeBytes(v.dtype, *n));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::map<std::string, Value>> Interpreter::Run(const std::map<std::string, Value>& feeds,
                                                              LinearInputObserver* observer, int stop_after) const {
  const GraphView& g = *graph_;
  std::map<std::string, Value> values;  // intermediates only; feeds and initializers are looked up
  for (const auto& in : inputs_) {
    if (!feeds.count(in.name)) return InvalidArgument("ONNX input '{}' was not given", in.name);
  }
  for (const auto& [name, v] : feeds) RETURN_IF_ERROR(CheckValue(v, "ONNX input '" + name + "'"));

  auto lookup = [&](const std::string& name) -> const Value* {
    if (auto it = values.find(name); it != values.end()) return &it->second;
    if (auto it = feeds.find(name); it != feeds.end()) return &it->second;
    if (auto it = initializers_.find(name); it != initializers_.end()) return &it->second;
    return nullptr;
  };
  for (int i = 0; i < g.node_size(); ++i) {
    const GraphNode& node = g.node(i);
    std::vector<const Value*> ins;
    for (const auto& name : node.inputs()) {
      if (name.empty()) {
        ins.push_back(nullptr);
        continue;
      }
      const Value* v = lookup(name);
      if (!v) {
        return InvalidArgument("node '{}' ({}): input '{}' is not produced by an earlier node, a graph input or "
                               "an initializer",
                               node.name(), node.op_type(), name);
      }
      ins.push_back(v);
    }
    const std::string& domain = node.domain();
    // A weight whose input the model quantizes (Model::input_quant): the kernel reads the
    // quantize-dequantized input; observers still see it as computed.
    const ActivationQuant* act = nullptr;
    if (!input_quant_.empty() && domain.empty() && node.input_size() >= 2 && ins[0] &&
        (node.op_type() == "MatMul" || node.op_type() == "Gemm" || node.op_type() == "Conv")) {
      auto q = input_quant_.find(node.input(1));
      if (q != input_quant_.end()) act = &q->second;
    }
    Value quantized_input;
    std::vector<const Value*> run_ins;
    if (act) {
      ASSIGN_OR_RETURN(quantized_input, CastValue(*ins[0], DType::kF32));
      const int64_t cols = quantized_input.rank() ? quantized_input.shape.back() : 1;
      if (cols > 0) {
        FakeQuantize(*act, {}, quantized_input.data<float>(), quantized_input.numel() / cols, cols);
      }
      run_ins = ins;
      run_ins[0] = &quantized_input;
    }
    KernelContext ctx(node, g.Opset(domain), std::move(ins));
    const bool weighted = observer && domain.empty() && node.input_size() >= 2 &&
                          initializers_.count(node.input(1)) && !feeds.count(node.input(1)) &&
                          observer->Wants(node.input(1));
    if (weighted && (node.op_type() == "MatMul" || node.op_type() == "Gemm")) {
      RETURN_IF_ERROR(ObserveMatMul(ctx, node.input(1), observer));
    }
    if (weighted && node.op_type() == "Conv" && ctx.Int("group", 1) == 1) {
      auto patches = ConvPatches(ctx);
      if (patches.ok() && patches->rank() == 2)
        observer->Observe(node.input(1), patches->data<float>(), patches->shape[0], patches->shape[1]);
    }
    const Kernel* k = KernelRegistry::Get().Find(domain, node.op_type());
    std::optional<KernelContext> qctx;
    if (act) qctx.emplace(node, g.Opset(domain), std::move(run_ins));
    KernelContext& run_ctx = qctx ? *qctx : ctx;
    absl::Status s;
    try {
      s = (*k)(run_ctx);
    } catch (const std::length_error& e) {  // ShapeTooLarge, or a vector sized from a huge shape
      s = InvalidArgument("{}: {}", run_ctx.where(), e.what());
    } catch (const std::bad_alloc&) {
      s = absl::ResourceExhaustedError(fmt::format("{}: not enough memory for its outputs", run_ctx.where()));
    }
    if (!s.ok()) return s;
    for (int o = 0; o < node.output_size(); ++o) {
      if (node.output(o).empty()) continue;
      RETURN_IF_ERROR(CheckValue(run_ctx.out(o), run_ctx.where() + " output '" + node.output(o) + "'"));
      values[node.output(o)] = std::move(run_ctx.out(o));
    }
    for (const auto& name : free_after_[i]) values.erase(name);
    if (i == stop_after) return std::map<std::string, Value>{};
  }
  std::map<std::string, Value> out;
  for (const auto& o : g.outputs()) {
    const Value* v = lookup(o);
    if (!v) return InvalidArgument("graph output '{}' is not produced by any node", o);
    out[o] = *v;
  }
  return out;
}

absl::StatusOr<std::map<std::string, Value>> TokenFeeds(const Interpreter& interp, std::span<const int32_t> ids) {
  const int64_t T = static_cast<int64_t>(ids.size());
  std::map<std::string, Value> feeds;
  bool have_ids = false;
  for (const auto& in : interp.inputs()) {
    const bool integer = in.dtype == DType::kI64 || in.dtype == DType::kI32;
    if (!integer || in.shape.empty() || in.shape.size() > 2) {
      return InvalidArgument("ONNX input '{}' ({}, rank {}) cannot be fed token ids; this needs input tensors",
                             in.name, DTypeName(in.dtype), in.shape.size());
    }
    const Shape shape = in.shape.size() == 2 ? Shape{1, T} : Shape{T};
    if (in.shape.back() >= 0 && in.shape.back() != T) {
      return InvalidArgument("ONNX input '{}' takes {} tokens per sequence, not {}", in.name, in.shape.back(), T);
    }
    std::vector<int64_t> v(T);
    if (in.name.find("mask") != std::string::npos) {
      std::fill(v.begin(), v.end(), 1);
    } else if (in.name.find("position") != std::string::npos) {
      for (int64_t t = 0; t < T; ++t) v[t] = t;
    } else if (!have_ids) {
      for (int64_t t = 0; t < T; ++t) v[t] = ids[t];
      have_ids = true;
    } else {
      return InvalidArgument("ONNX model has a second token input '{}'; this needs input tensors", in.name);
    }
    ASSIGN_OR_RETURN(feeds[in.name], CastValue(MakeValue(DType::kI64, std::move(v), shape), in.dtype));
  }
  if (!have_ids) return InvalidArgument("ONNX model has no token-id input");
  return feeds;
}

std::string Describe(const Value& v) {
  std::string s = fmt::format("{} {}", DTypeName(v.dtype), ShapeString(v.shape));
  auto f = ToFloats(v);
  if (f.ok()) {
    s += " [";
    for (size_t i = 0; i < std::min<size_t>(8, f->size()); ++i) s += fmt::format("{}{:g}", i ? ", " : "", (*f)[i]);
    s += f->size() > 8 ? ", ...]" : "]";
  }
  return s;
}

}  // namespace compress::onnxrt
