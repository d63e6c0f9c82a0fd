// Quantized weights as ONNX initializers and nodes.
#include "formats/onnx_quant.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/dtype.h"
#include "core/status.h"
#include "formats/onnx_structure.h"
#include "formats/quantized_safetensors.h"

namespace compress {

void AddIntAttribute(onnx::NodeProto& node, const char* name, int64_t value) {
  auto* at = node.add_attribute();
  at->set_name(name);
  at->set_type(onnx::AttributeProto::INT);
  at->set_i(value);
}

OnnxGraphEdit::OnnxGraphEdit(onnx::GraphProto* g, const GraphView& v) : graph(g), view(v) {
  for (const auto& in : g->input()) graph_io.insert(in.name());
  for (const auto& out : g->output()) graph_io.insert(out.name());
}

void OnnxGraphEdit::ApplyNodes() {
  if (front.empty() && after.empty()) return;
  google::protobuf::RepeatedPtrField<onnx::NodeProto> nodes;
  for (auto& n : front) *nodes.Add() = std::move(n);
  for (int i = 0; i < graph->node_size(); ++i) {
    *nodes.Add() = graph->node(i);
    if (auto it = after.find(i); it != after.end()) {
      for (auto& n : it->second) *nodes.Add() = std::move(n);
    }
  }
  graph->mutable_node()->Swap(&nodes);
  front.clear();
  after.clear();
}

namespace {

onnx::NodeProto Node(const std::string& op, std::vector<std::string> inputs, const std::string& output,
                     const std::string& name) {
  onnx::NodeProto n;
  n.set_op_type(op);
  n.set_name(name);
  for (auto& i : inputs) n.add_input(i);
  n.add_output(output);
  return n;
}

Tensor BytesTensor(DType t, Shape shape, std::vector<uint8_t> bytes) {
  return Tensor(t, std::move(shape), std::make_shared<OwnedBuffer>(std::move(bytes)));
}

// A 1-D int64 constant.
Tensor I64Tensor(const std::vector<int64_t>& v) { return compress::I64Tensor(v, {static_cast<int64_t>(v.size())}); }

// The single MatMul reading `name` as its B input, or -1.
int SoleMatMulB(const OnnxGraphEdit& e, const std::string& name) {
  const std::vector<GraphUse>& uses = e.view.Consumers(name);
  if (uses.size() != 1 || uses[0].slot != 1) return -1;
  return e.view.node(uses[0].node).op_type() == "MatMul" ? uses[0].node : -1;
}

// 4-bit int codes as MatMulNBits: B uint8 [N, blocks, block_size/2] (low nibble first,
// codes + 8), scales [N * blocks], zero points (codes + 8, two per byte) when asymmetric.
absl::Status EmitMatMulNBits(OnnxGraphEdit& e, const std::string& name, const Tensor& t, int node_index) {
  const QuantInfo& q = *t.quant();
  const int64_t K = t.shape()[0], N = t.shape()[1], blocks = q.groups, bs = q.group_size;
  ASSIGN_OR_RETURN(auto data, t.Data());
  const int8_t* codes = reinterpret_cast<const int8_t*>(data->data());
  std::vector<uint8_t> packed(N * blocks * (bs / 2), 0);
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t k = 0; k < K; ++k) {
      SetNibble(packed.data(), n * K + k, static_cast<uint8_t>(codes[k * N + n] + 8));
    }
  }
  RETURN_IF_ERROR(
      e.add_initializer(name + "__nbits", BytesTensor(DType::kU8, {N, blocks, bs / 2}, std::move(packed))));
  RETURN_IF_ERROR(
      e.add_initializer(name + "__scales", *Tensor::FromF32(q.scales(), {N * blocks}, DType::kF32)));
  onnx::NodeProto& node = *e.graph->mutable_node(node_index);
  const std::string a = node.input(0);
  node.clear_input();
  node.add_input(a);
  node.add_input(name + "__nbits");
  node.add_input(name + "__scales");
  if (!q.symmetric) {
    const int64_t zp_bytes = (blocks + 1) / 2;
    std::vector<uint8_t> zp(N * zp_bytes, 0);
    for (int64_t n = 0; n < N; ++n) {
      for (int64_t b = 0; b < blocks; ++b) {
        SetNibble(zp.data() + n * zp_bytes, b, static_cast<uint8_t>(q.zero_points()[n * blocks + b] + 8));
      }
    }
    RETURN_IF_ERROR(e.add_initializer(name + "__zp", BytesTensor(DType::kU8, {N * zp_bytes}, std::move(zp))));
    node.add_input(name + "__zp");
  }
  node.set_op_type("MatMulNBits");
  node.set_domain("com.microsoft");
  AddIntAttribute(node, "K", K);
  AddIntAttribute(node, "N", N);
  AddIntAttribute(node, "bits", 4);
  AddIntAttribute(node, "block_size", bs);
  AddIntAttribute(node, "accuracy_level", 0);
  e.uses_ms_domain = true;
  return absl::OkStatus();
}

// Signed 8-bit values as uint8 v + 128 (the same values with a zero point 128 higher).
std::vector<uint8_t> Offset128(std::span<const uint8_t> signed_bytes) {
  std::vector<uint8_t> u(signed_bytes.size());
  for (size_t i = 0; i < u.size(); ++i) u[i] = static_cast<uint8_t>(signed_bytes[i] ^ 0x80);
  return u;
}

// Codes + per-axis DequantizeLinear producing `name`: uint8 codes + 128 with zero points + 128
// (128 when symmetric), the same values as int8 codes with zero points 0. uint8 because ONNX
// Runtime's int8 x int8-weight kernels on CPUs without AVX-512 VNNI add pairs of products in 16
// bits (VPMADDUBSW) and saturate: a graph with int8 weights that its optimizer fuses with
// quantized inputs (static W8A8 at level "all", MatMulInteger) then computes wrong products
// there; its uint8 x uint8 kernels do not.
absl::Status EmitDequantizeLinear(OnnxGraphEdit& e, const std::string& name, const Tensor& t) {
  const QuantInfo& q = *t.quant();
  ASSIGN_OR_RETURN(auto codes, t.Data());
  RETURN_IF_ERROR(
      e.add_initializer(name + "__q", BytesTensor(DType::kU8, t.shape(), Offset128({codes->data(), codes->size()}))));
  RETURN_IF_ERROR(e.add_initializer(name + "__scale", *Tensor::FromF32(q.scales(), {q.channels}, DType::kF32)));
  std::vector<uint8_t> zp(static_cast<size_t>(q.channels), 128);
  if (!q.symmetric) {
    for (int64_t c = 0; c < q.channels; ++c) zp[c] = static_cast<uint8_t>(q.zero_points()[c] + 128);
  }
  RETURN_IF_ERROR(e.add_initializer(name + "__zp", BytesTensor(DType::kU8, {q.channels}, std::move(zp))));
  onnx::NodeProto dq = Node("DequantizeLinear", {name + "__q", name + "__scale", name + "__zp"}, name,
                            "compress_dequantize_" + name);
  AddIntAttribute(dq, "axis", q.channel_axis);
  e.front.push_back(std::move(dq));
  return absl::OkStatus();
}

// int8 codes + Cast / (Sub zero point) / Mul by the per-channel scale broadcast along the
// channel axis, and a Cast to f16 for an f16 consumer: standard ops of opset 7 on, for graphs
// below opset 13 (whose DequantizeLinear has no axis) or with f16 weights. The values are the
// f32 products q x s (then rounded to f16), what `dequantize` gives.
absl::Status EmitCastMulDequantize(OnnxGraphEdit& e, const std::string& name, const Tensor& t, DType consumer) {
  const QuantInfo& q = *t.quant();
  ASSIGN_OR_RETURN(auto codes, t.Data());
  RETURN_IF_ERROR(e.add_initializer(name + "__q", Tensor(DType::kI8, t.shape(), codes)));
  Shape bshape(t.shape().size(), 1);  // the scales' broadcast shape: channels along the channel axis
  bshape[q.channel_axis] = q.channels;
  RETURN_IF_ERROR(e.add_initializer(name + "__scale", *Tensor::FromF32(q.scales(), bshape, DType::kF32)));
  const std::string p = name + "__", n = "compress_dequantize_" + name + "_";
  onnx::NodeProto cast = Node("Cast", {p + "q"}, p + "qf", n + "cast");
  AddIntAttribute(cast, "to", onnx::TensorProto::FLOAT);
  e.front.push_back(std::move(cast));
  std::string codes_f = p + "qf";
  if (!q.symmetric) {
    std::vector<float> zp(q.zero_points().begin(), q.zero_points().end());
    RETURN_IF_ERROR(e.add_initializer(name + "__zp", *Tensor::FromF32(zp, bshape, DType::kF32)));
    e.front.push_back(Node("Sub", {codes_f, p + "zp"}, p + "centered", n + "zero_point"));
    codes_f = p + "centered";
  }
  if (consumer == DType::kF32) {
    e.front.push_back(Node("Mul", {codes_f, p + "scale"}, name, n + "scale"));
    return absl::OkStatus();
  }
  e.front.push_back(Node("Mul", {codes_f, p + "scale"}, p + "f32", n + "scale"));
  onnx::NodeProto half = Node("Cast", {p + "f32"}, name, n + "to_f16");
  AddIntAttribute(half, "to", onnx::TensorProto::FLOAT16);
  e.front.push_back(std::move(half));
  return absl::OkStatus();
}

}  // namespace

namespace {

// Whether `w` was written as codes + per-output-channel DequantizeLinear (EmitDequantizeLinear:
// `<w>__q` uint8 [K, N], `<w>__scale` [N], `<w>__zp` 128s) from symmetric int8 codes, the weight
// form MatMulInteger reads directly (with B's zero points).
bool SymmetricInt8PerColumn(const Tensor* w) {
  if (!w || !w->quant() || w->shape().size() != 2) return false;
  const QuantInfo& q = *w->quant();
  return q.bits == 8 && q.channel_axis == 1 && q.per_channel(w->shape()[0]) && q.symmetric &&
         q.outlier_inputs.empty() && !q.codebook() && !q.fp8();
}

// y = MatMul(x, W) with dynamic uint8 inputs and int8 per-column weights, in integers:
// DynamicQuantizeLinear(x) -> (x_q, x_scale, x_zp); MatMulInteger(x_q, W_q, x_zp) -> int32;
// Cast to float; Mul by x_scale x w_scale[N]. The MatMul node itself becomes the last Mul.
void EmitMatMulInteger(OnnxGraphEdit& e, const std::string& weight, int matmul, const std::string& base,
                       std::vector<onnx::NodeProto>& slot) {
  onnx::NodeProto& mm = *e.graph->mutable_node(matmul);
  onnx::NodeProto quant = Node("DynamicQuantizeLinear", {mm.input(0)}, base + "_q", "compress_quantize_" + base);
  quant.add_output(base + "_scale");
  quant.add_output(base + "_zp");
  slot.push_back(std::move(quant));
  slot.push_back(Node("MatMulInteger", {base + "_q", weight + "__q", base + "_zp", weight + "__zp"}, base + "_i32",
                      "compress_matmul_integer_" + base));
  onnx::NodeProto cast = Node("Cast", {base + "_i32"}, base + "_f32", "compress_cast_" + base);
  AddIntAttribute(cast, "to", onnx::TensorProto::FLOAT);
  slot.push_back(std::move(cast));
  slot.push_back(
      Node("Mul", {base + "_scale", weight + "__scale"}, base + "_out_scale", "compress_out_scale_" + base));
  mm.clear_input();
  mm.add_input(base + "_f32");
  mm.add_input(base + "_out_scale");
  mm.set_op_type("Mul");
}

}  // namespace

absl::Status EmitInputQuantization(OnnxGraphEdit& e, const std::string& weight, const ActivationQuant& q,
                                   const Tensor* w) {
  const bool static_int8 = q.format == ActFormat::kInt && q.bits == 8 && !q.dynamic &&
                           q.granularity == ActivationQuant::Granularity::kTensor && q.scale > 0 &&
                           std::isfinite(q.scale) && !q.f16_outliers && q.channel_exp.empty() && !q.zero_point;
  const bool dynamic_uint8 = q.format == ActFormat::kInt && q.bits == 8 && q.dynamic && q.zero_point &&
                             q.granularity == ActivationQuant::Granularity::kTensor && !q.f16_outliers &&
                             q.channel_exp.empty();
  if (!static_int8 && !dynamic_uint8) {
    return Unimplemented(
        "'{}': ONNX outputs store int8 inputs per tensor, static (QuantizeLinear/DequantizeLinear) or dynamic with a "
        "zero point (DynamicQuantizeLinear); its inputs are {} (write a safetensors checkpoint, or use "
        "quantize-w8a8{{granularity=tensor}})",
        weight, q.Describe());
  }
  if (e.opset < (dynamic_uint8 ? 11 : 10)) {
    return Unimplemented("'{}': {} needs opset >= {}; the graph imports {}", weight,
                         dynamic_uint8 ? "DynamicQuantizeLinear" : "QuantizeLinear", dynamic_uint8 ? 11 : 10, e.opset);
  }
  int uses = 0, integer_uses = 0;
  const std::vector<GraphUse>& consumers = e.view.Consumers(weight);
  for (const GraphUse& u : consumers) {
    const GraphNode& n = e.view.node(u.node);
    const bool reader = n.domain().empty() && u.slot == 1 && n.input_size() >= 1 && !n.input(0).empty() &&
                        (n.op_type() == "MatMul" || n.op_type() == "Gemm" || n.op_type() == "Conv");
    if (!reader) continue;
    const std::string base = weight + "__in" + (uses ? "_" + std::to_string(uses) : "");
    auto& slot = u.node == 0 ? e.front : e.after[u.node - 1];  // right before the reader
    if (dynamic_uint8 && n.op_type() == "MatMul" && SymmetricInt8PerColumn(w)) {
      EmitMatMulInteger(e, weight, u.node, base, slot);
      ++uses;
      ++integer_uses;
      continue;
    }
    if (dynamic_uint8) {  // scale and zero point computed from the input by the graph
      onnx::NodeProto quant = Node("DynamicQuantizeLinear", {n.input(0)}, base + "_q", "compress_quantize_" + base);
      quant.add_output(base + "_scale");
      quant.add_output(base + "_zp");
      onnx::NodeProto dequant = Node("DequantizeLinear", {base + "_q", base + "_scale", base + "_zp"}, base + "_dq",
                                     "compress_dequantize_" + base);
      slot.push_back(std::move(quant));
      slot.push_back(std::move(dequant));
      e.graph->mutable_node(u.node)->set_input(0, base + "_dq");
      ++uses;
      continue;
    }
    if (uses == 0) {
      RETURN_IF_ERROR(e.add_initializer(weight + "__in_scale", *Tensor::FromF32(std::vector<float>{q.scale}, {}, DType::kF32)));
      // int8 codes as uint8 + 128 (saturating at the same inputs), as the weights are (EmitDequantizeLinear)
      RETURN_IF_ERROR(e.add_initializer(weight + "__in_zp", BytesTensor(DType::kU8, {}, std::vector<uint8_t>{128})));
    }
    onnx::NodeProto quant = Node("QuantizeLinear", {n.input(0), weight + "__in_scale", weight + "__in_zp"},
                                 base + "_q", "compress_quantize_" + base);
    onnx::NodeProto dequant = Node("DequantizeLinear", {base + "_q", weight + "__in_scale", weight + "__in_zp"},
                                   base + "_dq", "compress_dequantize_" + base);
    slot.push_back(std::move(quant));
    slot.push_back(std::move(dequant));
    e.graph->mutable_node(u.node)->set_input(0, base + "_dq");
    ++uses;
  }
  if (uses == 0) {
    return Unimplemented("'{}': its inputs are quantized but no MatMul, Gemm or Conv reads it as a weight", weight);
  }
  if (integer_uses == static_cast<int>(consumers.size())) {  // nothing reads the dequantized weight
    std::erase_if(e.front, [&](const onnx::NodeProto& n) { return n.name() == "compress_dequantize_" + weight; });
  }
  return absl::OkStatus();
}

namespace {

// 4-bit codebook codes: packed nibbles (element i of the row-major weight in byte i/2, low
// nibble first) decoded by Cast -> Mod/Div 16 -> Concat -> Reshape to the group layout ->
// Gather(levels) -> Mul(scales) -> Reshape to the weight's shape.
absl::Status EmitCodebookDecode(OnnxGraphEdit& e, const std::string& name, const Tensor& t) {
  const QuantInfo& q = *t.quant();
  const int64_t R = t.shape()[0], C = t.shape()[1];
  if ((R * C) % 2 != 0)
    return Unimplemented("initializer '{}': an odd element count cannot be written as nibbles", name);
  ASSIGN_OR_RETURN(auto data, t.Data());
  RETURN_IF_ERROR(e.add_initializer(
      name + "__codes", BytesTensor(DType::kU8, {R * C / 2}, PackBits({data->data(), data->size()}, 4))));
  RETURN_IF_ERROR(e.add_initializer(name + "__levels", *Tensor::FromF32(q.levels(), {16}, DType::kF32)));
  // Scales in the grouped layout: axis 0 ([out, in]) -> [R, groups, 1]; axis 1 -> [groups, 1, C].
  Shape grouped, sshape;
  std::vector<float> scales;
  if (q.channel_axis == 0) {
    grouped = {R, q.groups, q.group_size};
    sshape = {R, q.groups, 1};
    scales = q.scales();
  } else {
    grouped = {q.groups, q.group_size, C};
    sshape = {q.groups, 1, C};
    scales.resize(q.scales().size());
    for (int64_t ch = 0; ch < C; ++ch) {
      for (int64_t g = 0; g < q.groups; ++g) scales[g * C + ch] = q.scales()[ch * q.groups + g];
    }
  }
  RETURN_IF_ERROR(e.add_initializer(name + "__scales", *Tensor::FromF32(scales, sshape, DType::kF32)));
  std::vector<uint8_t> sixteen(4);
  const int32_t v16 = 16;
  std::memcpy(sixteen.data(), &v16, 4);
  RETURN_IF_ERROR(e.add_initializer(name + "__16", BytesTensor(DType::kI32, {}, std::move(sixteen))));
  RETURN_IF_ERROR(e.add_initializer(name + "__col_shape", I64Tensor({-1, 1})));
  RETURN_IF_ERROR(
      e.add_initializer(name + "__grouped_shape", I64Tensor({grouped[0], grouped[1], grouped[2]})));
  RETURN_IF_ERROR(e.add_initializer(name + "__shape", I64Tensor({R, C})));
  const std::string p = name + "__", n = "compress_decode_" + name + "_";
  onnx::NodeProto cast = Node("Cast", {p + "codes"}, p + "i32", n + "cast");
  AddIntAttribute(cast, "to", onnx::TensorProto::INT32);
  e.front.push_back(std::move(cast));
  e.front.push_back(Node("Mod", {p + "i32", p + "16"}, p + "lo", n + "lo"));
  e.front.push_back(Node("Div", {p + "i32", p + "16"}, p + "hi", n + "hi"));
  e.front.push_back(Node("Reshape", {p + "lo", p + "col_shape"}, p + "lo_col", n + "lo_col"));
  e.front.push_back(Node("Reshape", {p + "hi", p + "col_shape"}, p + "hi_col", n + "hi_col"));
  onnx::NodeProto concat = Node("Concat", {p + "lo_col", p + "hi_col"}, p + "pairs", n + "pairs");
  AddIntAttribute(concat, "axis", 1);
  e.front.push_back(std::move(concat));
  e.front.push_back(Node("Reshape", {p + "pairs", p + "grouped_shape"}, p + "idx", n + "idx"));
  onnx::NodeProto gather = Node("Gather", {p + "levels", p + "idx"}, p + "values", n + "lookup");
  AddIntAttribute(gather, "axis", 0);
  e.front.push_back(std::move(gather));
  e.front.push_back(Node("Mul", {p + "values", p + "scales"}, p + "scaled", n + "scale"));
  e.front.push_back(Node("Reshape", {p + "scaled", p + "shape"}, name, n + "reshape"));
  return absl::OkStatus();
}

// LLM.int8(): the int8 codes (zero at outlier inputs) through DequantizeLinear into the
// MatMul as before, and Y = MatMul(X, W_int8) + MatMul(Gather(X, outliers, axis=-1), W_outliers).
absl::Status EmitLlmInt8(OnnxGraphEdit& e, const std::string& name, const Tensor& t, int matmul) {
  const QuantInfo& q = *t.quant();
  const int64_t n = static_cast<int64_t>(q.outlier_inputs.size()), N = t.shape()[1];
  RETURN_IF_ERROR(EmitDequantizeLinear(e, name, t));
  RETURN_IF_ERROR(e.add_initializer(name + "__outlier_index", I64Tensor(q.outlier_inputs)));
  // Stored [n, N] (rows of the MatMul's B); QuantInfo keeps them channel-major [N, n].
  std::vector<float> rows_major(n * N);
  for (int64_t ch = 0; ch < N; ++ch) {
    for (int64_t j = 0; j < n; ++j) rows_major[j * N + ch] = q.outlier_values[ch * n + j];
  }
  RETURN_IF_ERROR(e.add_initializer(name + "__outliers", *Tensor::FromF32(rows_major, {n, N}, DType::kF16)));
  const std::string p = name + "__", nm = "compress_llm_int8_" + name + "_";
  onnx::NodeProto cast = Node("Cast", {p + "outliers"}, p + "outliers_f32", nm + "cast");
  AddIntAttribute(cast, "to", onnx::TensorProto::FLOAT);
  e.front.push_back(std::move(cast));
  onnx::NodeProto& mm = *e.graph->mutable_node(matmul);
  const std::string x = mm.input(0), y = mm.output(0);
  mm.set_output(0, p + "int8_path");
  auto& tail = e.after[matmul];
  onnx::NodeProto gather = Node("Gather", {x, p + "outlier_index"}, p + "x_outliers", nm + "gather");
  AddIntAttribute(gather, "axis", -1);
  tail.push_back(std::move(gather));
  tail.push_back(Node("MatMul", {p + "x_outliers", p + "outliers_f32"}, p + "f16_path", nm + "matmul"));
  tail.push_back(Node("Add", {p + "int8_path", p + "f16_path"}, y, nm + "add"));
  return absl::OkStatus();
}

}  // namespace

absl::Status EmitLowRankWeight(OnnxGraphEdit& e, const std::string& name, const Tensor& t,
                               std::optional<DType> declared) {
  const LowRankFactors& f = *t.factors();
  if (e.graph_io.count(name)) return Unimplemented("initializer '{}' is also a graph input or output", name);
  if (declared != t.dtype()) {
    return Unimplemented("initializer '{}': factorized weights keep the graph's element type", name);
  }
  const int64_t rows = t.shape()[0], cols = t.shape()[1];
  ASSIGN_OR_RETURN(Tensor a, Tensor::FromF32(f.a, {rows, f.rank}, t.dtype()));
  ASSIGN_OR_RETURN(Tensor b, Tensor::FromF32(f.b, {f.rank, cols}, t.dtype()));
  RETURN_IF_ERROR(e.add_initializer(name + "__lr_a", a));
  RETURN_IF_ERROR(e.add_initializer(name + "__lr_b", b));
  const int matmul = SoleMatMulB(e, name);
  if (matmul < 0) {  // rebuild W once at load
    e.front.push_back(Node("MatMul", {name + "__lr_a", name + "__lr_b"}, name, "compress_lowrank_" + name));
    return absl::OkStatus();
  }
  // X W = (X A) B: two thin MatMuls instead of one dense one.
  onnx::NodeProto& mm = *e.graph->mutable_node(matmul);
  const std::string y = mm.output(0);
  mm.set_input(1, name + "__lr_a");
  mm.set_output(0, name + "__xa");
  e.after[matmul].push_back(Node("MatMul", {name + "__xa", name + "__lr_b"}, y, "compress_lowrank_" + name));
  return absl::OkStatus();
}

absl::Status EmitQuantizedWeight(OnnxGraphEdit& e, const std::string& name, const Tensor& t,
                                 std::optional<DType> declared) {
  const QuantInfo& q = *t.quant();
  // inputs per output channel (a convolution kernel [M, C/group, k...]: all but axis 0)
  const int64_t in = t.numel() / std::max<int64_t>(1, t.shape()[q.channel_axis]);
  if (e.graph_io.count(name)) return Unimplemented("initializer '{}' is also a graph input or output", name);
  // Integer weights with one scale per channel have a form of standard ops for any opset from 7
  // and for f16 graphs; the other forms need opset 13 and f32 consumers.
  const bool plain_int = q.outlier_inputs.empty() && !q.codebook() && !q.fp8() && q.per_channel(in);
  if (plain_int && (declared == DType::kF32 || declared == DType::kF16) && e.opset >= 7 &&
      (declared != DType::kF32 || e.opset < 13)) {
    return EmitCastMulDequantize(e, name, t, *declared);
  }
  if (declared != DType::kF32) {
    return Unimplemented(
        "initializer '{}': quantized weights need a float32 consumer in the graph (an f16 one: integer weights "
        "with one scale per channel)",
        name);
  }
  if (e.opset < 13) {
    return Unimplemented(
        "initializer '{}': this quantized form is written for opset >= 13 (model has {}); integer weights with one "
        "scale per channel (group-size=0) are written for any opset >= 7",
        name, e.opset);
  }
  const int matmul = SoleMatMulB(e, name);
  if (!q.outlier_inputs.empty()) {
    if (matmul < 0 || q.channel_axis != 1) {
      return Unimplemented(
          "initializer '{}': LLM.int8() outliers are written only for a weight read solely as a MatMul's B",
          name);
    }
    return EmitLlmInt8(e, name, t, matmul);
  }
  if (q.codebook()) return EmitCodebookDecode(e, name, t);
  if (q.fp8()) return Unimplemented("initializer '{}': FP8 E4M3 weights are not written for ONNX yet", name);
  // ONNX Runtime 1.30 accepts MatMulNBits block sizes that are powers of two in [16, 256].
  const bool pow2_block =
      q.group_size >= 16 && q.group_size <= 256 && (q.group_size & (q.group_size - 1)) == 0;
  if (q.bits == 4 && q.channel_axis == 1 && pow2_block && matmul >= 0)
    return EmitMatMulNBits(e, name, t, matmul);
  if (!q.per_channel(in)) {
    return Unimplemented(
        "initializer '{}': group-wise int{} (group-size {}) is written only as MatMulNBits (4 bits, group "
        "16..256, weight read solely as a MatMul's B); use group-size=0",
        name, q.bits, q.group_size);
  }
  return EmitDequantizeLinear(e, name, t);
}

}  // namespace compress
