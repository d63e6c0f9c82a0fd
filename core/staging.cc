// Staging folders: creation with a recognisable name, atomic commits, stale-staging cleanup.
#include "core/staging.h"

#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <filesystem>
#include <mutex>
#include <set>

#include "core/status.h"

namespace compress {
namespace fs = std::filesystem;
namespace {

constexpr std::string_view kMarker = ".compress-staging.";
constexpr std::string_view kAsideSuffix = ".old";  // a replaced output while it is swapped out

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

// This host's name with the characters a file name cannot hold replaced.
std::string HostName() {
  char buf[256] = {};
  if (::gethostname(buf, sizeof(buf) - 1) != 0) return "host";
  std::string h(buf);
  for (char& c : h) {
    if (c == '/' || c == '\0') c = '_';
  }
  return h.empty() ? "host" : h;
}

// Parsed `.NAME.compress-staging.HOST.PID.XXXXXX[.old]`; false when `entry` is not ours.
struct StagingName {
  std::string target_name, host;
  long pid = 0;
  bool aside = false;
};
bool ParseStagingName(std::string entry, StagingName& out) {
  if (entry.size() < 2 || entry[0] != '.') return false;
  if (entry.ends_with(kAsideSuffix)) {
    out.aside = true;
    entry.resize(entry.size() - kAsideSuffix.size());
  }
  const size_t m = entry.rfind(kMarker);
  if (m == std::string::npos || m < 2) return false;
  out.target_name = entry.substr(1, m - 1);
  std::string rest = entry.substr(m + kMarker.size());  // HOST.PID.XXXXXX
  const size_t d2 = rest.rfind('.');
  if (d2 == std::string::npos || rest.size() - d2 - 1 != 6) return false;
  const size_t d1 = rest.rfind('.', d2 - 1);
  if (d1 == std::string::npos || d1 == 0) return false;
  out.host = rest.substr(0, d1);
  const std::string pid = rest.substr(d1 + 1, d2 - d1 - 1);
  auto [p, ec] = std::from_chars(pid.data(), pid.data() + pid.size(), out.pid);
  return ec == std::errc() && p == pid.data() + pid.size() && out.pid > 0;
}

bool ProcessRuns(long pid) { return ::kill(static_cast<pid_t>(pid), 0) == 0 || errno == EPERM; }

}  // namespace

void RemoveLiveStagingDirs() {
  std::lock_guard<std::mutex> lock(StagingMutex());
  for (const auto& p : LiveStaging()) {
    // Another thread may still be writing into it: a file created while remove_all runs
    // makes the final rmdir fail, so remove again until the folder is gone.
    for (int attempt = 0; attempt < 100; ++attempt) {
      std::error_code ec;
      fs::remove_all(p, ec);
      if (!fs::exists(p, ec)) break;
    }
  }
  LiveStaging().clear();
}

int RemoveStaleStaging(const std::string& dir) {
  const std::string host = HostName();
  int removed = 0;
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const fs::path entry = it->path();
    StagingName n;
    if (!ParseStagingName(entry.filename().string(), n) || n.host != host) continue;
    if (n.pid == ::getpid() || ProcessRuns(n.pid)) continue;
    struct stat st;
    if (::lstat(entry.c_str(), &st) != 0 || st.st_uid != ::geteuid()) continue;
    std::error_code rm;
    if (n.aside && !fs::exists(fs::symlink_status(fs::path(dir) / n.target_name, rm))) {
      // Killed between moving the old output aside and the new one in: put the old one back.
      fs::rename(entry, fs::path(dir) / n.target_name, rm);
      if (!rm) continue;
    }
    fs::remove_all(entry, rm);
    if (!rm) ++removed;
  }
  return removed;
}

absl::StatusOr<StagingDir> StagingDir::Create(const std::string& target) {
  fs::path t = fs::absolute(target).lexically_normal();
  if (t.filename().empty()) t = t.parent_path();
  fs::path parent = t.parent_path();
  std::error_code ec;
  if (!fs::is_directory(parent, ec)) {
    return NotFound("{}: output folder '{}' does not exist", target, parent.string());
  }
  RemoveStaleStaging(parent.string());
  std::string tmpl = (parent / fmt::format(".{}{}{}.{}.XXXXXX", t.filename().string(), kMarker, HostName(),
                                           static_cast<long>(::getpid())))
                         .string();
  {
    // Created and tracked under the lock an interrupt's cleanup takes: no window in which the
    // folder exists untracked.
    std::lock_guard<std::mutex> lock(StagingMutex());
    if (!::mkdtemp(tmpl.data())) return IoError("create a staging folder in", parent.string());
    LiveStaging().insert(tmpl);
  }
  // mkdtemp makes the folder private (0700); the output should get the usual umask mode.
  mode_t mask = ::umask(0);
  ::umask(mask);
  ::chmod(tmpl.c_str(), 0777 & ~mask);
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
  const fs::path target(target_);
  const bool exists = fs::exists(fs::symlink_status(target, ec));
  if (exists && !fs::is_directory(fs::symlink_status(target, ec))) {
    return InvalidArgument("{}: exists and is not a folder; cannot write a checkpoint there", target_);
  }
  if (!exists) {
    fs::rename(path_, target, ec);
    if (ec) return InvalidArgument("{}: cannot move the finished output into place: {}", target_, ec.message());
    committed_ = true;
    TrackStaging(path_, false);
    return absl::OkStatus();
  }
  // One atomic swap: the staging path then holds the old output, which is removed.
  if (::renameat2(AT_FDCWD, path_.c_str(), AT_FDCWD, target_.c_str(), RENAME_EXCHANGE) == 0) {
    committed_ = true;  // the staging path now names the old output; remove it below
    fs::remove_all(path_, ec);
    TrackStaging(path_, false);
    return absl::OkStatus();
  }
  if (errno != EINVAL && errno != ENOSYS && errno != ENOTSUP) {
    return IoError("replace the output folder", target_);
  }
  // The file system cannot swap: move the old output aside under a name that a later run
  // recognises (and moves back if this process dies before the new one is in place).
  const std::string aside = path_ + std::string(kAsideSuffix);
  fs::rename(target, aside, ec);
  if (ec) return InvalidArgument("{}: cannot replace: {}", target_, ec.message());
  fs::rename(path_, target, ec);
  if (ec) {
    std::error_code restore;
    fs::rename(aside, target, restore);
    return InvalidArgument("{}: cannot move the finished output into place: {}", target_, ec.message());
  }
  committed_ = true;
  TrackStaging(path_, false);
  fs::remove_all(aside, ec);
  return absl::OkStatus();
}

absl::Status StagingDir::CommitFiles(const std::vector<std::string>& side_files, const std::string& main_file) {
  std::error_code ec;
  const fs::path parent = fs::path(target_).parent_path();
  if (fs::is_directory(fs::symlink_status(target_, ec))) {
    return InvalidArgument("{}: is a folder, expected a file path", target_);
  }
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
