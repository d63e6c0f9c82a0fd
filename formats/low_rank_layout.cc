// Factorized weights as two safetensors tensors each.
#include "formats/low_rank_layout.h"

#include "core/status.h"

namespace compress {

absl::StatusOr<nlohmann::json> ExpandLowRank(TensorStore& tensors) {
  nlohmann::json layers = nlohmann::json::object();
  const std::vector<std::string> names = tensors.names();
  for (const auto& name : names) {
    const Tensor t = tensors.at(name);
    const LowRankFactors* f = t.factors();
    if (!f) continue;
    if (!name.ends_with(".weight")) {
      return Unimplemented("tensor '{}': factorized tensors must be '<layer>.weight' in safetensors", name);
    }
    const std::string base = name.substr(0, name.size() - 7);
    const int64_t rows = t.shape()[0], cols = t.shape()[1], r = f->rank;
    ASSIGN_OR_RETURN(Tensor a, Tensor::FromF32(f->a, {rows, r}, t.dtype()));
    ASSIGN_OR_RETURN(Tensor b, Tensor::FromF32(f->b, {r, cols}, t.dtype()));
    tensors.Replace(name, base + ".weight_lr_a", std::move(a));
    tensors.InsertAfter(base + ".weight_lr_a", base + ".weight_lr_b", std::move(b));  // factors together
    layers[base] = r;
  }
  if (layers.empty()) return nlohmann::json();
  return nlohmann::json{{"format_version", 1}, {"layers", std::move(layers)}};
}

absl::Status CollapseLowRank(Model& m, const std::string& path) {
  if (!m.config.is_object() || !m.config.contains("compress_low_rank")) return absl::OkStatus();
  const nlohmann::json lr = m.config["compress_low_rank"];
  if (!lr.is_object() || lr.value("format_version", 0) != 1 || !lr.contains("layers") ||
      !lr["layers"].is_object()) {
    return DataLoss("{}: compress_low_rank must be {{format_version: 1, layers: {{...}}}}", path);
  }
  for (const auto& [base, rank] : lr["layers"].items()) {
    const Tensor* a = m.tensors.find(base + ".weight_lr_a");
    const Tensor* b = m.tensors.find(base + ".weight_lr_b");
    if (!rank.is_number_integer() || !a || !b) {
      return DataLoss("{}: low-rank layer '{}' needs an integer rank and weight_lr_a / weight_lr_b tensors",
                      path, base);
    }
    const int64_t r = rank.get<int64_t>();
    if (a->shape().size() != 2 || b->shape().size() != 2 || a->shape()[1] != r || b->shape()[0] != r ||
        a->dtype() != b->dtype() || !IsFloating(a->dtype())) {
      return DataLoss("{}: low-rank layer '{}': factors {} x {} ({}, {}) do not match rank {}", path, base,
                      ShapeString(a->shape()), ShapeString(b->shape()), DTypeName(a->dtype()),
                      DTypeName(b->dtype()), r);
    }
    LowRankFactors f;
    f.rank = r;
    ASSIGN_OR_RETURN(f.a, a->ToF32());
    ASSIGN_OR_RETURN(f.b, b->ToF32());
    const DType dt = a->dtype();
    const Shape shape{a->shape()[0], b->shape()[1]};
    m.tensors.Replace(base + ".weight_lr_a", base + ".weight", Tensor::Factorized(dt, shape, std::move(f)));
    m.tensors.Erase(base + ".weight_lr_b");
  }
  m.config.erase("compress_low_rank");
  return absl::OkStatus();
}

}  // namespace compress
