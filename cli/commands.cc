// inspect, run and passes: the user-facing subcommands.
#include "cli/commands.h"

#include <malloc.h>
#include <omp.h>

#include <charconv>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <set>

#include "absl/strings/str_join.h"
#include "analyze/inspect.h"
#include "analyze/onnx_eval.h"
#include "analyze/perplexity.h"
#include "analyze/report_writer.h"
#include "calibrate/calibration.h"
#include "calibrate/stats_analysis.h"
#include "calibrate/stats_file.h"
#include "core/buffer.h"
#include "core/distributed.h"
#include "cli/progress.h"
#include "core/pass_manager.h"
#include "core/plugin.h"
#include "core/resume_journal.h"
#include "core/version.h"
#include "core/file_util.h"
#include "core/output_plan.h"
#include "formats/gguf.h"
#include "formats/gguf_tokenizer.h"
#include "formats/model_io.h"
#include "passes/registry.h"
#include "runtime/llama.h"
#include "runtime/tokenizer.h"

namespace compress {
namespace fs = std::filesystem;
namespace {

void Print(const std::string& s) { std::fputs(s.c_str(), stdout); }

// Built-in passes plus every plugin from --plugin flags and COMPRESS_PLUGIN_PATH.
absl::StatusOr<PassRegistry> LoadRegistry(const std::vector<std::string>& plugins) {
  PassRegistry r;
  RETURN_IF_ERROR(RegisterBuiltinPasses(r));
  for (const auto& path : PluginPaths(plugins)) RETURN_IF_ERROR(LoadPlugin(path, r));
  return r;
}

}  // namespace

int ExitCodeFor(const absl::Status& s) {
  switch (s.code()) {
    case absl::StatusCode::kOk:
      return 0;
    case absl::StatusCode::kInternal:
    case absl::StatusCode::kUnknown:
      return 3;
    case absl::StatusCode::kOutOfRange:
      return 4;
    default:
      return 2;
  }
}

absl::Status InspectCommand(const InspectArgs& a) {
  ASSIGN_OR_RETURN(Model m, LoadModel(a.model));
  Print(a.json ? DisplayJson(InspectJson(m, a.model)) : InspectText(m, a.model));
  return absl::OkStatus();
}

absl::Status PassesCommand(const PassesArgs& a) {
  ASSIGN_OR_RETURN(PassRegistry reg, LoadRegistry(a.plugins));
  std::vector<const PassInfo*> list;
  if (!a.name.empty()) {
    const PassInfo* p = reg.Find(a.name);
    if (!p) {
      std::vector<std::string> names;
      for (const auto* q : reg.All()) names.push_back(q->name);
      return NotFound("unknown pass '{}'; passes: {}", a.name, absl::StrJoin(names, ", "));
    }
    list.push_back(p);
  } else {
    list = reg.All();
  }
  if (a.json) {
    auto arr = nlohmann::ordered_json::array();
    for (const auto* p : list) {
      nlohmann::ordered_json pj = {{"name", p->name}, {"summary", p->summary}, {"origin", p->origin}};
      pj["options"] = nlohmann::ordered_json::array();
      for (const auto& o : p->options) {
        pj["options"].push_back(
            {{"key", o.key}, {"type", o.Describe()}, {"default", o.default_value}, {"help", o.help}});
      }
      arr.push_back(std::move(pj));
    }
    Print(DisplayJson(arr));
    return absl::OkStatus();
  }
  std::string out;
  for (const auto* p : list) {
    if (a.name.empty()) {
      out += fmt::format("{:<24} {} [{}]\n", p->name, p->summary, p->origin);
      continue;
    }
    out += fmt::format("{} - {}\norigin: {}\noptions:\n", p->name, p->summary, p->origin);
    for (const auto& o : p->options) {
      out += fmt::format("  {:<10} {} (default {})\n             {}\n", o.key, o.Describe(), o.default_value,
                         o.help);
    }
  }
  Print(out);
  return absl::OkStatus();
}

// The first `max_tokens` tokens of `text_path`, tokenized with the model's tokenizer
// (TokenizerFileFor: tokenizer.json beside it, a GGUF file's own, or tokenizer.model).
absl::StatusOr<std::vector<int32_t>> TokenizeFile(const std::string& model_path, const std::string& text_path,
                                                  int64_t max_tokens) {
  const std::string tok_path = TokenizerFileFor(model_path);
  if (!fs::exists(tok_path)) {
    return NotFound("{}: no tokenizer.json (or tokenizer.model) beside the model; cannot evaluate on text", tok_path);
  }
  ASSIGN_OR_RETURN(auto tok, Tokenizer::FromFile(tok_path));
  ASSIGN_OR_RETURN(std::string text, ReadSmallFile(text_path, 1ull << 32));
  auto ids = tok->Encode(text);
  if (!ids.ok()) return Annotate(ids.status(), text_path);
  if (max_tokens > 0 && static_cast<int64_t>(ids->size()) > max_tokens) ids->resize(max_tokens);
  return ids;
}

namespace {
// Block weights an evaluation holds decoded (or packed) for the whole run; past it they are
// streamed: the result memory budget (a quarter of the machine's memory, or
// COMPRESS_MEMORY_BUDGET), at least 2 GiB.
int64_t EvalResidentLimit() { return std::max(int64_t{2} << 30, ResultMemoryBudget()); }
}  // namespace

absl::StatusOr<PerplexityResult> ModelPerplexity(const Model& model, std::span<const int32_t> ids,
                                                 int64_t ctx, ProgressSink* progress) {
  // f32 products (the report's figures are the same on every CPU).
  ASSIGN_OR_RETURN(auto rt, LlamaRuntime::Create(model, EvalRuntimeOptions(model, EvalResidentLimit())));
  return Perplexity([&](std::span<const int32_t> w) { return rt->TokenNlls(w); }, ids, ctx, ctx, progress);
}

namespace {

// What a run does, from the flags and the recipe: the resolved pipeline, calibration and
// save settings. Everything here is checked before the model is read.
struct RunSetup {
  std::vector<PipelineStep> steps;
  CalibrationOptions calib;
  SaveOptions save;
};

absl::StatusOr<RunSetup> ResolveRun(const RunArgs& a, const PassRegistry& reg) {
  RunSetup r;
  std::vector<RawPass> raw;
  // Calibration settings: command-line flags win over the recipe, then the defaults.
  r.calib = CalibrationOptions{a.calibration, 128, 512, 0, 64};
  if (!a.recipe.empty()) {
    ASSIGN_OR_RETURN(std::string text, ReadSmallFile(a.recipe, 1 << 20));
    ASSIGN_OR_RETURN(Recipe recipe, ParseRecipe(text, a.recipe));
    raw = std::move(recipe.pipeline);
    auto number = [&](const std::string& key, auto& field) -> absl::Status {
      auto it = recipe.calibration.find(key);
      if (it == recipe.calibration.end()) return absl::OkStatus();
      auto [p, ec] = std::from_chars(it->second.data(), it->second.data() + it->second.size(), field);
      if (ec != std::errc() || p != it->second.data() + it->second.size()) {
        return InvalidArgument("{}: calibration {} '{}' is not a non-negative integer", a.recipe, key,
                               it->second);
      }
      return absl::OkStatus();
    };
    RETURN_IF_ERROR(number("samples", r.calib.samples));
    RETURN_IF_ERROR(number("seqlen", r.calib.seqlen));
    RETURN_IF_ERROR(number("seed", r.calib.seed));
    RETURN_IF_ERROR(number("min_expert_tokens", r.calib.min_expert_tokens));
    if (auto it = recipe.calibration.find("precision"); it != recipe.calibration.end()) {
      const auto p = PrecisionNamed(it->second);
      if (!p) return InvalidArgument("{}: calibration precision '{}' is not f32 or bf16", a.recipe, it->second);
      r.calib.precision = *p;
    }
    if (auto it = recipe.calibration.find("file"); it != recipe.calibration.end() && r.calib.file.empty()) {
      fs::path f(it->second);
      r.calib.file = f.is_absolute() ? f.string() : (fs::path(a.recipe).parent_path() / f).string();
    }
  } else {
    ASSIGN_OR_RETURN(raw, ParsePipelineText(a.pipeline));
  }
  if (a.calib_samples > 0) r.calib.samples = a.calib_samples;
  if (a.calib_seqlen > 0) r.calib.seqlen = a.calib_seqlen;
  if (a.seed >= 0) r.calib.seed = static_cast<uint64_t>(a.seed);
  if (a.min_expert_tokens >= 0) r.calib.min_expert_tokens = a.min_expert_tokens;
  if (auto p = PrecisionNamed(a.calib_precision)) r.calib.precision = *p;  // CLI checked the name
  // A recipe's file options (an importance matrix ...) are relative to its folder, as its
  // calibration file is; pipeline text's to the working folder.
  ASSIGN_OR_RETURN(r.steps, ResolvePipeline(reg, raw, a.recipe.empty() ? "" : fs::path(a.recipe).parent_path().string()));
  // Every pass is built once here so a bad option value stops the run before any work.
  for (const auto& step : r.steps) {
    auto pass = step.info->create(step.values);
    if (!pass.ok()) return Annotate(pass.status(), fmt::format("pass '{}'", step.info->name));
    if (step.info->needs_calibration && r.calib.file.empty() && !a.dry_run) {
      return FailedPrecondition("pass '{}' needs calibration data; give --calibration FILE", step.info->name);
    }
  }
  for (const auto& name : a.print_after) {
    if (!reg.Find(name)) return InvalidArgument("--print-after: unknown pass '{}'", name);
  }
  if (a.sparse_storage == "bitmask") {
    r.save.sparse_bitmask = true;
  } else if (a.sparse_storage != "dense") {
    int n = 0, m = 0;
    char tail = 0;
    if (std::sscanf(a.sparse_storage.c_str(), "%d:%d%c", &n, &m, &tail) != 2 || n < 1 || n >= m || m > 256) {
      return InvalidArgument("--sparse-storage '{}': use dense, bitmask, or N:M with 1 <= N < M <= 256, e.g. 2:4",
                             a.sparse_storage);
    }
    r.save.sparse_n = n, r.save.sparse_m = m;
  }
  if (!a.max_shard_size.empty()) {
    auto bytes = ParseByteSize(a.max_shard_size);
    if (!bytes.ok()) return Annotate(bytes.status(), "--max-shard-size");
    r.save.max_shard_bytes = *bytes;
  }
  if (a.external_data == "always")
    r.save.onnx.external = OnnxWriteOptions::External::kAlways;
  else if (a.external_data == "never")
    r.save.onnx.external = OnnxWriteOptions::External::kNever;
  r.save.force = a.force;
  return r;
}

// Declares every path the run reads and writes, and checks them against each other
// before any work: outputs never touch an input, an existing output needs --force. Returns
// the model output's layout (empty in a dry run).
absl::StatusOr<OutputLayout> PlanRunPaths(const RunArgs& a, const RunSetup& setup, const Model& model,
                                          OutputPlan& plan) {
  for (const auto& in : model.inputs) plan.AddInput(in, "the input model");
  plan.AddInput(a.model, "the input model");
  plan.AddInput(a.recipe, "the recipe");
  plan.AddInput(setup.calib.file, "the calibration file");
  plan.AddInput(a.eval_text, "the --eval-text file");
  for (const auto& p : PluginPaths(a.plugins)) plan.AddInput(p, "a plugin");
  for (const auto& step : setup.steps) {
    for (const OptionSpec& o : step.info->options) {
      if (o.input_file) plan.AddInput(step.values.GetString(o.key), fmt::format("{}'s {} file", step.info->name, o.key));
    }
  }
  const fs::path model_dir = fs::is_directory(a.model) ? fs::path(a.model) : fs::path(a.model).parent_path();
  for (const char* tok : {"tokenizer.json", "tokenizer.model"})
    if (fs::exists(model_dir / tok)) plan.AddInput((model_dir / tok).string(), "the tokenizer");
  OutputLayout layout;
  if (!a.dry_run) {
    RETURN_IF_ERROR(plan.CheckNotInput(a.out, "-o"));
    if (!a.stats.empty()) RETURN_IF_ERROR(plan.CheckNotInput(a.stats, "--stats"));
    ASSIGN_OR_RETURN(layout, PlanOutput(model, a.out, setup.save));
    RETURN_IF_ERROR(plan.SetModel(a.out, layout.folder, layout.siblings, layout.obsolete));
  }
  if (!a.report.empty()) RETURN_IF_ERROR(plan.AddFile(a.report, "--report"));
  if (!a.report_md.empty()) RETURN_IF_ERROR(plan.AddFile(a.report_md, "--report-md"));
  return layout;
}

// Writes the JSON and Markdown reports and their artifacts (plots) through the plan.
absl::Status WriteReports(const RunArgs& a, const RunReport& report, OutputPlan& plan) {
  if (!a.report.empty()) RETURN_IF_ERROR(plan.WriteFile(a.report, DisplayJson(ReportToJson(report))));
  if (!a.report_md.empty()) RETURN_IF_ERROR(plan.WriteFile(a.report_md, ReportToMarkdown(report, a.report_md)));
  for (const std::string& rp : {a.report, a.report_md}) {
    if (rp.empty()) continue;
    for (const auto& [path, content] : ArtifactFiles(report, rp)) {
      RETURN_IF_ERROR(plan.AddFile(path, "a report plot"));
      RETURN_IF_ERROR(plan.WriteFile(path, content));
    }
  }
  return absl::OkStatus();
}

std::string DryRunPlan(const RunReport& report, const std::vector<PipelineStep>& steps, const Model& model,
                       const CalibrationOptions& calib) {
  const bool has_calibration = !calib.file.empty();
  std::string out = fmt::format("pipeline: {}\n", report.pipeline);
  const std::vector<std::vector<std::string>> analyses = PlanAnalyses(steps);
  for (size_t i = 0; i < steps.size(); ++i) {
    const std::vector<std::string> required = RequiredAnalyses(steps[i]);
    // Passes that need calibration and request no analysis run the block driver themselves.
    const bool own_driver = steps[i].info->needs_calibration && required.empty();
    const bool calibrated =
        steps[i].info->needs_calibration ||
        std::find(required.begin(), required.end(), CalibrationStatistics::kName) != required.end();
    auto names = SelectorFrom(*steps[i].info, steps[i].values).Select(model);
    int64_t bytes = 0, widest = 0;
    for (const auto& n : names) {
      bytes += model.tensors.at(n).nbytes();
      if (const LinearLayer* l = model.arch.LayerOfWeight(n)) widest = std::max(widest, l->in_features);
    }
    std::string note;
    if (calibrated && !has_calibration) {
      note = "; needs calibration data (--calibration FILE): the run would stop here";
    } else if (steps[i].info->selects_tensors && names.empty()) {
      note = "; selects nothing: the run would warn that this pass changed nothing";
    } else if (calibrated && !own_driver && !analyses[i].empty() && analyses[i].front().starts_with("reuses")) {
      note = "; runs no calibration (reuses the cached statistics)";
    } else if (calibrated && model.arch.hidden_size > 0) {
      // The driver holds every window's hidden states (twice while a block runs) and, for
      // passes that run it themselves, one f64 X^T X of the widest selected layer at a time
      // (the calibration-statistics analysis keeps none).
      const double states = 2.0 * static_cast<double>(calib.samples) * static_cast<double>(calib.seqlen) *
                            static_cast<double>(model.arch.hidden_size) * 4;
      // (--calib-precision bf16 adds the f32 sums: 4 bytes an entry more.)
      const double per_entry = calib.precision == CalibrationOptions::Precision::kBf16 ? 12 : 8;
      const double xtx = own_driver ? static_cast<double>(widest) * static_cast<double>(widest) * per_entry : 0.0;
      note = fmt::format("; calibration holds about {} ({} windows x {} tokens of hidden states, {}){}",
                         HumanBytes(static_cast<int64_t>(states + xtx)), calib.samples, calib.seqlen,
                         own_driver ? "X^T X " + HumanBytes(static_cast<int64_t>(xtx)) : std::string("no X^T X"),
                         calib.precision == CalibrationOptions::Precision::kF32
                             ? ""
                             : fmt::format(", {} products", PrecisionName(calib.precision)));
    }
    out += fmt::format("  {}. {}: {} tensors selected ({}){}\n", i + 1, steps[i].info->name, names.size(),
                       HumanBytes(bytes), note);
    for (const std::string& line : analyses[i]) out += fmt::format("     analysis: {}\n", line);
  }
  out += fmt::format("input: {} tensors, {} parameters, {}\n", report.input.tensors, report.input.parameters,
                     HumanBytes(report.input.bytes));
  return out;
}

// What decides the bytes a run writes, for its resume journal: every input file (with size
// and modification time, each once), the pipeline, the calibration and the output path. The
// calibration text is named by the hash of its token windows, not by its file's time: a copy of
// the same text (a re-synced data folder) resumes.
nlohmann::json RunFingerprint(const RunArgs& a, const RunSetup& setup, const Model& model, const RunReport& report) {
  nlohmann::json files = nlohmann::json::array();
  std::set<std::string> seen;
  auto add = [&](const std::string& p) {
    std::error_code ec;
    if (p.empty() || !fs::is_regular_file(p, ec)) return;
    std::string path = fs::absolute(p).lexically_normal().string();
    if (!seen.insert(path).second) return;
    const auto size = fs::file_size(p, ec);
    const auto mtime = fs::last_write_time(p, ec).time_since_epoch().count();
    files.push_back({path, size, mtime});
  };
  std::vector<std::string> inputs = model.inputs;
  inputs.push_back(a.model);
  for (const auto& in : inputs) {
    std::error_code ec;
    if (!fs::is_directory(in, ec)) {
      add(in);
      continue;
    }
    std::vector<std::string> inside;  // a checkpoint folder: its config, shards, index, tokenizer
    for (const auto& e : fs::directory_iterator(in, ec)) {
      if (e.is_regular_file()) inside.push_back(e.path().string());
    }
    std::sort(inside.begin(), inside.end());
    for (const auto& f : inside) add(f);
  }
  for (const auto& step : setup.steps) {
    for (const OptionSpec& o : step.info->options) {
      if (o.input_file) add(step.values.GetString(o.key));
    }
  }
  return {{"compress", COMPRESS_VERSION},
          {"model", fs::absolute(a.model).lexically_normal().string()},
          {"files", files},
          {"pipeline", report.pipeline},
          {"calibration", fmt::format("{} min-expert-tokens={}", report.calibration, setup.calib.min_expert_tokens)},
          {"output", fs::absolute(a.out).lexically_normal().string()},
          {"processes", dist::Size()}};
}

}  // namespace

absl::Status RunCommand(const RunArgs& a) {
  auto t0 = std::chrono::steady_clock::now();
  // Adds the time since the previous mark to `phase` of the report's phase_seconds.
  std::vector<std::pair<std::string, double>> phases;
  auto mark = t0;
  auto phase_done = [&](const char* phase) {
    const auto now = std::chrono::steady_clock::now();
    const double s = std::chrono::duration<double>(now - mark).count();
    mark = now;
    auto it = std::find_if(phases.begin(), phases.end(), [&](const auto& p) { return p.first == phase; });
    if (it == phases.end()) phases.emplace_back(phase, s);
    else it->second += s;
  };
  if (a.threads > 0) omp_set_num_threads(a.threads);
  ASSIGN_OR_RETURN(PassRegistry reg, LoadRegistry(a.plugins));
  ASSIGN_OR_RETURN(RunSetup setup, ResolveRun(a, reg));
  if (a.out.empty() && !a.dry_run) return InvalidArgument("run: -o OUT is required (unless --dry-run)");
  if (!a.stats.empty() && setup.calib.file.empty()) return InvalidArgument("--stats FILE needs --calibration");
  ASSIGN_OR_RETURN(Model model, LoadModel(a.model));
  phase_done("load");
  OutputPlan plan(a.force);
  ASSIGN_OR_RETURN(const OutputLayout layout, PlanRunPaths(a, setup, model, plan));
  // Passes whose tensors only one output format stores are refused before the work when -o
  // names another.
  for (const auto& step : setup.steps) {
    const std::string& ext = step.info->output_extension;
    if (!ext.empty() && !a.dry_run && fs::path(a.out).extension() != ext) {
      return InvalidArgument("{}: {} makes tensors that only a {} output stores; give -o a path ending in {}",
                             a.out, step.info->name, ext, ext);
    }
  }

  // Quantizations a GGUF file cannot hold are refused before the work, not after it: each
  // pass's declared quantization, unless a later pass might change those weights again.
  if (!a.dry_run && fs::path(a.out).extension() == ".gguf") {
    for (size_t i = 0; i < setup.steps.size(); ++i) {
      const PassInfo& info = *setup.steps[i].info;
      const bool final = std::all_of(setup.steps.begin() + i + 1, setup.steps.end(),
                                     [](const PipelineStep& s) { return static_cast<bool>(s.info->planned_quant); });
      if (!info.planned_quant || !final) continue;
      const std::optional<PlannedQuant> q = info.planned_quant(setup.steps[i].values);
      if (!q || SelectorFrom(info, setup.steps[i].values).Select(model).empty()) continue;
      if (const std::string why = GgufUnstorableReason(*q); !why.empty()) {
        return InvalidArgument(
            "{}: pass {} '{}' makes weights no GGUF block type stores ({}); for GGUF use "
            "quantize-int{{bits=8|4,group-size=32,scale-dtype=f16}}, quantize-gptq{{group-size=32,scale-dtype=f16}}, "
            "quantize-gguf or quantize-mxfp4, or write safetensors / ONNX",
            a.out, i + 1, info.name, why);
      }
    }
  }

  // Calibrated runs hold a few very large matrices (X^T X, inverse Hessian factors) whose
  // sizes differ from layer to layer: give those back to the system when freed (main() keeps
  // large blocks in the heap for the data-free passes, where page faults dominate), and keep
  // no freed UninitBuffers for reuse either.
  if (std::any_of(setup.steps.begin(), setup.steps.end(), [](const PipelineStep& s) {
        return s.info->needs_calibration || !RequiredAnalyses(s).empty();
      })) {
    mallopt(M_MMAP_MAX, 65536);
    SetRecycledPoolLimit(0);
  }

  RunReport report;
  report.processes = dist::Size();
  report.input = Summarize(model);
  if (const int64_t on_disk = InputWeightBytes(model); on_disk > 0) report.input.bytes = on_disk;
  report.pipeline = CanonicalPipeline(setup.steps);
  std::vector<int32_t> eval_ids;
  // Under MPI (core/distributed.h) only rank 0 measures, shows progress and writes.
  const bool writer = dist::Rank() == 0;
  TerminalProgress progress(!a.quiet && writer && StderrIsTerminal());
  if (!a.eval_text.empty() && !a.dry_run && writer) {
    auto ids = TokenizeFile(a.model, a.eval_text, 0);
    if (!ids.ok()) return Annotate(ids.status(), "--eval-text");
    eval_ids = *std::move(ids);
    const int64_t in_file = static_cast<int64_t>(eval_ids.size());
    if (a.eval_tokens > 0 && in_file > a.eval_tokens) eval_ids.resize(a.eval_tokens);
    auto before = ModelPerplexity(model, eval_ids, a.eval_ctx, &progress);
    if (!before.ok()) return Annotate(before.status(), "--eval-text");
    phase_done("eval");
    report.accuracy =
        AccuracyRecord{"perplexity",        a.eval_text, before->tokens_scored, in_file,
                       static_cast<int64_t>(eval_ids.size()), a.eval_ctx,   before->perplexity, 0};
  }
  if (a.dry_run) {
    report.dry_run = true;
    if (!a.quiet) Print(DryRunPlan(report, setup.steps, model, setup.calib));
    RETURN_IF_ERROR(WriteReports(a, report, plan));
    return plan.Commit();
  }

  std::optional<CalibrationData> calib;
  if (!setup.calib.file.empty()) {
    auto c = LoadCalibration(setup.calib, TokenizerFileFor(a.model));
    if (!c.ok()) return Annotate(c.status(), "calibration");
    calib = *std::move(c);
    calib->stats_file = a.stats;
    if (!a.stats.empty()) RETURN_IF_ERROR(CheckStatisticsFile(a.stats));
    // The precision is named only when it is not the reference (earlier reports stay as they were).
    report.calibration = model.metadata["compress.calibration"] = fmt::format(
        "{} samples={} seqlen={} seed={}{} hash={:016x}", fs::path(setup.calib.file).filename().string(),
        setup.calib.samples, setup.calib.seqlen, setup.calib.seed,
        setup.calib.precision == CalibrationOptions::Precision::kF32
            ? ""
            : fmt::format(" precision={}", PrecisionName(setup.calib.precision)),
        calib->hash);
    phase_done("calibration");
  }
  // A journal of the finished calibration blocks, so a killed run continues with --resume.
  // Under MPI each rank keeps its own (it holds only its windows' states): rank r > 0 beside
  // rank 0's, named with a ".rank{r}" suffix (on the rank's own disk when the machines share
  // none, so the output's parent folder must exist there too).
  std::unique_ptr<ResumeJournal> journal;
  {
    std::string note;
    nlohmann::json fingerprint = RunFingerprint(a, setup, model, report);
    std::string dir = ResumeJournal::PathFor(a.out);
    if (dist::Rank() > 0) {
      fingerprint["rank"] = dist::Rank();
      dir += fmt::format(".rank{}", dist::Rank());
    }
    ASSIGN_OR_RETURN(journal, ResumeJournal::Open(dir, std::move(fingerprint), a.resume, &note));
    if (!note.empty() && !a.quiet && writer) std::fprintf(stderr, "compress: %s\n", note.c_str());
  }
  PassManagerOptions pmo;
  pmo.journal = journal.get();
  pmo.progress = &progress;
  pmo.calibration = calib ? &*calib : nullptr;
  pmo.checkpoint = &ModelCheckpointEditor();
  pmo.after_pass = [&](const PipelineStep& step, const Model& m) {
    if (std::find(a.print_after.begin(), a.print_after.end(), step.info->name) == a.print_after.end()) return;
    ModelSummary s = Summarize(m);
    std::string out = fmt::format("--- after {}: {} tensors, {} parameters, {}\n", step.canonical, s.tensors,
                                  s.parameters, HumanBytes(s.bytes));
    for (const auto& n : m.tensors.names()) {
      const Tensor& t = m.tensors.at(n);
      out += fmt::format("  {} {} {}\n", n, DTypeName(t.dtype()), ShapeString(t.shape()));
    }
    std::fputs(out.c_str(), stderr);
  };
  PassManager pm(pmo);
  // A pass's failure names the input too (which tensor of which model: a NaN weight, a shape
  // the pass cannot take).
  // A failure of the input or the pipeline (a NaN weight, a shape a pass or the output format
  // cannot take) recurs on a resume, and a fixed input or pipeline no longer matches the
  // journal: the journal (calibration states, spilled results: gigabytes on a large model)
  // cannot help and goes. Disk errors, a kill, an interruption keep it for --resume.
  auto drop_journal_on_input_error = [&](const absl::Status& st) {
    const absl::StatusCode c = st.code();
    if (journal && (c == absl::StatusCode::kInvalidArgument || c == absl::StatusCode::kFailedPrecondition ||
                    c == absl::StatusCode::kDataLoss || c == absl::StatusCode::kNotFound ||
                    c == absl::StatusCode::kUnimplemented)) {
      (void)journal->Discard();
    }
    return st;
  };
  if (absl::Status st = pm.Run(model, setup.steps, report); !st.ok()) {
    return Annotate(drop_journal_on_input_error(st), a.model);
  }
  phase_done("passes");
  if (journal) report.resumed = journal->resumed();
  if (!writer) {
    // The other ranks' journals stay until rank 0 committed the output (a failure before that
    // aborts every rank, and --resume needs every rank's journal).
    RETURN_IF_ERROR(dist::Barrier());
    return journal ? journal->Discard() : absl::OkStatus();
  }
  if (!model.arch.container.empty() && fs::path(a.out).extension() == ".gguf") {
    const int64_t left_out = OutsideTextDecoder(model).first;
    report.warnings.push_back(fmt::format(
        "{} is a multimodal {} checkpoint: the GGUF holds its text decoder only ({} tensors of the vision tower and "
        "projector left out; llama.cpp reads those from a separate mmproj file, which compress does not write)",
        a.model, model.arch.container, left_out));
  }
  for (const auto& w : report.warnings) std::fprintf(stderr, "compress: warning: %s\n", w.c_str());
  model.metadata["compress.version"] = COMPRESS_VERSION;
  model.metadata["compress.pipeline"] = report.pipeline;

  // Written into staging, read back from there for the report, committed with the reports.
  ASSIGN_OR_RETURN(std::string staging, plan.ModelStaging());
  auto written = WriteModelFiles(model, staging, a.out, setup.save, &progress);
  progress.Done();
  if (!written.ok()) {
    // A pass that deferred its work to the writer (DeferredQuant) found bad input there: the
    // error names the model and the pass, as it would have during the pass.
    for (const auto& name : model.tensors.names()) {
      const QuantInfo* q = model.tensors.at(name).quant();
      if (absl::Status st = q ? q->DeferredFailure() : absl::OkStatus(); !st.ok()) {
        return Annotate(drop_journal_on_input_error(st), a.model);
      }
    }
  }
  RETURN_IF_ERROR(drop_journal_on_input_error(written.status()));
  fs::path out_name = fs::path(a.out).lexically_normal();
  if (out_name.filename().empty()) out_name = out_name.parent_path();
  const std::string staged_model =
      layout.folder ? staging : (fs::path(staging) / out_name.filename()).string();
  // What the written files cannot say (found only now): warned as the run's warnings above were.
  auto warn = [&](std::string w) {
    std::fprintf(stderr, "compress: warning: %s\n", w.c_str());
    report.warnings.push_back(std::move(w));
  };
  if (layout.folder && fs::path(model.source).extension() == ".gguf" &&
      std::none_of(written->begin(), written->end(), [](const std::string& f) { return f == "tokenizer.json"; })) {
    const absl::Status why = TokenizerFilesFromGguf(model.source).status();
    warn(fmt::format("{}: the checkpoint has no tokenizer.json ({})", a.out, why.message()));
  }
  if (!layout.folder && fs::path(a.out).extension() == ".gguf") {
    for (std::string& caveat : GgufOutputCaveats(model, staged_model)) warn(std::move(caveat));
  }
  RETURN_IF_ERROR(ResolvePendingMetrics(report));
  phase_done("write");
  // The passes' results are written: their memory (quantization scales, held codes) is given
  // back before the output is read back, so the reader's buffers reuse it instead of faulting
  // in fresh pages.
  { const Model done = std::move(model); }
  // The codes were made by this run: they are not read again to be checked, only headers,
  // config and scales (the summary needs the layout, not the codes).
  ASSIGN_OR_RETURN(Model out_model, LoadModel(staged_model, LoadOptions{.check_codes = false}));
  report.output = Summarize(out_model);
  report.output.path = a.out;
  // Size and bits/parameter from the bytes written (n:m-sparse and packed layouts load dense).
  report.output.bytes = WeightBytesOnDisk(staging, *written);
  if (out_model.metadata.count("compress.source_format"))
    report.output.format = out_model.metadata.at("compress.source_format");
  phase_done("read_back");
  if (report.accuracy) {
    // Measured on the model as written, read back from disk.
    auto after = ModelPerplexity(out_model, eval_ids, a.eval_ctx, &progress);
    if (!after.ok()) return Annotate(after.status(), "--eval-text on the output");
    report.accuracy->output = after->perplexity;
    phase_done("eval");
  }
  report.total_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  report.phase_seconds = std::move(phases);
  RETURN_IF_ERROR(WriteReports(a, report, plan));
  RETURN_IF_ERROR(plan.Commit());
  if (journal) RETURN_IF_ERROR(journal->Discard());
  RETURN_IF_ERROR(dist::Barrier());  // the other ranks discard their journals now
  if (!a.quiet) {
    Print(ReportToMarkdown(report));
    Print(fmt::format("\nwrote {}\n", a.out));
  }
  return absl::OkStatus();
}

namespace {

// Token ids from a JSON array or whitespace-separated integers.
absl::StatusOr<std::vector<int32_t>> ReadTokenFile(const std::string& path) {
  ASSIGN_OR_RETURN(std::string text, ReadSmallFile(path, 1ull << 32));
  ASSIGN_OR_RETURN(auto ids, TokenIdsFromText(text, path));
  if (!ids) return InvalidArgument("{}: not token ids (a JSON array or whitespace-separated integers)", path);
  return *std::move(ids);
}

}  // namespace

namespace {
// Whether any linear weight of the model keeps a packed form under --matmul native.
bool HasNativeLinears(const Model& model) {
  for (const LinearLayer* ll : model.arch.AllLinears()) {
    const Tensor* t = model.tensors.find(ll->weight);
    if (t && HasNativeForm(*t, ll->out_axis)) return true;
  }
  return false;
}
}  // namespace

absl::Status EvalCommand(const EvalArgs& a) {
  if (a.threads > 0) omp_set_num_threads(a.threads);
  const bool onnx = fs::path(a.model).extension() == ".onnx";
  if (onnx && a.matmul == "native") {
    return InvalidArgument("--matmul {} selects the LLM runtime's products; {} is an ONNX graph (run by the interpreter)",
                           a.matmul, a.model);
  }
  if (onnx && a.text.empty() && a.tokens.empty()) return EvalOnnx(a);
  if (!a.reference.empty() || !a.inputs.empty()) {
    return InvalidArgument(
        "--reference and --inputs compare ONNX model outputs; they do not combine with "
        "--text/--tokens or with non-ONNX models");
  }
  if (a.text.empty() && a.tokens.empty()) return InvalidArgument("eval: give --text FILE or --tokens FILE");
  ASSIGN_OR_RETURN(Model model, LoadModel(a.model));
  // Perplexity from the LLM runtime, or from an ONNX language-model graph in the interpreter.
  std::unique_ptr<LlamaRuntime> rt;
  std::unique_ptr<onnxrt::Interpreter> interp;
  TokenNllFn nlls;
  std::string matmul = "f32";  // the products used (--matmul auto resolved)
  LlamaRuntime::LinearForms forms;  // LLM runtime: the projections held, and how many run packed
  if (onnx) {
    ASSIGN_OR_RETURN(interp, onnxrt::Interpreter::Create(model));
    nlls = [&](std::span<const int32_t> w) { return OnnxTokenNlls(*interp, w); };
  } else {
    if ((a.matmul == "native" || a.matmul == "bf16") && !NativeMatmulAccelerated()) {
      std::fprintf(stderr,
                   "compress: warning: this CPU lacks AVX-512 VNNI/BF16 and AVX2/FMA: --matmul %s runs its portable loop "
                   "(the same results as with them, but slower)\n",
                   a.matmul.c_str());
    }
    matmul = a.matmul == "auto" ? (NativeMatmulAccelerated() && HasNativeLinears(model) ? "native" : "f32") : a.matmul;
    // Blocks stay decoded (or packed) for the whole run when they fit the memory budget (a
    // quarter of the machine's memory, or COMPRESS_MEMORY_BUDGET); past it they are streamed.
    ASSIGN_OR_RETURN(rt, LlamaRuntime::Create(model, EvalRuntimeOptions(model, EvalResidentLimit(),
                                                                       MatmulModeNamed(matmul))));
    nlls = [&](std::span<const int32_t> w) { return rt->TokenNlls(w); };
    forms = rt->ResidentLinearForms();  // streamed blocks: none resident, not counted
  }
  std::vector<int32_t> ids;
  if (!a.tokens.empty()) {
    ASSIGN_OR_RETURN(ids, ReadTokenFile(a.tokens));
  } else {
    ASSIGN_OR_RETURN(ids, TokenizeFile(a.model, a.text, 0));
  }
  if (a.max_tokens > 0 && static_cast<int64_t>(ids.size()) > a.max_tokens) ids.resize(a.max_tokens);
  TerminalProgress progress(!a.quiet && StderrIsTerminal());
  ASSIGN_OR_RETURN(PerplexityResult r,
                   Perplexity(nlls, ids, a.ctx, a.stride > 0 ? a.stride : a.ctx, &progress));
  if (a.json) {
    nlohmann::ordered_json j = {{"model", a.model},
                                {"perplexity", r.perplexity},
                                {"mean_nll", r.mean_nll},
                                {"tokens", r.tokens_scored},
                                {"tokens_in_input", ids.size()},
                                {"windows", r.windows},
                                {"ctx", a.ctx},
                                {"stride", a.stride > 0 ? a.stride : a.ctx},
                                {"matmul", matmul},
                                {"seconds", r.seconds},
                                {"tokens_per_second", r.tokens_per_second}};
    if (forms.resident > 0) {  // how many projections ran packed
      j["linears"] = forms.resident;
      j["linears_native"] = forms.packed;
    }
    Print(DisplayJson(j));
  } else {
    const std::string how =
        matmul != "native"     ? ""
        : forms.resident > 0 ? fmt::format(", native products on {} of {} linear layers", forms.packed, forms.resident)
                             : ", native products";
    Print(fmt::format("perplexity {:.4f} over {} tokens ({} windows, ctx {}{}), {:.1f} s, {:.0f} tokens/s\n",
                      r.perplexity, r.tokens_scored, r.windows, a.ctx, how, r.seconds, r.tokens_per_second));
  }
  return absl::OkStatus();
}

}  // namespace compress
