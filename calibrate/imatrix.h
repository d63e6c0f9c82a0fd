// llama.cpp importance matrices from compress's calibration: per weight, the sum of x^2 over
// every calibration token for each input, keyed by the weight's GGUF name, so that
// `llama-quantize --imatrix` (and quantize-gguf{imatrix=...}) can use them.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "calibrate/calibration.h"
#include "core/model.h"
#include "formats/imatrix.h"

namespace compress {

struct ImatrixResult {
  Imatrix matrix;
  std::vector<std::string> skipped;  // weights with calibration statistics but no GGUF name
};

// Runs `data` through the model as it is (not block-sequential) and collects the statistics of
// every linear layer's input. Mixture-of-experts expert weights are merged per block into
// llama.cpp's 3-D expert tensors (n_mat = experts, counts = tokens routed to each; an expert
// that saw fewer than the calibration's min_expert_tokens gets count 0, which llama.cpp
// reads as "no data": uniform importance). chunk_size is the window length, chunk_count the
// number of windows, datasets names `dataset`.
absl::StatusOr<ImatrixResult> CollectImatrix(const Model& model, const CalibrationData& data,
                                             const std::string& dataset,
                                             std::function<void(int64_t, int64_t)> progress = nullptr);

}  // namespace compress
