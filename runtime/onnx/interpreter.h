// A CPU interpreter for ONNX graphs: runs the nodes in graph order with the kernels of
// KernelRegistry (f32/f64 compute, integer and bool where the operator defines them),
// freeing each intermediate after its last use. Calibration sees the input rows of every
// weight-bearing node (MatMul / Gemm with an initializer B, ungrouped Conv as im2col rows).
#pragma once

#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/graph_ir.h"
#include "core/model.h"
#include "runtime/onnx/value.h"

namespace onnx {
class ModelProto;
}

namespace compress::onnxrt {

// Receives x [rows, cols] (row-major f32), the input a weight `weight` multiplies.
class LinearInputObserver {
 public:
  virtual ~LinearInputObserver() = default;
  virtual bool Wants(const std::string& weight) const { return true; }
  virtual void Observe(const std::string& weight, const float* x, int64_t rows, int64_t cols) = 0;
};

// A graph input or output: name, element type, shape (-1 for symbolic dimensions).
using IoInfo = GraphValueInfo;

class Interpreter {
 public:
  // The graph of a model read by LoadOnnx (its graph IR, core/graph_ir.h), with the
  // store's tensors as initializers (quantized / factorized store tensors are expanded to f32).
  static absl::StatusOr<std::unique_ptr<Interpreter>> Create(const Model& model);
  // A graph whose initializers are all inline in `proto` (external data is not read).
  static absl::StatusOr<std::unique_ptr<Interpreter>> Create(const onnx::ModelProto& proto);

  const std::vector<IoInfo>& inputs() const { return inputs_; }
  const std::vector<IoInfo>& outputs() const { return outputs_; }

  // Runs the graph; `feeds` must name every input. Returns the graph outputs by name.
  // With `stop_after` >= 0 only nodes 0..stop_after run and the result is empty (for
  // calibration passes that only need the inputs of earlier layers).
  absl::StatusOr<std::map<std::string, Value>> Run(const std::map<std::string, Value>& feeds,
                                                   LinearInputObserver* observer = nullptr,
                                                   int stop_after = -1) const;

  // Weight-bearing nodes in graph order: MatMul / Gemm with an initializer B, and Conv with
  // an initializer W and group 1 (the nodes an observer sees).
  struct WeightNode {
    int node = 0;
    std::string weight;  // initializer name
    std::string input;   // the value the weight multiplies
  };
  std::vector<WeightNode> WeightNodes() const;

  // Re-reads the given initializers from `model` (after a pass changed them).
  absl::Status Reload(const Model& model, const std::vector<std::string>& names);

  // Ops of the graph that no kernel implements (empty when all are supported).
  static std::vector<std::string> UnsupportedOps(const GraphView& graph);

 private:
  Interpreter() = default;
  absl::Status Init(std::shared_ptr<const GraphView> graph);
  std::shared_ptr<const GraphView> graph_;  // shared: stays valid when the Model's graph is edited
  std::map<std::string, Value> initializers_;
  // The model's activation quantization by weight (Model::input_quant): simulated on the
  // inputs of the MatMul / Gemm / Conv nodes reading those weights.
  std::map<std::string, ActivationQuant> input_quant_;
  std::vector<IoInfo> inputs_, outputs_;
  // Per node: the intermediate values whose last reader it is (freed after it runs).
  std::vector<std::vector<std::string>> free_after_;
};

// Feeds for a language model graph from one token window: the token-id input gets `ids`
// ([1, T] or [T] as declared), inputs named *mask* get ones and *position* get 0..T-1.
// Fails for graphs with other inputs.
absl::StatusOr<std::map<std::string, Value>> TokenFeeds(const Interpreter& interp, std::span<const int32_t> ids);

// Formats the first elements of a value for messages and debugging.
std::string Describe(const Value& v);

}  // namespace compress::onnxrt
