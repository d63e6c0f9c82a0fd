// Status helpers: early-return macros (Debian's Abseil 2022-06 has none) and error builders.
#pragma once

#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "fmt/format.h"

#define COMPRESS_CONCAT_INNER(a, b) a##b
#define COMPRESS_CONCAT(a, b) COMPRESS_CONCAT_INNER(a, b)

// Returns from the enclosing function when `expr` yields a non-OK status.
#define RETURN_IF_ERROR(expr)                            \
  do {                                                   \
    ::absl::Status _compress_status = (expr);            \
    if (!_compress_status.ok()) return _compress_status; \
  } while (0)

// `ASSIGN_OR_RETURN(auto x, StatusOrExpr());` unwraps or returns the error.
#define ASSIGN_OR_RETURN(lhs, expr) \
  ASSIGN_OR_RETURN_IMPL(COMPRESS_CONCAT(_compress_statusor_, __LINE__), lhs, expr)
#define ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr)    \
  auto tmp = (expr);                             \
  if (!tmp.ok()) return std::move(tmp).status(); \
  lhs = std::move(tmp).value()

// Debian's Abseil has its own string_view type (Status::message() returns it); let fmt print it.
template <>
struct fmt::formatter<absl::string_view> : fmt::formatter<fmt::string_view> {
  template <typename Ctx>
  auto format(absl::string_view s, Ctx& ctx) const {
    return fmt::formatter<fmt::string_view>::format(fmt::string_view(s.data(), s.size()), ctx);
  }
};

namespace compress {

// fmt-style constructors for the codes we use most, so call sites read as one line.
template <typename... Args>
absl::Status InvalidArgument(fmt::format_string<Args...> f, Args&&... args) {
  return absl::InvalidArgumentError(fmt::format(f, std::forward<Args>(args)...));
}
template <typename... Args>
absl::Status DataLoss(fmt::format_string<Args...> f, Args&&... args) {
  return absl::DataLossError(fmt::format(f, std::forward<Args>(args)...));
}
template <typename... Args>
absl::Status NotFound(fmt::format_string<Args...> f, Args&&... args) {
  return absl::NotFoundError(fmt::format(f, std::forward<Args>(args)...));
}
template <typename... Args>
absl::Status Unimplemented(fmt::format_string<Args...> f, Args&&... args) {
  return absl::UnimplementedError(fmt::format(f, std::forward<Args>(args)...));
}
template <typename... Args>
absl::Status Internal(fmt::format_string<Args...> f, Args&&... args) {
  return absl::InternalError(fmt::format(f, std::forward<Args>(args)...));
}
template <typename... Args>
absl::Status FailedPrecondition(fmt::format_string<Args...> f, Args&&... args) {
  return absl::FailedPreconditionError(fmt::format(f, std::forward<Args>(args)...));
}

// Prefixes a non-OK status message with `context: `, keeping the code.
absl::Status Annotate(const absl::Status& s, std::string_view context);

// Errno-based I/O error naming the file.
absl::Status IoError(std::string_view what, const std::string& path);

}  // namespace compress
