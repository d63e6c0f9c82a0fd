// Calibration statistics as bytes, and their sum.
#include "calibrate/stats_io.h"

#include <cstring>

#include "core/status.h"
#include "core/wire.h"

namespace compress {
namespace {

constexpr uint64_t kMagic = 0x31545354504d4f43ull;  // "COMPTST1"

}  // namespace

std::vector<std::byte> SerializeStats(const BlockStats& s) {
  ByteWriter w;
  w.Put(kMagic);
  w.Put<uint64_t>(s.layers.size());
  for (const auto& [name, st] : s.layers) {
    w.PutString(name);
    w.Put<int64_t>(st.in_features);
    w.Put<int64_t>(st.rows);
    w.Put<int64_t>(st.sample_rows);
    w.Put<uint8_t>(st.data_free ? 1 : 0);
    w.PutArray(st.xtx);
    w.PutArray(st.absmax);
    w.PutArray(st.sum_abs);
    w.PutArray(st.sum_sq);
    w.PutArray(st.samples);
  }
  w.Put<uint64_t>(s.aliases.size());
  for (const auto& [alias, base] : s.aliases) {
    w.PutString(alias);
    w.PutString(base);
  }
  return w.Take();
}

absl::StatusOr<BlockStats> DeserializeStats(std::span<const std::byte> bytes) {
  ByteReader r(bytes, "calibration statistics");
  uint64_t magic = 0, n = 0;
  RETURN_IF_ERROR(r.Get(magic));
  if (magic != kMagic) return InvalidArgument("calibration statistics: not compress's statistics bytes");
  RETURN_IF_ERROR(r.Get(n));
  BlockStats s;
  for (uint64_t i = 0; i < n; ++i) {
    std::string name;
    RETURN_IF_ERROR(r.GetString(name));
    LinearStats st;
    uint8_t data_free = 0;
    RETURN_IF_ERROR(r.Get(st.in_features));
    RETURN_IF_ERROR(r.Get(st.rows));
    RETURN_IF_ERROR(r.Get(st.sample_rows));
    RETURN_IF_ERROR(r.Get(data_free));
    st.data_free = data_free != 0;
    RETURN_IF_ERROR(r.GetArray(st.xtx));
    RETURN_IF_ERROR(r.GetArray(st.absmax));
    RETURN_IF_ERROR(r.GetArray(st.sum_abs));
    RETURN_IF_ERROR(r.GetArray(st.sum_sq));
    RETURN_IF_ERROR(r.GetArray(st.samples));
    s.layers[name] = std::move(st);
  }
  RETURN_IF_ERROR(r.Get(n));
  for (uint64_t i = 0; i < n; ++i) {
    std::string alias, base;
    RETURN_IF_ERROR(r.GetString(alias));
    RETURN_IF_ERROR(r.GetString(base));
    s.aliases[alias] = base;
  }
  if (!r.done()) return InvalidArgument("calibration statistics: trailing bytes");
  return s;
}

void MergeStats(BlockStats& total, BlockStats&& part) {
  for (auto& [alias, base] : part.aliases) total.aliases[alias] = base;
  for (auto& [name, p] : part.layers) {
    auto it = total.layers.find(name);
    if (it == total.layers.end()) {
      FreeFlushedStats(p);  // f32 sums (--calib-precision bf16) become f64 ones
      total.layers.emplace(name, std::move(p));
      continue;
    }
    LinearStats& t = it->second;
    t.rows += p.rows;
    for (size_t i = 0; i < t.absmax.size() && i < p.absmax.size(); ++i) t.absmax[i] = std::max(t.absmax[i], p.absmax[i]);
    for (size_t i = 0; i < t.sum_abs.size() && i < p.sum_abs.size(); ++i) t.sum_abs[i] += p.sum_abs[i];
    for (size_t i = 0; i < t.sum_sq.size() && i < p.sum_sq.size(); ++i) t.sum_sq[i] += p.sum_sq[i];
    if (t.xtx.size() == p.xtx.size()) {
      double* a = t.xtx.data();
      const double* b = p.xtx.data();
      const int64_t n = static_cast<int64_t>(t.xtx.size());
#pragma omp parallel for schedule(static) if (n > (1 << 20))
      for (int64_t i = 0; i < n; ++i) a[i] += b[i];
    }
    if (!p.xtx32.empty() && t.xtx.size() == p.xtx32.size()) {  // a part's f32 sums (FlushStats' rule)
      std::swap(t.xtx32, p.xtx32);
      FlushStats(t);
      t.xtx32 = AlignedVector<float>();
    }
    t.samples.insert(t.samples.end(), p.samples.begin(), p.samples.end());
    t.sample_rows += p.sample_rows;
  }
}

}  // namespace compress
