// Evaluating ONNX models in the interpreter: next-token NLLs of language-model graphs (for
// perplexity), generated or folder-read input sets, and output agreement between a model
// and a reference (or expected outputs): max / mean abs error, cosine, top-1 agreement.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "runtime/onnx/interpreter.h"

namespace compress {

// NLLs of ids[1..] given the prefix, from the graph's first output read as logits
// [1, T, V] or [T, V] (f64 log-softmax).
absl::StatusOr<std::vector<double>> OnnxTokenNlls(const onnxrt::Interpreter& interp, std::span<const int32_t> ids);

struct InputSpec {
  uint64_t seed = 0;
  std::map<std::string, int64_t> dims;  // symbolic dimension name -> size
  int64_t default_batch = 1, default_dim = 16;
  int64_t int_high = 256;  // integers drawn from [0, int_high)
};
// Seeded inputs for every graph input: integers uniform in [0, int_high), floats N(0, 1),
// bools fair coins; symbolic dims from `dims`, else 1 for axis 0 and 16 elsewhere.
absl::StatusOr<std::map<std::string, onnxrt::Value>> GenerateInputs(const onnxrt::Interpreter& interp,
                                                                     const InputSpec& spec);

struct OutputAgreement {
  std::string name;
  int64_t elements = 0;
  double max_abs = 0, mean_abs = 0, max_ref = 0, cosine = 1;
  int64_t rows = 0, top1_same = 0;  // argmax over the last axis, per row (float outputs)
  double max_rel() const { return max_ref > 0 ? max_abs / max_ref : max_abs; }
  double top1() const { return rows ? static_cast<double>(top1_same) / rows : 1.0; }
};

// Accumulates the agreement of `got` with `want`, output by output (same names, types and shapes).
class AgreementMeter {
 public:
  absl::Status Add(const std::map<std::string, onnxrt::Value>& got, const std::map<std::string, onnxrt::Value>& want);
  std::vector<OutputAgreement> Results() const;

 private:
  struct Acc {
    OutputAgreement a;
    double dot = 0, ng = 0, nw = 0, sum_abs = 0;
  };
  std::map<std::string, Acc> acc_;
  std::vector<std::string> order_;
};

}  // namespace compress
