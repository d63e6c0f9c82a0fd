// A CPU interpreter for ONNX graphs: runs the nodes in graph order with the kernels of
// KernelRegistry (f32/f64 compute, integer and bool where the operator defines them),
// freeing each intermediate after its last use. Calibration sees the input rows of every
// weight-bearing node (MatMul / Gemm with an initializer B, ungrouped Conv as im2col rows).
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
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
  virtual void Observe(const std::string& weight, const float* x, int64_t rows, int64_t cols) = 0;
};

struct IoInfo {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;  // -1 for a symbolic or unknown dimension
  std::vector<std::string> dim_names;  // symbolic names where given
};

class Interpreter {
 public:
  // The graph of a model read by LoadOnnx, with the store's tensors as initializers
  // (quantized / factorized store tensors are expanded to f32).
  static absl::StatusOr<std::unique_ptr<Interpreter>> Create(const Model& model);
  // A graph whose initializers are all inline in `proto`; `base_dir` is unused for now.
  static absl::StatusOr<std::unique_ptr<Interpreter>> Create(const onnx::ModelProto& proto);

  const std::vector<IoInfo>& inputs() const { return inputs_; }
  const std::vector<IoInfo>& outputs() const { return outputs_; }

  // Runs the graph; `feeds` must name every input. Returns the graph outputs by name.
  absl::StatusOr<std::map<std::string, Value>> Run(const std::map<std::string, Value>& feeds,
                                                   LinearInputObserver* observer = nullptr) const;

  // Ops of the graph that no kernel implements ("" when all are supported).
  static std::vector<std::string> UnsupportedOps(const onnx::ModelProto& proto);

 private:
  Interpreter() = default;
  absl::Status Init(const onnx::ModelProto& proto);
  std::shared_ptr<const onnx::ModelProto> proto_holder_;
  const onnx::ModelProto* proto_ = nullptr;
  std::map<std::string, Value> initializers_;
  std::map<std::string, int> opsets_;  // domain -> version
  std::vector<IoInfo> inputs_, outputs_;
};

// Formats the first elements of a value for messages and debugging.
std::string Describe(const Value& v);

}  // namespace compress::onnxrt
