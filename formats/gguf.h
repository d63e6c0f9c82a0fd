// GGUF (llama.cpp's single-file format) for Llama-family checkpoints: output, and reading back.
//
// What is written: GGUF version 3, little-endian, 32-byte alignment. Metadata: the
// architecture keys llama.cpp reads for `llama` (Llama, Mistral) and `qwen2` models, and the
// tokenizer (byte-level BPE as `gpt2` with the pre-tokenizer named after its split pattern:
// gpt-2, llama-bpe or qwen2). Tensors keep their values exactly:
//   - dense f32 / f16 / bf16 weights as F32 / F16 / BF16; norms and biases as F32;
//   - integer-quantized weights that are symmetric, grouped by 32 inputs along [out, in] and
//     carry f16-exact scales (quantize-int / quantize-gptq with scale-dtype=f16) as Q8_0
//     (bits=8) or Q4_0 (bits <= 4: codes in [-8, 7]); quantize-mxfp4 weights (E2M1 codes, E8M0
//     scale per 32 inputs) as MXFP4;
//   - q_proj / k_proj rows of the `llama` architecture permuted from Hugging Face's
//     rotate-half order to llama.cpp's interleaved rope order.
// Anything else (other quantization layouts, factorized weights, removed sublayers,
// per-block head counts, rope scaling, SentencePiece tokenizers) is refused with an error
// that names the tensor or setting, before any byte is written.
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/model.h"
#include "core/pass.h"
#include "formats/load_options.h"

namespace compress {

// Writes `model` as `dir`/`name`. Returns the file names written (just `name`).
absl::StatusOr<std::vector<std::string>> WriteGguf(const Model& model, const std::string& dir,
                                                   const std::string& name, ProgressSink* progress = nullptr);

// What the GGUF file at `path`, written from `model`, cannot say that the model's own files do
// and llama.cpp will therefore compute or tokenize differently, one line each: a sliding window
// the architecture has no key for (llama.cpp's `llama` attends to every earlier token), and added
// tokens whose whitespace rules the metadata cannot hold, a Metaspace pre-tokenizer (GgufTokenizerCaveats). `compress
// run` prints them as warnings and puts them in the report.
std::vector<std::string> GgufOutputCaveats(const Model& model, const std::string& path);

// Why no GGUF block type stores weights quantized as `q` ("" when Q8_0, Q4_0 or MXFP4 does,
// given [out, in] weights whose inputs are whole blocks of 32): what `run` checks before any
// work for a pass that declares its PassInfo::planned_quant.
std::string GgufUnstorableReason(const PlannedQuant& q);

// Reads a GGUF file of the `llama` or `qwen2` architecture whose tensors are F32, F16, BF16,
// Q8_0, Q4_0 or MXFP4 into a model with Hugging Face names and a config.json built from the
// metadata (q/k rows back in rotate-half order; Q8_0/Q4_0 as symmetric int8/int4 codes and MXFP4 as
// mxfp4 codes, groups of 32). The tokenizer is not reconstructed: evaluate with token ids. Truncated or
// inconsistent files fail with an error naming the field and offset.
absl::StatusOr<Model> LoadGguf(const std::string& path, const LoadOptions& opts = {});

}  // namespace compress
