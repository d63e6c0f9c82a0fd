// Tensor selection by role defaults and include/exclude globs.
#include "core/select.h"

#include <fnmatch.h>

namespace compress {

bool GlobMatch(const std::string& pattern, const std::string& text) {
  return ::fnmatch(pattern.c_str(), text.c_str(), 0) == 0;
}

bool TensorSelector::Selects(const Model& m, const std::string& name) const {
  for (const auto& p : exclude) {
    if (GlobMatch(p, name)) return false;
  }
  if (!include.empty()) {
    for (const auto& p : include) {
      if (GlobMatch(p, name)) return true;
    }
    return false;
  }
  const Tensor* t = m.tensors.find(name);
  if (!t) return false;
  if (scope == DefaultScope::kAllFloating) return IsFloating(t->dtype());
  TensorRole r = m.RoleOf(name);
  return r == TensorRole::kLinearWeight || r == TensorRole::kConvWeight;
}

std::vector<std::string> TensorSelector::Select(const Model& m) const {
  std::vector<std::string> out;
  for (const auto& n : m.tensors.names()) {
    if (Selects(m, n)) out.push_back(n);
  }
  return out;
}

}  // namespace compress
