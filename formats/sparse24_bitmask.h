// compressed-tensors' sparse forms. "sparse-24-bitmask" for 2:4-sparse weights, the 2:4 form vLLM and
// the compressed-tensors library load. Facts from the library's source (neuralmagic/
// compressed-tensors at commit 52792be0: compressors/sparse_compressors/sparse_24_bitmask.py,
// utils/helpers.py pack_bitmasks / unpack_bitmasks, config/sparse_24_bitmask.py); for a
// [rows, cols] weight `<layer>.weight` whose every group of 4 consecutive inputs holds at most
// 2 non-zero elements:
//   `<layer>.compressed` [rows, cols / 2], the weight's stored dtype (float or the int8 / fp8
//     codes of an int-quantized / float-quantized weight): the 2 kept elements of each group,
//     in input order;
//   `<layer>.bitmask` U8 [rows, ceil(cols / 8)]: bit c % 8 of byte c / 8 of a row is set when
//     input c is kept (numpy packbits, bitorder "little"); exactly 2 bits per group (a group
//     with fewer non-zeros keeps its lowest zero positions too);
//   `<layer>.shape` I64 [2, 1] = [rows, cols];
// and quantization_config.sparsity_config = {format: "sparse-24-bitmask", targets: [layers],
// ignore: [], global_sparsity, sparsity_structure: "2:4"}. Decompression scatters the values,
// in row-major order, onto the set bits; every other element is zero.
#pragma once

#include <functional>
#include <string>

#include "absl/status/statusor.h"
#include "core/model.h"
#include "nlohmann/json.hpp"

namespace compress {

// Replaces every 2-D `<layer>.weight` of `tensors` for which `eligible(name)` holds (the
// caller passes linear layers' [out, in] weights: loaders expect the form only on Linear
// modules) and which is 2:4 sparse bit for bit (a zero element is all-zero bytes, so -0.0
// counts as a value) by its compressed form. Returns the sparsity_config, null when no weight
// qualified. global_sparsity is the fraction of zero elements over every eligible weight.
// The compressed tensors are produced when the writer asks for them.
absl::StatusOr<nlohmann::json> ExpandSparse24Bitmask(TensorStore& tensors,
                                                     const std::function<bool(const std::string&)>& eligible);

// compressed-tensors' unstructured "sparse-bitmask" (compressors/sparse_compressors/
// sparse_bitmask.py, config/sparse_bitmask.py): `<layer>.compressed` 1-D, every non-zero element
// in row-major order; `<layer>.bitmask` as above; `<layer>.row_offsets` I64 [rows], the index in
// `.compressed` where each row starts; `<layer>.shape` I64 [2]; sparsity_config format
// "sparse-bitmask", sparsity_structure "unstructured". Every eligible weight the form makes
// smaller is stored so (the others stay dense). Returns the sparsity_config, null when none.
absl::StatusOr<nlohmann::json> ExpandSparseBitmask(TensorStore& tensors,
                                                   const std::function<bool(const std::string&)>& eligible);

// Restores the dense `<layer>.weight` of every `<layer>.bitmask` / `.compressed` / `.shape`
// (/ `.row_offsets`) group when `sparsity_config` names format sparse-24-bitmask or
// sparse-bitmask (dense: nothing to do; other formats are refused). Checks the shapes, the row
// offsets, and that the bitmask marks exactly as many elements as `.compressed` holds; the dense
// values are produced when read.
absl::Status CollapseSparse24Bitmask(Model& m, const nlohmann::json& sparsity_config, const std::string& path);

}  // namespace compress
