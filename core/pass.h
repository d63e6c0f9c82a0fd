// Pass, PassInfo, PassRegistry and the AnalysisManager that caches analyses between passes.
#pragma once

#include <any>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <type_traits>
#include <vector>

#include "absl/status/statusor.h"
#include "core/model.h"
#include "core/options.h"
#include "core/report.h"
#include "core/select.h"
#include "core/status.h"

namespace compress {

struct CalibrationData;  // calibrate/calibration.h; passes that need it include that header
class CheckpointEditor;  // core/checkpoint_edit.h

// Which cached analyses survive a pass. Passes that change weights usually preserve none.
class PreservedAnalyses {
 public:
  static PreservedAnalyses All() {
    PreservedAnalyses p;
    p.all_ = true;
    return p;
  }
  static PreservedAnalyses None() { return {}; }
  PreservedAnalyses& Preserve(std::string name) {
    names_.insert(std::move(name));
    return *this;
  }
  bool IsPreserved(const std::string& name) const { return all_ || names_.count(name) > 0; }

 private:
  bool all_ = false;
  std::set<std::string> names_;
};

// Computes analyses on first request and caches them until a pass invalidates them.
// An analysis is a type with `static constexpr const char* kName`, a `Result` type and
// `static absl::StatusOr<Result> Compute(const Model&, AnalysisManager&)`.
class AnalysisManager {
 public:
  template <typename A>
  absl::StatusOr<const typename A::Result*> Get(const Model& m) {
    auto it = cache_.find(A::kName);
    if (it == cache_.end()) {
      ASSIGN_OR_RETURN(auto result, A::Compute(m, *this));
      ++computations_[A::kName];
      it = cache_.emplace(A::kName, std::make_shared<typename A::Result>(std::move(result))).first;
    } else {
      ++hits_[A::kName];
    }
    return std::any_cast<std::shared_ptr<typename A::Result>>(it->second).get();
  }
  void Invalidate(const PreservedAnalyses& keep);
  bool IsCached(const std::string& name) const { return cache_.count(name) > 0; }
  int computations(const std::string& name) const;
  int hits(const std::string& name) const;  // requests answered from the cache
  // Names of the analyses computed or cached so far.
  std::vector<std::string> Known() const;

  // The run's calibration data, for analyses computed from it (null without --calibration).
  void SetCalibration(const CalibrationData* c) { calibration_ = c; }
  const CalibrationData* calibration() const { return calibration_; }

 private:
  std::map<std::string, std::any> cache_;
  std::map<std::string, int> computations_, hits_;
  const CalibrationData* calibration_ = nullptr;
};

// Receives progress of long work; the CLI draws it on a terminal, tests ignore it.
class ProgressSink {
 public:
  virtual ~ProgressSink() = default;
  virtual void Update(std::string_view label, int64_t done, int64_t total) = 0;
  virtual void Done() = 0;
};

struct PassContext {
  AnalysisManager& analyses;
  PassReport& report;
  ProgressSink* progress = nullptr;              // may be null
  const CalibrationData* calibration = nullptr;  // set when the run has calibration data
  const CheckpointEditor* checkpoint = nullptr;  // structural edits of checkpoints (formats/hf_edit.h)
  void Progress(std::string_view label, int64_t done, int64_t total) {
    if (progress) progress->Update(label, done, total);
  }
};

class Pass {
 public:
  virtual ~Pass() = default;
  virtual absl::StatusOr<PreservedAnalyses> Run(Model& model, PassContext& ctx) = 0;
};

struct PassInfo {
  std::string name;
  std::string summary;  // one line
  std::string origin = "builtin";
  std::vector<OptionSpec> options;
  bool selects_tensors = true;     // adds the shared include/exclude options
  bool needs_calibration = false;  // the pass manager refuses to run it without calibration data
  DefaultScope scope = DefaultScope::kLinearWeights;
  // The one output file extension that stores what the pass makes (".gguf" for GGUF block
  // types); `run` refuses another -o before any work. Empty: every output format.
  std::string output_extension;
  std::function<absl::StatusOr<std::unique_ptr<Pass>>(const OptionValues&)> create;
};

// Tensor selection from the shared include/exclude options of a pass.
TensorSelector SelectorFrom(const PassInfo& info, const OptionValues& values);
TensorSelector SelectorFrom(DefaultScope scope, bool selects_tensors, const OptionValues& values);

// The option struct of a pass that has none of its own (only include/exclude, say).
struct NoOptions {};

template <typename O>
using TypedPassFactory = std::function<absl::StatusOr<std::unique_ptr<Pass>>(const O& options, TensorSelector)>;

// Gives `info` the options of `binding` and a factory that reads them into an `O` (and the
// include/exclude options into a selector) and calls `make`, which checks what no single option
// can (options that exclude each other ...) and builds the pass. Call after setting
// `info.scope` and `info.selects_tensors`.
template <typename O>
void BindPassOptions(PassInfo& info, OptionBinding<O> binding, std::type_identity_t<TypedPassFactory<O>> make) {
  info.options = binding.specs();
  info.create = [binding = std::move(binding), make = std::move(make), scope = info.scope,
                 selects = info.selects_tensors](const OptionValues& v) -> absl::StatusOr<std::unique_ptr<Pass>> {
    return make(binding.Read(v), SelectorFrom(scope, selects, v));
  };
}

class PassRegistry {
 public:
  // Adds a pass; a duplicate name is AlreadyExists. Adds include/exclude when the
  // pass selects tensors.
  absl::Status Register(PassInfo info);
  const PassInfo* Find(std::string_view name) const;
  std::vector<const PassInfo*> All() const;  // sorted by name

 private:
  std::map<std::string, PassInfo, std::less<>> passes_;
};

}  // namespace compress
