// `compress imatrix`: llama.cpp importance matrix from compress's calibration.
#include <omp.h>

#include <filesystem>

#include "calibrate/imatrix.h"
#include "cli/commands.h"
#include "cli/progress.h"
#include "core/distributed.h"
#include "core/output_plan.h"
#include "core/status.h"
#include "formats/model_io.h"
#include "runtime/tokenizer.h"

namespace compress {

namespace fs = std::filesystem;

absl::Status ImatrixCommand(const ImatrixArgs& a) {
  if (a.threads > 0) omp_set_num_threads(a.threads);
  if (a.calibration.empty()) return InvalidArgument("imatrix: give the calibration text with --calibration FILE");
  if (a.out.empty()) return InvalidArgument("imatrix: give the output with -o FILE");
  ASSIGN_OR_RETURN(Model model, LoadModel(a.model));
  OutputPlan plan(a.force);
  for (const auto& in : model.inputs) plan.AddInput(in, "the input model");
  plan.AddInput(a.model, "the input model");
  plan.AddInput(a.calibration, "the calibration file");
  const std::string tokenizer = TokenizerFileFor(a.model);
  if (fs::exists(tokenizer)) plan.AddInput(tokenizer, "the tokenizer");
  RETURN_IF_ERROR(plan.CheckNotInput(a.out, "-o"));
  RETURN_IF_ERROR(plan.SetModel(a.out, /*folder=*/false, {}));

  CalibrationOptions opts{a.calibration, a.samples, a.seqlen, a.seed, a.min_expert_tokens};
  if (auto p = PrecisionNamed(a.precision)) opts.precision = *p;  // CLI checked the name
  auto data = LoadCalibration(opts, tokenizer);
  if (!data.ok()) return Annotate(data.status(), "calibration");
  TerminalProgress progress(!a.quiet && dist::Rank() == 0 && StderrIsTerminal());
  ASSIGN_OR_RETURN(ImatrixResult r,
                   CollectImatrix(model, *data, fs::path(a.calibration).filename().string(),
                                  [&](int64_t done, int64_t total) { progress.Update("calibrate", done, total); }));
  progress.Done();
  if (dist::Rank() != 0) return absl::OkStatus();  // rank 0 writes (core/distributed.h)
  ASSIGN_OR_RETURN(std::string staging, plan.ModelStaging());
  RETURN_IF_ERROR(WriteImatrix(r.matrix, (fs::path(staging) / fs::path(a.out).filename()).string()));
  RETURN_IF_ERROR(plan.Commit());
  if (!a.quiet) {
    int64_t tokens = 0;
    for (const auto& w : data->windows) tokens += static_cast<int64_t>(w.size());
    std::string skipped;
    if (!r.skipped.empty()) {
      skipped = fmt::format("; {} weights without a GGUF name skipped (first: {})", r.skipped.size(), r.skipped.front());
    }
    fmt::print("wrote {}: {} weights, {} windows of {} tokens ({} tokens){}\n", a.out, r.matrix.entries.size(),
               data->windows.size(), a.seqlen, tokens, skipped);
  }
  return absl::OkStatus();
}

}  // namespace compress
