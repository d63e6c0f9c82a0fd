// The transformer structure of ONNX decoder graphs: residual sublayers, the attention and FFN
// projections inside them, and the constants that count heads and neurons. The loader builds
// the architecture view's blocks from it (formats/onnx_io.cc); the ONNX checkpoint editor
// (formats/onnx_edit.h) rewrites those constants after a structural pass sliced the weights.
//
// A sublayer is a residual Add y = r + f(r): one input r is the residual stream and the
// other depends on r through at least one weight-bearing MatMul / Gemm. The residual Adds
// form a chain (each one's r is the previous one's y); the longest chain is the decoder.
// A branch holding a Softmax is attention, otherwise FFN; blocks are numbered by attention
// sublayers (an FFN joins the block of the attention before it).
#pragma once

#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/graph_ir.h"
#include "core/model.h"

namespace compress {

struct OnnxSublayer {
  std::string add_output;  // the residual Add's output
  std::string residual;    // its residual input r
  bool attention = false;
  int block = 0;
  int64_t params = 0;      // parameters of the branch's weight-bearing nodes
  std::vector<int> nodes;  // the branch f: graph node indices, in graph order
};

// The values of an int64 constant (shape constants, Gather indices); core/tensor.h I64Tensor makes one.
absl::StatusOr<std::vector<int64_t>> ReadI64(const Tensor& t);

// The decoder's sublayers in graph order; an error when the graph has no residual chain.
// Needs the model's tensor roles (kLinearWeight marks the weight-bearing products).
absl::StatusOr<std::vector<OnnxSublayer>> FindOnnxSublayers(const GraphView& g, const Model& model);
absl::StatusOr<std::vector<OnnxSublayer>> FindOnnxSublayers(const Model& model);

// One weight-bearing product of a sublayer: its node and its weight, [out, in] when
// `out_axis` is 0 (Gemm transB=1), [in, out] otherwise (MatMul).
struct OnnxProjection {
  int node = -1;
  std::string weight;
  std::string bias;  // Gemm's C, or a 1-D constant added to the product's output
  int64_t out_features = 0, in_features = 0;
  int out_axis = 1;
};

// An attention sublayer in the form head pruning rewrites: q/k/v products (after an optional
// bias Add) reshaped to [..., heads, head_dim] by constant shapes, an optional constant
// Gather repeating key/value heads (GQA), and o's input merged by a constant Reshape.
struct OnnxAttention {
  OnnxSublayer sublayer;
  OnnxProjection q, k, v, o;
  int64_t heads = 0, kv_heads = 0, head_dim = 0;
  std::string q_shape, kv_shape, o_shape;  // Reshape shape constants
  std::string repeat;                      // GQA head-repeat Gather indices ("" = none)
};
// An FFN sublayer with gate/up/down products and elementwise nodes between them;
// `per_neuron` lists the constants of those nodes holding one value per neuron.
struct OnnxFfn {
  OnnxSublayer sublayer;
  OnnxProjection gate, up, down;
  int64_t width = 0, hidden = 0;
  std::vector<std::string> per_neuron;
};

// The weight-bearing products of `sl` in graph order, with the sizes the architecture view
// gives them (the stored shapes for weights it does not list).
std::vector<OnnxProjection> OnnxSublayerProjections(const GraphView& g, const Model& model, const OnnxSublayer& sl);
// `sl` read as attention / FFN, or an Unimplemented error saying which part of the graph
// does not have the form above.
absl::StatusOr<OnnxAttention> DescribeOnnxAttention(const GraphView& g, const Model& model, const OnnxSublayer& sl);
absl::StatusOr<OnnxFfn> DescribeOnnxFfn(const GraphView& g, const Model& model, const OnnxSublayer& sl);
// Every attention (FFN) sublayer of the decoder described, all with the same head counts
// (width); the constants that count heads are read only inside attention sublayers, and no
// per-neuron constant is shared by two FFNs.
absl::StatusOr<std::vector<OnnxAttention>> DescribeOnnxAttentions(const GraphView& g, const Model& model);
absl::StatusOr<std::vector<OnnxFfn>> DescribeOnnxFfns(const GraphView& g, const Model& model);

// Fills model.arch.blocks (and the head / width fields) from the decoder's sublayers, moving
// their products out of other_linears: attention products become q_proj / k_proj / v_proj /
// o_proj and FFN products gate_proj / up_proj / down_proj where the sublayer has the form
// above, and keep their op as kind otherwise. Leaves the view as it is for graphs with no
// residual chain (vision models, encoders without one).
void BuildOnnxBlocks(const GraphView& g, Model& model);

}  // namespace compress
