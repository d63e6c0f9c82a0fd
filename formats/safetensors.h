// safetensors: validating mmap reader (single file and sharded index) and streaming writer.
#pragma once

#include <map>
#include <string>

#include "absl/status/statusor.h"
#include "core/model.h"
#include "core/pass.h"

namespace compress {

inline constexpr uint64_t kMaxSafetensorsHeader = 100ull << 20;  // 100 MiB

// Reads one .safetensors file into `store` (tensors are views into a shared mapping)
// and its __metadata__ into `metadata`. Every header field is checked against the file.
absl::Status ReadSafetensorsFile(const std::string& path, TensorStore& store,
                                 std::map<std::string, std::string>* metadata);

// Reads a sharded checkpoint from its model.safetensors.index.json.
absl::Status ReadSafetensorsIndex(const std::string& index_path, TensorStore& store,
                                  std::map<std::string, std::string>* metadata);

struct SafetensorsWriteOptions {
  int64_t max_shard_bytes = 0;  // 0 = one file
  std::map<std::string, std::string> metadata;
  std::string base_name = "model";  // model.safetensors / model-00001-of-00002.safetensors
};

// Writes `store` into the existing directory `dir`, one tensor in memory at a time.
// Returns the file names written.
absl::StatusOr<std::vector<std::string>> WriteSafetensors(const TensorStore& store, const std::string& dir,
                                                          const SafetensorsWriteOptions& opts,
                                                          ProgressSink* progress = nullptr);

absl::StatusOr<DType> ParseSafetensorsDType(std::string_view s);
std::string_view SafetensorsDTypeName(DType t);  // empty if safetensors cannot hold it

}  // namespace compress
