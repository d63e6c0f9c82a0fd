// Fuzz harness helper: a loaded model run the way `compress eval` runs it.
#pragma once

#include <cstdint>

#include "core/model.h"
#include "runtime/llama.h"

namespace compress::fuzz {

// Builds the runtime with f32 and with native products and scores three tokens, when the
// model holds at most 2^22 parameters (larger ones would slow the fuzzer past use).
inline void RunSmallModel(const Model& model) {
  int64_t params = 0;
  for (const auto& name : model.tensors.names()) params += model.tensors.at(name).numel();
  if (params > (int64_t{1} << 22)) return;
  for (MatmulMode mode : {MatmulMode::kF32, MatmulMode::kNative}) {
    RuntimeOptions opts;
    opts.matmul = mode;
    auto rt = LlamaRuntime::Create(model, opts);
    if (!rt.ok()) continue;
    const int32_t ids[3] = {1, 2, 3};
    (void)(*rt)->TokenNlls(ids);
  }
}

}  // namespace compress::fuzz
