// Entry points: load any supported model from a path, save a model in its own format.
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "core/checkpoint_edit.h"
#include "core/model.h"
#include "core/pass.h"
#include "formats/onnx_io.h"
#include "formats/quantized_safetensors.h"

namespace compress {

// A folder with config.json + model.safetensors (or a sharded index), a bare
// .safetensors file, a .onnx file, or a folder holding model.onnx.
absl::StatusOr<Model> LoadModel(const std::string& path, const LoadOptions& opts = {});

struct SaveOptions {
  bool force = false;           // SaveModel: replace an existing output (see OutputPlan)
  int64_t max_shard_bytes = 0;  // safetensors: 0 = single file
  int sparse_n = 0, sparse_m = 0;  // safetensors: store n:m-sparse weights compressed (0 = dense)
  bool sparse_bitmask = false;     // safetensors: compressed-tensors sparse-bitmask (any sparsity)
  OnnxWriteOptions onnx;
};

// What writing `model` to `out` produces: a folder (safetensors checkpoint), or a file with
// sibling files beside it (ONNX's `OUT.data`, which may be written). Refuses, before any work,
// the combinations no writer makes (GGUF from ONNX, a checkpoint to a .onnx path, ...).
// Replacing an ONNX output with external data never renames over the data file the existing
// OUT.onnx reads: the new data goes to the other of OUT.onnx.data / OUT.onnx.b.data, OUT.onnx
// is switched by one rename, and the old data file (`obsolete`) is removed after that, so the
// path holds the old pair or the new pair at every moment.
struct OutputLayout {
  bool folder = false;
  std::vector<std::string> siblings;
  std::vector<std::string> obsolete;  // file names beside the output removed after the commit
};
absl::StatusOr<OutputLayout> PlanOutput(const Model& model, const std::string& out, const SaveOptions& opts);
// The external data file name for an ONNX output at `out` and the existing data file it
// replaces ("" when none is read by an existing `out`), as OutputLayout describes.
std::pair<std::string, std::string> OnnxDataNames(const std::string& out);

// Writes the files of `model` into the empty folder `dir` as they are to appear at `out`
// (a folder's contents, or the file named like `out` and its siblings). Returns their names.
absl::StatusOr<std::vector<std::string>> WriteModelFiles(const Model& model, const std::string& dir,
                                                         const std::string& out, const SaveOptions& opts,
                                                         ProgressSink* progress = nullptr);

// PlanOutput + WriteModelFiles through an OutputPlan holding the model's inputs: `out`
// appears only when complete, a failure leaves nothing, and an existing output is replaced
// only with opts.force. Returns the paths written.
absl::StatusOr<std::vector<std::string>> SaveModel(const Model& model, const std::string& out,
                                                   const SaveOptions& opts, ProgressSink* progress = nullptr);

// The checkpoint editor passes get in PassContext::checkpoint: each call goes to the editor
// of the model's format (formats/onnx_edit.h for ONNX graphs, formats/hf_edit.h otherwise).
const CheckpointEditor& ModelCheckpointEditor();

// The bytes of the weight files among `files` (names inside `dir`): .safetensors, .onnx,
// .data and .gguf files; config and tokenizer files do not count.
int64_t WeightBytesOnDisk(const std::string& dir, const std::vector<std::string>& files);
// The same for the files a loaded model was read from (model.inputs; a folder counts the
// weight files directly inside it).
int64_t InputWeightBytes(const Model& model);

}  // namespace compress
