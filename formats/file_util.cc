// File helpers: bounded reads, checked buffered writes, contained paths, staged outputs.
#include "formats/file_util.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <set>
#include <sstream>

#include "core/status.h"

namespace compress {
namespace fs = std::filesystem;
namespace {

std::mutex& StagingMutex() {
  static std::mutex m;
  return m;
}
std::set<std::string>& LiveStaging() {
  static std::set<std::string> s;
  return s;
}
void TrackStaging(const std::string& p, bool live) {
  std::lock_guard<std::mutex> lock(StagingMutex());
  if (live)
    LiveStaging().insert(p);
  else
    LiveStaging().erase(p);
}

}  // namespace

void RemoveLiveStagingDirs() {
  std::lock_guard<std::mutex> lock(StagingMutex());
  for (const auto& p : LiveStaging()) {
    std::error_code ec;
    fs::remove_all(p, ec);
  }
  LiveStaging().clear();
}

absl::StatusOr<std::string> ReadSmallFile(const std::string& path, size_t max_bytes) {
  std::error_code ec;
  auto size = fs::file_size(path, ec);
  if (ec) return NotFound("{}: cannot read: {}", path, ec.message());
  if (size > max_bytes)
    return InvalidArgument("{}: {} bytes is larger than the {} allowed", path, size, max_bytes);
  std::ifstream in(path, std::ios::binary);
  if (!in) return IoError("open", path);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
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

absl::StatusOr<StagingDir> StagingDir::Create(const std::string& target) {
  fs::path t = fs::absolute(target);
  fs::path parent = t.parent_path();
  std::error_code ec;
  if (!fs::is_directory(parent, ec)) {
    return NotFound("{}: output folder '{}' does not exist", target, parent.string());
  }
  std::string tmpl = (parent / ("." + t.filename().string() + ".tmp-XXXXXX")).string();
  if (!::mkdtemp(tmpl.data())) return IoError("create a staging folder in", parent.string());
  // mkdtemp makes the folder private (0700); the output should get the usual umask mode.
  mode_t mask = ::umask(0);
  ::umask(mask);
  ::chmod(tmpl.c_str(), 0777 & ~mask);
  TrackStaging(tmpl, true);
  return StagingDir(tmpl, t.string());
}

StagingDir::StagingDir(StagingDir&& o) noexcept
    : path_(std::move(o.path_)), target_(std::move(o.target_)), committed_(o.committed_) {
  o.committed_ = true;  // the moved-from object owns nothing
}

StagingDir::~StagingDir() {
  if (committed_) return;
  std::error_code ec;
  fs::remove_all(path_, ec);
  TrackStaging(path_, false);
}

absl::Status StagingDir::CommitAsDir() {
  std::error_code ec;
  fs::path target(target_);
  std::string old;
  if (fs::exists(target, ec)) {
    if (!fs::is_directory(target, ec)) {
      return InvalidArgument("{}: exists and is not a folder; cannot write a checkpoint there", target_);
    }
    old = path_ + ".old";
    fs::rename(target, old, ec);
    if (ec) return InvalidArgument("{}: cannot replace: {}", target_, ec.message());
  }
  fs::rename(path_, target, ec);
  if (ec) {
    std::error_code restore;
    if (!old.empty()) fs::rename(old, target, restore);  // put the previous output back
    return InvalidArgument("{}: cannot move the finished output into place: {}", target_, ec.message());
  }
  committed_ = true;
  TrackStaging(path_, false);
  if (!old.empty()) fs::remove_all(old, ec);
  return absl::OkStatus();
}

absl::Status StagingDir::CommitFiles(const std::vector<std::string>& side_files,
                                     const std::string& main_file) {
  std::error_code ec;
  fs::path parent = fs::path(target_).parent_path();
  if (fs::is_directory(target_, ec)) return InvalidArgument("{}: is a folder, expected a file path", target_);
  for (const auto& f : side_files) {
    fs::rename(fs::path(path_) / f, parent / f, ec);
    if (ec) return InvalidArgument("{}: cannot move into place: {}", (parent / f).string(), ec.message());
  }
  fs::rename(fs::path(path_) / main_file, target_, ec);
  if (ec) return InvalidArgument("{}: cannot move into place: {}", target_, ec.message());
  fs::remove_all(path_, ec);
  committed_ = true;
  TrackStaging(path_, false);
  return absl::OkStatus();
}

}  // namespace compress
