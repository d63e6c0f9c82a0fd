// Writes the calibration windows compress would sample, as JSON, so reference
// implementations elsewhere (PyTorch GPTQ/SparseGPT) can use the very same tokens.
// usage: calib_dump TOKENIZER_JSON TEXT SAMPLES SEQLEN SEED > windows.json
#include <cstdio>
#include <string>

#include "calibrate/calibration.h"
#include "core/status.h"
#include "fmt/format.h"
#include "nlohmann/json.hpp"

int main(int argc, char** argv) {
  if (argc != 6) {
    std::fprintf(stderr, "usage: calib_dump TOKENIZER_JSON TEXT SAMPLES SEQLEN SEED\n");
    return 1;
  }
  compress::CalibrationOptions o{argv[2], std::stoll(argv[3]), std::stoll(argv[4]), std::stoull(argv[5])};
  auto d = compress::LoadCalibration(o, argv[1]);
  if (!d.ok()) {
    fmt::print(stderr, "calib_dump: {}\n", d.status().message());
    return 2;
  }
  nlohmann::json j = {{"windows", d->windows}, {"hash", fmt::format("{:016x}", d->hash)}};
  std::puts(j.dump().c_str());
  return 0;
}
