// Pipeline text (`name{key=value,...},name2`) and YAML recipes, resolved against the registry.
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/pass.h"

namespace compress {

struct SourcePos {
  std::string source = "pipeline";  // "pipeline" or the recipe file name
  int line = 1, col = 1;            // 1-based
  std::string str() const { return fmt::format("{}:{}:{}", source, line, col); }
};

struct RawOption {
  std::string key, value;
  SourcePos key_pos, value_pos;
};

struct RawPass {
  std::string name;
  SourcePos pos;
  std::vector<RawOption> options;
};

// Splits pipeline text into passes and raw key/value pairs. Errors carry line:column.
absl::StatusOr<std::vector<RawPass>> ParsePipelineText(std::string_view text,
                                                       const std::string& source = "pipeline");

// A YAML recipe:
//   pipeline:
//     - cast: {dtype: bf16}
//     - quantize-int8            # a pass with default options
//   calibration:                 # optional; the same settings as run's --calibration flags
//     file: data.txt             # relative to the recipe's folder
//     samples: 128
//     seqlen: 512
//     seed: 0
//     precision: f32             # or bf16 (run's --calib-precision)
// `pipeline` may also be a pipeline string. Unknown keys are errors.
struct Recipe {
  std::vector<RawPass> pipeline;
  std::map<std::string, std::string> calibration;  // file, samples, seqlen, seed, min_expert_tokens, precision
};
absl::StatusOr<Recipe> ParseRecipe(const std::string& text, const std::string& source);
absl::StatusOr<std::vector<RawPass>> ParseRecipeYaml(const std::string& text, const std::string& source);

struct PipelineStep {
  const PassInfo* info = nullptr;
  OptionValues values;
  std::string canonical;  // `name{k=v,...}` with every option, in declaration order
};

// Checks pass names, option keys and values; fills defaults. Relative paths of options naming
// input files (OptionSpec::input_file) are taken relative to `base_dir` (a recipe's folder; ""
// = the working folder, for pipeline text) and stored resolved.
absl::StatusOr<std::vector<PipelineStep>> ResolvePipeline(const PassRegistry& registry,
                                                          const std::vector<RawPass>& raw,
                                                          const std::string& base_dir = "");
std::string CanonicalPipeline(const std::vector<PipelineStep>& steps);

}  // namespace compress
