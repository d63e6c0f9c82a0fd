// libFuzzer harness: the pipeline text parser and the YAML recipe parser.
#include <string>

#include "core/pipeline.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  (void)compress::ParsePipelineText(text);
  (void)compress::ParseRecipe(text, "fuzz.yaml");
  return 0;
}
