// In-memory report records filled by passes and the pass manager (serialized by analyze/).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "core/model.h"
#include "core/weight_error.h"

namespace compress {

// Metrics of a tensor a pass produces lazily, measured by the producer's first run (the
// writer's conversion) so the input is read once: the pass hands the slot to its producer and
// to its TensorChange. The first Set wins (every run measures the same values).
class PendingMetrics {
 public:
  bool ready() const;
  void Set(std::map<std::string, double> metrics);
  std::map<std::string, double> Get() const;  // empty until Set

 private:
  mutable std::mutex mu_;
  std::optional<std::map<std::string, double>> value_;
};

// What a pass did to one tensor.
struct TensorChange {
  std::string name;
  Shape shape_before, shape_after;
  std::string dtype_before, dtype_after;
  int64_t bytes_before = 0, bytes_after = 0;
  std::string method;                     // e.g. "cast f32->bf16"
  std::map<std::string, double> metrics;  // e.g. max_abs_error, rel_fro_error
  // Metrics still to come from a lazy producer (merged into `metrics` by
  // ResolvePendingMetrics), and how to produce them when nothing read the tensor.
  std::shared_ptr<PendingMetrics> pending;
  std::function<absl::Status()> measure;
};

// Calibration of one expert of a mixture-of-experts block: the tokens the router sent it
// (summed over the calibration windows) and whether it fell back to data-free statistics.
struct ExpertCoverage {
  int block = 0, expert = 0;
  int64_t tokens = 0;
  bool data_free = false;
};

// Plots a pass asks for, as data; analyze/plot.h draws them (SVG) next to the report.
// Size against error, error on a log axis: the candidates' curve, the chosen point and a
// dashed line at the budget.
struct CurvePlot {
  std::string title, xlabel, ylabel;
  std::vector<std::pair<double, double>> points;
  std::pair<double, double> chosen;
  double budget_x = 0;  // drawn when inside the curve's x range
};
// Which sublayers (attention, FFN) of each block were removed, in removal order.
struct LayerMapPlot {
  struct Removal {
    int block = 0;
    bool attention = false, mlp = false;
  };
  std::string title;
  int blocks = 0;
  std::vector<Removal> removed;
};
using Plot = std::variant<CurvePlot, LayerMapPlot>;

struct PassReport {
  std::string name;
  std::string canonical;  // the pass with every option filled in
  std::string origin;     // "builtin" or a plugin path
  double seconds = 0;
  std::vector<TensorChange> tensors;
  std::map<std::string, double> stats;
  std::vector<std::string> notes;
  // What the user should know before shipping the output (said on stderr and in the report's
  // warnings, "pass N 'name': " before each; the pass manager moves them there).
  std::vector<std::string> warnings;
  std::vector<ExpertCoverage> experts;  // calibrated passes on MoE models
  // Plots for people (e.g. "layers.svg"), drawn next to the report as
  // <report stem>.<pass index>.<name>.
  std::map<std::string, Plot> plots;
  // Run by ResolvePendingMetrics once the writer made the pass's deferred results (after the
  // metrics are merged): stats known only then, e.g. the formats a production chose.
  std::vector<std::function<void(PassReport&)>> finish;
};

// A summary of a model at one point of the run (input, output).
struct ModelSummary {
  std::string path;
  std::string format;
  int64_t parameters = 0;
  int64_t bytes = 0;
  int64_t tensors = 0;
  std::map<std::string, int64_t> parameters_by_dtype;
  std::map<std::string, int64_t> bytes_by_dtype;
};
ModelSummary Summarize(const Model& m);

// Accuracy of the input and the written output, measured the same way in the same run.
struct AccuracyRecord {
  std::string metric = "perplexity";
  std::string dataset;  // text file
  int64_t tokens = 0;   // tokens scored
  int64_t tokens_in_file = 0;  // the whole file's tokens (--eval-tokens may take the first part)
  int64_t tokens_used = 0;     // the tokens evaluated (the first ones of the file)
  int64_t ctx = 0;
  double input = 0, output = 0;
};

struct RunReport {
  static constexpr int kSchemaVersion = 1;
  std::string pipeline;  // canonical pipeline text
  ModelSummary input, output;
  std::vector<PassReport> passes;
  double total_seconds = 0;
  // Where the wall time went, in run order: "load" (reading the input's header and index),
  // "eval" (--eval-text perplexities, both), "calibration" (loading the calibration data),
  // "passes", "write" (the output written, including the conversion of passes that run in the
  // writer, e.g. cast), "read_back" (the written output loaded again for the summary).
  std::vector<std::pair<std::string, double>> phase_seconds;
  bool dry_run = false;
  std::optional<AccuracyRecord> accuracy;
  std::string calibration;  // "FILE samples=N seqlen=N seed=N hash=..." or empty
  int processes = 1;        // MPI ranks that shared the calibration (core/distributed.h)
  std::string resumed;      // what a --resume run took from its journal ("" when nothing)
  std::vector<std::string> warnings;  // e.g. a pass that changed nothing
};

// Merges every TensorChange's pending metrics into its metrics, running `measure` for those
// whose tensor was never produced (e.g. a later pass removed it). Call after the writer.
absl::Status ResolvePendingMetrics(RunReport& report);

}  // namespace compress
