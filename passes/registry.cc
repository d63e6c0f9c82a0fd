// The explicit table of built-in passes (one line per pass, no static initializers).
#include "passes/registry.h"

#include "passes/cast.h"
#include "passes/factorize.h"
#include "passes/finercut.h"
#include "passes/gptq.h"
#include "passes/llm_int8.h"
#include "passes/mixed_precision.h"
#include "passes/obs.h"
#include "passes/precision_align.h"
#include "passes/prune.h"
#include "passes/prune_structured.h"
#include "passes/quantize_act.h"
#include "passes/quantize_fp.h"
#include "passes/quantize_gguf.h"
#include "passes/quantize_int.h"
#include "passes/quantize_w4a4.h"
#include "passes/smooth_quant.h"

namespace compress {

absl::Status RegisterBuiltinPasses(PassRegistry& registry) {
  for (PassInfo (*make)() :
       {&CastPassInfo, &QuantizeIntPassInfo, &QuantizeInt8PassInfo, &DequantizePassInfo, &QuantizeFp4PassInfo,
        &QuantizeNf4PassInfo, &QuantizeMxfp4PassInfo, &LlmInt8PassInfo, &QuantizeGptqPassInfo,
        &PruneMagnitudePassInfo, &PruneNmPassInfo, &PruneSparseGptPassInfo, &PruneStructuredPassInfo,
        &FinerCutPassInfo, &FactorizeSvdPassInfo, &MixedPrecisionPassInfo, &PrecisionAlignPassInfo,
        &PruneObsPassInfo, &QuantizeW8A8PassInfo, &QuantizeKvPassInfo, &SmoothQuantPassInfo, &QuantizeW4A4PassInfo,
        &QuantizeGgufPassInfo}) {
    RETURN_IF_ERROR(registry.Register(make()));
  }
  return absl::OkStatus();
}

}  // namespace compress
