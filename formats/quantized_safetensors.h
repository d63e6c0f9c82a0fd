// How quantized weights are laid out in safetensors checkpoints, and back.
//
// Writing picks the most widely loadable layout that can hold every quantized weight:
//  - compressed-tensors "int-quantized" when all are int8 (formats/compressed_tensors.h);
//  - compressed-tensors "pack-quantized" when all are symmetric int4/int8 with at least one int4;
//  - otherwise compress's own layout (quant_method "compress"), documented in
//    docs/formats.md: per layer `<layer>.weight_packed` U8 [out, ceil(in * bits / 8)] (codes
//    as unsigned values, little-endian bit order, each row starting on a byte),
//    `<layer>.weight_scale` F32 [out, groups] (U8 E8M0 exponents for mxfp4),
//    `<layer>.weight_zero_point` I8 [out, groups] (asymmetric int),
//    `<layer>.weight_outlier_index` I64 [n] and `<layer>.weight_outlier` F16 [out, n]
//    (LLM.int8() outlier inputs), and quantization_config.layers[<layer>] = {format, bits,
//    group_size, symmetric, outliers}.
// Reading recognises all three, validates shapes, code ranges and indices, and re-attaches
// the parameters to the weight (Tensor::quant()).
#pragma once

#include "absl/status/statusor.h"
#include "core/model.h"
#include "core/quant.h"
#include "formats/load_options.h"
#include "nlohmann/json.hpp"

namespace compress {

struct ExpandedStore {
  TensorStore tensors;
  nlohmann::json quantization_config;  // null when nothing is quantized
  // Layers whose format the writer's production chooses (QuantInfo::format_pending): their
  // "format" entry is filled in by FinishQuantizationConfig once the tensors are written.
  std::vector<std::pair<std::string, QuantInfo>> formats_after_write;
};

// The tensors to write for `m` and the quantization_config for its config.json.
absl::StatusOr<ExpandedStore> ExpandQuantized(const Model& m);
// Fills the formats chosen while writing into `store.quantization_config` (after the writer;
// a production that has not run runs now).
void FinishQuantizationConfig(ExpandedStore& store);

// After loading a checkpoint whose config.json has a quantization_config this reader knows:
// re-attaches the quantization parameters to their weights and drops the config entry
// (the writer regenerates it from the tensors).
absl::Status CollapseQuantized(Model& m, const std::string& path, const LoadOptions& opts = {});

// Puts the quantized weights of blocks named PREFIX.N... (GPT-2's Conv1D layers, written
// [out, in] by ExpandQuantized) back into their [in, out] layout with channel axis 1.
absl::Status RestoreConv1dQuantized(Model& m, const std::vector<std::string>& block_prefixes);

// The e4m3fn NaN codes S.1111.111, which FP8 weights of either layout must not hold.
inline bool E4M3IsNaN(uint8_t code) { return (code & 0x7F) == 0x7F; }

// A quantized weight read from a file whose scales and zero points are read (by
// `read_values`, into a QuantInfo holding `meta`'s layout) only when something asks for them or
// for the codes: a DeferredQuant, one production. LoadOptions{check_codes = false} loads take it.
Tensor DeferredFileValues(QuantInfo meta, Shape shape, std::function<absl::Status(QuantInfo&)> read_values,
                          Tensor::Producer codes);

// Bit packing shared by the layouts: `values` (each < 2^bits) as a little-endian bitstream.
std::vector<uint8_t> PackBits(std::span<const uint8_t> values, int bits);
void UnpackBits(const uint8_t* packed, int64_t count, int bits, uint8_t* values);
// Index of the first code that is an e4m3 NaN (fp8) or, read as int8, outside [lo, hi]; -1
// when none. Counted in vector lanes, located only when there is one.
int64_t FirstBadCode(const uint8_t* codes, int64_t n, bool fp8, int lo, int hi);
// Whether any of the first `count` `bits`-wide fields packed LSB first in `packed` (UnpackBits'
// order; bits 1, 2, 4 or 8) is 0: the one value a symmetric grid's codes (stored + 2^(bits-1))
// cannot take. Checked on the packed bytes, without unpacking.
bool AnyPackedFieldZero(const uint8_t* packed, int64_t count, int bits);
// Rows of int8 codes, each plus `offset` (mod 256), packed as PackBits packs them into rows of
// `row_bytes` bytes (at least the packed size; the rest zero), rows in parallel.
void PackCodeRows(const int8_t* codes, int64_t rows, int64_t cols, int bits, int offset, uint8_t* out,
                  int64_t row_bytes);

// The dtype a quantized checkpoint's weights had before quantization (config.json's torch_dtype,
// or transformers 5's dtype): float32, float16, else bf16.
DType ConfigTorchDType(const nlohmann::json& config);

}  // namespace compress
