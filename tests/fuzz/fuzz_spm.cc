// libFuzzer harness: SentencePiece tokenizer.model loading (protobuf wire data, pieces, trainer
// and normalizer specs, the tokenizer.json it becomes) and encoding/decoding a fixed text with it.
#include "runtime/tokenizer.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = compress::fuzz::InputFile(data, size, ".model");
  auto tok = compress::Tokenizer::FromFile(path);
  if (!tok.ok()) return 0;
  auto ids = (*tok)->Encode("def f(x):\n    return x + 1  # caf\xc3\xa9 \xe2\x82\xac <x> ===\n");
  if (ids.ok()) (void)(*tok)->Decode(*ids);
  return 0;
}
