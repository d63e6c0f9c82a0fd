// ONNX: protobuf reader with external data (kept inside the model folder) and writer that
// chooses inline or external storage and re-encodes initializers whose dtype a pass changed.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/graph_ir.h"
#include "core/model.h"
#include "core/pass.h"

namespace onnx {
class ModelProto;
class TensorProto;
}  // namespace onnx

namespace compress {

absl::StatusOr<Model> LoadOnnx(const std::string& path);

struct OnnxWriteOptions {
  enum class External { kAuto, kAlways, kNever };
  External external = External::kAuto;  // auto: external when the weights pass 2 GiB
  int64_t inline_threshold = 1024;      // tensors below this many bytes stay inline
  std::string data_name;                // external data file name; "" = FILE_NAME.data
};

// Writes `model` (which must come from LoadOnnx) to `path` inside an existing folder
// `dir`. Returns the names of all files written (model file last).
absl::StatusOr<std::vector<std::string>> WriteOnnx(const Model& model, const std::string& dir,
                                                   const std::string& file_name, const OnnxWriteOptions& opts,
                                                   ProgressSink* progress = nullptr);

// Runs the ONNX checker on a saved model file; returns its message on failure.
absl::Status CheckOnnxFile(const std::string& path);

// The graph of a model read by LoadOnnx (initializers moved into the store keep only their
// declaration); null for other models.
const onnx::ModelProto* OnnxModelProto(const Model& model);
// Derives model.arch again (roles, linear layers, decoder blocks) from the graph and the
// tensors' current shapes, after a structural edit.
void RebuildOnnxArchitecture(Model& model);

// The graph view and its edits (value bypass, attributes, shape hints) are core/graph_ir.h's:
// the payload LoadOnnx attaches is a GraphPayload.
//
// The view of a graph held outside a Model (a test's proto, say); the "ai.onnx" domain reads
// as "". Initializers are not part of it.
GraphView OnnxGraphView(const onnx::ModelProto& proto);

// The element bytes of an inline TensorProto (raw_data or the typed repeated fields),
// checked against its dims; `what` names it in errors.
absl::StatusOr<std::vector<uint8_t>> OnnxInlineTensorBytes(const onnx::TensorProto& t, DType dtype,
                                                           const std::string& what);

// ONNX TensorProto.DataType <-> DType.
absl::StatusOr<DType> DTypeFromOnnx(int onnx_type);
int OnnxFromDType(DType t);

}  // namespace compress
