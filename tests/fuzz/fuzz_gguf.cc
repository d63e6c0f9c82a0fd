// libFuzzer harness: the GGUF reader (header, metadata values, tensor infos), the decoding of
// every block type it returns (first rows of each tensor), the runtime built from a small
// model (f32 and native products) and run on three tokens, and the importance matrix reader
// (GGUF and legacy forms), the tokenizer the metadata stands for (encoding and decoding a fixed
// text) and the Hugging Face tokenizer files made from it, on the same bytes.
#include <algorithm>
#include <vector>

#include "core/block_quant.h"
#include "formats/gguf.h"
#include "formats/gguf_tokenizer.h"
#include "formats/imatrix.h"
#include "runtime/tokenizer.h"
#include "tests/fuzz/fuzz_runtime.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = compress::fuzz::InputFile(data, size, ".gguf");
  auto m = compress::LoadGguf(path);
  if (m.ok()) {
    for (const auto& name : m->tensors.names()) {
      const compress::Tensor& t = m->tensors.at(name);
      if (!compress::IsBlockType(t.dtype()) || t.shape().size() != 2) continue;
      auto buf = t.Data();
      if (!buf.ok()) continue;
      const int64_t cols = t.shape()[1], rows = std::min<int64_t>(t.shape()[0], 4);
      std::vector<float> out(static_cast<size_t>(cols));
      const int64_t row_bytes = compress::DTypeBytes(t.dtype(), cols);
      for (int64_t r = 0; r < rows; ++r) {
        compress::DecodeBlocks(t.dtype(), (*buf)->data() + r * row_bytes, cols, out.data());
      }
    }
    compress::fuzz::RunSmallModel(*m);
  }
  (void)compress::LoadImatrix(path);
  if (auto tok = compress::Tokenizer::FromFile(path); tok.ok()) {
    auto ids = (*tok)->EncodeWithSpecialTokens("def f(x):\n    return x + 1  # caf\xc3\xa9 \xe2\x82\xac\n");
    if (ids.ok()) (void)(*tok)->Decode(*ids);
  }
  (void)compress::TokenizerFilesFromGguf(path);
  return 0;
}
