// GGUF container reading and writing (formats/gguf_container.h).
#include "formats/gguf_container.h"

#include <cstring>
#include <set>

#include "core/checked_math.h"
#include "core/file_util.h"
#include "core/status.h"
#include "formats/write_behind.h"

namespace compress::gguf {
namespace {

// Bounds-checked cursor over the mapped file; every failure names the file and the offset.
class Cursor {
 public:
  Cursor(const std::string& path, const uint8_t* data, size_t size) : path_(path), data_(data), size_(size) {}
  absl::Status Need(uint64_t n, const char* what) {
    if (n > size_ - pos_) {
      return DataLoss("{}: truncated GGUF: {} needs {} bytes at offset {}, the file has {}", path_, what, n,
                      pos_, size_);
    }
    return absl::OkStatus();
  }
  template <typename T>
  absl::StatusOr<T> Pod(const char* what) {
    RETURN_IF_ERROR(Need(sizeof(T), what));
    T v;
    std::memcpy(&v, data_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  absl::StatusOr<std::string> Str(const char* what) {
    ASSIGN_OR_RETURN(uint64_t n, Pod<uint64_t>(what));
    RETURN_IF_ERROR(Need(n, what));
    std::string s(reinterpret_cast<const char*>(data_ + pos_), n);
    pos_ += n;
    return s;
  }
  size_t pos() const { return pos_; }

 private:
  const std::string& path_;
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
};

// A metadata value as JSON (numbers, bools, strings and arrays of them).
absl::StatusOr<nlohmann::json> ReadValue(Cursor& c, uint32_t type, const std::string& path, int depth = 0) {
  switch (type) {
    case kU8:
      return c.Pod<uint8_t>("a u8 value");
    case kI8:
      return c.Pod<int8_t>("an i8 value");
    case kU16:
      return c.Pod<uint16_t>("a u16 value");
    case kI16:
      return c.Pod<int16_t>("an i16 value");
    case kU32:
      return c.Pod<uint32_t>("a u32 value");
    case kI32:
      return c.Pod<int32_t>("an i32 value");
    case kU64:
      return c.Pod<uint64_t>("a u64 value");
    case kI64:
      return c.Pod<int64_t>("an i64 value");
    case kF32:
      return c.Pod<float>("an f32 value");
    case kF64:
      return c.Pod<double>("an f64 value");
    case kBool: {
      ASSIGN_OR_RETURN(uint8_t b, c.Pod<uint8_t>("a bool value"));
      return b != 0;
    }
    case kString:
      return c.Str("a string value");
    case kArray: {
      if (depth > 0) return DataLoss("{}: nested GGUF arrays are not supported", path);
      ASSIGN_OR_RETURN(uint32_t et, c.Pod<uint32_t>("an array type"));
      ASSIGN_OR_RETURN(uint64_t n, c.Pod<uint64_t>("an array length"));
      RETURN_IF_ERROR(c.Need(n, "the array's elements"));  // every element takes >= 1 byte
      nlohmann::json a = nlohmann::json::array();
      for (uint64_t i = 0; i < n; ++i) {
        ASSIGN_OR_RETURN(nlohmann::json v, ReadValue(c, et, path, depth + 1));
        a.push_back(std::move(v));
      }
      return a;
    }
  }
  return DataLoss("{}: unknown GGUF metadata value type {} at offset {}", path, type, c.pos());
}

}  // namespace

int64_t TensorInfo::rows() const {
  int64_t r = 1;
  for (size_t d = 1; d < ne.size(); ++d) r *= static_cast<int64_t>(ne[d]);  // bounded by ReadContainer
  return r;
}

absl::StatusOr<uint64_t> Container::GetU(const std::string& key) const {
  auto it = kv.find(key);
  if (it == kv.end() || !it->second.is_number_integer() || it->second.get<int64_t>() < 0) {
    return DataLoss("{}: GGUF metadata '{}' is missing or not a non-negative integer", path, key);
  }
  return it->second.get<uint64_t>();
}

std::string Container::GetStr(const std::string& key, const std::string& fallback) const {
  auto it = kv.find(key);
  return it != kv.end() && it->second.is_string() ? it->second.get<std::string>() : fallback;
}

absl::StatusOr<Container> ReadContainer(const std::string& path, uint32_t max_dims) {
  Container g;
  g.path = path;
  ASSIGN_OR_RETURN(g.file, MappedFile::Open(path));
  const uint64_t file_size = g.file->size();
  Cursor c(path, g.file->data(), file_size);
  ASSIGN_OR_RETURN(uint32_t magic, c.Pod<uint32_t>("the magic"));
  if (magic != kMagic) return DataLoss("{}: not a GGUF file (bad magic)", path);
  ASSIGN_OR_RETURN(g.version, c.Pod<uint32_t>("the version"));
  if (g.version != 2 && g.version != 3)
    return Unimplemented("{}: GGUF version {} (compress reads 2 and 3)", path, g.version);
  ASSIGN_OR_RETURN(uint64_t n_tensors, c.Pod<uint64_t>("the tensor count"));
  ASSIGN_OR_RETURN(uint64_t n_kv, c.Pod<uint64_t>("the metadata count"));
  if (n_tensors > file_size / 8 || n_kv > file_size / 8) {
    return DataLoss("{}: GGUF header claims {} tensors and {} metadata entries, more than the file holds",
                    path, n_tensors, n_kv);
  }
  for (uint64_t i = 0; i < n_kv; ++i) {
    const uint64_t begin = c.pos();
    ASSIGN_OR_RETURN(std::string key, c.Str("a metadata key"));
    ASSIGN_OR_RETURN(uint32_t type, c.Pod<uint32_t>("a metadata type"));
    ASSIGN_OR_RETURN(nlohmann::json v, ReadValue(c, type, path));
    if (!g.kv.emplace(key, std::move(v)).second) {
      return DataLoss("{}: GGUF metadata key '{}' appears twice", path, key);
    }
    g.kv_raw.push_back({std::move(key), begin, c.pos()});
  }
  uint64_t alignment = kAlignment;
  if (g.kv.count("general.alignment")) {
    ASSIGN_OR_RETURN(alignment, g.GetU("general.alignment"));
    if (alignment == 0 || (alignment & (alignment - 1)) || alignment > (1u << 20)) {
      return DataLoss("{}: general.alignment {} is not a power of two up to 1 MiB", path, alignment);
    }
  }
  std::set<std::string> names;
  for (uint64_t i = 0; i < n_tensors; ++i) {
    TensorInfo t;
    ASSIGN_OR_RETURN(t.name, c.Str("a tensor name"));
    if (!names.insert(t.name).second) return DataLoss("{}: tensor '{}' appears twice", path, t.name);
    ASSIGN_OR_RETURN(uint32_t dims, c.Pod<uint32_t>("a tensor rank"));
    if (dims < 1 || dims > max_dims)
      return Unimplemented("{}: tensor '{}' has {} dimensions (1 to {} here)", path, t.name, dims, max_dims);
    uint64_t elements = 1;
    for (uint32_t d = 0; d < dims; ++d) {
      ASSIGN_OR_RETURN(uint64_t n, c.Pod<uint64_t>("a tensor dimension"));
      if (n == 0 || n > (1ull << 32)) return DataLoss("{}: tensor '{}' dimension {} is {}", path, t.name, d, n);
      const std::optional<uint64_t> e = CheckedMulU(elements, n);
      if (!e || *e >= (1ull << 63)) {
        return DataLoss("{}: tensor '{}' has more than 2^63 elements (dimension {} is {})", path, t.name, d, n);
      }
      elements = *e;
      t.ne.push_back(n);
    }
    ASSIGN_OR_RETURN(uint32_t type, c.Pod<uint32_t>("a tensor type"));
    if (!KnownType(type)) {
      return Unimplemented(
          "{}: tensor '{}' has ggml type {}; compress reads F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, "
          "Q2_K..Q6_K, IQ4_NL, IQ4_XS and MXFP4",
          path, t.name, type);
    }
    t.type = static_cast<TensorType>(type);
    if (t.ne[0] % TypeBlock(t.type)) {
      return DataLoss("{}: tensor '{}' has {} columns, not a multiple of {}'s {}-element block", path, t.name,
                      t.ne[0], TypeName(t.type), TypeBlock(t.type));
    }
    ASSIGN_OR_RETURN(t.offset, c.Pod<uint64_t>("a tensor offset"));
    if (t.offset % alignment)
      return DataLoss("{}: tensor '{}' offset {} is not aligned", path, t.name, t.offset);
    g.tensors.push_back(std::move(t));
  }
  g.data_start = (c.pos() + alignment - 1) / alignment * alignment;
  if (!g.tensors.empty() && g.data_start > file_size) {
    return DataLoss("{}: truncated GGUF: tensor data would start at offset {}, the file has {} bytes", path,
                    g.data_start, file_size);
  }
  for (TensorInfo& t : g.tensors) {
    const std::optional<uint64_t> size =
        CheckedMulU(RowBytes(t.type, static_cast<int64_t>(t.ne[0])), static_cast<uint64_t>(t.rows()));
    if (!size || *size > file_size || t.offset > file_size - g.data_start ||
        *size > file_size - g.data_start - t.offset) {
      return DataLoss("{}: tensor '{}' ([{} x {}] at data offset {}) runs past the end of the file", path, t.name,
                      t.rows(), t.ne[0], t.offset);
    }
    t.nbytes = *size;
  }
  return g;
}

template <typename T>
void Metadata::Pod(T v) {
  char b[sizeof(T)];
  std::memcpy(b, &v, sizeof(T));
  b_.append(b, sizeof(T));
}
void Metadata::Text(const std::string& v) {
  Pod<uint64_t>(v.size());
  b_ += v;
}
void Metadata::Key(const std::string& k, uint32_t type) {
  ++count_;
  Text(k);
  Pod(type);
}
void Metadata::U32(const std::string& k, uint32_t v) { Key(k, kU32), Pod(v); }
void Metadata::F32(const std::string& k, float v) { Key(k, kF32), Pod(v); }
void Metadata::Bool(const std::string& k, bool v) { Key(k, kBool), Pod<uint8_t>(v ? 1 : 0); }
void Metadata::Str(const std::string& k, const std::string& v) { Key(k, kString), Text(v); }
void Metadata::StrArray(const std::string& k, const std::vector<std::string>& v) {
  Key(k, kArray);
  Pod<uint32_t>(kString);
  Pod<uint64_t>(v.size());
  for (const auto& s : v) Text(s);
}
void Metadata::BoolArray(const std::string& k, const std::vector<bool>& v) {
  Key(k, kArray);
  Pod<uint32_t>(kBool);
  Pod<uint64_t>(v.size());
  for (bool x : v) Pod<uint8_t>(x ? 1 : 0);
}
void Metadata::F32Array(const std::string& k, const std::vector<float>& v) {
  Key(k, kArray);
  Pod<uint32_t>(kF32);
  Pod<uint64_t>(v.size());
  for (float x : v) Pod(x);
}
void Metadata::Raw(std::string_view entry) {
  ++count_;
  b_.append(entry);
}
void Metadata::I32Array(const std::string& k, const std::vector<int32_t>& v) {
  Key(k, kArray);
  Pod<uint32_t>(kI32);
  Pod<uint64_t>(v.size());
  for (int32_t x : v) Pod(x);
}

absl::Status WriteContainer(const std::string& path, const Metadata& md, const std::vector<OutTensor>& tensors,
                            const TensorBytes& bytes, ProgressSink* progress) {
  auto put = [](std::string& s, auto v) {
    char b[sizeof(v)];
    std::memcpy(b, &v, sizeof(v));
    s.append(b, sizeof(v));
  };
  std::string head;
  put(head, kMagic);
  put(head, kVersion);
  put(head, static_cast<uint64_t>(tensors.size()));
  put(head, md.count());
  head += md.bytes();
  std::vector<uint64_t> sizes;
  uint64_t offset = 0;
  for (const OutTensor& t : tensors) {
    if (t.ne.empty()) return Internal("GGUF tensor '{}' has no dimensions", t.name);
    uint64_t rows = 1;
    for (size_t d = 1; d < t.ne.size(); ++d) rows *= t.ne[d];
    sizes.push_back(RowBytes(t.type, static_cast<int64_t>(t.ne[0])) * rows);
    put(head, static_cast<uint64_t>(t.name.size()));
    head += t.name;
    put(head, static_cast<uint32_t>(t.ne.size()));
    for (uint64_t n : t.ne) put(head, n);
    put(head, static_cast<uint32_t>(t.type));
    put(head, offset);
    offset += (sizes.back() + kAlignment - 1) / kAlignment * kAlignment;
  }
  while (head.size() % kAlignment) head.push_back('\0');

  FileWriter w;
  RETURN_IF_ERROR(w.Open(path));
  RETURN_IF_ERROR(w.Write(head.data(), head.size()));
  // Tensor i's bytes (and padding) are written on a second thread while the callback makes
  // tensor i + 1's.
  WriteBehind behind(w);
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (progress) progress->Update("write gguf", static_cast<int64_t>(i), static_cast<int64_t>(tensors.size()));
    absl::StatusOr<std::shared_ptr<const Buffer>> data = bytes(i);
    if (!data.ok()) {
      (void)behind.Wait();
      return data.status();
    }
    RETURN_IF_ERROR(behind.Wait());
    if ((*data)->size() != sizes[i]) {
      return Internal("GGUF tensor '{}' has {} bytes, its type and shape need {}", tensors[i].name, (*data)->size(),
                      sizes[i]);
    }
    RETURN_IF_ERROR(behind.Start(*std::move(data), (kAlignment - sizes[i] % kAlignment) % kAlignment));
  }
  RETURN_IF_ERROR(behind.Wait());
  RETURN_IF_ERROR(w.Close());
  if (progress) progress->Done();
  return absl::OkStatus();
}

}  // namespace compress::gguf
