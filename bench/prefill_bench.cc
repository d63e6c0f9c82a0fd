// Prefill throughput of the LLM runtime against the GEMM floor, and the peak RSS of the
// block-by-block calibration driver, on a given checkpoint or a generated ~1.1B-parameter
// Llama (TinyLlama-1.1B's shapes: hidden 2048, 22 layers, 32 heads / 4 KV heads, FFN 5632,
// vocab 32000; random bf16 weights, N(0, 0.02)).
//
//   prefill_bench DIR [--ctx 512] [--reps 3]     prefill tokens/s (generates DIR if empty)
//   prefill_bench DIR --calibrate N [--ctx 512]  calibration of N x ctx tokens: time, peak RSS
//
// FLOPs of a prefill of T tokens: 2 T P (P = parameters of all linear layers, lm_head
// included) + 2 T^2 d_head n_heads per layer (causal QK^T and AV). The floor divides them by
// the f32 GEMM rate measured in the same run on a [T x hidden] x [hidden x ffn] product.
#include <fmt/format.h>

#include <filesystem>
#include <fstream>
#include <random>

#include "Eigen/Core"
#include "absl/strings/numbers.h"
#include "bench/bench_util.h"
#include "bench/generated_llama.h"
#include "calibrate/calibration.h"
#include "core/dtype.h"
#include "core/parallel_gemm.h"
#include "formats/model_io.h"
#include "runtime/llama.h"

namespace fs = std::filesystem;
using compress::bench::Clock;
using compress::bench::Seconds;

namespace {

std::vector<int32_t> Tokens(int64_t n, int64_t vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int32_t> ids(n);
  for (auto& t : ids) t = static_cast<int32_t>(rng() % vocab);
  return ids;
}

}  // namespace

int main(int argc, char** argv) {
  const auto usage = [] {
    fmt::print(stderr, "usage: prefill_bench DIR [--ctx 512] [--reps 3] [--calibrate N]\n");
    return 1;
  };
  if (argc < 2 || argv[1][0] == '-' || argc % 2 != 0) return usage();
  const std::string dir = argv[1];
  int64_t ctx = 512, reps = 3, calibrate = 0;
  for (int i = 2; i + 1 < argc; i += 2) {
    const std::string k = argv[i];
    int64_t v = 0;
    if (!absl::SimpleAtoi(argv[i + 1], &v) || v < 1) return usage();
    if (k == "--ctx") ctx = v;
    else if (k == "--reps") reps = v;
    else if (k == "--calibrate") calibrate = v;
    else return usage();
  }
  if (!fs::exists(fs::path(dir) / "config.json")) {
    fmt::print("generating a ~1.1B-parameter Llama in {} ...\n", dir);
    auto t = Clock::now();
    if (auto s = compress::bench::GenerateLlama(dir, compress::bench::kLlama1B); !s.ok()) {
      fmt::print(stderr, "generate: {}\n", s.message());
      return 1;
    }
    fmt::print("generated in {:.1f} s\n", Seconds(t));
  }
  auto model = compress::LoadModel(dir);
  if (!model.ok()) {
    fmt::print(stderr, "{}\n", model.status().message());
    return 1;
  }
  int64_t file_bytes = 0;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().extension() == ".safetensors") file_bytes += fs::file_size(e.path());
  const auto& cfg = model->config;
  const int64_t hidden = cfg["hidden_size"], ffn = cfg["intermediate_size"], layers = cfg["num_hidden_layers"],
                heads = cfg["num_attention_heads"], vocab = cfg["vocab_size"];
  const int64_t hd = cfg.value("head_dim", hidden / heads);
  int64_t linear_params = 0;
  for (const auto* l : model->arch.AllLinears()) linear_params += model->tensors.at(l->weight).numel();
  if (!model->arch.lm_head.empty()) linear_params += model->tensors.at(model->arch.lm_head).numel();
  else linear_params += vocab * hidden;
  fmt::print("model {}: {:.3f} B parameters ({:.3f} B in linear layers + lm_head), {:.2f} GiB of weights\n", dir,
             model->ParameterCount() / 1e9, linear_params / 1e9, file_bytes / 1073741824.0);

  if (calibrate > 0) {
    compress::CalibrationData data;
    data.options.samples = calibrate;
    data.options.seqlen = ctx;
    for (int64_t s = 0; s < calibrate; ++s) data.windows.push_back(Tokens(ctx, vocab, 100 + s));
    const double rss0 = compress::bench::PeakRssMiB();
    auto t = Clock::now();
    int64_t layers_seen = 0;
    auto st = compress::RunCalibration(*model, data, {true, true},
                                       [&](int, const std::map<std::string, compress::LinearStats>& s) {
                                         layers_seen += static_cast<int64_t>(s.size());
                                         return absl::OkStatus();
                                       });
    if (!st.ok()) {
      fmt::print(stderr, "calibration: {}\n", st.message());
      return 1;
    }
    const double secs = Seconds(t), peak = compress::bench::PeakRssMiB();
    fmt::print("calibration {} x {} tokens (X^T X for {} layers): {:.1f} s, {:.0f} tokens/s\n", calibrate, ctx,
               layers_seen, secs, calibrate * ctx / secs);
    fmt::print("peak RSS {:.0f} MiB (before: {:.0f} MiB); weights file {:.0f} MiB; peak - weights = {:.0f} MiB "
               "(target <= 2048)\n",
               peak, rss0, file_bytes / 1048576.0, peak - file_bytes / 1048576.0);
    return 0;
  }

  // GEMM floor: f32 [ctx x hidden] x [hidden x ffn], best of 3, with the same threaded
  // product the runtime uses (core/parallel_gemm.h; Eigen's own threading is off).
  using RowF = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  RowF a = RowF::Random(ctx, hidden), b = RowF::Random(ffn, hidden), c(ctx, ffn);  // b: an [out, in] weight
  double best_gemm = 1e30;
  for (int i = 0; i < 3; ++i) {
    auto t = Clock::now();
    c = compress::MulABt(a, b);
    best_gemm = std::min(best_gemm, Seconds(t));
  }
  const double gflops = 2.0 * ctx * hidden * ffn / best_gemm / 1e9;
  auto t = Clock::now();
  auto rt = compress::LlamaRuntime::Create(*model);
  if (!rt.ok()) {
    fmt::print(stderr, "{}\n", rt.status().message());
    return 1;
  }
  fmt::print("runtime created in {:.1f} s (weights decoded to f32), peak RSS {:.0f} MiB\n", Seconds(t),
             compress::bench::PeakRssMiB());
  const auto ids = Tokens(ctx, vocab, 7);
  double best = 1e30;
  for (int64_t r = 0; r < reps; ++r) {
    auto t0 = Clock::now();
    auto logits = (*rt)->Forward(ids);
    if (!logits.ok()) return 1;
    best = std::min(best, Seconds(t0));
  }
  const double flops = 2.0 * ctx * linear_params + 2.0 * layers * ctx * ctx * hd * heads;
  const double floor_s = flops / (gflops * 1e9);
  fmt::print("f32 GEMM [{} x {}] x [{} x {}]: {:.1f} GFLOP/s (c[0]={:.2f})\n", ctx, hidden, hidden, ffn, gflops,
             c(0, 0));
  fmt::print("prefill of {} tokens: best of {} {:.3f} s = {:.0f} tokens/s, {:.1f} GFLOP/s; floor {:.3f} s = {:.0f} "
             "tokens/s; {:.0f}% of the floor (target >= 50%)\n",
             ctx, reps, best, ctx / best, flops / best / 1e9, floor_s, ctx / floor_s, 100 * floor_s / best);
  return 0;
}
