// Checked element counts with errors that name the shape and its source.
#include "core/checked_math.h"

#include "absl/strings/str_join.h"
#include "core/status.h"

namespace compress {

std::optional<int64_t> CheckedElements(std::span<const int64_t> dims, int64_t limit) {
  int64_t n = 1;
  bool zero = false;
  for (int64_t d : dims) {
    if (d < 0) return std::nullopt;
    zero |= d == 0;
  }
  if (zero) return 0;
  for (int64_t d : dims) {
    auto p = CheckedMul(n, d);
    if (!p || *p > limit) return std::nullopt;
    n = *p;
  }
  return n;
}

absl::StatusOr<int64_t> ShapeElements(std::span<const int64_t> dims, std::string_view what, int64_t limit) {
  for (int64_t d : dims) {
    if (d < 0) return InvalidArgument("{}: shape [{}] has a negative dimension", what, absl::StrJoin(dims, ", "));
  }
  auto n = CheckedElements(dims, limit);
  if (!n) {
    return InvalidArgument("{}: shape [{}] holds more than {} elements; the file is damaged or not a model",
                           what, absl::StrJoin(dims, ", "), limit);
  }
  return *n;
}

}  // namespace compress
