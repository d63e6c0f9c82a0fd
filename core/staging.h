// Staging folders: an output is written in a hidden folder beside its final path and moved
// into place only when complete; staging left by a killed run is recognised and removed.
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace compress {

// A staging folder `.NAME.compress-staging.HOST.PID.XXXXXX` in the target's parent folder.
// Everything is written inside it, then a Commit moves the finished files into place.
// Destroying it uncommitted removes it, so a failed run leaves nothing behind.
class StagingDir {
 public:
  // `target` is the final output path (file or folder); its parent folder must exist.
  // Stale staging folders of this host's dead compress processes there are removed first.
  static absl::StatusOr<StagingDir> Create(const std::string& target);
  StagingDir(StagingDir&& o) noexcept;
  StagingDir& operator=(StagingDir&&) = delete;
  ~StagingDir();
  const std::string& path() const { return path_; }
  const std::string& target() const { return target_; }
  // Makes the staging folder become `target`. An existing folder there is swapped out in
  // one atomic step (the path always holds the old or the new output), then removed.
  absl::Status CommitAsDir();
  // Moves the staged files `side_files` to the target's parent folder and `main_file` to
  // `target`, last, so the output is complete once it appears; each move replaces an
  // existing file atomically.
  absl::Status CommitFiles(const std::vector<std::string>& side_files, const std::string& main_file);

 private:
  StagingDir(std::string path, std::string target) : path_(std::move(path)), target_(std::move(target)) {}
  std::string path_, target_;
  bool committed_ = false;
};

// Staging folders alive in this process; an interrupted run removes them (see cli/).
void RemoveLiveStagingDirs();

// Removes the staging folders in `dir` that compress processes of this host left behind
// (killed before they could clean up): named by StagingDir, owned by this user, and whose
// process no longer runs. Returns how many were removed.
int RemoveStaleStaging(const std::string& dir);

}  // namespace compress
