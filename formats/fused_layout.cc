// Splitting and re-fusing Phi-3's fused projections.
#include "formats/fused_layout.h"

#include "core/status.h"
#include "formats/hf_config.h"
#include "core/family.h"

namespace compress {
namespace {

bool IsFusedFamily(const Model& model) {
  const FamilySpec* f = FindFamily(model.arch.family);
  return f && f->layout == ProjectionLayout::kFusedPhi3;
}

// `name` with its module ".FROM." replaced by ".TO.".
std::string Renamed(const std::string& name, const std::string& from, const std::string& to) {
  const size_t at = name.rfind("." + from + ".");
  return name.substr(0, at) + "." + to + "." + name.substr(at + from.size() + 2);
}

// Splits tensor `name` ([rows, cols] or [rows]) into consecutive row ranges named `parts`.
absl::Status SplitRows(Model& m, const std::string& name, const std::string& module,
                       const std::vector<std::pair<std::string, int64_t>>& parts) {
  const Tensor t = m.tensors.at(name);
  if (t.quant() || t.factors() || !IsFloating(t.dtype())) {
    return FailedPrecondition("'{}' is quantized or factorized; split fused projections before that", name);
  }
  ASSIGN_OR_RETURN(std::vector<float> v, t.ToF32());
  const int64_t cols = t.shape().size() == 2 ? t.shape()[1] : 1;
  int64_t row = 0;
  std::string anchor;
  for (const auto& [part, rows] : parts) {
    if (row + rows > t.shape()[0]) return DataLoss("'{}' has {} rows, fewer than its parts", name, t.shape()[0]);
    Shape shape = t.shape();
    shape[0] = rows;
    ASSIGN_OR_RETURN(Tensor piece, Tensor::FromF32(std::vector<float>(v.begin() + row * cols, v.begin() + (row + rows) * cols),
                                                   shape, t.dtype()));
    const std::string piece_name = Renamed(name, module, part);
    if (anchor.empty()) {
      m.tensors.Replace(name, piece_name, std::move(piece));
    } else {
      m.tensors.InsertAfter(anchor, piece_name, std::move(piece));
    }
    anchor = piece_name;
    row += rows;
  }
  if (row != t.shape()[0]) return DataLoss("'{}' has {} rows, its parts {}", name, t.shape()[0], row);
  return absl::OkStatus();
}

// Concatenates the rows of `parts` (module names) of layer prefix `base` into `module`.
absl::Status JoinRows(Model& m, const std::string& first, const std::string& from_module, const std::string& module,
                      const std::vector<std::string>& parts) {
  std::vector<float> all;
  Shape shape;
  DType dtype = DType::kF32;
  for (const std::string& p : parts) {
    const std::string n = Renamed(first, from_module, p);
    const Tensor* t = m.tensors.find(n);
    if (!t) return Internal("'{}' is missing", n);
    ASSIGN_OR_RETURN(std::vector<float> v, t->ToF32());
    all.insert(all.end(), v.begin(), v.end());
    if (shape.empty()) {
      shape = t->shape(), dtype = t->dtype();
    } else {
      shape[0] += t->shape()[0];
    }
  }
  ASSIGN_OR_RETURN(Tensor fused, Tensor::FromF32(all, shape, dtype));
  for (size_t i = 1; i < parts.size(); ++i) m.tensors.Erase(Renamed(first, from_module, parts[i]));
  m.tensors.Replace(first, Renamed(first, from_module, module), std::move(fused));
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<bool> SplitFusedProjections(Model& model) {
  if (!IsFusedFamily(model)) return false;
  ASSIGN_OR_RETURN(HfConfig cfg, ParseHfConfig(model.config, model.source));
  const int64_t q = cfg.num_heads * cfg.head_dim, kv = cfg.num_kv_heads * cfg.head_dim;
  bool split = false;
  for (const Block& b : std::vector<Block>(model.arch.blocks)) {
    for (const auto* list : {&b.attention, &b.mlp}) {
      for (const LinearLayer& l : *list) {
        std::vector<std::pair<std::string, int64_t>> parts;
        if (l.kind == "qkv_proj") parts = {{"q_proj", q}, {"k_proj", kv}, {"v_proj", kv}};
        if (l.kind == "gate_up_proj") parts = {{"gate_proj", l.out_features / 2}, {"up_proj", l.out_features / 2}};
        if (parts.empty()) continue;
        RETURN_IF_ERROR(SplitRows(model, l.weight, l.kind, parts));
        if (!l.bias.empty()) RETURN_IF_ERROR(SplitRows(model, l.bias, l.kind, parts));
        split = true;
      }
    }
  }
  if (split) RETURN_IF_ERROR(RebuildHfArchitecture(model));
  return split;
}

absl::Status FuseProjections(Model& model) {
  if (!IsFusedFamily(model)) return absl::OkStatus();
  for (const Block& b : std::vector<Block>(model.arch.blocks)) {
    for (const auto* list : {&b.attention, &b.mlp}) {
      for (const LinearLayer& l : *list) {
        if (l.kind == "q_proj") {
          RETURN_IF_ERROR(JoinRows(model, l.weight, "q_proj", "qkv_proj", {"q_proj", "k_proj", "v_proj"}));
          if (!l.bias.empty()) RETURN_IF_ERROR(JoinRows(model, l.bias, "q_proj", "qkv_proj", {"q_proj", "k_proj", "v_proj"}));
        }
        if (l.kind == "gate_proj") {
          RETURN_IF_ERROR(JoinRows(model, l.weight, "gate_proj", "gate_up_proj", {"gate_proj", "up_proj"}));
          if (!l.bias.empty()) RETURN_IF_ERROR(JoinRows(model, l.bias, "gate_proj", "gate_up_proj", {"gate_proj", "up_proj"}));
        }
      }
    }
  }
  return RebuildHfArchitecture(model);
}

}  // namespace compress
