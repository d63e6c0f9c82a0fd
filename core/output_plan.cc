// Output safety: path rules between inputs and outputs, and one commit for model and reports.
#include "core/output_plan.h"

#include <algorithm>
#include <array>
#include <filesystem>

#include "core/file_util.h"
#include "core/status.h"

namespace compress {
namespace fs = std::filesystem;
namespace {

enum class Relation { kNone, kSame, kContains, kInside };

// How path `a` relates to path `b` (both absolute and normal): the same, an ancestor of
// it (contains), or a descendant (inside).
Relation Relate(const fs::path& a, const fs::path& b) {
  auto [ia, ib] = std::mismatch(a.begin(), a.end(), b.begin(), b.end());
  if (ia == a.end() && ib == b.end()) return Relation::kSame;
  if (ia == a.end()) return Relation::kContains;
  if (ib == b.end()) return Relation::kInside;
  return Relation::kNone;
}

// Whether a file of this name can be part of a model checkpoint folder (weights, index,
// config, tokenizer, chat template, model card, plots of a report written into it).
bool CheckpointFileName(const std::string& name) {
  static constexpr std::array<std::string_view, 9> kSuffixes = {
      ".safetensors", ".json", ".model", ".txt", ".md", ".svg", ".jinja", ".tiktoken", ".py"};
  if (name.empty() || name[0] == '.') return false;
  return std::any_of(kSuffixes.begin(), kSuffixes.end(), [&](std::string_view s) { return name.ends_with(s); });
}

bool Exists(const std::string& path) {
  std::error_code ec;
  return fs::exists(fs::symlink_status(path, ec));
}

}  // namespace

std::string RealPath(const std::string& path) {
  std::error_code ec;
  fs::path p = fs::weakly_canonical(fs::absolute(path, ec), ec);
  if (ec) p = fs::absolute(path, ec);
  p = p.lexically_normal();
  if (p.filename().empty() && p.has_parent_path() && p != p.root_path()) p = p.parent_path();
  return p.string();
}

void OutputPlan::AddInput(const std::string& path, const std::string& what) {
  if (path.empty()) return;
  inputs_.push_back({path, RealPath(path), what});
}

absl::Status OutputPlan::CheckAgainstInputs(const std::string& real, const std::string& shown,
                                            const std::string& flag) const {
  for (const auto& in : inputs_) {
    Relation r = Relate(real, in.real);
    std::error_code ec;
    if (r == Relation::kNone && Exists(real) && Exists(in.real) && fs::equivalent(real, in.real, ec)) {
      r = Relation::kSame;
    }
    switch (r) {
      case Relation::kNone:
        break;
      case Relation::kSame:
        return InvalidArgument("{} '{}' is {} '{}'; an output may never replace an input, choose another path",
                               flag, shown, in.what, in.path);
      case Relation::kContains:
        return InvalidArgument("{} '{}' contains {} '{}'; writing there could delete it, choose another path",
                               flag, shown, in.what, in.path);
      case Relation::kInside:
        return InvalidArgument("{} '{}' lies inside {} '{}'; write outputs outside the input, choose another path",
                               flag, shown, in.what, in.path);
    }
  }
  return absl::OkStatus();
}

absl::Status OutputPlan::CheckReplaceable(const std::string& path, bool folder) const {
  std::error_code ec;
  if (!Exists(path)) return absl::OkStatus();
  const bool is_dir = fs::is_directory(path, ec);
  if (!folder) {
    if (is_dir) return InvalidArgument("{}: is a folder; this output is a file, give a file path", path);
    if (!fs::is_regular_file(path, ec)) return InvalidArgument("{}: exists and is not a regular file", path);
    if (!force_) return InvalidArgument("{}: exists; give --force to replace it, or choose a new path", path);
    return absl::OkStatus();
  }
  if (!is_dir) {
    return InvalidArgument("{}: exists and is not a folder; a checkpoint is written as a folder", path);
  }
  if (fs::is_symlink(fs::symlink_status(path, ec))) {
    return InvalidArgument("{}: is a symlink to a folder; give the folder's own path", path);
  }
  if (fs::is_empty(path, ec)) return absl::OkStatus();
  if (!force_) {
    return InvalidArgument("{}: the folder exists and is not empty; give --force to replace it, or choose a new folder",
                           path);
  }
  bool looks_like_checkpoint = false;
  for (fs::directory_iterator it(path, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (!it->is_regular_file(ec) || it->is_symlink(ec) || !CheckpointFileName(name)) {
      return InvalidArgument(
          "{}: --force replaces a model checkpoint folder only, and this folder holds '{}'{}, which no "
          "checkpoint has; remove it yourself or choose another folder",
          path, name, it->is_directory(ec) ? " (a folder)" : "");
    }
    looks_like_checkpoint |= name == "config.json" || name.ends_with(".safetensors");
  }
  if (ec) return IoError("list", path);
  if (!looks_like_checkpoint) {
    return InvalidArgument(
        "{}: --force replaces a model checkpoint folder only, and this folder holds no config.json or "
        ".safetensors file; remove its contents yourself or choose another folder",
        path);
  }
  return absl::OkStatus();
}

absl::Status OutputPlan::SetModel(const std::string& path, bool folder, std::vector<std::string> siblings,
                                  std::vector<std::string> obsolete) {
  if (path.empty()) return InvalidArgument("-o: empty output path");
  model_ = path;
  model_real_ = RealPath(path);
  model_folder_ = folder;
  siblings_ = std::move(siblings);
  obsolete_ = std::move(obsolete);
  RETURN_IF_ERROR(CheckAgainstInputs(model_real_, path, "-o"));
  const fs::path parent = fs::path(model_real_).parent_path();
  for (const auto& s : siblings_) {
    const std::string real = (parent / s).string();
    RETURN_IF_ERROR(CheckAgainstInputs(real, real, "-o (its side file)"));
  }
  std::error_code ec;
  if (!fs::is_directory(parent, ec)) {
    return NotFound("{}: the folder '{}' does not exist; create it first", path, parent.string());
  }
  RETURN_IF_ERROR(CheckReplaceable(path, folder));
  for (const auto& s : siblings_) RETURN_IF_ERROR(CheckReplaceable((parent / s).string(), false));
  for (const auto& s : obsolete_) {
    const std::string real = (parent / s).string();
    RETURN_IF_ERROR(CheckAgainstInputs(real, real, "-o (the side file it replaces)"));
    RETURN_IF_ERROR(CheckReplaceable(real, false));
  }
  return absl::OkStatus();
}

absl::Status OutputPlan::AddFile(const std::string& path, const std::string& flag) {
  if (path.empty()) return InvalidArgument("{}: empty path", flag);
  auto f = std::make_unique<File>();
  f->path = path;
  f->real = RealPath(path);
  f->flag = flag;
  RETURN_IF_ERROR(CheckAgainstInputs(f->real, path, flag));
  if (!model_real_.empty()) {
    const fs::path parent = fs::path(model_real_).parent_path();
    Relation r = Relate(f->real, model_real_);
    bool sibling = std::any_of(siblings_.begin(), siblings_.end(),
                               [&](const std::string& s) { return (parent / s).string() == f->real; });
    if (r == Relation::kSame || sibling) {
      return InvalidArgument("{} '{}' is the model output ('{}'); choose another path", flag, path, model_);
    }
    if (r == Relation::kContains) {
      return InvalidArgument("{} '{}' contains the model output '{}'; choose another path", flag, path, model_);
    }
    if (r == Relation::kInside) {
      if (!model_folder_) {
        return InvalidArgument("{} '{}' lies inside the model output file '{}'", flag, path, model_);
      }
      f->inside_model = fs::path(f->real).lexically_relative(model_real_).string();
    }
  }
  for (const auto& other : files_) {
    if (other->real == f->real) {
      return InvalidArgument("{} '{}' is also the path of {}; give each output its own path", flag, path,
                             other->flag);
    }
  }
  std::error_code ec;
  if (f->inside_model.empty()) {
    const fs::path parent = fs::path(f->real).parent_path();
    if (!fs::is_directory(parent, ec)) {
      return NotFound("{} '{}': the folder '{}' does not exist; create it first", flag, path, parent.string());
    }
    if (Exists(f->real)) {
      if (fs::is_directory(f->real, ec)) return InvalidArgument("{} '{}': is a folder; give a file path", flag, path);
      // A terminal, pipe or device (e.g. /dev/stdout) is written in place; files are staged.
      f->direct = !fs::is_regular_file(f->real, ec);
    }
  }
  files_.push_back(std::move(f));
  return absl::OkStatus();
}

absl::StatusOr<std::string> OutputPlan::ModelStaging() {
  if (model_.empty()) return Internal("OutputPlan: no model output was set");
  if (!model_staging_) {
    ASSIGN_OR_RETURN(StagingDir s, StagingDir::Create(model_));
    model_staging_.emplace(std::move(s));
  }
  return model_staging_->path();
}

absl::Status OutputPlan::WriteFile(const std::string& path, const std::string& content) {
  auto it = std::find_if(files_.begin(), files_.end(), [&](const auto& f) { return f->path == path; });
  if (it == files_.end()) return Internal("OutputPlan: '{}' was not declared with AddFile", path);
  File& f = **it;
  if (f.direct) {
    RETURN_IF_ERROR(WriteSmallFile(path, content));
  } else if (!f.inside_model.empty()) {
    ASSIGN_OR_RETURN(std::string dir, ModelStaging());
    const fs::path dst = fs::path(dir) / f.inside_model;
    std::error_code ec;
    fs::create_directories(dst.parent_path(), ec);
    if (ec) return IoError("create", dst.parent_path().string());
    RETURN_IF_ERROR(Annotate(WriteSmallFile(dst.string(), content), f.flag + " " + path));
  } else {
    if (!f.staging) {
      ASSIGN_OR_RETURN(StagingDir s, StagingDir::Create(f.real));
      f.staging.emplace(std::move(s));
    }
    const fs::path dst = fs::path(f.staging->path()) / fs::path(f.real).filename();
    RETURN_IF_ERROR(Annotate(WriteSmallFile(dst.string(), content), f.flag + " " + path));
  }
  f.written = true;
  return absl::OkStatus();
}

absl::Status OutputPlan::Commit() {
  for (auto& f : files_) {
    if (f->staging) RETURN_IF_ERROR(f->staging->CommitFiles({}, fs::path(f->real).filename().string()));
  }
  if (!model_staging_) return absl::OkStatus();
  if (model_folder_) return model_staging_->CommitAsDir();
  std::vector<std::string> present;
  for (const auto& s : siblings_) {
    if (Exists((fs::path(model_staging_->path()) / s).string())) present.push_back(s);
  }
  RETURN_IF_ERROR(model_staging_->CommitFiles(present, fs::path(model_real_).filename().string()));
  // The new model reads only its own side files now: the replaced output's go.
  const fs::path parent = fs::path(model_real_).parent_path();
  for (const auto& s : obsolete_) {
    std::error_code ec;
    fs::remove(parent / s, ec);
  }
  return absl::OkStatus();
}

}  // namespace compress
