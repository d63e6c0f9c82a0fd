// The importance matrix llama-imatrix made for the tests (tests/golden/ggml/make_imatrix.sh)
// and the calibration windows it saw: the first four chunks of 128 pycode-tiny tokens of
// ../shared/data/pycode-dev.txt (pycode-tiny adds no BOS, so they are consecutive).
#pragma once

#include <string>

#include "calibrate/calibration.h"
#include "runtime/tokenizer.h"
#include "tests/test_util.h"

namespace compress::testing {

inline std::string ImatrixGolden(const std::string& ext = ".gguf") {
  return std::string(COMPRESS_SOURCE_DIR) + "/tests/golden/ggml/imatrix-pycode-tiny" + ext;
}

// No windows when the tokenizer or the text cannot be read.
inline CalibrationData ImatrixGoldenWindows(const std::string& model_dir) {
  CalibrationData data;
  data.options.samples = 4;
  data.options.seqlen = 128;
  auto tok = Tokenizer::FromFile(model_dir + "/tokenizer.json");
  if (!tok.ok()) return data;
  auto ids = (*tok)->Encode(ReadFile(std::string(COMPRESS_SHARED_DIR) + "/data/pycode-dev.txt"));
  if (!ids.ok() || ids->size() < 512) return data;
  for (int c = 0; c < 4; ++c) data.windows.emplace_back(ids->begin() + 128 * c, ids->begin() + 128 * (c + 1));
  return data;
}

}  // namespace compress::testing
