// N:M compressed sparse storage.
#include "formats/sparse_layout.h"

#include <cmath>

#include "core/status.h"
#include "formats/quantized_safetensors.h"

namespace compress {
namespace {

int IndexBits(int m) { return std::max(1, static_cast<int>(std::ceil(std::log2(m)))); }

}  // namespace

absl::StatusOr<nlohmann::json> ExpandSparseNM(TensorStore& tensors, int n, int m) {
  if (n < 1 || m < 2 || n >= m || m > 256)
    return InvalidArgument("sparse storage {}:{}: need 1 <= n < m <= 256", n, m);
  nlohmann::json layers = nlohmann::json::array();
  const int bits = IndexBits(m);
  const std::vector<std::string> names = tensors.names();
  for (const auto& name : names) {
    const Tensor t = tensors.at(name);
    if (t.quant() || t.factors() || !IsFloating(t.dtype()) || t.shape().size() != 2 ||
        !name.ends_with(".weight"))
      continue;
    const int64_t rows = t.shape()[0], cols = t.shape()[1];
    if (cols % m != 0) continue;
    ASSIGN_OR_RETURN(std::vector<float> w, t.ToF32());
    const int64_t groups = cols / m, kept = groups * n;
    std::vector<float> values(rows * kept, 0.f);
    std::vector<uint8_t> index(rows * kept, 0);
    bool fits = true;
    for (int64_t r = 0; r < rows && fits; ++r) {
      for (int64_t g = 0; g < groups && fits; ++g) {
        int c = 0;
        for (int i = 0; i < m; ++i) {
          const float v = w[r * cols + g * m + i];
          if (v == 0.f && !std::signbit(v)) continue;
          if (c == n) {
            fits = false;
            break;
          }
          values[r * kept + g * n + c] = v;
          index[r * kept + g * n + c] = static_cast<uint8_t>(i);
          ++c;
        }
        // Padding slots point at positions not used by the kept values (their value is 0).
        for (int i = 0; c < n; ++i) {
          bool used = false;
          for (int j = 0; j < c; ++j) used |= index[r * kept + g * n + j] == i;
          if (!used) index[r * kept + g * n + c++] = static_cast<uint8_t>(i);
        }
      }
    }
    if (!fits) continue;
    const std::string base = name.substr(0, name.size() - 7);
    const int64_t row_bytes = (kept * bits + 7) / 8;
    std::vector<uint8_t> packed(rows * row_bytes);
    for (int64_t r = 0; r < rows; ++r) {
      const auto p = PackBits({index.data() + r * kept, static_cast<size_t>(kept)}, bits);
      std::copy(p.begin(), p.end(), packed.begin() + r * row_bytes);
    }
    ASSIGN_OR_RETURN(Tensor vt, Tensor::FromF32(values, {rows, kept}, t.dtype()));
    tensors.Replace(name, base + ".weight_nm_values", std::move(vt));
    tensors.InsertAfter(
        base + ".weight_nm_values", base + ".weight_nm_index",  // index right after values
        Tensor(DType::kU8, {rows, row_bytes}, std::make_shared<OwnedBuffer>(std::move(packed))));
    layers.push_back(base);
  }
  if (layers.empty()) return nlohmann::json();
  return nlohmann::json{{"format_version", 1}, {"n", n}, {"m", m}, {"layers", std::move(layers)}};
}

absl::Status CollapseSparseNM(Model& model, const std::string& path) {
  if (!model.config.is_object() || !model.config.contains("compress_sparse_nm")) return absl::OkStatus();
  const nlohmann::json s = model.config["compress_sparse_nm"];
  if (!s.is_object() || s.value("format_version", 0) != 1 || !s.contains("layers") ||
      !s["layers"].is_array()) {
    return DataLoss("{}: compress_sparse_nm must be {{format_version: 1, n, m, layers: [...]}}", path);
  }
  const int n = s.value("n", 0), m = s.value("m", 0);
  if (n < 1 || m < 2 || n >= m || m > 256)
    return DataLoss("{}: compress_sparse_nm has n={} m={}", path, n, m);
  const int bits = IndexBits(m);
  for (const auto& lj : s["layers"]) {
    if (!lj.is_string()) return DataLoss("{}: compress_sparse_nm.layers must hold names", path);
    const std::string base = lj.get<std::string>();
    const Tensor* v = model.tensors.find(base + ".weight_nm_values");
    const Tensor* ix = model.tensors.find(base + ".weight_nm_index");
    if (!v || !ix || v->shape().size() != 2 || ix->shape().size() != 2 || ix->dtype() != DType::kU8 ||
        !IsFloating(v->dtype()) || v->shape()[1] % n != 0) {
      return DataLoss("{}: sparse layer '{}' needs 2-D weight_nm_values and U8 weight_nm_index", path, base);
    }
    const int64_t rows = v->shape()[0], kept = v->shape()[1], cols = kept / n * m;
    const int64_t row_bytes = (kept * bits + 7) / 8;
    if (ix->shape()[0] != rows || ix->shape()[1] != row_bytes) {
      return DataLoss("{}: sparse layer '{}': weight_nm_index {} does not fit values {}", path, base,
                      ShapeString(ix->shape()), ShapeString(v->shape()));
    }
    ASSIGN_OR_RETURN(std::vector<float> vals, v->ToF32());
    ASSIGN_OR_RETURN(auto ib, ix->Data());
    std::vector<float> dense(rows * cols, 0.f);
    std::vector<uint8_t> idx(kept);
    for (int64_t r = 0; r < rows; ++r) {
      UnpackBits(ib->data() + r * row_bytes, kept, bits, idx.data());
      for (int64_t k = 0; k < kept; ++k) {
        if (idx[k] >= m) return DataLoss("{}: sparse layer '{}': index {} >= m = {}", path, base, idx[k], m);
        const int64_t c = k / n * m + idx[k];
        if (vals[r * kept + k] != 0.f) {
          if (dense[r * cols + c] != 0.f)
            return DataLoss("{}: sparse layer '{}': two values at one position", path, base);
          dense[r * cols + c] = vals[r * kept + k];
        }
      }
    }
    model.sparse_stored[base + ".weight"] = v->nbytes() + ix->nbytes();
    ASSIGN_OR_RETURN(Tensor t, Tensor::FromF32(dense, {rows, cols}, v->dtype()));
    model.tensors.Replace(base + ".weight_nm_values", base + ".weight", std::move(t));
    model.tensors.Erase(base + ".weight_nm_index");
  }
  model.config.erase("compress_sparse_nm");
  return absl::OkStatus();
}

}  // namespace compress
