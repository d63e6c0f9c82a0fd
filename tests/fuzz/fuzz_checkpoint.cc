// libFuzzer harness: a whole checkpoint folder as `compress eval` / `decompress` read it:
// config.json and model.safetensors (the compressed-tensors, sparse, low-rank, fused and
// activation layouts, the architecture view), every tensor decoded to f32, then the runtime
// built and run on three tokens when the model is small. Input: 4 bytes (little-endian) of
// config.json's length, config.json, then model.safetensors (tests/fuzz/make_checkpoint_seeds.sh).
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "formats/model_io.h"
#include "tests/fuzz/fuzz_runtime.h"

namespace {

void WriteFile(const std::string& path, const uint8_t* data, size_t size) {
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) std::abort();
  if (size) std::fwrite(data, 1, size, f);
  std::fclose(f);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 4) return 0;
  uint32_t config_len = 0;
  std::memcpy(&config_len, data, 4);
  if (config_len > size - 4) return 0;
  const std::string root = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
  const std::string dir = root + "/compress-fuzz-ckpt-" + std::to_string(getpid());
  mkdir(dir.c_str(), 0755);
  WriteFile(dir + "/config.json", data + 4, config_len);
  WriteFile(dir + "/model.safetensors", data + 4 + config_len, size - 4 - config_len);
  auto model = compress::LoadModel(dir);
  if (!model.ok()) return 0;
  for (const auto& name : model->tensors.names()) {
    const compress::Tensor& t = model->tensors.at(name);
    if (t.numel() <= (int64_t{1} << 22)) (void)t.ToF32();
  }
  compress::fuzz::RunSmallModel(*model);
  return 0;
}
