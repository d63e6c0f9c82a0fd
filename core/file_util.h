// File helpers for readers and writers: bounded reads, checked writes, paths kept inside a folder.
#pragma once

#include <cstdio>
#include <functional>
#include <string>

#include "absl/status/statusor.h"

namespace compress {

absl::StatusOr<std::string> ReadSmallFile(const std::string& path, size_t max_bytes);
absl::Status WriteSmallFile(const std::string& path, const std::string& text);
// Writes `path` through `path.tmp`, fsync and a rename, so the file is whole or as it was:
// `write` fills the open file and returns false on a failed write. For files a run keeps
// across runs (the resume journal, --stats); outputs go through staging (core/staging.h).
absl::Status WriteFileAtomic(const std::string& path, const std::function<bool(std::FILE*)>& write);

// Resolves `relative` against `dir`, refusing absolute paths, '..' components and
// symlinks that lead outside `dir`. `what` names the file that referenced it.
absl::StatusOr<std::string> ResolveInside(const std::string& dir, const std::string& relative,
                                          const std::string& what);

// Buffered writer that reports the file name on any failure.
class FileWriter {
 public:
  FileWriter() = default;
  ~FileWriter();
  FileWriter(const FileWriter&) = delete;
  FileWriter& operator=(const FileWriter&) = delete;
  absl::Status Open(const std::string& path);
  absl::Status Write(const void* data, size_t n);
  absl::Status Close();
  uint64_t written() const { return written_; }

 private:
  std::string path_;
  std::FILE* f_ = nullptr;
  uint64_t written_ = 0;
};

}  // namespace compress
