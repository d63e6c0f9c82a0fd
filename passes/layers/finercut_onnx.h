// FinerCut on ONNX decoder graphs: finding the attention / FFN sublayers in the graph and
// (calibrate/removal_scorer.h scores their removal; passes/layers/finercut.h has the pass).
//
// A sublayer is a residual Add y = r + f(r): one input r is the residual stream and the
// other depends on r through at least one weight-bearing MatMul / Gemm. The residual Adds
// form a chain (each one's r is the previous one's y); the longest chain is the decoder.
// A branch holding a Softmax is attention, otherwise FFN; blocks are numbered by attention
// sublayers (an FFN joins the block of the attention before it). Removing a sublayer
// bypasses its Add (its readers read r) and deletes the branch's nodes and weights.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
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

// The decoder's sublayers in graph order; an error when the graph has no residual chain.
absl::StatusOr<std::vector<OnnxSublayer>> FindOnnxSublayers(const Model& model);

}  // namespace compress
