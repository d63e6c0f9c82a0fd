// How quantized and factorized weights are written into an ONNX graph (docs/formats.md):
//  - int, per channel: int8 codes + DequantizeLinear (per-axis), opset >= 13; below 13 or for
//    f16 consumers, Cast / Sub / Mul by the broadcast scales (opset >= 7); conv kernels keep
//    their shape with one scale per slice of axis 0;
//  - int4, group 16..256, read only as a MatMul's B: com.microsoft MatMulNBits;
//  - 4-bit codebooks (fp4 variants, nf4, mxfp4): packed nibbles and a lookup-decode
//    subgraph of standard ops (Cast, Mod, Div, Reshape, Concat, Gather, Mul), opset >= 13;
//  - LLM.int8() outliers: the int8 DequantizeLinear path plus, after the consuming MatMul, a
//    16-bit path Gather(x, outlier inputs) x W_outliers added to its output.
#pragma once

#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "core/act_quant.h"
#include "core/graph_ir.h"
#include "core/tensor.h"
#include "onnx/onnx_pb.h"

namespace compress {

void AddIntAttribute(onnx::NodeProto& node, const char* name, int64_t value);

// Edits collected while a graph's initializers are written, applied at the end.
struct OnnxGraphEdit {
  // `view` is the graph IR of `g` (the same nodes in the same order): its use-def index says
  // which nodes read each weight.
  OnnxGraphEdit(onnx::GraphProto* g, const GraphView& view);

  onnx::GraphProto* graph;
  const GraphView& view;
  int64_t opset = 0;
  std::set<std::string> graph_io;  // names the graph exposes (initializer-backed inputs too), which a rewrite must keep
  std::vector<onnx::NodeProto> front;                 // placed before the graph's own nodes
  std::map<int, std::vector<onnx::NodeProto>> after;  // placed right after node i
  bool uses_ms_domain = false;
  // Writes a plain (non-quantized) initializer.
  std::function<absl::Status(const std::string&, const Tensor&)> add_initializer;

  // Rebuilds the node list: front, then every node followed by its `after` nodes.
  void ApplyNodes();
};

// Writes quantized weight `name` (declared in the graph as `declared`) in one of the forms
// above; a form the graph cannot take is a one-line Unimplemented error.
absl::Status EmitQuantizedWeight(OnnxGraphEdit& e, const std::string& name, const Tensor& t,
                                 std::optional<DType> declared);

// The static per-tensor int8 input quantization of weight `weight` (Model::input_quant): each
// MatMul / Gemm / Conv reading the weight reads QuantizeLinear -> DequantizeLinear of its
// input (scale `<weight>__in_scale`, zero point 0), the pattern ONNX Runtime fuses with the
// weight's DequantizeLinear into int8 kernels. Any other activation scheme is a one-line
// Unimplemented error (ONNX has no per-token or f16-outlier form).
// Dynamic uint8 inputs (DynamicQuantizeLinear) of a MatMul whose weight `w` is int8 per output
// column and symmetric run as MatMulInteger on the codes, then Cast and Mul by x_scale x
// w_scale (ONNX Runtime's dynamic-quantization form); other readers get DynamicQuantizeLinear
// -> DequantizeLinear before the float product. `w`: the weight as written (may be null).
absl::Status EmitInputQuantization(OnnxGraphEdit& e, const std::string& weight, const ActivationQuant& q,
                                   const Tensor* w);

// A factorized weight W = A B: `<name>__lr_a`, `<name>__lr_b`; a MatMul reading W as its only
// B input becomes MatMul(MatMul(X, A), B), any other reader gets W = MatMul(A, B) at load.
absl::Status EmitLowRankWeight(OnnxGraphEdit& e, const std::string& name, const Tensor& t,
                               std::optional<DType> declared);

}  // namespace compress
