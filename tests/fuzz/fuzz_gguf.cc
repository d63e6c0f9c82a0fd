// libFuzzer harness: the GGUF reader (header, metadata values, tensor infos, blocks).
#include "formats/gguf.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = compress::fuzz::InputFile(data, size, ".gguf");
  (void)compress::LoadGguf(path);
  return 0;
}
