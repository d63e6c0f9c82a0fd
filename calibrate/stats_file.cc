// The --stats file: keys, entries, atomic replacement.
#include "calibrate/stats_file.h"

#include <xxhash.h>

#include <cstdio>
#include <filesystem>
#include <unistd.h>

#include "calibrate/stats_io.h"
#include "core/file_util.h"
#include "core/status.h"
#include "core/wire.h"

namespace compress {
namespace fs = std::filesystem;

namespace {

constexpr std::string_view kMagic = "compress calibration statistics 1";
constexpr size_t kMaxEntries = 8;

struct Entry {
  uint64_t key = 0;
  std::vector<std::byte> bytes;  // SerializeStats of the layers, then the experts
};

class Hasher {
 public:
  Hasher() : s_(XXH3_createState()) { XXH3_64bits_reset(s_); }
  ~Hasher() { XXH3_freeState(s_); }
  void Add(const void* p, size_t n) { XXH3_64bits_update(s_, p, n); }
  void Add(std::string_view s) {
    const uint64_t n = s.size();
    Add(&n, sizeof(n));
    Add(s.data(), s.size());
  }
  template <class T>
  void AddValue(const T& v) { Add(&v, sizeof(v)); }
  uint64_t Digest() const { return XXH3_64bits_digest(s_); }

 private:
  XXH3_state_t* s_;
};

absl::StatusOr<std::vector<Entry>> ReadEntries(const std::string& path) {
  std::vector<Entry> out;
  std::error_code ec;
  if (!fs::exists(path, ec)) return out;
  ASSIGN_OR_RETURN(std::string text, ReadSmallFile(path, size_t{1} << 40));
  ByteReader r(std::as_bytes(std::span(text.data(), text.size())), path);
  std::string magic;
  if (!r.GetString(magic).ok() || magic != kMagic) {
    return InvalidArgument("{}: --stats: the file exists and is not a compress statistics file (left as it is)", path);
  }
  uint64_t n = 0;
  RETURN_IF_ERROR(r.Get(n));
  if (n > kMaxEntries) return InvalidArgument("{}: --stats: corrupt statistics file", path);
  for (uint64_t i = 0; i < n; ++i) {
    Entry e;
    RETURN_IF_ERROR(r.Get(e.key));
    RETURN_IF_ERROR(r.GetArray(e.bytes));
    out.push_back(std::move(e));
  }
  if (!r.done()) return InvalidArgument("{}: --stats: trailing bytes in the statistics file", path);
  return out;
}

}  // namespace

absl::StatusOr<uint64_t> StatisticsKey(const Model& model, const CalibrationData& data) {
  Hasher h;
  h.Add(kMagic);
  h.AddValue(data.hash);
  h.AddValue(data.options.samples);
  h.AddValue(data.options.seqlen);
  h.AddValue(data.options.seed);
  h.AddValue(data.options.min_expert_tokens);
  // Hashed only when not the reference, so files saved before the setting existed stay valid.
  if (data.options.precision != CalibrationOptions::Precision::kF32) h.Add(PrecisionName(data.options.precision));
  h.Add(model.config.dump());
  for (const auto& [name, q] : model.input_quant) {
    h.Add(name);
    h.Add(q.Describe());
    h.AddValue(q.scale);
    h.Add(q.channel_exp.data(), q.channel_exp.size());
  }
  if (model.kv_cache) {
    h.Add(model.kv_cache->Describe());
    for (const auto& [block, s] : model.kv_cache->scales) {
      h.AddValue(block);
      h.Add(s.k.data(), s.k.size() * sizeof(float));
      h.Add(s.v.data(), s.v.size() * sizeof(float));
      h.Add(s.k_bits.data(), s.k_bits.size());
      h.Add(s.v_bits.data(), s.v_bits.size());
    }
  }
  for (const auto& name : model.tensors.names()) {
    ByteWriter w;  // one tensor at a time: its bytes, quantization and factors
    RETURN_IF_ERROR(PutTensor(w, model.tensors.at(name)));
    const std::vector<std::byte> bytes = w.Take();
    h.Add(name);
    h.Add(bytes.data(), bytes.size());
  }
  return h.Digest();
}

absl::StatusOr<std::optional<CalibrationStatistics::Result>> LoadStatistics(const std::string& path, uint64_t key) {
  ASSIGN_OR_RETURN(std::vector<Entry> entries, ReadEntries(path));
  for (const Entry& e : entries) {
    if (e.key != key) continue;
    ByteReader r(e.bytes, path);
    std::vector<std::byte> layers;
    RETURN_IF_ERROR(r.GetArray(layers));
    ASSIGN_OR_RETURN(BlockStats bs, DeserializeStats(layers));
    CalibrationStatistics::Result out;
    out.layers = std::move(bs.layers);
    uint64_t n = 0;
    RETURN_IF_ERROR(r.Get(n));
    if (n > (uint64_t{1} << 24)) return InvalidArgument("{}: --stats: corrupt statistics file", path);
    for (uint64_t i = 0; i < n; ++i) {
      ASSIGN_OR_RETURN(ExpertCoverage c, GetExpertCoverage(r));
      out.experts.push_back(c);
    }
    if (!r.done()) return InvalidArgument("{}: --stats: corrupt statistics entry", path);
    return out;
  }
  return std::nullopt;
}

absl::Status CheckStatisticsFile(const std::string& path) { return ReadEntries(path).status(); }

absl::Status SaveStatistics(const std::string& path, uint64_t key, const CalibrationStatistics::Result& r) {
  ASSIGN_OR_RETURN(std::vector<Entry> entries, ReadEntries(path));
  std::erase_if(entries, [&](const Entry& e) { return e.key == key; });
  while (entries.size() >= kMaxEntries) entries.erase(entries.begin());
  Entry e{key, {}};
  {
    BlockStats bs;
    bs.layers = r.layers;
    ByteWriter w;
    w.PutArray(SerializeStats(bs));
    w.Put<uint64_t>(r.experts.size());
    for (const ExpertCoverage& c : r.experts) PutExpertCoverage(w, c);
    e.bytes = w.Take();
  }
  entries.push_back(std::move(e));
  ByteWriter w;
  w.PutString(kMagic);
  w.Put<uint64_t>(entries.size());
  for (const Entry& x : entries) {
    w.Put(x.key);
    w.PutArray(x.bytes);
  }
  const std::vector<std::byte> bytes = w.Take();
  return WriteFileAtomic(path, [&](std::FILE* f) { return std::fwrite(bytes.data(), 1, bytes.size(), f) == bytes.size(); });
}

}  // namespace compress
