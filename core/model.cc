// TensorStore bookkeeping and the Model/Architecture helpers.
#include "core/model.h"

#include <algorithm>
#include <cassert>

namespace compress {

const Tensor* TensorStore::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &it->second;
}

const Tensor& TensorStore::at(const std::string& name) const {
  const Tensor* t = find(name);
  assert(t && "TensorStore::at on a missing name");
  return *t;
}

void TensorStore::Set(const std::string& name, Tensor t) {
  auto [it, inserted] = index_.insert_or_assign(name, std::move(t));
  if (inserted) order_.push_back(name);
}

void TensorStore::Replace(const std::string& old_name, const std::string& name, Tensor t) {
  auto pos = std::find(order_.begin(), order_.end(), old_name);
  if (pos == order_.end() || old_name == name) return Set(name, std::move(t));
  index_.erase(old_name);
  if (index_.count(name)) std::erase(order_, name);
  pos = std::find(order_.begin(), order_.end(), old_name);
  *pos = name;
  index_.insert_or_assign(name, std::move(t));
}

void TensorStore::InsertAfter(const std::string& anchor, const std::string& name, Tensor t) {
  if (index_.count(name)) return Set(name, std::move(t));
  auto pos = std::find(order_.begin(), order_.end(), anchor);
  order_.insert(pos == order_.end() ? pos : pos + 1, name);
  index_.insert_or_assign(name, std::move(t));
}

bool TensorStore::Erase(const std::string& name) {
  if (!index_.erase(name)) return false;
  std::erase(order_, name);
  return true;
}

int64_t TensorStore::TotalBytes() const {
  int64_t n = 0;
  for (const auto& [_, t] : index_) n += t.nbytes();
  return n;
}

int64_t TensorStore::TotalElements() const {
  int64_t n = 0;
  for (const auto& [_, t] : index_) n += t.numel();
  return n;
}

std::string_view TensorRoleName(TensorRole r) {
  switch (r) {
    case TensorRole::kLinearWeight:
      return "linear";
    case TensorRole::kConvWeight:
      return "conv";
    case TensorRole::kEmbedding:
      return "embedding";
    case TensorRole::kLmHead:
      return "lm_head";
    case TensorRole::kNorm:
      return "norm";
    case TensorRole::kBias:
      return "bias";
    case TensorRole::kRouter:
      return "router";
    case TensorRole::kOther:
      return "other";
  }
  return "other";
}

std::string_view ModelFormatName(ModelFormat f) { return f == ModelFormat::kOnnx ? "onnx" : "safetensors"; }

std::vector<const LinearLayer*> Architecture::AllLinears() const {
  std::vector<const LinearLayer*> out;
  for (const auto& b : blocks) {
    for (const auto& l : b.attention) out.push_back(&l);
    for (const auto& l : b.mlp) out.push_back(&l);
  }
  for (const auto& l : other_linears) out.push_back(&l);
  return out;
}

const LinearLayer* Architecture::LayerOfWeight(const std::string& tensor) const {
  for (const LinearLayer* l : AllLinears()) {
    if (l->weight == tensor) return l;
  }
  return nullptr;
}

TensorRole Model::RoleOf(const std::string& tensor) const {
  auto it = arch.roles.find(tensor);
  return it == arch.roles.end() ? TensorRole::kOther : it->second;
}

}  // namespace compress
