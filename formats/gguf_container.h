// The GGUF container, whatever the file holds (a model, an importance matrix): header,
// metadata key/values, tensor infos and the aligned data section. Reading checks every count,
// dimension, type and offset against the file; writing lays tensors out 32-byte aligned.
// What the keys and tensors mean is the caller's business (formats/gguf_read.cc for models,
// formats/imatrix.cc for llama-imatrix files).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "core/pass.h"
#include "core/tensor.h"
#include "formats/gguf_layout.h"
#include "nlohmann/json.hpp"

namespace compress::gguf {

struct TensorInfo {
  std::string name;
  std::vector<uint64_t> ne;  // ne[0] is the innermost (contiguous) dimension
  TensorType type = TensorType::kF32;
  uint64_t offset = 0;  // from the start of the data section
  uint64_t nbytes = 0;  // checked to lie inside the file
  int64_t rows() const;  // product of ne[1..]
};

struct Container {
  std::string path;
  std::shared_ptr<MappedFile> file;
  uint32_t version = 0;
  std::map<std::string, nlohmann::json> kv;  // metadata values as JSON (arrays of scalars)
  // Each metadata entry's bytes in the file (key, type and value), in file order: what a writer
  // copies to keep an entry exactly (Metadata::Raw).
  struct RawEntry {
    std::string key;
    uint64_t begin = 0, end = 0;
  };
  std::vector<RawEntry> kv_raw;
  std::vector<TensorInfo> tensors;
  uint64_t data_start = 0;  // file offset of the data section

  const uint8_t* Data(const TensorInfo& t) const { return file->data() + data_start + t.offset; }
  std::string_view RawBytes(const RawEntry& e) const {
    return {reinterpret_cast<const char*>(file->data()) + e.begin, e.end - e.begin};
  }
  // A metadata value that must be a non-negative integer; an error naming the key otherwise.
  absl::StatusOr<uint64_t> GetU(const std::string& key) const;
  // A string value, or `fallback` when the key is absent or not a string.
  std::string GetStr(const std::string& key, const std::string& fallback = "") const;
};

// Reads the header, metadata and tensor infos of `path` (version 2 or 3, tensors of up to
// `max_dims` dimensions of known types), checking that every tensor lies inside the file.
absl::StatusOr<Container> ReadContainer(const std::string& path, uint32_t max_dims = 4);

// Metadata in GGUF's binary form, in the order added.
class Metadata {
 public:
  void U32(const std::string& k, uint32_t v);
  void F32(const std::string& k, float v);
  void Bool(const std::string& k, bool v);
  void Str(const std::string& k, const std::string& v);
  void StrArray(const std::string& k, const std::vector<std::string>& v);
  void BoolArray(const std::string& k, const std::vector<bool>& v);
  void I32Array(const std::string& k, const std::vector<int32_t>& v);
  void F32Array(const std::string& k, const std::vector<float>& v);
  // An entry as another GGUF file holds it (Container::RawBytes): key, type and value.
  void Raw(std::string_view entry);
  uint64_t count() const { return count_; }
  const std::string& bytes() const { return b_; }

 private:
  void Key(const std::string& k, uint32_t type);
  template <typename T>
  void Pod(T v);
  void Text(const std::string& v);
  std::string b_;
  uint64_t count_ = 0;
};

// One tensor to write: name, dimensions (ne[0] innermost), type; its bytes come from the
// writer's callback and must be exactly RowBytes(type, ne[0]) x rows.
struct OutTensor {
  std::string name;
  std::vector<uint64_t> ne;
  TensorType type = TensorType::kF32;
};
using TensorBytes = std::function<absl::StatusOr<std::shared_ptr<const Buffer>>(size_t index)>;

// Writes a version-3 GGUF file at `path`: header, `md`, tensor infos, then each tensor's
// bytes (asked for one at a time, in order) padded to 32 bytes. A tensor's bytes are written on
// a second thread while the callback makes the next one's (one write in flight).
absl::Status WriteContainer(const std::string& path, const Metadata& md, const std::vector<OutTensor>& tensors,
                            const TensorBytes& bytes, ProgressSink* progress = nullptr);

}  // namespace compress::gguf
