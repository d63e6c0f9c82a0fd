// Perplexity of a token stream under the LLM runtime: windows of `ctx` tokens every `stride`
// tokens; each token is scored once, with as much left context as its window gives.
//   ppl = exp( sum_t -log p(x_t | window context) / scored tokens )
// stride == ctx gives non-overlapping windows (every window scores ctx-1 tokens); a last
// window shorter than 2 tokens is dropped.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "core/pass.h"
#include "runtime/llama.h"

namespace compress {

struct PerplexityResult {
  double perplexity = 0;
  double mean_nll = 0;
  int64_t tokens_scored = 0;
  int64_t windows = 0;
  double seconds = 0;
  double tokens_per_second = 0;  // tokens run through the model per second
};

// -log p(ids[t+1] | ids[..t]) for t = 0..T-2 of one window, from any model.
using TokenNllFn = std::function<absl::StatusOr<std::vector<double>>(std::span<const int32_t>)>;

absl::StatusOr<PerplexityResult> Perplexity(const TokenNllFn& nlls, std::span<const int32_t> tokens, int64_t ctx,
                                            int64_t stride, ProgressSink* progress = nullptr);
absl::StatusOr<PerplexityResult> Perplexity(const LlamaRuntime& rt, std::span<const int32_t> tokens,
                                            int64_t ctx, int64_t stride, ProgressSink* progress = nullptr);

}  // namespace compress
