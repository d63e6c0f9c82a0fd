// safetensors reader (header validation, mmap views, sharded index) and streaming writer.
#include "formats/safetensors.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "core/block_quant.h"
#include "core/status.h"
#include "core/file_util.h"
#include "core/json_util.h"
#include "formats/write_behind.h"
#include "fmt/ranges.h"
#include "nlohmann/json.hpp"

namespace compress {
namespace fs = std::filesystem;
namespace {

struct StName {
  std::string_view name;
  DType type;
};
constexpr StName kStNames[] = {
    {"F64", DType::kF64},        {"F32", DType::kF32},        {"F16", DType::kF16},   {"BF16", DType::kBF16},
    {"F8_E4M3", DType::kF8E4M3}, {"F8_E5M2", DType::kF8E5M2}, {"I64", DType::kI64},   {"I32", DType::kI32},
    {"I16", DType::kI16},        {"I8", DType::kI8},          {"U64", DType::kU64},   {"U32", DType::kU32},
    {"U16", DType::kU16},        {"U8", DType::kU8},          {"BOOL", DType::kBool},
};

bool MulOverflows(uint64_t a, uint64_t b, uint64_t* out) { return __builtin_mul_overflow(a, b, out); }

}  // namespace

absl::StatusOr<DType> ParseSafetensorsDType(std::string_view s) {
  for (const auto& n : kStNames) {
    if (n.name == s) return n.type;
  }
  return InvalidArgument("unsupported dtype '{}'", s);
}

std::string_view SafetensorsDTypeName(DType t) {
  for (const auto& n : kStNames) {
    if (n.type == t) return n.name;
  }
  return {};
}

namespace {

// One tensor entry of a safetensors header, checked against the data section's size.
struct StEntry {
  std::string name;
  DType dtype;
  Shape shape;
  uint64_t begin, end;
};

absl::StatusOr<StEntry> ParseStEntry(const std::string& path, const std::string& name, const nlohmann::json& v,
                                     uint64_t data_size) {
  if (!v.is_object() || !v.contains("dtype") || !v.contains("shape") || !v.contains("data_offsets")) {
    return DataLoss("{}: tensor '{}': entry needs dtype, shape and data_offsets", path, name);
  }
  if (!v["dtype"].is_string()) return DataLoss("{}: tensor '{}': dtype is not a string", path, name);
  auto dt = ParseSafetensorsDType(v["dtype"].get<std::string>());
  if (!dt.ok()) return DataLoss("{}: tensor '{}': {}", path, name, dt.status().message());
  StEntry e{name, *dt, {}, 0, 0};
  if (!v["shape"].is_array()) return DataLoss("{}: tensor '{}': shape is not a list", path, name);
  uint64_t numel = 1;
  for (const auto& d : v["shape"]) {
    if (!d.is_number_unsigned()) {
      return DataLoss("{}: tensor '{}': shape has a non-integer or negative dimension", path, name);
    }
    uint64_t dim = d.get<uint64_t>();
    if (MulOverflows(numel, dim, &numel) || numel > (1ull << 50)) {
      return DataLoss("{}: tensor '{}': shape is too large", path, name);
    }
    e.shape.push_back(static_cast<int64_t>(dim));
  }
  const auto& off = v["data_offsets"];
  if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() || !off[1].is_number_unsigned()) {
    return DataLoss("{}: tensor '{}': data_offsets must be two non-negative integers", path, name);
  }
  e.begin = off[0].get<uint64_t>();
  e.end = off[1].get<uint64_t>();
  if (e.begin > e.end) {
    return DataLoss("{}: tensor '{}': data_offsets [{}, {}] are reversed", path, name, e.begin, e.end);
  }
  if (e.end > data_size) {
    return DataLoss(
        "{}: tensor '{}': data_offsets end {} is past the end of the data ({} bytes); "
        "file truncated?",
        path, name, e.end, data_size);
  }
  uint64_t expect = static_cast<uint64_t>(DTypeBytes(e.dtype, static_cast<int64_t>(numel)));
  if (e.end - e.begin != expect) {
    return DataLoss("{}: tensor '{}': {} {} needs {} bytes but data_offsets span {}", path, name,
                    SafetensorsDTypeName(e.dtype), ShapeString(e.shape), expect, e.end - e.begin);
  }
  return e;
}

}  // namespace

absl::Status ReadSafetensorsFile(const std::string& path, TensorStore& store,
                                 std::map<std::string, std::string>* metadata) {
  ASSIGN_OR_RETURN(std::shared_ptr<MappedFile> file, MappedFile::Open(path));
  const uint64_t size = file->size();
  if (size < 8) {
    return DataLoss("{}: truncated: {} bytes, shorter than the 8-byte header length", path, size);
  }
  uint64_t header_len;
  std::memcpy(&header_len, file->data(), 8);
  if (header_len > kMaxSafetensorsHeader) {
    return DataLoss("{}: header length {} exceeds the 100 MiB limit (corrupt or not safetensors)", path,
                    header_len);
  }
  if (header_len > size - 8) {
    return DataLoss("{}: truncated: header length {} but only {} bytes follow", path, header_len, size - 8);
  }
  const char* hdr = reinterpret_cast<const char*>(file->data() + 8);
  if (header_len == 0 || hdr[0] != '{') {
    return DataLoss("{}: header is not a JSON object", path);
  }
  auto parsed = ParseJsonStrict(std::string_view(hdr, header_len), path + ": header");
  if (!parsed.ok() && parsed.status().message().find("appears twice") != std::string_view::npos) {
    return DataLoss("{}: tensor or metadata {}", path,
                    parsed.status().message().substr(parsed.status().message().find("key '")));
  }
  if (!parsed.ok() || !parsed->is_object()) return DataLoss("{}: header is not valid JSON", path);
  const nlohmann::json& j = *parsed;
  const uint64_t data_start = 8 + header_len;
  const uint64_t data_size = size - data_start;

  std::vector<StEntry> entries;
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& name = it.key();
    const auto& v = it.value();
    if (name == "__metadata__") {
      if (!v.is_object()) return DataLoss("{}: __metadata__ must be an object", path);
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string()) {
          return DataLoss("{}: __metadata__ value of '{}' is not a string", path, m.key());
        }
        if (metadata) (*metadata)[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    ASSIGN_OR_RETURN(StEntry e, ParseStEntry(path, name, v, data_size));
    if (store.contains(name)) return DataLoss("{}: tensor '{}' appears twice", path, name);
    entries.push_back(std::move(e));
  }
  std::vector<const StEntry*> by_offset;
  for (const auto& e : entries) by_offset.push_back(&e);
  std::stable_sort(by_offset.begin(), by_offset.end(),
                   [](const StEntry* a, const StEntry* b) { return a->begin < b->begin; });
  const StEntry* reach = nullptr;  // the entry reaching furthest so far
  for (const StEntry* e : by_offset) {
    if (e->end == e->begin) continue;
    if (reach && e->begin < reach->end) {
      return DataLoss("{}: tensors '{}' and '{}' overlap", path, reach->name, e->name);
    }
    if (!reach || e->end > reach->end) reach = e;
  }
  // Tensors are stored in file order, the order the producer wrote them.
  for (const auto& e : by_offset) {
    store.Set(e->name, Tensor(e->dtype, e->shape,
                              std::make_shared<SliceBuffer>(file, data_start + e->begin, e->end - e->begin)));
  }
  return absl::OkStatus();
}

absl::Status ReadSafetensorsIndex(const std::string& index_path, TensorStore& store,
                                  std::map<std::string, std::string>* metadata) {
  ASSIGN_OR_RETURN(std::string text, ReadSmallFile(index_path, 64 << 20));
  ASSIGN_OR_RETURN(nlohmann::json j, ParseJsonStrict(text, index_path));
  if (!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object()) {
    return DataLoss("{}: not a safetensors index (needs a 'weight_map' object)", index_path);
  }
  fs::path dir = fs::path(index_path).parent_path();
  std::map<std::string, std::vector<std::string>> by_file;
  for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
    if (!it.value().is_string()) {
      return DataLoss("{}: weight_map entry '{}' is not a file name", index_path, it.key());
    }
    by_file[it.value().get<std::string>()].push_back(it.key());
  }
  // Shards in file-name order (model-00001-of-N, ...), each read fully.
  for (const auto& [file, names] : by_file) {
    ASSIGN_OR_RETURN(std::string shard, ResolveInside(dir.string(), file, index_path));
    TensorStore shard_store;
    RETURN_IF_ERROR(ReadSafetensorsFile(shard, shard_store, metadata));
    for (const auto& n : names) {
      if (!shard_store.contains(n)) {
        return DataLoss("{}: weight_map puts '{}' in {} but that shard does not hold it", index_path, n,
                        file);
      }
    }
    for (const auto& n : shard_store.names()) {
      if (store.contains(n)) return DataLoss("{}: tensor '{}' is in more than one shard", index_path, n);
      store.Set(n, shard_store.at(n));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<std::string>> WriteSafetensors(const TensorStore& store, const std::string& dir,
                                                          const SafetensorsWriteOptions& opts,
                                                          ProgressSink* progress) {
  // Plan shards greedily in store order.
  std::vector<std::vector<std::string>> shards(1);
  int64_t in_shard = 0;
  for (const auto& name : store.names()) {
    const Tensor& t = store.at(name);
    if (IsBlockType(t.dtype())) {
      return InvalidArgument(
          "tensor '{}' is {}, a GGUF block type: write a .gguf output, or run dequantize{{dtype=f16}} first", name,
          DTypeName(t.dtype()));
    }
    if (SafetensorsDTypeName(t.dtype()).empty()) {
      return InvalidArgument("tensor '{}': dtype {} cannot be stored in safetensors", name,
                             DTypeName(t.dtype()));
    }
    if (opts.max_shard_bytes > 0 && in_shard > 0 && in_shard + t.nbytes() > opts.max_shard_bytes) {
      shards.emplace_back();
      in_shard = 0;
    }
    shards.back().push_back(name);
    in_shard += t.nbytes();
  }
  const bool sharded = shards.size() > 1;
  std::vector<std::string> files;
  // Headers and the index are written as text: a JSON object built key by key costs a
  // linear search per key (ordered_json), quadratic for checkpoints with many tensors.
  auto quoted = [](const std::string& s) { return nlohmann::json(s).dump(); };
  std::string weight_map;
  int64_t total = 0, done = 0;
  for (size_t s = 0; s < shards.size(); ++s) {
    std::string file =
        sharded ? fmt::format("{}-{:05d}-of-{:05d}.safetensors", opts.base_name, s + 1, shards.size())
                : opts.base_name + ".safetensors";
    std::string header = "{";
    if (!opts.metadata.empty()) {
      header += "\"__metadata__\":{";
      for (const auto& [k, v] : opts.metadata) {
        if (header.back() != '{') header += ',';
        header += quoted(k) + ":" + quoted(v);
      }
      header += "}";
    }
    uint64_t offset = 0;
    for (const auto& name : shards[s]) {
      const Tensor& t = store.at(name);
      if (header.size() > 1) header += ',';
      header += fmt::format("{}:{{\"dtype\":\"{}\",\"shape\":[{}],\"data_offsets\":[{},{}]}}", quoted(name),
                            SafetensorsDTypeName(t.dtype()), fmt::join(t.shape(), ","), offset,
                            offset + t.nbytes());
      offset += t.nbytes();
      weight_map += fmt::format("{}    {}: {}", weight_map.empty() ? "" : ",\n", quoted(name), quoted(file));
    }
    header += "}";
    std::string h = std::move(header);
    h.append((8 - h.size() % 8) % 8, ' ');  // keep the data 8-byte aligned
    FileWriter w;
    RETURN_IF_ERROR(w.Open((fs::path(dir) / file).string()));
    uint64_t hl = h.size();
    RETURN_IF_ERROR(w.Write(&hl, 8));
    RETURN_IF_ERROR(w.Write(h.data(), h.size()));
    // A tensor's bytes are written on a second thread while this one produces the next (a
    // lazy conversion, in parallel): writing and converting overlap. One write in flight; its
    // tensor's file pages are dropped once written.
    WriteBehind behind(w);
    for (const auto& name : shards[s]) {
      const Tensor& t = store.at(name);
      auto data = t.ReadOnce();
      if (!data.ok()) {
        (void)behind.Wait();
        return Annotate(data.status(), fmt::format("tensor '{}'", name));
      }
      RETURN_IF_ERROR(behind.Start(*std::move(data), 0, [&t] { t.ReleasePages(); }));
      total += t.nbytes();
      if (progress) progress->Update("write", ++done, static_cast<int64_t>(store.size()));
    }
    RETURN_IF_ERROR(behind.Wait());
    RETURN_IF_ERROR(w.Close());
    files.push_back(file);
  }
  if (sharded) {
    // What nlohmann's dump(2) of {"metadata": {"total_size": N}, "weight_map": {...}} prints.
    std::string text = fmt::format("{{\n  \"metadata\": {{\n    \"total_size\": {}\n  }},\n  \"weight_map\": {{\n{}\n  }}\n}}\n",
                                   total, weight_map);
    RETURN_IF_ERROR(
        WriteSmallFile((fs::path(dir) / (opts.base_name + ".safetensors.index.json")).string(), text));
    files.push_back(opts.base_name + ".safetensors.index.json");
  }
  return files;
}

}  // namespace compress
