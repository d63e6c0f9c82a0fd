// Test helper for hand-built ONNX models: the common opening (IR 8, opset 17, graph "g").
#pragma once

#include "onnx/onnx_pb.h"

namespace compress::testing {

inline onnx::ModelProto NewOnnxModel() {
  onnx::ModelProto m;
  m.set_ir_version(8);
  m.add_opset_import()->set_version(17);
  m.mutable_graph()->set_name("g");
  return m;
}

}  // namespace compress::testing
