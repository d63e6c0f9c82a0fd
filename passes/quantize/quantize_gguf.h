// llama.cpp's quantization mixes as one pass: every weight becomes a ggml block type
// (core/block_quant.h), chosen per tensor by the rules llama-quantize applies for the preset.
//
// quantize-gguf{type=Q4_K_M, importance=auto, output-type=auto, embed-type=auto, pure=false,
//               method=auto, damp=0.01}
//   type: Q2_K, Q2_K_S, Q3_K_S, Q3_K_M, Q3_K_L, Q4_K_S, Q4_K_M, Q5_K_S, Q5_K_M, Q6_K, IQ4_NL,
//     IQ4_XS, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0. The preset's base type goes to every linear weight
//     and the token embedding; then, as llama-quantize does: the output head (or a tied
//     embedding) gets Q6_K (Q8_0 when its rows are not whole 256-blocks); attn_v / fused qkv,
//     ffn_down and attn_output get more bits in the layers and mixes where llama-quantize
//     bumps them (use_more_bits: the first and last eighth of the layers and every third one
//     between, for Q4_K_M / Q5_K_M; Q3_K_M / Q3_K_L / Q2_K / Q4_K_S / IQ4 rules as well, incl.
//     grouped-query attention with >= 4 query heads per KV head, 8-expert models and 70B
//     Llamas); rows that are not whole blocks fall back (Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K ->
//     Q8_0, Q2_K / Q3_K -> Q4_0, IQ4_XS -> IQ4_NL, then F16). A file of the same size as
//     llama-quantize's for the same preset.
//   importance: auto weights every block's scale/min search by calibration E[x^2] per input
//     feature when the run has --calibration (llama.cpp's imatrix plays this part there), none
//     ignores calibration. Either way each element's weight is also multiplied by
//     sqrt(mean w^2 of its row + w^2), favouring the row's large weights.
//   output-type / embed-type: auto (the preset's rule), keep (leave the tensor's dtype), or a
//     block type name (q6_k, q8_0 ...), like llama-quantize's --output-tensor-type /
//     --token-embedding-type. pure: the base type everywhere (llama-quantize --pure).
//   method: auto (gptq when the run has --calibration, rtn otherwise), rtn (each row's blocks by the weighted search) or gptq (passes/quantize/gptq.h's
//     GptqQuantizeBlocks: GPTQ error feedback onto each block's grid, the block's scales fitted
//     when its first column comes up; needs --calibration; the embedding and output head stay
//     rtn). damp: GPTQ's dampening.
// The metadata names the mix (general.file_type) for the GGUF writer. The outputs are GGUF
// only: safetensors and ONNX writers refuse block types (dequantize first).
// Preconditions: a Hugging Face-style model whose linear weights are [out, in] (not Conv1D).
// Invalidates all analyses.
#pragma once

#include "core/pass.h"

namespace compress {

PassInfo QuantizeGgufPassInfo();

}  // namespace compress
