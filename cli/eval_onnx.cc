// `compress eval MODEL.onnx` without text: runs the model in the ONNX interpreter on input
// sets (read from ONNX test-data folders or generated from a seed) and reports how its
// outputs agree with a reference model's and/or the sets' expected outputs.
#include <chrono>
#include <filesystem>

#include "absl/strings/numbers.h"
#include "analyze/onnx_eval.h"
#include "calibrate/onnx_calibration.h"
#include "cli/commands.h"
#include "cli/progress.h"
#include "core/status.h"
#include "formats/model_io.h"
#include "nlohmann/json.hpp"

namespace compress {
namespace fs = std::filesystem;
using onnxrt::Value;

namespace {

struct InputSet {
  std::string label;
  std::map<std::string, Value> feeds;
  std::map<std::string, Value> expected;  // output_N.pb when the folder has them
};

absl::StatusOr<std::vector<InputSet>> ReadSets(const onnxrt::Interpreter& interp, const std::string& root) {
  ASSIGN_OR_RETURN(std::vector<std::string> folders, TensorSetFolders(root));
  std::vector<InputSet> sets;
  for (const auto& f : folders) {
    InputSet s;
    s.label = f;
    ASSIGN_OR_RETURN(s.feeds, ReadInputSet(interp, f));
    for (size_t i = 0; i < interp.outputs().size(); ++i) {
      const fs::path p = fs::path(f) / fmt::format("output_{}.pb", i);
      if (!fs::exists(p)) break;
      ASSIGN_OR_RETURN(s.expected[interp.outputs()[i].name], onnxrt::ReadTensorFile(p.string()));
    }
    sets.push_back(std::move(s));
  }
  return sets;
}

nlohmann::ordered_json AgreementJson(const std::vector<OutputAgreement>& rs) {
  nlohmann::ordered_json arr = nlohmann::ordered_json::array();
  for (const auto& r : rs) {
    nlohmann::ordered_json j = {{"output", r.name},     {"elements", r.elements}, {"max_abs", r.max_abs},
                                {"mean_abs", r.mean_abs}, {"max_rel", r.max_rel()}, {"cosine", r.cosine}};
    if (r.rows) j["top1_agreement"] = r.top1();
    arr.push_back(j);
  }
  return arr;
}

std::string AgreementText(const std::string& against, const std::vector<OutputAgreement>& rs) {
  std::string s;
  for (const auto& r : rs) {
    s += fmt::format("  vs {}: output '{}': max abs {:.3g}, mean abs {:.3g}, max rel {:.3g}, cosine {:.6f}", against,
                     r.name, r.max_abs, r.mean_abs, r.max_rel(), r.cosine);
    if (r.rows) s += fmt::format(", top-1 agreement {:.4f} ({} rows)", r.top1(), r.rows);
    s += "\n";
  }
  return s;
}

}  // namespace

absl::Status EvalOnnx(const EvalArgs& a) {
  ASSIGN_OR_RETURN(Model model, LoadModel(a.model));
  ASSIGN_OR_RETURN(auto interp, onnxrt::Interpreter::Create(model));
  std::unique_ptr<onnxrt::Interpreter> ref;
  if (!a.reference.empty()) {
    ASSIGN_OR_RETURN(Model ref_model, LoadModel(a.reference));
    auto r = onnxrt::Interpreter::Create(ref_model);
    if (!r.ok()) return Annotate(r.status(), "reference " + a.reference);
    ref = std::move(*r);
  }
  std::vector<InputSet> sets;
  if (!a.inputs.empty()) {
    ASSIGN_OR_RETURN(sets, ReadSets(*interp, a.inputs));
  } else {
    InputSpec spec;
    spec.int_high = a.int_high;
    for (const auto& d : a.dims) {
      const auto eq = d.find('=');
      int64_t v = 0;
      if (eq == std::string::npos || !absl::SimpleAtoi(d.substr(eq + 1), &v) || v < 1) {
        return InvalidArgument("--dim '{}': expected NAME=SIZE with SIZE >= 1", d);
      }
      spec.dims[d.substr(0, eq)] = v;
    }
    for (int64_t i = 0; i < a.samples; ++i) {
      spec.seed = a.seed + static_cast<uint64_t>(i);
      InputSet s;
      s.label = fmt::format("generated set {} (seed {})", i, spec.seed);
      ASSIGN_OR_RETURN(s.feeds, GenerateInputs(*interp, spec));
      sets.push_back(std::move(s));
    }
  }
  TerminalProgress progress(!a.quiet && StderrIsTerminal());
  AgreementMeter vs_ref, vs_expected;
  bool any_expected = false;
  double seconds = 0;
  for (size_t i = 0; i < sets.size(); ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    auto out = interp->Run(sets[i].feeds);
    seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (!out.ok()) return Annotate(out.status(), sets[i].label);
    if (ref) {
      auto want = ref->Run(sets[i].feeds);
      if (!want.ok()) return Annotate(want.status(), "reference on " + sets[i].label);
      RETURN_IF_ERROR(vs_ref.Add(*out, *want));
    }
    if (!sets[i].expected.empty()) {
      any_expected = true;
      auto s = vs_expected.Add(*out, sets[i].expected);
      if (!s.ok()) return Annotate(s, sets[i].label);
    }
    progress.Update("eval", static_cast<int64_t>(i + 1), static_cast<int64_t>(sets.size()));
  }
  progress.Done();
  const auto ref_rs = vs_ref.Results(), exp_rs = vs_expected.Results();
  double worst = 0;
  for (const auto* rs : {&ref_rs, &exp_rs})
    for (const auto& r : *rs) worst = std::max(worst, r.max_rel());
  const bool pass = a.tolerance < 0 || worst <= a.tolerance;
  if (a.json) {
    nlohmann::ordered_json j = {{"model", a.model},
                                {"samples", sets.size()},
                                {"inputs", a.inputs.empty() ? "generated" : a.inputs},
                                {"seconds", seconds}};
    if (ref) {
      j["reference"] = a.reference;
      j["vs_reference"] = AgreementJson(ref_rs);
    }
    if (any_expected) j["vs_expected"] = AgreementJson(exp_rs);
    if (a.tolerance >= 0) {
      j["tolerance"] = a.tolerance;
      j["pass"] = pass;
    }
    std::fputs(DisplayJson(j).c_str(), stdout);
  } else {
    std::string s = fmt::format("{}: {} input set{} ({}), {:.3f} s in the interpreter\n", a.model, sets.size(),
                                sets.size() == 1 ? "" : "s", a.inputs.empty() ? "generated" : a.inputs, seconds);
    if (ref) s += AgreementText(a.reference, ref_rs);
    if (any_expected) s += AgreementText("expected outputs", exp_rs);
    if (!ref && !any_expected) {
      for (const auto& o : interp->outputs()) s += fmt::format("  output '{}' computed\n", o.name);
    }
    std::fputs(s.c_str(), stdout);
  }
  if (!pass) {
    return absl::OutOfRangeError(
        fmt::format("outputs differ by max relative error {:.3g}, above --tolerance {:.3g}", worst, a.tolerance));
  }
  return absl::OkStatus();
}

}  // namespace compress
