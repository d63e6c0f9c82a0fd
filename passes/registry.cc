// The explicit table of built-in passes (one line per pass, no static initializers).
#include "passes/registry.h"

#include "passes/quantize/cast.h"
#include "passes/factorize/factorize.h"
#include "passes/layers/finercut.h"
#include "passes/quantize/gptq.h"
#include "passes/quantize/llm_int8.h"
#include "passes/precision/mixed_precision.h"
#include "passes/prune/obs.h"
#include "passes/precision/precision_align.h"
#include "passes/prune/prune.h"
#include "passes/prune/prune_structured.h"
#include "passes/quantize/quantize_act.h"
#include "passes/quantize/quantize_fp.h"
#include "passes/quantize/quantize_gguf.h"
#include "passes/quantize/quantize_int.h"
#include "passes/quantize/quantize_w4a4.h"
#include "passes/quantize/smooth_quant.h"

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
