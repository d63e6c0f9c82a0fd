// ONNX reader/writer: initializers become store tensors (inline, typed or external data),
// the rest of the graph is kept as a protobuf payload and written back around them.
#include "formats/onnx_io.h"

#include <algorithm>
#include <charconv>
#include <filesystem>
#include <functional>
#include <optional>
#include <set>

#include "core/checked_math.h"
#include "core/graph_ir.h"
#include "core/status.h"
#include "core/file_util.h"
#include "formats/onnx_quant.h"
#include "formats/onnx_structure.h"
#include "onnx/checker.h"
#include "onnx/onnx_pb.h"

namespace compress {
namespace fs = std::filesystem;
namespace {

class OnnxPayload final : public GraphPayload {
 public:
  onnx::ModelProto proto;                  // initializers keep name/dims/type; data cleared
  std::map<std::string, DType> extracted;  // initializers moved into the tensor store
  std::unique_ptr<FormatPayload> Clone() const override { return std::make_unique<OnnxPayload>(*this); }

  absl::Status SetNodeAttribute(const std::string& node, const std::string& attr, int64_t value) override;
  absl::Status DropValueInfo(const std::vector<std::string>& values) override;
  absl::StatusOr<std::vector<std::string>> Bypass(Model& model,
                                                  const std::map<std::string, std::string>& bypass) override;

 protected:
  GraphView BuildView() const override;
};

// A node attribute as the view holds it; nullopt for graph-valued attributes and tensors of
// a type the store cannot hold (left out of the view).
std::optional<GraphAttribute> AttributeOf(const onnx::AttributeProto& a) {
  switch (a.type()) {
    case onnx::AttributeProto::INT:
      return a.i();
    case onnx::AttributeProto::FLOAT:
      return static_cast<double>(a.f());
    case onnx::AttributeProto::STRING:
      return a.s();
    case onnx::AttributeProto::INTS:
      return std::vector<int64_t>(a.ints().begin(), a.ints().end());
    case onnx::AttributeProto::FLOATS:
      return std::vector<double>(a.floats().begin(), a.floats().end());
    case onnx::AttributeProto::STRINGS:
      return std::vector<std::string>(a.strings().begin(), a.strings().end());
    case onnx::AttributeProto::TENSOR: {
      auto dt = DTypeFromOnnx(a.t().data_type());
      if (!dt.ok()) return std::nullopt;
      auto bytes = OnnxInlineTensorBytes(a.t(), *dt, "attribute '" + a.name() + "'");
      if (!bytes.ok()) return std::nullopt;
      return Tensor(*dt, Shape(a.t().dims().begin(), a.t().dims().end()),
                    std::make_shared<OwnedBuffer>(*std::move(bytes)));
    }
    default:
      return std::nullopt;
  }
}

GraphValueInfo InfoOf(const onnx::ValueInfoProto& vi) {
  GraphValueInfo info;
  info.name = vi.name();
  if (vi.type().has_tensor_type()) {
    const auto& tt = vi.type().tensor_type();
    if (auto dt = DTypeFromOnnx(tt.elem_type()); dt.ok()) info.dtype = *dt;
    if (tt.has_shape()) {
      for (const auto& d : tt.shape().dim()) {
        info.shape.push_back(d.has_dim_value() ? d.dim_value() : -1);
        info.dim_names.push_back(d.has_dim_param() ? d.dim_param() : "");
      }
    }
  }
  return info;
}

GraphView OnnxPayload::BuildView() const { return OnnxGraphView(proto); }

}  // namespace

GraphView OnnxGraphView(const onnx::ModelProto& proto) {
  const onnx::GraphProto& g = proto.graph();
  std::vector<GraphNode> nodes;
  nodes.reserve(g.node_size());
  for (const auto& n : g.node()) {
    std::map<std::string, GraphAttribute> attrs;
    for (const auto& a : n.attribute()) {
      if (auto v = AttributeOf(a)) attrs.emplace(a.name(), *std::move(v));
    }
    nodes.emplace_back(n.name(), n.op_type(), n.domain() == "ai.onnx" ? std::string() : n.domain(),
                       std::vector<std::string>(n.input().begin(), n.input().end()),
                       std::vector<std::string>(n.output().begin(), n.output().end()), std::move(attrs));
  }
  std::set<std::string> inits;
  for (const auto& t : g.initializer()) inits.insert(t.name());
  GraphSignature sig;
  for (const auto& i : g.input()) {
    if (!inits.count(i.name())) sig.inputs.push_back(InfoOf(i));
  }
  for (const auto& o : g.output()) sig.outputs.push_back(InfoOf(o));
  for (const auto& o : proto.opset_import()) sig.opsets[o.domain() == "ai.onnx" ? "" : o.domain()] = static_cast<int>(o.version());
  return GraphView(std::move(nodes), std::move(sig));
}

namespace {

struct OnnxTypeName {
  int onnx;
  DType type;
};
constexpr OnnxTypeName kOnnxTypes[] = {
    {1, DType::kF32},  {2, DType::kU8},   {3, DType::kI8},      {4, DType::kU16},     {5, DType::kI16},
    {6, DType::kI32},  {7, DType::kI64},  {9, DType::kBool},    {10, DType::kF16},    {11, DType::kF64},
    {12, DType::kU32}, {13, DType::kU64}, {16, DType::kBF16},   {17, DType::kF8E4M3}, {19, DType::kF8E5M2},
    {21, DType::kU4},  {22, DType::kI4},  {23, DType::kF4E2M1},
};

absl::StatusOr<uint64_t> ParseU64(const std::string& s, const std::string& what) {
  uint64_t v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p != s.data() + s.size() || s.empty()) {
    return DataLoss("{}: '{}' is not a non-negative integer", what, s);
  }
  return v;
}

// The repeated field of a TensorProto that holds values of each type (ONNX stores 8- and 16-bit
// types and f16/bf16/f8 bit patterns in int32_data, u32 in uint64_data).
enum class TypedField { kNone, kFloat, kDouble, kInt64, kUint64, kInt32 };
TypedField TypedFieldOf(DType dt) {
  switch (dt) {
    case DType::kF32: return TypedField::kFloat;
    case DType::kF64: return TypedField::kDouble;
    case DType::kI64: return TypedField::kInt64;
    case DType::kU32:
    case DType::kU64: return TypedField::kUint64;
    case DType::kI32:
    case DType::kI16:
    case DType::kI8:
    case DType::kU16:
    case DType::kU8:
    case DType::kBool:
    case DType::kF16:
    case DType::kBF16:
    case DType::kF8E4M3:
    case DType::kF8E5M2: return TypedField::kInt32;
    default: return TypedField::kNone;
  }
}

// Converts the typed repeated fields of a TensorProto into raw little-endian bytes.
absl::StatusOr<std::vector<uint8_t>> TypedFieldBytes(const onnx::TensorProto& t, DType dt, int64_t numel,
                                                     const std::string& what) {
  const TypedField field = TypedFieldOf(dt);
  // The field's value count is checked before anything is allocated: a shape of 2^33
  // elements over an empty field must be refused, not allocated.
  const int64_t have = field == TypedField::kFloat    ? t.float_data_size()
                       : field == TypedField::kDouble ? t.double_data_size()
                       : field == TypedField::kInt64  ? t.int64_data_size()
                       : field == TypedField::kUint64 ? t.uint64_data_size()
                       : field == TypedField::kInt32  ? t.int32_data_size()
                                                      : -1;
  if (field == TypedField::kNone) {
    return Unimplemented("{}: typed-field storage of {} is not supported; store it as raw_data", what, DTypeName(dt));
  }
  if (have != numel) return DataLoss("{}: holds {} values but its shape needs {}", what, have, numel);
  std::vector<uint8_t> out(DTypeBytes(dt, numel));
  const int w = DTypeBits(dt) / 8;
  switch (field) {  // an empty field's data() may be null: memcpy only with bytes to copy
    case TypedField::kFloat:
      if (!out.empty()) std::memcpy(out.data(), t.float_data().data(), out.size());
      break;
    case TypedField::kDouble:
      if (!out.empty()) std::memcpy(out.data(), t.double_data().data(), out.size());
      break;
    case TypedField::kInt64:
      if (!out.empty()) std::memcpy(out.data(), t.int64_data().data(), out.size());
      break;
    case TypedField::kUint64:
      for (int64_t i = 0; i < numel; ++i) {
        const uint64_t v = t.uint64_data(i);
        std::memcpy(out.data() + i * w, &v, w);  // little-endian: low bytes first
      }
      break;
    case TypedField::kInt32:
      for (int64_t i = 0; i < numel; ++i) {
        const int32_t v = t.int32_data(i);
        std::memcpy(out.data() + i * w, &v, w);
      }
      break;
    case TypedField::kNone:
      break;
  }
  return out;
}

// Assigns roles and linear layers from how nodes consume initializers.
void BuildOnnxArchitecture(const GraphView& g, Model& m) {
  Architecture& a = m.arch;
  a.family = "onnx-graph";
  auto is_init = [&](const std::string& n) { return m.tensors.contains(n); };
  auto set_role = [&](const std::string& n, TensorRole r) {
    if (is_init(n) && !a.roles.count(n)) a.roles[n] = r;
  };
  for (int i = 0; i < g.node_size(); ++i) {
    const GraphNode& node = g.node(i);
    const std::string& op = node.op_type();
    const std::string label = node.name().empty() ? (node.output_size() ? node.output(0) : op) : node.name();
    if ((op == "MatMul" || op == "Gemm") && node.input_size() >= 2 && is_init(node.input(1))) {
      const Tensor& w = m.tensors.at(node.input(1));
      if (w.shape().size() != 2) continue;
      const bool trans_b = node.IntAttribute("transB", 0) != 0;
      LinearLayer l{label, op, node.input(1), "", 0, 0};
      l.in_features = trans_b ? w.shape()[1] : w.shape()[0];
      l.out_features = trans_b ? w.shape()[0] : w.shape()[1];
      l.out_axis = trans_b ? 0 : 1;
      if (op == "Gemm" && node.input_size() >= 3 && is_init(node.input(2))) {
        l.bias = node.input(2);
        set_role(l.bias, TensorRole::kBias);
      }
      set_role(l.weight, TensorRole::kLinearWeight);
      a.other_linears.push_back(l);
    } else if ((op == "Conv" || op == "ConvTranspose") && node.input_size() >= 2 && is_init(node.input(1))) {
      const Tensor& w = m.tensors.at(node.input(1));
      LinearLayer l{label, op, node.input(1), "", 0, 0};
      if (!w.shape().empty()) l.out_features = w.shape()[0];
      l.in_features = w.numel() / std::max<int64_t>(1, l.out_features);
      if (node.input_size() >= 3 && is_init(node.input(2))) {
        l.bias = node.input(2);
        set_role(l.bias, TensorRole::kBias);
      }
      set_role(l.weight, TensorRole::kConvWeight);
      a.other_linears.push_back(l);
    } else if (op == "Gather" && node.input_size() >= 1 && is_init(node.input(0))) {
      set_role(node.input(0), TensorRole::kEmbedding);
      if (a.embedding.empty()) a.embedding = node.input(0);
    } else if (op.find("Normalization") != std::string::npos) {
      for (int k = 1; k < node.input_size(); ++k) set_role(node.input(k), TensorRole::kNorm);
    }
  }
  // The language-model head: a MatMul/Gemm weight named lm_head, or (in graphs with a token
  // embedding) the one whose product is a graph output. It keeps its precision by default,
  // as lm_head does in safetensors checkpoints.
  for (int i = 0; i < g.node_size(); ++i) {
    const GraphNode& node = g.node(i);
    if ((node.op_type() != "MatMul" && node.op_type() != "Gemm") || node.input_size() < 2 ||
        !is_init(node.input(1)) || node.output_size() < 1)
      continue;
    const std::string& w = node.input(1);
    const bool named = w.find("lm_head") != std::string::npos;
    const bool final_product = !a.embedding.empty() && g.IsOutput(node.output(0));
    if ((named || final_product) && a.roles.count(w) && a.roles[w] == TensorRole::kLinearWeight) {
      a.roles[w] = TensorRole::kLmHead;
      if (a.lm_head.empty()) a.lm_head = w;
    }
  }
  for (const auto& n : m.tensors.names())
    set_role(n, m.tensors.at(n).shape().size() <= 1 ? TensorRole::kBias : TensorRole::kOther);
  BuildOnnxBlocks(g, m);
}

}  // namespace

void RebuildOnnxArchitecture(Model& model) {
  const GraphView* g = ModelGraph(model);
  if (!g) return;
  model.arch = {};
  BuildOnnxArchitecture(*g, model);
}

const onnx::ModelProto* OnnxModelProto(const Model& model) {
  const auto* p = dynamic_cast<const OnnxPayload*>(model.payload.get());
  return p ? &p->proto : nullptr;
}

absl::Status OnnxPayload::DropValueInfo(const std::vector<std::string>& values) {
  ViewChanged();
  const std::set<std::string> drop(values.begin(), values.end());
  auto* vi = proto.mutable_graph()->mutable_value_info();
  for (int i = vi->size() - 1; i >= 0; --i) {
    if (drop.count(vi->Get(i).name())) vi->DeleteSubrange(i, 1);
  }
  return absl::OkStatus();
}

absl::Status OnnxPayload::SetNodeAttribute(const std::string& node, const std::string& attr, int64_t value) {
  ViewChanged();
  for (auto& n : *proto.mutable_graph()->mutable_node()) {
    if (n.name() != node && (n.output_size() == 0 || n.output(0) != node || !n.name().empty())) continue;
    for (auto& a : *n.mutable_attribute()) {
      if (a.name() == attr) {
        a.set_i(value);
        return absl::OkStatus();
      }
    }
    AddIntAttribute(n, attr.c_str(), value);
    return absl::OkStatus();
  }
  return NotFound("no ONNX node '{}'", node);
}

absl::StatusOr<std::vector<std::string>> OnnxPayload::Bypass(Model& model,
                                                             const std::map<std::string, std::string>& bypass) {
  ViewChanged();
  auto* g = proto.mutable_graph();
  auto resolve = [&](std::string v) {  // follow chains of bypasses
    for (int hops = 0; hops < 1 << 20; ++hops) {
      auto it = bypass.find(v);
      if (it == bypass.end()) break;
      v = it->second;
    }
    return v;
  };
  for (auto& n : *g->mutable_node())
    for (auto& in : *n.mutable_input())
      if (!in.empty() && bypass.count(in)) in = resolve(in);
  std::set<std::string> outputs;  // graph outputs still produced by their original node
  const int first_identity = g->node_size();
  for (const auto& o : g->output()) {
    if (!bypass.count(o.name())) {
      outputs.insert(o.name());
      continue;
    }
    auto* id = g->add_node();
    id->set_op_type("Identity");
    id->set_name(o.name() + "/bypass");
    id->add_input(resolve(o.name()));
    id->add_output(o.name());
  }
  // Delete nodes none of whose outputs is read, until none is left (the bypassed producers
  // and everything only they fed). Nodes are in topological order: one backward sweep.
  std::set<std::string> read(outputs);
  std::vector<bool> keep(g->node_size(), false);
  std::set<std::string> removed_values;
  for (int i = g->node_size() - 1; i >= 0; --i) {
    const auto& n = g->node(i);
    keep[i] = i >= first_identity;  // the Identities now producing bypassed graph outputs
    for (const auto& o : n.output()) keep[i] = keep[i] || read.count(o);
    if (!keep[i]) {
      for (const auto& o : n.output()) removed_values.insert(o);
      continue;
    }
    for (const auto& in : n.input()) read.insert(in);
  }
  auto* nodes = g->mutable_node();
  int w = 0;
  for (int i = 0; i < nodes->size(); ++i)
    if (keep[i]) nodes->SwapElements(w++, i);
  nodes->DeleteSubrange(w, nodes->size() - w);
  std::vector<std::string> erased;
  auto* inits = g->mutable_initializer();
  std::set<std::string> gone;  // deleted initializers
  for (int i = inits->size() - 1; i >= 0; --i) {
    const std::string name = inits->Get(i).name();
    if (read.count(name)) continue;
    inits->DeleteSubrange(i, 1);
    gone.insert(name);
    if (model.tensors.Erase(name)) erased.push_back(name);
  }
  auto* vi = g->mutable_value_info();
  for (int i = vi->size() - 1; i >= 0; --i)
    if (removed_values.count(vi->Get(i).name())) vi->DeleteSubrange(i, 1);
  // IR < 4 graphs also list initializers as graph inputs: drop those of deleted initializers.
  auto* gin = g->mutable_input();
  for (int i = gin->size() - 1; i >= 0; --i)
    if (gone.count(gin->Get(i).name())) gin->DeleteSubrange(i, 1);
  model.arch = {};
  ViewChanged();
  BuildOnnxArchitecture(view(), model);
  std::sort(erased.begin(), erased.end());
  return erased;
}

absl::StatusOr<std::vector<uint8_t>> OnnxInlineTensorBytes(const onnx::TensorProto& t, DType dtype,
                                                           const std::string& what) {
  Shape shape(t.dims().begin(), t.dims().end());
  // Inline data lives in a protobuf (< 2 GiB), so more than 2^33 elements cannot be real.
  ASSIGN_OR_RETURN(const int64_t numel, ShapeElements(shape, what, int64_t{1} << 33));
  if (t.data_location() == onnx::TensorProto::EXTERNAL) {
    return Unimplemented("{}: external data is only read for graph initializers", what);
  }
  const uint64_t expect = DTypeBytes(dtype, numel);
  if (t.has_raw_data()) {
    if (t.raw_data().size() != expect) {
      return DataLoss("{}: raw_data has {} bytes but {} {} needs {}", what, t.raw_data().size(), DTypeName(dtype),
                      ShapeString(shape), expect);
    }
    return std::vector<uint8_t>(t.raw_data().begin(), t.raw_data().end());
  }
  return TypedFieldBytes(t, dtype, numel, what);
}

namespace {

// Weights stored in Constant nodes (some exporters, e.g. Paddle2ONNX, do this) become
// initializers, so passes see them like any other weight: a Constant whose `value` is a
// floating-point tensor of two or more elements (weights, biases, normalization parameters),
// not a graph output, moves into the initializer list and the node is dropped. IR versions below 4 require initializers to be graph inputs, so those
// models are left alone.
void LiftConstantWeights(onnx::ModelProto& proto) {
  if (proto.ir_version() < 4) return;
  onnx::GraphProto* g = proto.mutable_graph();
  std::set<std::string> outputs, names;
  for (const auto& o : g->output()) outputs.insert(o.name());
  for (const auto& i : g->initializer()) names.insert(i.name());
  auto* nodes = g->mutable_node();
  for (int i = nodes->size() - 1; i >= 0; --i) {
    const auto& n = nodes->Get(i);
    if (n.op_type() != "Constant" || !(n.domain().empty() || n.domain() == "ai.onnx") || n.output_size() != 1 ||
        n.attribute_size() != 1 || n.attribute(0).name() != "value" || !n.attribute(0).has_t())
      continue;
    const auto& t = n.attribute(0).t();
    auto dt = DTypeFromOnnx(t.data_type());
    // Left as a Constant when its shape is negative or overflows: the reader refuses it later.
    const int64_t numel = CheckedElements({t.dims().data(), static_cast<size_t>(t.dims_size())}).value_or(0);
    if (!dt.ok() || !IsFloating(*dt) || t.dims_size() < 1 || numel < 2 ||
        t.data_location() == onnx::TensorProto::EXTERNAL ||
        outputs.count(n.output(0)) || names.count(n.output(0)))
      continue;
    onnx::TensorProto* init = g->add_initializer();
    *init = t;
    init->set_name(n.output(0));
    names.insert(n.output(0));
    nodes->DeleteSubrange(i, 1);
  }
}

}  // namespace

absl::StatusOr<DType> DTypeFromOnnx(int onnx_type) {
  for (const auto& t : kOnnxTypes) {
    if (t.onnx == onnx_type) return t.type;
  }
  return Unimplemented("ONNX tensor data type {} is not supported", onnx_type);
}

int OnnxFromDType(DType t) {
  for (const auto& o : kOnnxTypes) {
    if (o.type == t) return o.onnx;
  }
  return 0;
}

absl::StatusOr<Model> LoadOnnx(const std::string& path) {
  ASSIGN_OR_RETURN(auto file, MappedFile::Open(path));
  if (file->size() > static_cast<size_t>(INT32_MAX)) {
    return InvalidArgument(
        "{}: the .onnx file is {} bytes; files over 2 GiB must keep weights "
        "in external data",
        path, file->size());
  }
  auto payload = std::make_shared<OnnxPayload>();
  onnx::ModelProto& proto = payload->proto;
  if (file->size() == 0 || !proto.ParseFromArray(file->data(), static_cast<int>(file->size()))) {
    return DataLoss("{}: not a valid ONNX model (protobuf parse failed; truncated or not ONNX)", path);
  }
  if (!proto.has_graph()) return DataLoss("{}: ONNX model has no graph", path);
  Model m;
  m.format = ModelFormat::kOnnx;
  m.source = path;
  for (const auto& p : proto.metadata_props()) m.metadata[p.key()] = p.value();
  const std::string dir = fs::path(path).parent_path().string();
  std::map<std::string, std::shared_ptr<MappedFile>> external_files;
  LiftConstantWeights(proto);

  for (auto& init : *proto.mutable_graph()->mutable_initializer()) {
    const std::string what = fmt::format("{}: initializer '{}'", path, init.name());
    auto dt = DTypeFromOnnx(init.data_type());
    if (!dt.ok()) continue;  // strings, complex, fnuz: left inline in the graph, untouched
    Shape shape(init.dims().begin(), init.dims().end());
    RETURN_IF_ERROR(ShapeElements(shape, what).status());
    const uint64_t expect = DTypeBytes(*dt, NumElements(shape));
    if (init.name().empty()) return DataLoss("{}: an initializer has no name", path);
    if (m.tensors.contains(init.name())) return DataLoss("{}: initializer name appears twice", what);
    std::shared_ptr<const Buffer> data;
    if (init.data_location() == onnx::TensorProto::EXTERNAL) {
      std::string location;
      uint64_t offset = 0, length = expect;
      bool has_length = false;
      for (const auto& kv : init.external_data()) {
        if (kv.key() == "location")
          location = kv.value();
        else if (kv.key() == "offset") {
          ASSIGN_OR_RETURN(offset, ParseU64(kv.value(), what + " offset"));
        } else if (kv.key() == "length") {
          ASSIGN_OR_RETURN(length, ParseU64(kv.value(), what + " length"));
          has_length = true;
        }
      }
      if (location.empty()) return DataLoss("{}: external data without a 'location'", what);
      ASSIGN_OR_RETURN(std::string full, ResolveInside(dir, location, what));
      auto& ext = external_files[full];
      if (!ext) {
        auto opened = MappedFile::Open(full);
        if (!opened.ok()) return Annotate(opened.status(), what + ": external data");
        ext = *opened;
      }
      if (has_length && length != expect) {
        return DataLoss("{}: external length {} but {} {} needs {} bytes", what, length, DTypeName(*dt),
                        ShapeString(shape), expect);
      }
      if (offset > ext->size() || ext->size() - offset < expect) {
        return DataLoss("{}: external data [{}, {}) lies past the end of '{}' ({} bytes); truncated?", what,
                        offset, offset + expect, location, ext->size());
      }
      data = std::make_shared<SliceBuffer>(ext, offset, expect);
    } else {
      ASSIGN_OR_RETURN(auto bytes, OnnxInlineTensorBytes(init, *dt, what));
      data = std::make_shared<OwnedBuffer>(std::move(bytes));
    }
    m.tensors.Set(init.name(), Tensor(*dt, shape, std::move(data)));
    payload->extracted[init.name()] = *dt;
    // Keep only the declaration in the payload; the store owns the bytes.
    init.clear_raw_data();
    init.clear_external_data();
    init.clear_data_location();
    init.clear_float_data();
    init.clear_int32_data();
    init.clear_int64_data();
    init.clear_double_data();
    init.clear_uint64_data();
  }
  BuildOnnxArchitecture(payload->view(), m);
  m.inputs.push_back(path);
  for (const auto& [file, mapped] : external_files) m.inputs.push_back(file);
  m.payload = std::move(payload);
  return m;
}

absl::StatusOr<std::vector<std::string>> WriteOnnx(const Model& model, const std::string& dir,
                                                   const std::string& file_name, const OnnxWriteOptions& opts,
                                                   ProgressSink* progress) {
  auto* payload = dynamic_cast<const OnnxPayload*>(model.payload.get());
  if (!payload) return InvalidArgument("cannot write ONNX: the model was not read from ONNX");
  onnx::ModelProto proto = payload->proto;
  onnx::GraphProto* g = proto.mutable_graph();
  OnnxGraphEdit edit(g, payload->view());
  const std::set<std::string>& graph_io = edit.graph_io;

  const int64_t total = model.tensors.TotalBytes();
  const bool external = opts.external == OnnxWriteOptions::External::kAlways ||
                        (opts.external == OnnxWriteOptions::External::kAuto &&
                         total > (int64_t{1} << 31) - (int64_t{64} << 20));
  const std::string data_name = opts.data_name.empty() ? file_name + ".data" : opts.data_name;
  FileWriter data_file;
  if (external) RETURN_IF_ERROR(data_file.Open((fs::path(dir) / data_name).string()));

  for (const auto& o : proto.opset_import()) {
    if (o.domain().empty() || o.domain() == "ai.onnx") edit.opset = o.version();
  }
  google::protobuf::RepeatedPtrField<onnx::TensorProto> inits;
  std::set<std::string> written;
  int64_t done = 0;
  std::function<absl::Status(const std::string&, const Tensor&, std::optional<DType>)> emit;
  edit.add_initializer = [&](const std::string& name, const Tensor& t) {
    return emit(name, t, std::nullopt);
  };
  emit = [&](const std::string& name, const Tensor& t, std::optional<DType> declared) -> absl::Status {
    if (t.quant()) return EmitQuantizedWeight(edit, name, t, declared);
    if (t.factors()) return EmitLowRankWeight(edit, name, t, declared);
    onnx::TensorProto* out = inits.Add();
    std::string stored = name;
    if (declared && *declared != t.dtype()) {
      // A pass changed the element type: store the new type and cast back at load so the
      // graph's consumers see the type they were built for.
      if (graph_io.count(name)) {
        return Unimplemented("initializer '{}' is also a graph input or output; cannot change its dtype",
                             name);
      }
      stored = fmt::format("{}__{}", name, DTypeName(t.dtype()));
      onnx::NodeProto cast;
      cast.set_op_type("Cast");
      cast.set_name("compress_cast_" + name);
      cast.add_input(stored);
      cast.add_output(name);
      AddIntAttribute(cast, "to", OnnxFromDType(*declared));
      edit.front.push_back(std::move(cast));
    }
    const int onnx_type = OnnxFromDType(t.dtype());
    if (onnx_type == 0)
      return InvalidArgument("tensor '{}': dtype {} has no ONNX type", name, DTypeName(t.dtype()));
    out->set_name(stored);
    out->set_data_type(onnx_type);
    for (int64_t d : t.shape()) out->add_dims(d);
    ASSIGN_OR_RETURN(auto bytes, t.Data());
    if (external && t.nbytes() >= opts.inline_threshold) {
      uint64_t pad = (4096 - data_file.written() % 4096) % 4096;
      static const std::vector<uint8_t> kZeros(4096, 0);
      RETURN_IF_ERROR(data_file.Write(kZeros.data(), pad));
      const uint64_t offset = data_file.written();
      RETURN_IF_ERROR(data_file.Write(bytes->data(), bytes->size()));
      out->set_data_location(onnx::TensorProto::EXTERNAL);
      auto add_kv = [&](const char* k, const std::string& v) {
        auto* e = out->add_external_data();
        e->set_key(k);
        e->set_value(v);
      };
      add_kv("location", data_name);
      add_kv("offset", std::to_string(offset));
      add_kv("length", std::to_string(bytes->size()));
    } else {
      out->set_raw_data(bytes->data(), bytes->size());
    }
    t.ReleasePages();
    if (progress) progress->Update("write", ++done, static_cast<int64_t>(model.tensors.size()));
    return absl::OkStatus();
  };

  for (const auto& init : g->initializer()) {
    auto it = payload->extracted.find(init.name());
    if (it == payload->extracted.end()) {
      *inits.Add() = init;  // not ours (string/complex): unchanged
      continue;
    }
    const Tensor* t = model.tensors.find(init.name());
    if (!t) continue;  // removed by a pass
    RETURN_IF_ERROR(emit(init.name(), *t, it->second));
    written.insert(init.name());
  }
  for (const auto& name : model.tensors.names()) {
    if (!written.count(name)) RETURN_IF_ERROR(emit(name, model.tensors.at(name), std::nullopt));
  }
  for (const auto& [weight, spec] : model.input_quant) RETURN_IF_ERROR(EmitInputQuantization(edit, weight, spec, model.tensors.find(weight)));
  if (model.kv_cache) {
    return Unimplemented("{}: ONNX outputs do not store KV-cache quantization; write a safetensors checkpoint",
                         model.source);
  }
  g->mutable_initializer()->Swap(&inits);
  edit.ApplyNodes();
  if (edit.uses_ms_domain) {
    bool has = false;
    for (const auto& o : proto.opset_import()) has = has || o.domain() == "com.microsoft";
    if (!has) {
      auto* o = proto.add_opset_import();
      o->set_domain("com.microsoft");
      o->set_version(1);
    }
  }
  proto.clear_metadata_props();
  for (const auto& [k, v] : model.metadata) {
    auto* p = proto.add_metadata_props();
    p->set_key(k);
    p->set_value(v);
  }
  std::vector<std::string> files;
  if (external) {
    RETURN_IF_ERROR(data_file.Close());
    files.push_back(data_name);
  }
  std::string bytes;
  if (!proto.SerializeToString(&bytes)) {
    return InvalidArgument("{}: the graph is over 2 GiB even without weights; cannot serialize", file_name);
  }
  RETURN_IF_ERROR(WriteSmallFile((fs::path(dir) / file_name).string(), bytes));
  files.push_back(file_name);
  return files;
}

absl::Status CheckOnnxFile(const std::string& path) {
  try {
    onnx::checker::check_model(path);
  } catch (const std::exception& e) {
    std::string msg = e.what();
    if (auto nl = msg.find('\n'); nl != std::string::npos) msg.resize(nl);
    return InvalidArgument("{}: ONNX checker: {}", path, msg);
  }
  return absl::OkStatus();
}

}  // namespace compress
