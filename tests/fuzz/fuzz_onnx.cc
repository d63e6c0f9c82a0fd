// libFuzzer harness: the ONNX reader (protobuf, initializers, architecture view), the
// interpreter's graph checks, and the interpreter run on seeded inputs (as `compress eval
// model.onnx` generates them) when the graph's inputs are small.
#include <new>

#include "analyze/onnx_eval.h"
#include "formats/onnx_io.h"
#include "runtime/onnx/interpreter.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = compress::fuzz::InputFile(data, size, ".onnx");
  auto m = compress::LoadOnnx(path);
  if (!m.ok()) return 0;
  auto interp = compress::onnxrt::Interpreter::Create(*m);
  if (!interp.ok()) return 0;
  compress::InputSpec spec;
  spec.default_dim = 4;
  spec.int_high = 32;
  for (const auto& in : (*interp)->inputs()) {
    int64_t n = 1;
    for (int64_t d : in.shape) {
      n *= d < 0 ? spec.default_dim : d;
      if (d > (1 << 16) || n > (1 << 16)) return 0;
    }
  }
  auto feeds = compress::GenerateInputs(**interp, spec);
  if (!feeds.ok()) return 0;
  try {
    (void)(*interp)->Run(*feeds);
  } catch (const std::bad_alloc&) {  // a graph whose values exceed memory: `compress` reports it
  }
  return 0;
}
