// ggml's block quantization formats, the tensor types of llama.cpp's GGUF files: Q4_0, Q4_1,
// Q5_0, Q5_1, Q8_0, the K-quants Q2_K..Q6_K and the non-linear IQ4_NL / IQ4_XS.
//
// A tensor of one of these types is a row-major [rows, cols] matrix whose rows are sequences of
// blocks (cols a multiple of the block size); DType carries them as element types (kQ4_K ...).
// Layouts and decoding follow ggml's definitions (ggml-common.h, byte for byte):
//   Q4_0   32 per 18 B: f16 d, 16 B codes (nibbles, element j low / j+16 high); y = d (q - 8)
//   Q4_1   32 per 20 B: f16 d, f16 m, 16 B codes;                          y = d q + m
//   Q5_0   32 per 22 B: f16 d, u32 high bits (bit j of element j), 16 B;    y = d (q - 16)
//   Q5_1   32 per 24 B: f16 d, f16 m, u32 high bits, 16 B;                y = d q + m
//   Q8_0   32 per 34 B: f16 d, 32 int8;                                   y = d q
//   Q2_K  256 per 84 B: 16 sub-blocks of 16, 4-bit scale and min each, 2-bit codes, f16 d, dmin
//   Q3_K  256 per 110 B: 16 sub-blocks of 16, 6-bit signed scales, 3-bit codes in [-4, 3], f16 d
//   Q4_K  256 per 144 B: 8 sub-blocks of 32, 6-bit scale and min each, 4-bit codes, f16 d, dmin
//   Q5_K  256 per 176 B: as Q4_K with 5-bit codes
//   Q6_K  256 per 210 B: 16 sub-blocks of 16, int8 scales, 6-bit codes in [-32, 31], f16 d
//   IQ4_NL 32 per 18 B: f16 d, 4-bit indices into a fixed 16-level table
//   IQ4_XS 256 per 136 B: 8 sub-blocks of 32 with 6-bit signed scales, IQ4_NL levels
// (K-quant sub-block values: y = d sc q - dmin m with sc, m the sub-block's scale and min.)
//
// The encoder is our own (not llama.cpp's): per sub-block it searches the clipping range and
// refits scale and offset by weighted least squares, quantizes the sub-block scales against
// the f16 super-block scales, tries the neighbouring sub-block scales, and refits the
// super-block scales, minimising sum_i h_i (x_i - y_i)^2 with importance h (1 when absent; an
// input feature's E[x^2] from calibration for importance-weighted quantization).
#pragma once

#include <cstdint>

#include "core/dtype.h"

namespace compress {

// Whether `t` is one of the block types above.
bool IsBlockType(DType t);
// Elements per block (1 for element types) and bytes per block.
int64_t BlockElements(DType t);
int64_t BlockBytes(DType t);

// Decodes n elements (a multiple of the block size) of block type `t`.
void DecodeBlocks(DType t, const uint8_t* src, int64_t n, float* dst);

// Encodes n elements (a multiple of the block size) of one row into block type `t`.
// `importance`: n non-negative weights or null for all 1. Returns sum_i h_i (x_i - y_i)^2.
double EncodeBlocks(DType t, const float* x, int64_t n, const float* importance, uint8_t* dst);

// Whether `t` has llama.cpp's reference rounding (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0: one scale
// (and min) from the block's extremes, no search; Q6_K: ggml's small x^2-weighted scale search
// per 16 elements; Q3_K: its signed-extreme scale refined code by code per 16 elements; Q2_K,
// Q4_K, Q5_K: its weighted affine scale/min trials per 16 / 32 / 32 elements; the K types'
// sub-block scales then rounded to 4 or 6 bits and the codes re-rounded; IQ4_NL / IQ4_XS: the
// x^2-weighted signed-extreme scale and 15 trial scales per 32 elements, IQ4_XS's sub-block
// scales to 6 bits).
bool HasReferenceRounding(DType t);
// Encodes n elements of one row with that rounding: the bytes llama-quantize writes for these
// types without an importance matrix (its quantize_row_*_ref arithmetic: Q8_0 d = amax / 127,
// codes round(x / d) half away from zero; Q4_0 / Q5_0 d = -(signed max) / 8 or 16, codes
// trunc(x / d + 8.5 or 16.5) capped at 15 or 31; Q4_1 / Q5_1 d = (max - min) / 15 or 31,
// codes trunc((x - min) / d + 0.5); the K types as described above). Much faster than
// EncodeBlocks's search, and less exact. Bit for bit ggml's bytes (tests/core/block_quant_test.cc).
void EncodeBlocksReference(DType t, const float* x, int64_t n, uint8_t* dst);
// EncodeBlocksReference for Q4_0, Q5_0 and Q8_0 with the decoded values (DecodeBlocks's) written
// to `back` in the same step; false (nothing written) for the other types.
bool EncodeDecodeReference(DType t, const float* x, int64_t n, uint8_t* dst, float* back);

// Element i of one block on its linear grid: the decoder's value is exactly scale * code +
// offset (offset 0 for the symmetric types; IQ4's code is its table level), code an integer
// in [-128, 127]. For integer products on the stored codes (runtime/native_matmul.h).
struct LinearCode {
  float scale = 0, offset = 0;
  int code = 0;
};
LinearCode LinearCodeOf(DType t, const uint8_t* block, int i);
// Consecutive elements sharing one scale and offset: 16 for Q2_K, Q3_K and Q6_K, else 32.
int ScaleGroupElements(DType t);

// Re-rounds element i of one block (the block's scales fixed) to the code nearest `v` on its
// grid, writes the code and returns the value the decoder gives for it. For error-feedback
// quantizers (GPTQ) that fix a block's scales first and then round its elements one by one.
float SetNearest(DType t, uint8_t* block, int i, float v);

}  // namespace compress
