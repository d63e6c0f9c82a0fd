// JSON and Markdown renderings of a run report.
#include "analyze/report_writer.h"

#include "analyze/plot.h"

#include <algorithm>

#include "core/version.h"
#include "fmt/format.h"

namespace compress {
namespace {

nlohmann::ordered_json SummaryJson(const ModelSummary& s) {
  nlohmann::ordered_json j;
  j["path"] = s.path;
  j["format"] = s.format;
  j["tensors"] = s.tensors;
  j["parameters"] = s.parameters;
  j["bytes"] = s.bytes;
  j["bits_per_parameter"] = s.parameters ? 8.0 * s.bytes / s.parameters : 0.0;
  j["parameters_by_dtype"] = s.parameters_by_dtype;
  j["bytes_by_dtype"] = s.bytes_by_dtype;
  return j;
}

}  // namespace

std::string HumanBytes(int64_t b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(b);
  int u = 0;
  while (v >= 1024 && u < 4) {
    v /= 1024;
    ++u;
  }
  return u == 0 ? fmt::format("{} B", b) : fmt::format("{:.2f} {}", v, units[u]);
}

nlohmann::ordered_json ReportToJson(const RunReport& r) {
  nlohmann::ordered_json j;
  j["schema_version"] = RunReport::kSchemaVersion;
  j["tool"] = {{"name", "compress"}, {"version", COMPRESS_VERSION}};
  j["pipeline"] = r.pipeline;
  j["dry_run"] = r.dry_run;
  j["input"] = SummaryJson(r.input);
  if (!r.dry_run) j["output"] = SummaryJson(r.output);
  if (r.accuracy) {
    const AccuracyRecord& a = *r.accuracy;
    j["accuracy"] = {{"metric", a.metric},
                     {"dataset", a.dataset},
                     {"tokens", a.tokens},
                     {"tokens_used", a.tokens_used},
                     {"tokens_in_file", a.tokens_in_file},
                     {"ctx", a.ctx},
                     {"input", a.input},
                     {"output", a.output},
                     {"change_percent", a.input > 0 ? 100.0 * (a.output - a.input) / a.input : 0.0}};
  }
  if (!r.calibration.empty()) j["calibration"] = r.calibration;
  if (r.processes > 1) j["processes"] = r.processes;
  if (!r.resumed.empty()) j["resumed"] = r.resumed;
  if (!r.warnings.empty()) j["warnings"] = r.warnings;
  j["total_seconds"] = r.total_seconds;
  if (!r.phase_seconds.empty()) {
    nlohmann::ordered_json ph = nlohmann::ordered_json::object();
    for (const auto& [phase, s] : r.phase_seconds) ph[phase] = s;
    j["phase_seconds"] = std::move(ph);
  }
  auto passes = nlohmann::ordered_json::array();
  for (const auto& p : r.passes) {
    nlohmann::ordered_json pj;
    pj["name"] = p.name;
    pj["pipeline"] = p.canonical;
    pj["origin"] = p.origin;
    pj["seconds"] = p.seconds;
    pj["stats"] = p.stats;
    pj["notes"] = p.notes;
    if (!p.experts.empty()) {
      auto ex = nlohmann::ordered_json::array();
      for (const auto& e : p.experts)
        ex.push_back({{"block", e.block}, {"expert", e.expert}, {"tokens", e.tokens}, {"data_free", e.data_free}});
      pj["experts"] = std::move(ex);
    }
    if (!p.plots.empty()) {
      auto names = nlohmann::ordered_json::array();
      for (const auto& [name, _] : p.plots) names.push_back(name);
      pj["artifacts"] = std::move(names);
    }
    auto tensors = nlohmann::ordered_json::array();
    for (const auto& t : p.tensors) {
      nlohmann::ordered_json tj;
      tj["name"] = t.name;
      tj["method"] = t.method;
      tj["shape_before"] = t.shape_before;
      tj["shape_after"] = t.shape_after;
      tj["dtype_before"] = t.dtype_before;
      tj["dtype_after"] = t.dtype_after;
      tj["bytes_before"] = t.bytes_before;
      tj["bytes_after"] = t.bytes_after;
      tj["metrics"] = t.metrics;
      tensors.push_back(std::move(tj));
    }
    pj["tensors"] = std::move(tensors);
    passes.push_back(std::move(pj));
  }
  j["passes"] = std::move(passes);
  return j;
}

std::vector<std::pair<std::string, std::string>> ArtifactFiles(const RunReport& r, const std::string& report_path) {
  std::string stem = report_path;
  if (auto dot = stem.rfind('.'); dot != std::string::npos && stem.find('/', dot) == std::string::npos) {
    stem.resize(dot);
  }
  std::vector<std::pair<std::string, std::string>> out;
  for (size_t i = 0; i < r.passes.size(); ++i) {
    for (const auto& [name, plot] : r.passes[i].plots) {
      out.push_back({fmt::format("{}.{}.{}", stem, i + 1, name), PlotSvg(plot)});
    }
  }
  return out;
}

std::string ReportToMarkdown(const RunReport& r, const std::string& report_path) {
  std::string out = "# compress report\n\n";
  out += fmt::format("Pipeline: `{}`\n\n", r.pipeline);
  if (!r.calibration.empty()) {
    out += fmt::format("Calibration: `{}`{}\n\n", r.calibration,
                       r.processes > 1 ? fmt::format(", windows spread over {} MPI processes", r.processes) : "");
  }
  if (!r.resumed.empty()) out += fmt::format("Resumed (--resume): {}\n\n", r.resumed);
  out += "| | input | output |\n|---|---|---|\n";
  auto row = [&](const char* label, auto in, auto outv) {
    out += fmt::format("| {} | {} | {} |\n", label, in, r.dry_run ? std::string("(dry run)") : outv);
  };
  row("parameters", fmt::format("{}", r.input.parameters), fmt::format("{}", r.output.parameters));
  row("size", HumanBytes(r.input.bytes), HumanBytes(r.output.bytes));
  auto bpp = [](const ModelSummary& s) {
    return fmt::format("{:.2f}", s.parameters ? 8.0 * s.bytes / s.parameters : 0.0);
  };
  row("bits/parameter", bpp(r.input), bpp(r.output));
  if (r.accuracy) {
    const AccuracyRecord& a = *r.accuracy;
    const std::string scope =
        a.tokens_in_file > a.tokens_used
            ? fmt::format("{} tokens scored in the first {} of {} tokens of {}", a.tokens, a.tokens_used,
                          a.tokens_in_file, a.dataset)
            : fmt::format("{} tokens scored in {}", a.tokens, a.dataset);
    out += fmt::format("| {} ({}, ctx {}) | {:.4f} | {:.4f} ({:+.2f}%) |\n", a.metric, scope, a.ctx, a.input,
                       a.output, a.input > 0 ? 100.0 * (a.output - a.input) / a.input : 0.0);
  }
  out += "\n| pass | tensors changed | bytes before | bytes after | worst rel. error | seconds |\n";
  out += "|---|---|---|---|---|---|\n";
  for (const auto& p : r.passes) {
    int64_t before = 0, after = 0;
    double worst = 0;
    std::string worst_name = "-";
    for (const auto& t : p.tensors) {
      before += t.bytes_before;
      after += t.bytes_after;
      auto it = t.metrics.find("rel_fro_error");
      if (it != t.metrics.end() && it->second >= worst) {
        worst = it->second;
        worst_name = t.name;
      }
    }
    out += fmt::format("| {} | {} | {} | {} | {} | {:.3f} |\n", p.name, p.tensors.size(), HumanBytes(before),
                       HumanBytes(after),
                       p.tensors.empty() ? std::string("-") : fmt::format("{:.3g} ({})", worst, worst_name),
                       p.seconds);
  }
  if (!r.phase_seconds.empty()) {
    std::string parts;
    for (const auto& [phase, s] : r.phase_seconds)
      parts += fmt::format("{}{} {:.2f}", parts.empty() ? "" : ", ", phase == "read_back" ? "read back" : phase, s);
    out += fmt::format("\nTime: {:.2f} s ({})\n", r.total_seconds, parts);
  }
  for (size_t i = 0; i < r.passes.size(); ++i) {
    const auto& ex = r.passes[i].experts;
    if (ex.empty()) continue;
    std::vector<int64_t> tokens;
    int64_t fallback = 0;
    for (const auto& e : ex) {
      tokens.push_back(e.tokens);
      fallback += e.data_free;
    }
    std::sort(tokens.begin(), tokens.end());
    out += fmt::format(
        "\nExperts ({} {}): {} expert calibrations, tokens per expert min {} / median {} / max {}, {} with "
        "data-free fallback\n",
        r.passes[i].name, i + 1, ex.size(), tokens.front(), tokens[tokens.size() / 2], tokens.back(), fallback);
  }
  std::string notes;
  for (size_t i = 0; i < r.passes.size(); ++i) {
    for (const auto& n : r.passes[i].notes) notes += fmt::format("- {} ({}): {}\n", r.passes[i].name, i + 1, n);
  }
  for (const auto& w : r.warnings) notes += fmt::format("- warning: {}\n", w);
  if (!notes.empty()) out += "\nNotes:\n\n" + notes;
  if (!report_path.empty()) {
    std::string plots;
    for (const auto& [path, content] : ArtifactFiles(r, report_path)) {
      const std::string name = path.substr(path.find_last_of('/') + 1);
      plots += fmt::format("- [{}]({})\n", name, name);
    }
    if (!plots.empty()) out += "\nPlots:\n\n" + plots;
  }
  return out;
}

}  // namespace compress
