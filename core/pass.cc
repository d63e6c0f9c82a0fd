// PassRegistry and AnalysisManager.
#include "core/pass.h"

#include <algorithm>

namespace compress {

void AnalysisManager::Invalidate(const PreservedAnalyses& keep) {
  for (auto it = cache_.begin(); it != cache_.end();) {
    it = keep.IsPreserved(it->first) ? std::next(it) : cache_.erase(it);
  }
}

absl::Status AnalysisManager::CheckDeclared(const char* name) const {
  if (!declared_ || std::find(declared_->begin(), declared_->end(), name) != declared_->end()) return absl::OkStatus();
  return Internal("pass '{}' requested analysis '{}' without declaring it in PassInfo::required_analyses",
                  declaring_pass_ ? *declaring_pass_ : std::string("?"), name);
}

int AnalysisManager::computations(const std::string& name) const {
  auto it = computations_.find(name);
  return it == computations_.end() ? 0 : it->second;
}

int AnalysisManager::hits(const std::string& name) const {
  auto it = hits_.find(name);
  return it == hits_.end() ? 0 : it->second;
}

std::vector<std::string> AnalysisManager::Known() const {
  std::vector<std::string> out;
  for (const auto& [name, _] : computations_) out.push_back(name);
  return out;
}

TensorSelector SelectorFrom(const PassInfo& info, const OptionValues& values) {
  return SelectorFrom(info.scope, info.selects_tensors, values);
}

TensorSelector SelectorFrom(DefaultScope scope, bool selects_tensors, const OptionValues& values) {
  TensorSelector s;
  s.scope = scope;
  if (selects_tensors) {
    s.include = values.GetList("include");
    s.exclude = values.GetList("exclude");
  }
  return s;
}

absl::Status PassRegistry::Register(PassInfo info) {
  if (info.name.empty()) return InvalidArgument("a pass needs a name");
  if (!info.create) return InvalidArgument("pass '{}' has no factory", info.name);
  if (auto it = passes_.find(info.name); it != passes_.end()) {
    return absl::AlreadyExistsError(
        fmt::format("pass '{}' is already registered (by {})", info.name, it->second.origin));
  }
  if (info.selects_tensors) {
    const char* scope = info.scope == DefaultScope::kAllFloating
                            ? "every floating-point tensor"
                            : "linear/conv weights (no embeddings, lm_head, norms, biases)";
    info.options.push_back({"include", OptionType::kList, "[]",
                            fmt::format("tensor-name globs to apply to; empty = {}", scope)});
    info.options.push_back({"exclude", OptionType::kList, "[]", "tensor-name globs to leave alone"});
  }
  std::set<std::string> keys;
  for (const auto& o : info.options) {
    if (!keys.insert(o.key).second) {
      return InvalidArgument("pass '{}' declares option '{}' twice", info.name, o.key);
    }
    auto parsed = ParseOptionValue(o, o.default_value);
    if (!parsed.ok()) {
      return Annotate(parsed.status(), fmt::format("pass '{}' default", info.name));
    }
  }
  std::string name = info.name;
  passes_.emplace(std::move(name), std::move(info));
  return absl::OkStatus();
}

const PassInfo* PassRegistry::Find(std::string_view name) const {
  auto it = passes_.find(name);
  return it == passes_.end() ? nullptr : &it->second;
}

std::vector<const PassInfo*> PassRegistry::All() const {
  std::vector<const PassInfo*> out;
  for (const auto& [_, p] : passes_) out.push_back(&p);
  return out;
}

absl::StatusOr<const CheckpointEditor*> PassContext::Editor(std::string_view pass) const {
  if (!checkpoint) return FailedPrecondition("{}: no checkpoint editor in this run", pass);
  return checkpoint;
}

}  // namespace compress
