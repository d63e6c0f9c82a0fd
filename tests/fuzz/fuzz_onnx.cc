// libFuzzer harness: the ONNX reader (protobuf, initializers, architecture view) and the
// interpreter's graph checks on arbitrary bytes.
#include "formats/onnx_io.h"
#include "runtime/onnx/interpreter.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = compress::fuzz::InputFile(data, size, ".onnx");
  auto m = compress::LoadOnnx(path);
  if (m.ok()) (void)compress::onnxrt::Interpreter::Create(*m);
  return 0;
}
