// ONNX: protobuf reader with external data (kept inside the model folder) and writer that
// chooses inline or external storage and re-encodes initializers whose dtype a pass changed.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
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

// Drops the graph's value_info shape hints for `values` (after a pass changed their shapes);
// the model's graph is copied first when another Model shares it.
absl::Status DropOnnxValueInfo(Model& model, const std::vector<std::string>& values);

// Sets the integer attribute `attr` of the node named `node` (or whose first output is
// `node`), e.g. a depthwise Conv's group after its channels were pruned.
absl::Status SetOnnxNodeAttribute(Model& model, const std::string& node, const std::string& attr, int64_t value);

// Rewires the graph so that every reader of value `from` reads `to` instead (for each pair
// of `bypass`; a graph output named `from` becomes an Identity of `to`), then deletes the
// nodes nothing reads any more, and the initializers, store tensors and value_info entries
// only they used, and re-derives the layer roles. Returns the removed store tensors' names.
absl::StatusOr<std::vector<std::string>> BypassOnnxValues(Model& model,
                                                          const std::map<std::string, std::string>& bypass);

// The element bytes of an inline TensorProto (raw_data or the typed repeated fields),
// checked against its dims; `what` names it in errors.
absl::StatusOr<std::vector<uint8_t>> OnnxInlineTensorBytes(const onnx::TensorProto& t, DType dtype,
                                                           const std::string& what);

// ONNX TensorProto.DataType <-> DType.
absl::StatusOr<DType> DTypeFromOnnx(int onnx_type);
int OnnxFromDType(DType t);

}  // namespace compress
