// Entry points: load any supported model from a path, save a model in its own format.
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "core/model.h"
#include "core/pass.h"
#include "formats/onnx_io.h"

namespace compress {

// A folder with config.json + model.safetensors (or a sharded index), a bare
// .safetensors file, a .onnx file, or a folder holding model.onnx.
absl::StatusOr<Model> LoadModel(const std::string& path);

struct SaveOptions {
  int64_t max_shard_bytes = 0;  // safetensors: 0 = single file
  int sparse_n = 0, sparse_m = 0;  // safetensors: store n:m-sparse weights compressed (0 = dense)
  OnnxWriteOptions onnx;
};

// Writes to `out` (a folder for safetensors checkpoints, a .onnx path for ONNX) through a
// staging folder, so `out` appears only when complete and a failure leaves nothing.
// Returns the paths written.
absl::StatusOr<std::vector<std::string>> SaveModel(const Model& model, const std::string& out,
                                                   const SaveOptions& opts, ProgressSink* progress = nullptr);

// Parses sizes like "2GB", "500MiB", "1048576".
absl::StatusOr<int64_t> ParseByteSize(const std::string& text);

}  // namespace compress
