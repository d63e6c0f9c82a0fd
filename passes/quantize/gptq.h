// quantize-gptq{format=int|fp4|nf4|mxfp4, bits, group-size, symmetric, block-size, damp, act-order}:
// GPTQ (Frantar et al., 2023)
// integer weight quantization of the linear layers of an LLM, block by block on calibration
// data (each block sees the outputs of the already-quantized blocks before it).
//
// For a weight W [out, in] with input Hessian H = 2 X^T X / n (+ damp * mean(diag H) * I):
// columns are quantized left to right; after column i is rounded to the integer grid
// (scales from the group's weights at the start of its 128-column block), the error
// e = (w_i - q_i) / [U]_ii is spread over the not-yet-quantized columns, W_j -= e [U]_ij,
// with U the upper Cholesky factor of H^-1. Dead inputs (H_ii = 0) get zero weight; a failed
// Cholesky is retried with 10x the dampening (up to 4 times).
// With format=fp4/nf4/mxfp4 the grid is the 4-bit codebook (core/codebook.h) with the group's
// absmax on the largest level (mxfp4: the OCP shared power of two over blocks of 32) and
// each column rounded to its nearest level before the same error feedback.
// act-order=true visits columns by decreasing Hessian diagonal (the inputs with the most
// activation energy first, while the most error can still be compensated). Group parameters
// are then fixed before the sweep from the original contiguous groups ("static groups"), so
// the stored layout stays contiguous groups of inputs with no permutation index.
// Reports per layer the relative output error ||(W - Q) X||^2 / ||W X||^2 next to RTN's.
// Preconditions: calibration data; a Llama-family safetensors checkpoint. Invalidates all.
#pragma once

#include <span>
#include <string>
#include <vector>

#include "core/pass.h"
#include "core/quant.h"
#include "passes/math/hessian.h"

namespace compress {

PassInfo QuantizeGptqPassInfo();

struct GptqOptions {
  int bits = 4;
  bool symmetric = true;
  int64_t group_size = 128;  // 0 = per output channel
  int64_t block_size = 128;
  double damp = 0.01;
  std::string format = "int";       // int, fp4 (e2m1), nf4 or mxfp4 (4-bit codebooks, absmax / MX scales)
  bool act_order = false;           // quantize columns in order of decreasing H_ii (static groups)
  DType scale_dtype = DType::kF32;  // scales rounded up to f16/bf16 (GGUF blocks hold f16 scales)
};

// GPTQ on one weight [rows=out, cols=in] (row-major) with H = sum x x^T [cols, cols].
absl::StatusOr<std::pair<std::vector<int8_t>, QuantInfo>> GptqQuantize(std::span<const float> w, int64_t rows,
                                                                       int64_t cols,
                                                                       std::span<const double> xtx,
                                                                       const GptqOptions& opts);

// Element weights of quantize-gguf's block search: importance[c] (1 when empty) x
// sqrt(row_mean_sq + x[c]^2), favouring a row's large weights.
void MagnitudeWeights(const float* x, int64_t n, double row_mean_sq, std::span<const float> importance,
                      float* out);

// GPTQ onto a ggml block type (core/block_quant.h): columns left to right in batches of whole
// blocks; when a block's first column comes up, every row's block (its sub-block scales and
// mins) is fitted to the weights as they stand then (error feedback included) by the block
// encoder with element weights importance[col] x sqrt(mean w^2 of the row + w^2); then each
// column is rounded on its block's fixed grid (SetNearest) and its error spread over the
// later columns through the inverse-Hessian Cholesky factor, as above. Returns the rows'
// blocks, [rows, cols / block] blocks row-major. With `act_order` every block is fitted to the
// original weights first (static grids) and the columns are visited by decreasing H_ii.
absl::StatusOr<std::vector<uint8_t>> GptqQuantizeBlocks(std::span<const float> w, int64_t rows, int64_t cols,
                                                        std::span<const double> xtx, DType type, double damp,
                                                        std::span<const float> importance, bool act_order = false);

}  // namespace compress
