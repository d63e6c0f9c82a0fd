// libFuzzer harness: config.json interpretation (strict JSON, typed fields, rope scaling)
// against a fixed one-block tensor store.
#include "core/json_util.h"
#include "formats/hf_config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto j = compress::ParseJsonStrict(std::string_view(reinterpret_cast<const char*>(data), size), "config.json");
  if (!j.ok()) return 0;
  auto cfg = compress::ParseHfConfig(*j, "config.json");
  if (!cfg.ok()) return 0;
  compress::TensorStore store;
  store.Set("model.layers.0.self_attn.q_proj.weight",
            compress::Tensor(compress::DType::kF32, {4, 4}, std::make_shared<compress::OwnedBuffer>(std::vector<uint8_t>(64))));
  (void)compress::BuildHfArchitecture(*cfg, store, "config.json");
  return 0;
}
