// File helpers: bounded reads, checked buffered writes, contained paths.
#include "core/file_util.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <filesystem>

#include "core/status.h"

namespace compress {
namespace fs = std::filesystem;

absl::StatusOr<std::string> ReadSmallFile(const std::string& path, size_t max_bytes) {
  // O_NONBLOCK: opening a FIFO must not wait for a writer; only regular files are read.
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) {
    if (errno == ENOENT) return NotFound("{}: no such file", path);
    return IoError("open", path);
  }
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return InvalidArgument("{}: not a regular file", path);
  }
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  if (size > max_bytes) {
    ::close(fd);
    return InvalidArgument("{}: {} bytes is larger than the {} allowed", path, size, max_bytes);
  }
  std::string out(size, '\0');
  size_t got = 0;
  while (got < out.size()) {
    ssize_t n = ::read(fd, out.data() + got, out.size() - got);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    got += static_cast<size_t>(n);
  }
  ::close(fd);
  if (got != out.size()) return IoError("read", path);
  return out;
}

absl::Status WriteSmallFile(const std::string& path, const std::string& text) {
  FileWriter w;
  RETURN_IF_ERROR(w.Open(path));
  RETURN_IF_ERROR(w.Write(text.data(), text.size()));
  return w.Close();
}

absl::StatusOr<std::string> ResolveInside(const std::string& dir, const std::string& relative,
                                          const std::string& what) {
  fs::path rel(relative);
  if (relative.empty()) return InvalidArgument("{}: empty file reference", what);
  if (rel.is_absolute()) {
    return InvalidArgument("{}: refers to absolute path '{}'; only paths inside the model folder are allowed",
                           what, relative);
  }
  for (const auto& part : rel) {
    if (part == "..") {
      return InvalidArgument("{}: path '{}' escapes the model folder ('..' is not allowed)", what, relative);
    }
  }
  std::error_code ec;
  fs::path base = fs::weakly_canonical(fs::absolute(dir.empty() ? "." : dir), ec);
  fs::path full = fs::weakly_canonical(fs::absolute(dir.empty() ? "." : dir) / rel, ec);
  if (ec) return InvalidArgument("{}: cannot resolve '{}': {}", what, relative, ec.message());
  auto [b, f] = std::mismatch(base.begin(), base.end(), full.begin(), full.end());
  if (b != base.end()) {
    return InvalidArgument("{}: path '{}' resolves outside the model folder (symlink?)", what, relative);
  }
  return full.string();
}

FileWriter::~FileWriter() {
  if (f_) std::fclose(f_);
}

absl::Status FileWriter::Open(const std::string& path) {
  path_ = path;
  f_ = std::fopen(path.c_str(), "wb");
  if (!f_) return IoError("create", path);
  std::setvbuf(f_, nullptr, _IOFBF, 1 << 20);
  return absl::OkStatus();
}

absl::Status FileWriter::Write(const void* data, size_t n) {
  if (n && std::fwrite(data, 1, n, f_) != n) return IoError("write", path_);
  written_ += n;
  return absl::OkStatus();
}

absl::Status FileWriter::Close() {
  if (!f_) return absl::OkStatus();
  int rc = std::fclose(f_);
  f_ = nullptr;
  if (rc != 0) return IoError("write", path_);
  return absl::OkStatus();
}

absl::Status WriteFileAtomic(const std::string& path, const std::function<bool(std::FILE*)>& write) {
  const std::string tmp = path + ".tmp";
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f) return IoError("write", tmp);
  const bool ok = write(f) && std::fflush(f) == 0 && ::fsync(fileno(f)) == 0;
  if (std::fclose(f) != 0 || !ok) {
    std::error_code ec;
    std::filesystem::remove(tmp, ec);
    return absl::UnavailableError(fmt::format("{}: writing failed (disk full?)", tmp));
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) return absl::UnavailableError(fmt::format("{}: cannot rename into place: {}", path, ec.message()));
  return absl::OkStatus();
}

}  // namespace compress
