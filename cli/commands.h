// The compress subcommands; each returns a Status that main() maps to an exit code.
#pragma once

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "nlohmann/json.hpp"

namespace compress {

// JSON the CLI prints or writes as a report, indented, with a newline. Names from ONNX / GGUF
// files are bytes, not always UTF-8: what is not becomes U+FFFD rather than failing the run.
// (A template: nlohmann::ordered_json keeps its key order.)
template <typename Json>
std::string DisplayJson(const Json& j) {
  return j.dump(2, ' ', false, Json::error_handler_t::replace) + "\n";
}

struct InspectArgs {
  std::string model;
  bool json = false;
};
absl::Status InspectCommand(const InspectArgs& a);

struct RunArgs {
  std::vector<std::string> plugins;  // --plugin, before COMPRESS_PLUGIN_PATH
  std::string model, pipeline, recipe, out, report, report_md, max_shard_size, external_data = "auto";
  std::string sparse_storage = "dense";  // or "N:M"
  std::vector<std::string> print_after;
  bool dry_run = false, quiet = false;
  bool force = false;  // replace an existing output (a checkpoint folder or a file)
  std::string stats;    // --stats FILE: calibration statistics saved / reused (calibrate/stats_file.h)
  bool resume = false;  // continue an interrupted run from its journal (core/resume_journal.h)
  int threads = 0;
  std::string calibration;                                 // calibration text or token file
  int64_t calib_samples = 0, calib_seqlen = 0, seed = -1;  // 0 / -1: recipe value or default
  std::string calib_precision;                              // "f32" / "bf16"; empty: recipe value or f32
  int64_t min_expert_tokens = -1;                          // -1: recipe value or default (64)
  std::string eval_text;        // measure perplexity of input and output on this text
  int64_t eval_tokens = 16384;  // first N tokens of it
  int64_t eval_ctx = 512;
};
absl::Status RunCommand(const RunArgs& a);

struct PassesArgs {
  std::vector<std::string> plugins;
  std::string name;
  bool json = false;
};
absl::Status PassesCommand(const PassesArgs& a);

struct EvalArgs {
  std::string model, text, tokens;
  int64_t ctx = 512, stride = 0, max_tokens = 0;
  bool json = false, quiet = false;
  int threads = 0;
  // LLM runtime: "f32" (reference numerics), "native" (runtime/native_matmul.h), "bf16" (native with
  // dense f32 / f16 weights rounded to bf16), or "auto" (native when the CPU has AVX-512 VNNI /
  // BF16 and some linear weight has a packed form, else f32).
  std::string matmul = "auto";
  // ONNX models: output agreement with a reference model and/or expected outputs.
  std::string reference;            // a second .onnx run on the same inputs
  std::string inputs;               // folder of input_N.pb (+ output_N.pb) sets, or one set
  int64_t samples = 4;              // generated input sets when no --inputs
  uint64_t seed = 0;
  std::vector<std::string> dims;    // NAME=SIZE for symbolic input dimensions
  int64_t int_high = 256;           // generated integers lie in [0, int_high)
  double tolerance = -1;            // fail (exit 4) when an output's max relative error exceeds it
};
absl::Status EvalCommand(const EvalArgs& a);
// The ONNX part of `eval` (cli/eval_onnx.cc).
absl::Status EvalOnnx(const EvalArgs& a);

struct ImatrixArgs {
  std::string model, calibration, out;
  int64_t samples = 128, seqlen = 512, min_expert_tokens = 64;
  uint64_t seed = 0;
  std::string precision = "f32";  // CalibrationOptions::Precision by name
  bool force = false, quiet = false;
  int threads = 0;
};
// llama.cpp's importance matrix (GGUF form) from calibration statistics (cli/imatrix.cc).
absl::Status ImatrixCommand(const ImatrixArgs& a);

// Exit codes: 0 ok, 1 usage, 2 bad input, 3 internal error, 4 outputs differ beyond --tolerance.
int ExitCodeFor(const absl::Status& s);

}  // namespace compress
