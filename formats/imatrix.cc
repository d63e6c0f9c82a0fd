// llama.cpp importance matrix files (formats/imatrix.h).
#include "formats/imatrix.h"

#include <cmath>
#include <cstring>

#include "core/file_util.h"
#include "core/status.h"
#include "formats/gguf_container.h"

namespace compress {
namespace {

constexpr std::string_view kSums = ".in_sum2", kCounts = ".counts";

absl::Status CheckEntry(const std::string& path, const std::string& name, const ImatrixEntry& e) {
  for (float v : e.sums) {
    if (!std::isfinite(v) || v < 0) return DataLoss("{}: imatrix entry '{}' holds a sum of squares {}", path, name, v);
  }
  for (float v : e.counts) {
    if (!std::isfinite(v) || v < 0) return DataLoss("{}: imatrix entry '{}' holds a token count {}", path, name, v);
  }
  return absl::OkStatus();
}

// The legacy binary form; counts[0] = ncall, sums as stored (mean x^2 x ncall).
absl::StatusOr<Imatrix> LoadLegacy(const std::string& path, const uint8_t* data, size_t size) {
  size_t pos = 0;
  auto i32 = [&](const char* what) -> absl::StatusOr<int32_t> {
    if (size - pos < 4) return DataLoss("{}: truncated imatrix: {} at offset {}", path, what, pos);
    int32_t v;
    std::memcpy(&v, data + pos, 4);
    pos += 4;
    return v;
  };
  auto bytes = [&](int64_t n, const char* what) -> absl::StatusOr<const uint8_t*> {
    if (n < 0 || static_cast<uint64_t>(n) > size - pos) {
      return DataLoss("{}: truncated imatrix: {} of {} bytes at offset {}", path, what, n, pos);
    }
    const uint8_t* p = data + pos;
    pos += static_cast<size_t>(n);
    return p;
  };
  Imatrix m;
  ASSIGN_OR_RETURN(int32_t n_entries, i32("the entry count"));
  if (n_entries < 1) return DataLoss("{}: imatrix holds {} entries", path, n_entries);
  for (int32_t i = 0; i < n_entries; ++i) {
    ASSIGN_OR_RETURN(int32_t len, i32("a name length"));
    ASSIGN_OR_RETURN(const uint8_t* name_bytes, bytes(len, "a name"));
    std::string name(reinterpret_cast<const char*>(name_bytes), static_cast<size_t>(len));
    ASSIGN_OR_RETURN(int32_t ncall, i32("a call count"));
    ASSIGN_OR_RETURN(int32_t nval, i32("a value count"));
    if (nval < 1 || ncall < 0) return DataLoss("{}: imatrix entry '{}' has {} values and {} calls", path, name, nval, ncall);
    ASSIGN_OR_RETURN(const uint8_t* vals, bytes(int64_t{nval} * 4, "the values"));
    ImatrixEntry e;
    e.n_per_row = nval;
    e.sums.resize(static_cast<size_t>(nval));
    std::memcpy(e.sums.data(), vals, static_cast<size_t>(nval) * 4);
    // llama-quantize divides by ncall, or takes the values as they are when it is 0.
    e.counts = {static_cast<float>(ncall > 0 ? ncall : 1)};
    RETURN_IF_ERROR(CheckEntry(path, name, e));
    if (!m.entries.emplace(name, std::move(e)).second) {
      return DataLoss("{}: imatrix entry '{}' appears twice", path, name);
    }
  }
  if (pos < size) {  // optional: chunk count and one dataset name
    ASSIGN_OR_RETURN(int32_t chunks, i32("the chunk count"));
    m.chunk_count = static_cast<uint32_t>(std::max(0, chunks));
    if (pos < size) {
      ASSIGN_OR_RETURN(int32_t len, i32("the dataset name length"));
      ASSIGN_OR_RETURN(const uint8_t* ds, bytes(len, "the dataset name"));
      if (len > 0) m.datasets.emplace_back(reinterpret_cast<const char*>(ds), static_cast<size_t>(len));
    }
  }
  return m;
}

}  // namespace

std::vector<float> ImatrixEntry::MeanSquares() const {
  std::vector<float> out(sums.size(), 1.f);
  for (int64_t j = 0; j < n_mat(); ++j) {
    if (counts[j] <= 0) continue;
    for (int64_t i = 0; i < n_per_row; ++i) out[j * n_per_row + i] = sums[j * n_per_row + i] / counts[j];
  }
  return out;
}

absl::StatusOr<Imatrix> LoadImatrix(const std::string& path) {
  ASSIGN_OR_RETURN(auto file, MappedFile::Open(path));
  uint32_t magic = 0;
  if (file->size() >= 4) std::memcpy(&magic, file->data(), 4);
  if (magic != gguf::kMagic) return LoadLegacy(path, file->data(), file->size());

  ASSIGN_OR_RETURN(gguf::Container g, gguf::ReadContainer(path, /*max_dims=*/2));
  if (const std::string type = g.GetStr("general.type"); type != "imatrix") {
    return InvalidArgument("{}: a GGUF file of general.type '{}', not an importance matrix ('imatrix')", path, type);
  }
  Imatrix m;
  if (auto it = g.kv.find("imatrix.datasets"); it != g.kv.end() && it->second.is_array()) {
    for (const auto& d : it->second) {
      if (d.is_string()) m.datasets.push_back(d.get<std::string>());
    }
  }
  for (const char* key : {"imatrix.chunk_count", "imatrix.chunk_size"}) {
    if (!g.kv.count(key)) return DataLoss("{}: imatrix metadata '{}' is missing", path, key);
    ASSIGN_OR_RETURN(uint64_t v, g.GetU(key));
    (std::string_view(key).ends_with("count") ? m.chunk_count : m.chunk_size) = static_cast<uint32_t>(v);
  }
  std::map<std::string, std::pair<const gguf::TensorInfo*, const gguf::TensorInfo*>> pairs;
  for (const gguf::TensorInfo& t : g.tensors) {
    const bool sums = t.name.ends_with(kSums), counts = t.name.ends_with(kCounts);
    if (!sums && !counts) continue;
    const std::string base = t.name.substr(0, t.name.size() - (sums ? kSums : kCounts).size());
    if (t.type != gguf::TensorType::kF32) {
      return DataLoss("{}: imatrix tensor '{}' is {}, not F32", path, t.name, gguf::TypeName(t.type));
    }
    (sums ? pairs[base].first : pairs[base].second) = &t;
  }
  if (pairs.empty()) return DataLoss("{}: the importance matrix holds no entries", path);
  for (const auto& [name, p] : pairs) {
    if (!p.first || !p.second) {
      return DataLoss("{}: imatrix entry '{}' has {} but no {}", path, name, p.first ? kSums : kCounts,
                      p.first ? kCounts : kSums);
    }
    ImatrixEntry e;
    const int64_t nval = static_cast<int64_t>(p.first->nbytes / 4), ncounts = static_cast<int64_t>(p.second->nbytes / 4);
    if (ncounts < 1 || nval % ncounts != 0 || p.first->rows() != ncounts) {
      return DataLoss("{}: imatrix entry '{}' has {} sums for {} count(s): not [n_per_row, n_mat]", path, name, nval,
                      ncounts);
    }
    e.n_per_row = nval / ncounts;
    e.sums.resize(static_cast<size_t>(nval));
    e.counts.resize(static_cast<size_t>(ncounts));
    std::memcpy(e.sums.data(), g.Data(*p.first), p.first->nbytes);
    std::memcpy(e.counts.data(), g.Data(*p.second), p.second->nbytes);
    RETURN_IF_ERROR(CheckEntry(path, name, e));
    m.entries.emplace(name, std::move(e));
  }
  return m;
}

absl::Status WriteImatrix(const Imatrix& m, const std::string& path) {
  gguf::Metadata md;
  md.Str("general.type", "imatrix");
  md.StrArray("imatrix.datasets", m.datasets);
  md.U32("imatrix.chunk_count", m.chunk_count);
  md.U32("imatrix.chunk_size", m.chunk_size);
  std::vector<gguf::OutTensor> tensors;
  std::vector<const std::vector<float>*> values;
  for (const auto& [name, e] : m.entries) {
    if (e.n_mat() < 1 || static_cast<int64_t>(e.sums.size()) != e.n_per_row * e.n_mat()) {
      return Internal("imatrix entry '{}' has {} sums for {} x {}", name, e.sums.size(), e.n_per_row, e.n_mat());
    }
    const auto n_mat = static_cast<uint64_t>(e.n_mat());
    // Trailing dimensions of 1 are dropped, as ggml writes them: [n_per_row] and [1] for a
    // plain weight, [n_per_row, n_mat] and [1, n_mat] for merged experts.
    std::vector<uint64_t> sums_ne = {static_cast<uint64_t>(e.n_per_row)}, counts_ne = {1};
    if (n_mat > 1) sums_ne.push_back(n_mat), counts_ne.push_back(n_mat);
    tensors.push_back({name + std::string(kSums), sums_ne, gguf::TensorType::kF32});
    values.push_back(&e.sums);
    tensors.push_back({name + std::string(kCounts), counts_ne, gguf::TensorType::kF32});
    values.push_back(&e.counts);
  }
  return gguf::WriteContainer(path, md, tensors, [&](size_t i) -> absl::StatusOr<std::shared_ptr<const Buffer>> {
    auto b = std::make_shared<OwnedBuffer>(values[i]->size() * 4);
    std::memcpy(b->mutable_data(), values[i]->data(), b->size());
    return std::shared_ptr<const Buffer>(std::move(b));
  });
}

}  // namespace compress
