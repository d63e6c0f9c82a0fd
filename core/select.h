// Tensor selection shared by all passes: include/exclude globs over tensor names plus role defaults.
#pragma once

#include <string>
#include <vector>

#include "core/model.h"

namespace compress {

// Which tensors a pass touches when no include pattern is given.
enum class DefaultScope {
  kLinearWeights,  // weights of linear/conv layers only (no embeddings, lm_head, norms, biases)
  kAllFloating,    // every floating-point tensor
};

struct TensorSelector {
  std::vector<std::string> include;  // globs; empty = the pass's default scope
  std::vector<std::string> exclude;  // globs removed from the selection
  DefaultScope scope = DefaultScope::kLinearWeights;

  bool Selects(const Model& m, const std::string& tensor) const;
  std::vector<std::string> Select(const Model& m) const;  // in store order
};

// fnmatch-style glob: '*' and '?' match any characters (dots included), [...] classes.
bool GlobMatch(const std::string& pattern, const std::string& text);

}  // namespace compress
