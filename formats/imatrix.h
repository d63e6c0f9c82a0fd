// llama.cpp importance matrices: what `llama-imatrix` writes and `llama-quantize --imatrix`
// reads, so calibration statistics travel between compress and llama.cpp in both directions.
//
// The GGUF form (llama.cpp since mid-2025): general.type = "imatrix", imatrix.datasets (array
// of strings), imatrix.chunk_count and imatrix.chunk_size (u32), and per weight (by its GGUF
// name, e.g. blk.0.attn_q.weight) two F32 tensors: `<name>.in_sum2` of ne [n_per_row, n_mat]
// holding the sum over tokens of x^2 for every input, and `<name>.counts` of ne [1, n_mat]
// holding the tokens seen; n_mat is the number of experts of a merged MoE weight, else 1.
// The legacy `.dat` form (int32 entry count; per entry: name length, name, ncall, nval, nval
// f32 values of mean x^2 x ncall; then optionally the chunk count and one dataset name) is
// read too.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace compress {

struct ImatrixEntry {
  int64_t n_per_row = 0;     // the weight's inputs (its GGUF ne[0])
  std::vector<float> sums;   // [n_mat][n_per_row]: sum over tokens of x^2
  std::vector<float> counts; // [n_mat]: tokens seen
  int64_t n_mat() const { return static_cast<int64_t>(counts.size()); }
  // Mean x^2 per input, as llama-quantize computes it: sums / counts, and 1 for every input of a
  // matrix that saw no token.
  std::vector<float> MeanSquares() const;
};

struct Imatrix {
  std::vector<std::string> datasets;
  uint32_t chunk_count = 0, chunk_size = 0;
  std::map<std::string, ImatrixEntry> entries;  // by GGUF weight name
};

// Reads either form; every size, count and value is checked (finite, non-negative, sums and
// counts paired and consistent), errors name the file and the entry.
absl::StatusOr<Imatrix> LoadImatrix(const std::string& path);

// Writes the GGUF form at `path`.
absl::Status WriteImatrix(const Imatrix& m, const std::string& path);

}  // namespace compress
