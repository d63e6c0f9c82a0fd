// N:M sparse weights in safetensors checkpoints, stored compressed: for a [rows, cols]
// weight in which every group of m consecutive inputs of a row holds at most n non-zeros,
//   `<layer>.weight_nm_values` [rows, cols / m * n] in the weight's dtype: each group's kept
//     values in input order (zero-padded when a group has fewer than n non-zeros);
//   `<layer>.weight_nm_index` U8 [rows, ceil(cols / m * n * b / 8)], b = ceil(log2 m): each
//     value's position inside its group, as a little-endian bitstream per row (PackBits);
// and in config.json `compress_sparse_nm` = {format_version: 1, n, m, layers: [<layer>...]}.
// 2:4 in bf16 takes 9 bits per weight instead of 16. Hugging Face loaders do not know this
// form; reading it with compress (and `compress decompress`) restores the dense weights.
#pragma once

#include "absl/status/statusor.h"
#include "core/model.h"
#include "nlohmann/json.hpp"

namespace compress {

// Replaces every dense float `<layer>.weight` of `tensors` that satisfies n:m (along the
// input dimension of a [out, in] weight) by its compressed form; the config entry is null
// when none qualified.
absl::StatusOr<nlohmann::json> ExpandSparseNM(TensorStore& tensors, int n, int m);

// Restores dense weights from the compressed form named by config.json's compress_sparse_nm
// (checking shapes and index ranges) and drops the entry.
absl::Status CollapseSparseNM(Model& model, const std::string& path);

}  // namespace compress
