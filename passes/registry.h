// The explicit table of built-in passes.
#pragma once

#include "core/pass.h"

namespace compress {

// Registers every built-in pass; fails on a duplicate name.
absl::Status RegisterBuiltinPasses(PassRegistry& registry);

}  // namespace compress
