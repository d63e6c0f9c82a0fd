// Pass, PassInfo, PassRegistry and the AnalysisManager that caches analyses between passes.
#pragma once

#include <any>
#include <functional>
#include <optional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <utility>
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
  bool AllPreserved() const { return all_; }

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
    RETURN_IF_ERROR(CheckDeclared(A::kName));
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
  // The cached result of `A` for a pass that keeps it valid by updating it in place (a pass
  // that changes the model in a way it can account for, and lists A in its
  // PassInfo::preserved_analyses); null when it is not cached.
  template <typename A>
  typename A::Result* CachedForUpdate() {
    if (!CheckDeclared(A::kName).ok()) return nullptr;
    auto it = cache_.find(A::kName);
    return it == cache_.end() ? nullptr : std::any_cast<std::shared_ptr<typename A::Result>>(it->second).get();
  }
  void Invalidate(const PreservedAnalyses& keep);
  // While a pass runs: the analyses it declared (PassInfo::required_analyses); Get of any
  // other is an Internal error naming the pass, so the declarations that plans and dry runs
  // read are the true ones. Outside passes (null) every analysis may be requested.
  void SetDeclared(const std::string* pass, const std::vector<std::string>* names) {
    declaring_pass_ = pass;
    declared_ = names;
  }
  bool IsCached(const std::string& name) const { return cache_.count(name) > 0; }
  int computations(const std::string& name) const;
  int hits(const std::string& name) const;  // requests answered from the cache
  // Names of the analyses computed or cached so far.
  std::vector<std::string> Known() const;

  // The run's calibration data, for analyses computed from it (null without --calibration).
  void SetCalibration(const CalibrationData* c) { calibration_ = c; }
  const CalibrationData* calibration() const { return calibration_; }
  // Notes an analysis adds while it is computed (e.g. "read from --stats FILE"); the pass
  // manager moves them into the report of the pass that requested it.
  void Note(std::string text) { notes_.push_back(std::move(text)); }
  // An analysis that read its result from a file instead of computing it says so here; the
  // report then says "read", not "computed".
  void MarkLoaded(const std::string& name) { ++loads_[name]; }
  int loads(const std::string& name) const {
    auto it = loads_.find(name);
    return it == loads_.end() ? 0 : it->second;
  }
  std::vector<std::string> TakeNotes() { return std::exchange(notes_, {}); }

 private:
  absl::Status CheckDeclared(const char* name) const;
  std::map<std::string, std::any> cache_;
  std::map<std::string, int> computations_, hits_, loads_;
  std::vector<std::string> notes_;
  const CalibrationData* calibration_ = nullptr;
  const std::string* declaring_pass_ = nullptr;
  const std::vector<std::string>* declared_ = nullptr;
};

// Receives progress of long work; the CLI draws it on a terminal, tests ignore it.
class ProgressSink {
 public:
  virtual ~ProgressSink() = default;
  virtual void Update(std::string_view label, int64_t done, int64_t total) = 0;
  virtual void Done() = 0;
};

class ResumeJournal;

struct PassContext {
  AnalysisManager& analyses;
  PassReport& report;
  ProgressSink* progress = nullptr;              // may be null
  const CalibrationData* calibration = nullptr;  // set when the run has calibration data
  // Structural edits in the model's format (core/checkpoint_edit.h; formats/model_io.h's
  // ModelCheckpointEditor in a run).
  const CheckpointEditor* checkpoint = nullptr;
  // The run's resume journal (core/resume_journal.h; null when the run keeps none): passes
  // whose calibration driver changes weights only through VisitSpread hand it to the driver.
  ResumeJournal* journal = nullptr;
  // "pass 2 of 3 'quantize-int8'", as the pass manager names the pass in its errors: work a
  // pass defers to the writer (DeferredQuant) names it the same way when it fails there.
  std::string label;
  void Progress(std::string_view label, int64_t done, int64_t total) {
    if (progress) progress->Update(label, done, total);
  }
  // The editor, or FailedPrecondition naming `pass` when the run has none.
  absl::StatusOr<const CheckpointEditor*> Editor(std::string_view pass) const;
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
  // The analyses (by kName; calibrate/stats_analysis.h) the pass requests from ctx.analyses
  // with these option values (null: none). The manager refuses a request for any other, so
  // plans (`run --dry-run`) can say before any work which pass computes, reuses or recomputes
  // each analysis.
  std::function<std::vector<std::string>(const OptionValues&)> required_analyses;
  // Analyses the pass keeps valid although it changes the model: it updates them in place
  // (AnalysisManager::CachedForUpdate) or changes nothing they depend on. Kept besides
  // whatever Run returns. A pass that changes no tensor, config or activation scheme keeps
  // every analysis without saying so.
  std::vector<std::string> preserved_analyses;
  DefaultScope scope = DefaultScope::kLinearWeights;
  // The one output file extension that stores what the pass makes (".gguf" for GGUF block
  // types); `run` refuses another -o before any work. Empty: every output format.
  std::string output_extension;
  // The quantization the pass gives its selected weights, from its option values (null or
  // nullopt: not known up front). `run` checks it against the output format before any work
  // when no later pass could change those weights again.
  std::function<std::optional<PlannedQuant>(const OptionValues&)> planned_quant;
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
// `analyses`, when given, names the analyses the pass requests with given options
// (PassInfo::required_analyses).
template <typename O>
void BindPassOptions(PassInfo& info, OptionBinding<O> binding, std::type_identity_t<TypedPassFactory<O>> make,
                     std::type_identity_t<std::function<std::vector<std::string>(const O&)>> analyses = nullptr) {
  info.options = binding.specs();
  if (analyses) {
    info.required_analyses = [binding, analyses = std::move(analyses)](const OptionValues& v) {
      return analyses(binding.Read(v));
    };
  }
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
