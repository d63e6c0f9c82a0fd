// File helpers for readers and writers: bounded reads, checked writes, paths kept inside a folder,
// and outputs that appear only when complete (temp + rename).
#pragma once

#include <cstdio>
#include <string>

#include "absl/status/statusor.h"

namespace compress {

absl::StatusOr<std::string> ReadSmallFile(const std::string& path, size_t max_bytes);
absl::Status WriteSmallFile(const std::string& path, const std::string& text);

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

// A staging folder beside the final output: everything is written inside it, then
// Commit() moves the finished files into place. Destroying it uncommitted removes it,
// so a failed run leaves nothing behind.
class StagingDir {
 public:
  // `target` is the final output path (file or folder); staging lives in its parent.
  static absl::StatusOr<StagingDir> Create(const std::string& target);
  StagingDir(StagingDir&& o) noexcept;
  ~StagingDir();
  const std::string& path() const { return path_; }
  // Makes the staging folder become `target` (replacing an existing folder).
  absl::Status CommitAsDir();
  // Moves the named staged files into the target's parent; `main_file` becomes `target`
  // and is moved last so the output is complete once it appears.
  absl::Status CommitFiles(const std::vector<std::string>& side_files, const std::string& main_file);

 private:
  StagingDir(std::string path, std::string target) : path_(std::move(path)), target_(std::move(target)) {}
  std::string path_, target_;
  bool committed_ = false;
};

// Staging folders alive in this process; an interrupted run removes them (see cli/).
void RemoveLiveStagingDirs();

}  // namespace compress
