// Windowed perplexity evaluation.
#include "analyze/perplexity.h"

#include <chrono>
#include <cmath>

#include "core/status.h"

namespace compress {

absl::StatusOr<PerplexityResult> Perplexity(const LlamaRuntime& rt, std::span<const int32_t> tokens,
                                            int64_t ctx, int64_t stride, ProgressSink* progress) {
  return Perplexity([&rt](std::span<const int32_t> w) { return rt.TokenNlls(w); }, tokens, ctx, stride, progress);
}

absl::StatusOr<PerplexityResult> Perplexity(const TokenNllFn& nlls, std::span<const int32_t> tokens, int64_t ctx,
                                            int64_t stride, ProgressSink* progress) {
  if (ctx < 2) return InvalidArgument("--ctx must be at least 2, got {}", ctx);
  if (stride < 1 || stride > ctx)
    return InvalidArgument("--stride must be in [1, ctx={}], got {}", ctx, stride);
  const int64_t n = static_cast<int64_t>(tokens.size());
  if (n < 2) return InvalidArgument("need at least 2 tokens to evaluate, got {}", n);
  auto start = std::chrono::steady_clock::now();
  PerplexityResult r;
  double total = 0;
  int64_t processed = 0;
  int64_t scored_until = 1;  // tokens before this index are already scored (token 0 never is)
  const int64_t windows_total = n <= ctx ? 1 : 1 + (n - ctx + stride - 1) / stride;
  for (int64_t begin = 0; begin < n - 1; begin += stride) {
    const int64_t end = std::min(begin + ctx, n);
    if (end - begin < 2) break;
    ASSIGN_OR_RETURN(std::vector<double> nll, nlls(tokens.subspan(begin, end - begin)));
    // nll[i] scores token begin + i + 1.
    for (int64_t t = std::max(scored_until, begin + 1); t < end; ++t) {
      const double v = nll[t - begin - 1];
      if (!std::isfinite(v)) {
        return DataLoss(
            "the model gives a non-finite loss ({}) at token {} (window from token {}): its weights or config "
            "values produce NaN/Inf logits",
            v, t, begin);
      }
      total += v;
      ++r.tokens_scored;
    }
    scored_until = end;
    processed += end - begin;
    ++r.windows;
    if (progress) progress->Update("eval", r.windows, windows_total);
    if (end == n) break;
  }
  if (progress) progress->Done();
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  r.mean_nll = total / static_cast<double>(r.tokens_scored);
  r.perplexity = std::exp(r.mean_nll);
  r.tokens_per_second = r.seconds > 0 ? processed / r.seconds : 0;
  return r;
}

}  // namespace compress
