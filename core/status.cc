// Status helpers: context annotation and errno-based I/O errors.
#include "core/status.h"

#include <cerrno>
#include <cstring>

namespace compress {

absl::Status Annotate(const absl::Status& s, std::string_view context) {
  if (s.ok()) return s;
  return absl::Status(s.code(), fmt::format("{}: {}", context, s.message()));
}

absl::Status IoError(std::string_view what, const std::string& path) {
  int err = errno;
  std::string msg = fmt::format("{}: cannot {}: {}", path, what, std::strerror(err));
  if (err == ENOENT) return absl::NotFoundError(msg);
  return absl::UnavailableError(msg);
}

}  // namespace compress
