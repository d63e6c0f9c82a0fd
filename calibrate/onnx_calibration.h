// Calibration of ONNX models: input feeds from token windows or tensor folders, and the
// chunked statistics driver over the ONNX interpreter (see RunCalibration).
#pragma once

#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "calibrate/calibration.h"
#include "runtime/onnx/interpreter.h"

namespace compress {

// Folders of input tensors under `root`: `root` itself when it holds input_0.pb, else its
// subfolders that do, sorted; an error when there are none.
absl::StatusOr<std::vector<std::string>> TensorSetFolders(const std::string& root);

// Sample folders of `opts.file` (TensorSetFolders), at most opts.samples of them.
absl::StatusOr<CalibrationData> LoadTensorSets(const CalibrationOptions& opts);

// Reads input_0.pb, input_1.pb, ... of one folder for the interpreter's inputs, in order.
absl::StatusOr<std::map<std::string, onnxrt::Value>> ReadInputSet(const onnxrt::Interpreter& interp,
                                                                  const std::string& folder);

// Feeds for sample `i`: a tensor folder, or a token window for a model whose inputs are
// token ids (plus optional attention_mask / position_ids, filled with ones / 0..T-1).
absl::StatusOr<std::map<std::string, onnxrt::Value>> CalibrationFeeds(const onnxrt::Interpreter& interp,
                                                                      const CalibrationData& data, size_t i);
size_t CalibrationSamples(const CalibrationData& data);

absl::Status RunOnnxCalibration(const Model& model, const CalibrationData& data, const DriverOptions& opts,
                                const BlockCallback& callback, std::function<void(int64_t, int64_t)> progress);

}  // namespace compress
