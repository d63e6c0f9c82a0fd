// compressed-tensors sparse-24-bitmask storage (see the header for the layout).
#include "formats/sparse24_bitmask.h"

#include <array>
#include <bit>
#include <cstring>

#include "core/status.h"

namespace compress {
namespace {

using Result = absl::StatusOr<std::shared_ptr<const Buffer>>;

// Element bytes of the types the form can hold (whole-byte scalars), 0 for the others.
int ElementBytes(DType t) {
  if (t == DType::kBool) return 0;
  const int bits = DTypeBits(t);
  return bits >= 8 && bits % 8 == 0 ? bits / 8 : 0;
}

// The kept positions of a group whose non-zero elements are the set bits of `nonzero` (at
// most 2): those, then the lowest zero positions up to 2.
constexpr uint8_t KeptOf(uint8_t nonzero) {
  uint8_t kept = nonzero;
  for (int i = 0; i < 4 && std::popcount(kept) < 2; ++i) kept |= uint8_t(1u << i);
  return kept;
}

template <typename T>
uint8_t NonZeroNibble(const T* g) {
  return uint8_t((g[0] != 0) | (g[1] != 0) << 1 | (g[2] != 0) << 2 | (g[3] != 0) << 3);
}

// Calls f with an unsigned integer of `es` bytes (1, 2, 4 or 8): the element type the sparse
// forms compare and copy (a zero element is all-zero bytes).
template <typename F>
void WithElementType(int es, F f) {
  switch (es) {
    case 1: return f(uint8_t{});
    case 2: return f(uint16_t{});
    case 4: return f(uint32_t{});
    default: return f(uint64_t{});
  }
}

// Whether every group of 4 of a row-major [rows, cols] array holds at most 2 non-zeros (a
// tail shorter than 4 is only counted), and how many elements are zero.
template <typename T>
std::pair<bool, int64_t> Scan(const uint8_t* bytes, int64_t rows, int64_t cols) {
  const T* v = reinterpret_cast<const T*>(bytes);
  int64_t zeros = 0, bad = 0;
#pragma omp parallel for schedule(static) reduction(+ : zeros, bad) if (rows * cols >= (int64_t{1} << 16))
  for (int64_t r = 0; r < rows; ++r) {
    const T* row = v + r * cols;
    int64_t z = 0, b = 0;
    int64_t g = 0;
    for (; g + 4 <= cols; g += 4) {
      const int n = (row[g] != 0) + (row[g + 1] != 0) + (row[g + 2] != 0) + (row[g + 3] != 0);
      z += 4 - n;
      b += n > 2;
    }
    for (; g < cols; ++g) z += row[g] == 0;
    zeros += z;
    bad += b;
  }
  return {bad == 0, zeros};
}

std::pair<bool, int64_t> ScanBytes(int es, const uint8_t* bytes, int64_t rows, int64_t cols) {
  std::pair<bool, int64_t> r;
  WithElementType(es, [&]<typename T>(T) { r = Scan<T>(bytes, rows, cols); });
  return r;
}

// Writes the kept values ([rows, cols / 2]) or the bitmask ([rows, ceil(cols / 8)]).
template <typename T>
void Compress(const uint8_t* bytes, int64_t rows, int64_t cols, T* values, uint8_t* mask) {
  static constexpr auto kKept = [] {
    std::array<uint8_t, 16> k{};
    for (int i = 0; i < 16; ++i) k[i] = KeptOf(uint8_t(i));
    return k;
  }();
  const T* v = reinterpret_cast<const T*>(bytes);
  const int64_t mask_bytes = (cols + 7) / 8;
#pragma omp parallel for schedule(static) if (rows * cols >= (int64_t{1} << 16))
  for (int64_t r = 0; r < rows; ++r) {
    const T* row = v + r * cols;
    T* out = values ? values + r * (cols / 2) : nullptr;
    uint8_t* m = mask ? mask + r * mask_bytes : nullptr;
    if (m) std::memset(m, 0, mask_bytes);
    for (int64_t g = 0; g < cols / 4; ++g) {
      const uint8_t kept = kKept[NonZeroNibble(row + 4 * g)];
      if (m) m[g / 2] |= uint8_t(kept << (4 * (g % 2)));
      if (out) {
        const int first = std::countr_zero(kept), second = std::countr_zero(uint8_t(kept & (kept - 1)));
        out[2 * g] = row[4 * g + first];
        out[2 * g + 1] = row[4 * g + second];
      }
    }
  }
}

void CompressBytes(int es, const uint8_t* bytes, int64_t rows, int64_t cols, uint8_t* values, uint8_t* mask) {
  WithElementType(es, [&]<typename T>(T) { Compress<T>(bytes, rows, cols, reinterpret_cast<T*>(values), mask); });
}

// The unstructured form: non-zero elements (all-zero bytes are zero) of a row-major
// [rows, cols] array, their count per row, and the values / bitmask of the non-zeros.
template <typename T>
void CountNonZero(const uint8_t* bytes, int64_t rows, int64_t cols, int64_t* per_row) {
  const T* v = reinterpret_cast<const T*>(bytes);
#pragma omp parallel for schedule(static) if (rows * cols >= (int64_t{1} << 16))
  for (int64_t r = 0; r < rows; ++r) {
    int64_t n = 0;
    for (int64_t c = 0; c < cols; ++c) n += v[r * cols + c] != 0;
    per_row[r] = n;
  }
}
template <typename T>
void PackNonZero(const uint8_t* bytes, int64_t rows, int64_t cols, const int64_t* offsets, T* values, uint8_t* mask) {
  const T* v = reinterpret_cast<const T*>(bytes);
  const int64_t mask_bytes = (cols + 7) / 8;
#pragma omp parallel for schedule(static) if (rows * cols >= (int64_t{1} << 16))
  for (int64_t r = 0; r < rows; ++r) {
    const T* row = v + r * cols;
    if (mask) {
      uint8_t* m = mask + r * mask_bytes;
      std::memset(m, 0, mask_bytes);
      for (int64_t c = 0; c < cols; ++c) m[c / 8] = static_cast<uint8_t>(m[c / 8] | ((row[c] != 0) << (c % 8)));
    }
    if (values) {
      T* out = values + offsets[r];
      for (int64_t c = 0; c < cols; ++c)
        if (row[c] != 0) *out++ = row[c];
    }
  }
}
// Bits set among the first `cols` bits of a bitmask row.
int64_t RowCount(const uint8_t* m, int64_t cols) {
  int64_t n = 0;
  for (int64_t i = 0; i < cols / 8; ++i) n += std::popcount(m[i]);
  if (cols % 8) n += std::popcount(uint8_t(m[cols / 8] & ((1u << (cols % 8)) - 1)));
  return n;
}

// A weight the sparse forms may store: a non-empty 2-D `<layer>.weight` of whole-byte elements,
// neither quantized (in memory) nor factorized, that the caller names.
bool Candidate(const std::string& name, const Tensor& t, const std::function<bool(const std::string&)>& eligible) {
  return !t.quant() && !t.factors() && ElementBytes(t.dtype()) != 0 && t.shape().size() == 2 && t.numel() > 0 &&
         name.ends_with(".weight") && eligible(name);
}

// A tensor of `bytes` bytes that `fill` writes from `src`'s stored bytes when it is used (the
// writer asks for it; nothing is made at load).
Tensor LazyFrom(const Tensor& src, DType dtype, Shape shape, int64_t bytes,
                std::function<void(const uint8_t* in, uint8_t* out)> fill) {
  return Tensor::Lazy(dtype, std::move(shape), [src, bytes, fill = std::move(fill)]() -> Result {
    ASSIGN_OR_RETURN(auto d, src.Data());
    auto out = std::make_shared<UninitBuffer>(static_cast<size_t>(bytes));
    fill(d->data(), out->mutable_data());
    return std::shared_ptr<const Buffer>(std::move(out));
  });
}

// fn(name, tensor, layer base name, stored bytes) for every Candidate, in the store's order
// (over a copy of the names: fn may rename).
template <class Fn>
absl::Status ForEachCandidate(TensorStore& tensors, const std::function<bool(const std::string&)>& eligible, Fn fn) {
  const std::vector<std::string> names = tensors.names();
  for (const auto& name : names) {
    const Tensor t = tensors.at(name);
    if (!Candidate(name, t, eligible)) continue;
    ASSIGN_OR_RETURN(auto data, t.Data());
    fn(name, t, name.substr(0, name.size() - 7), data->data());
  }
  return absl::OkStatus();
}

// The sparsity_config of `targets` (null when there are none).
nlohmann::json SparsityConfig(const char* format, const char* structure, nlohmann::json targets, int64_t zeros,
                              int64_t elements) {
  if (targets.empty()) return nlohmann::json();
  return nlohmann::json{{"format", format},
                        {"targets", std::move(targets)},
                        {"ignore", nlohmann::json::array()},
                        {"global_sparsity", elements ? static_cast<double>(zeros) / elements : 0.0},
                        {"sparsity_structure", structure}};
}

}  // namespace

absl::StatusOr<nlohmann::json> ExpandSparse24Bitmask(TensorStore& tensors,
                                                     const std::function<bool(const std::string&)>& eligible) {
  nlohmann::json targets = nlohmann::json::array();
  int64_t zeros = 0, elements = 0;
  RETURN_IF_ERROR(ForEachCandidate(tensors, eligible, [&](const std::string& name, const Tensor& t,
                                                          const std::string& base, const uint8_t* data) {
    const int es = ElementBytes(t.dtype());
    const int64_t rows = t.shape()[0], cols = t.shape()[1];
    elements += rows * cols;
    // Rows that are not whole groups of 4 stay dense (a group must not straddle rows).
    const auto [fits, z] = ScanBytes(es, data, cols % 4 ? 1 : rows, cols % 4 ? rows * cols : cols);
    zeros += z;
    if (!fits || cols % 4) return;
    tensors.Replace(name, base + ".compressed",
                    LazyFrom(t, t.dtype(), {rows, cols / 2}, rows * cols / 2 * es,
                             [es, rows, cols](const uint8_t* in, uint8_t* out) {
                               CompressBytes(es, in, rows, cols, out, nullptr);
                             }));
    const int64_t mask_bytes = (cols + 7) / 8;
    tensors.InsertAfter(base + ".compressed", base + ".bitmask",
                        LazyFrom(t, DType::kU8, {rows, mask_bytes}, rows * mask_bytes,
                                 [es, rows, cols](const uint8_t* in, uint8_t* out) {
                                   CompressBytes(es, in, rows, cols, nullptr, out);
                                 }));
    tensors.InsertAfter(base + ".bitmask", base + ".shape", I64Tensor({rows, cols}, {2, 1}));
    targets.push_back(base);
  }));
  return SparsityConfig("sparse-24-bitmask", "2:4", std::move(targets), zeros, elements);
}

absl::StatusOr<nlohmann::json> ExpandSparseBitmask(TensorStore& tensors,
                                                   const std::function<bool(const std::string&)>& eligible) {
  nlohmann::json targets = nlohmann::json::array();
  int64_t zeros = 0, elements = 0;
  RETURN_IF_ERROR(ForEachCandidate(tensors, eligible, [&](const std::string& name, const Tensor& t,
                                                          const std::string& base, const uint8_t* data) {
    const int es = ElementBytes(t.dtype());
    const int64_t rows = t.shape()[0], cols = t.shape()[1];
    auto offsets = std::make_shared<std::vector<int64_t>>(rows + 1, 0);
    WithElementType(es, [&]<typename T>(T) { CountNonZero<T>(data, rows, cols, offsets->data() + 1); });
    for (int64_t r = 0; r < rows; ++r) (*offsets)[r + 1] += (*offsets)[r];
    const int64_t nnz = offsets->back(), mask_bytes = (cols + 7) / 8;
    elements += rows * cols;
    zeros += rows * cols - nnz;
    if (nnz * es + rows * mask_bytes + rows * 8 + 16 >= rows * cols * es) return;  // not smaller
    tensors.Replace(name, base + ".compressed",
                    LazyFrom(t, t.dtype(), {nnz}, std::max<int64_t>(nnz, 1) * es,
                             [es, rows, cols, offsets](const uint8_t* in, uint8_t* out) {
                               WithElementType(es, [&]<typename T>(T) {
                                 PackNonZero<T>(in, rows, cols, offsets->data(), reinterpret_cast<T*>(out), nullptr);
                               });
                             }));
    tensors.InsertAfter(base + ".compressed", base + ".bitmask",
                        LazyFrom(t, DType::kU8, {rows, mask_bytes}, rows * mask_bytes,
                                 [es, rows, cols](const uint8_t* in, uint8_t* out) {
                                   WithElementType(es, [&]<typename T>(T) {
                                     PackNonZero<T>(in, rows, cols, nullptr, static_cast<T*>(nullptr), out);
                                   });
                                 }));
    tensors.InsertAfter(base + ".bitmask", base + ".row_offsets",
                        I64Tensor(std::vector<int64_t>(offsets->begin(), offsets->end() - 1), {rows}));
    tensors.InsertAfter(base + ".row_offsets", base + ".shape", I64Tensor({rows, cols}, {2}));
    targets.push_back(base);
  }));
  return SparsityConfig("sparse-bitmask", "unstructured", std::move(targets), zeros, elements);
}

absl::Status CollapseSparse24Bitmask(Model& m, const nlohmann::json& sc, const std::string& path) {
  if (sc.is_null() || (sc.is_object() && sc.empty())) return absl::OkStatus();
  if (!sc.is_object() || !sc.contains("format") || !sc["format"].is_string())
    return DataLoss("{}: quantization_config.sparsity_config needs a format", path);
  const std::string format = sc["format"].get<std::string>();
  if (format == "dense") return absl::OkStatus();
  const bool unstructured = format == "sparse-bitmask";
  if (format != "sparse-24-bitmask" && !unstructured) {
    return Unimplemented(
        "{}: compressed-tensors sparsity format '{}' is not supported (sparse-24-bitmask, sparse-bitmask, dense)", path,
        format);
  }
  const std::vector<std::string> names = m.tensors.names();  // the loop renames tensors
  for (const auto& mask_name : names) {
    if (!mask_name.ends_with(".bitmask")) continue;
    const std::string base = mask_name.substr(0, mask_name.size() - 8);
    const Tensor* values = m.tensors.find(base + ".compressed");
    const Tensor* shape = m.tensors.find(base + ".shape");
    const Tensor mask = m.tensors.at(mask_name);
    if (!values || !shape) return DataLoss("{}: '{}' needs '{}.compressed' and '{}.shape'", path, mask_name, base, base);
    if ((shape->dtype() != DType::kI64 && shape->dtype() != DType::kI32) || shape->numel() != 2)
      return DataLoss("{}: '{}.shape' must hold 2 integers", path, base);
    ASSIGN_OR_RETURN(auto sb, shape->Data());
    int64_t dims[2];
    for (int i = 0; i < 2; ++i) {
      if (shape->dtype() == DType::kI64) {
        std::memcpy(&dims[i], sb->data() + 8 * i, 8);
      } else {
        int32_t d;
        std::memcpy(&d, sb->data() + 4 * i, 4);
        dims[i] = d;
      }
    }
    const int64_t rows = dims[0], cols = dims[1];
    const int es = ElementBytes(values->dtype());
    const int64_t mask_bytes = (cols + 7) / 8;
    if (rows <= 0 || cols <= 0 || rows > (int64_t{1} << 40) / cols)
      return DataLoss("{}: '{}.shape' is [{}, {}]", path, base, rows, cols);
    if (mask.dtype() != DType::kU8 || mask.shape() != Shape{rows, mask_bytes})
      return DataLoss("{}: '{}' is {} {}, want u8 [{}, {}] for shape [{}, {}]", path, mask_name,
                      DTypeName(mask.dtype()), ShapeString(mask.shape()), rows, mask_bytes, rows, cols);
    if (es == 0) return DataLoss("{}: '{}.compressed' has type {}", path, base, DTypeName(values->dtype()));
    ASSIGN_OR_RETURN(auto mb, mask.Data());
    auto offsets = std::make_shared<std::vector<int64_t>>(rows + 1, 0);
    for (int64_t r = 0; r < rows; ++r) (*offsets)[r + 1] = (*offsets)[r] + RowCount(mb->data() + r * mask_bytes, cols);
    if (offsets->back() != values->numel()) {
      return DataLoss("{}: '{}' marks {} elements but '{}.compressed' holds {}", path, mask_name, offsets->back(),
                      base, values->numel());
    }
    if (unstructured) {  // the row starts it declares must be the bitmask's
      const Tensor* starts = m.tensors.find(base + ".row_offsets");
      if (!starts || starts->dtype() != DType::kI64 || starts->shape() != Shape{rows})
        return DataLoss("{}: '{}.row_offsets' must be I64 [{}]", path, base, rows);
      ASSIGN_OR_RETURN(auto sb2, starts->Data());
      for (int64_t r = 0; r < rows; ++r) {
        int64_t v;
        std::memcpy(&v, sb2->data() + 8 * r, 8);
        if (v != (*offsets)[r])
          return DataLoss("{}: '{}.row_offsets'[{}] is {}, the bitmask says {}", path, base, r, v, (*offsets)[r]);
      }
      m.tensors.Erase(base + ".row_offsets");
    }
    const Tensor v = *values;
    m.tensors.Replace(base + ".compressed", base + ".weight",
                      Tensor::Lazy(v.dtype(), {rows, cols}, [v, mask, offsets, es, rows, cols, mask_bytes]() -> Result {
                        ASSIGN_OR_RETURN(auto vb, v.Data());
                        ASSIGN_OR_RETURN(auto mb, mask.Data());
                        auto out = std::make_shared<UninitBuffer>(static_cast<size_t>(rows * cols * es));
#pragma omp parallel for schedule(static) if (rows * cols >= (int64_t{1} << 16))
                        for (int64_t r = 0; r < rows; ++r) {
                          uint8_t* row = out->mutable_data() + r * cols * es;
                          std::memset(row, 0, cols * es);
                          const uint8_t* bits = mb->data() + r * mask_bytes;
                          const uint8_t* src = vb->data() + (*offsets)[r] * es;
                          for (int64_t c = 0; c < cols; ++c) {
                            if (bits[c / 8] >> (c % 8) & 1) {
                              std::memcpy(row + c * es, src, es);
                              src += es;
                            }
                          }
                        }
                        return std::shared_ptr<const Buffer>(std::move(out));
                      }));
    m.sparse_stored[base + ".weight"] = v.nbytes() + mask.nbytes();
    m.tensors.Erase(mask_name);
    m.tensors.Erase(base + ".shape");
  }
  return absl::OkStatus();
}

}  // namespace compress
