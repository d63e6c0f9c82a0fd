// libFuzzer harness: the safetensors reader (header JSON, offsets, shapes) on arbitrary bytes.
#include "formats/safetensors.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = compress::fuzz::InputFile(data, size, ".safetensors");
  compress::TensorStore store;
  std::map<std::string, std::string> metadata;
  if (compress::ReadSafetensorsFile(path, store, &metadata).ok()) {
    for (const auto& n : store.names()) (void)store.at(n).Data();
  }
  return 0;
}
