// What a run writes, checked before any work and committed all together: the model output
// (a folder, or a file with sibling files) and report files, none of which may touch an input.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/staging.h"

namespace compress {

// `path` made absolute with every symlink in its existing part resolved.
std::string RealPath(const std::string& path);

// Path rules, in the order they are checked:
//  - no output may be, contain or sit inside an input (real paths, symlinks resolved);
//  - the folder an output goes in must exist; a file output may not name a folder;
//  - an existing model output (or sibling file) is replaced only with `force`, and a folder
//    only when it holds nothing but the files of a model checkpoint (no subfolders);
//  - reports may not name the model output, each other, or an existing folder; a report
//    inside the model output folder is written into it.
// Everything is staged; Commit() moves the reports and then the model into place once
// every write succeeded. An uncommitted plan leaves nothing behind.
class OutputPlan {
 public:
  explicit OutputPlan(bool force) : force_(force) {}
  OutputPlan(const OutputPlan&) = delete;
  OutputPlan& operator=(const OutputPlan&) = delete;

  // A file or folder the run reads; `what` names it in errors ("the input model").
  void AddInput(const std::string& path, const std::string& what);
  // Refuses `path` (as given to `flag`) when it is, contains or sits inside an input.
  absl::Status CheckNotInput(const std::string& path, const std::string& flag) const {
    return CheckAgainstInputs(RealPath(path), path, flag);
  }
  // The model output: a folder, or a file with `siblings` (file names beside it); `obsolete`
  // names files of the output being replaced, removed once the new one is in place.
  absl::Status SetModel(const std::string& path, bool folder, std::vector<std::string> siblings,
                        std::vector<std::string> obsolete = {});
  // A report or other file written with the model; `flag` names it in errors.
  absl::Status AddFile(const std::string& path, const std::string& flag);

  // The staging folder the model writer fills (created on first call).
  absl::StatusOr<std::string> ModelStaging();
  // Writes a file declared with AddFile (a terminal or pipe target is written at once).
  absl::Status WriteFile(const std::string& path, const std::string& content);
  // Moves every staged file into place: reports first, the model last.
  absl::Status Commit();

 private:
  struct Input {
    std::string path, real, what;
  };
  struct File {
    std::string path, real, flag;
    std::string inside_model;  // path relative to the model folder when written into it
    bool direct = false;       // an existing terminal, pipe or device: written in place
    std::optional<StagingDir> staging;
    bool written = false;
  };
  absl::Status CheckAgainstInputs(const std::string& real, const std::string& shown,
                                  const std::string& flag) const;
  absl::Status CheckReplaceable(const std::string& path, bool folder) const;

  bool force_;
  std::vector<Input> inputs_;
  std::string model_, model_real_;
  bool model_folder_ = false;
  std::vector<std::string> siblings_, obsolete_;
  std::optional<StagingDir> model_staging_;
  std::vector<std::unique_ptr<File>> files_;
};

}  // namespace compress
