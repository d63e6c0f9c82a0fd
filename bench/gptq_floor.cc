// Benchmark: the GEMM floor of a GPTQ run (issue #22 item 3), from the model's shapes and the
// rates of the very routines calibration uses, measured in this process:
//   - f32 products (core/parallel_gemm.h MulABt, the runtime's linear layers): a window of
//     `seqlen` tokens times the model's FFN up projection;
//   - f64 X^T X (calibrate/calibration.h AccumulateStats, the lower triangle by bands).
// FLOPs of sequential GPTQ over samples x seqlen tokens T, per block: the block's forward twice
// (statistics on the input weights, then the quantized block to feed the next one): 2 x (2 T
// P_block + 2 T seqlen d_head heads) (causal attention: half of the 2 x 2 T seqlen d_head heads
// products); X^T X once per distinct layer input, T n^2 multiply-adds = 2 T n^2 / 2 FLOPs as
// the lower triangle is summed (q/k/v share one input, gate/up another); the solves: per
// weight [rows, cols] the inverse-Hessian factor (about cols^3 / 3 x 2) and the column updates
// (2 rows cols^2 / 2). Prints the floor in seconds: f32 FLOPs / f32 rate + f64 FLOPs / f64 rate.
// With `bf16` (run --calib-precision bf16): the linear layers of the first forward at the rate
// of the runtime's bf16 product (PackedWeight from bf16, VDPBF16PS), those of the second
// (quantized weights) at its int8 product's rate (VPDPBUSD), X^T X at AccumulateStats' rate
// with f32 products; attention at the f32 rate, the solves at the f64 rate.
//
// usage: gptq_floor MODEL_DIR SAMPLES SEQLEN [bf16]   (bench/README.md "gptq_floor")
#include <omp.h>

#include <chrono>
#include <cstdio>
#include <optional>
#include <random>
#include <string>

#include "calibrate/calibration.h"
#include "core/parallel_gemm.h"
#include "core/process_settings.h"
#include "fmt/core.h"
#include "formats/model_io.h"
#include "runtime/native_matmul.h"

namespace {

double Seconds(const std::chrono::steady_clock::time_point& t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

int main(int argc, char** argv) {
  using namespace compress;
  if (argc != 4 && !(argc == 5 && std::string(argv[4]) == "bf16")) {
    std::fprintf(stderr, "usage: gptq_floor MODEL_DIR SAMPLES SEQLEN [bf16]\n");
    return 2;
  }
  const bool bf16 = argc == 5;
  // compress's process settings (huge pages above all): without them this VM's page faults
  // cut the measured f64 rate to a quarter, and the floor would flatter the run.
  UseProcessSettings(argv);
  auto model = LoadModel(argv[1]);
  if (!model.ok()) {
    std::fprintf(stderr, "%s\n", std::string(model.status().message()).c_str());
    return 2;
  }
  const int64_t samples = std::atoll(argv[2]), seqlen = std::atoll(argv[3]), T = samples * seqlen;
  const Architecture& a = model->arch;
  const int64_t hidden = a.hidden_size, ffn = a.intermediate_size;
  const int64_t d_head = a.head_dim > 0 ? a.head_dim : hidden / a.num_heads;
  double linear_flops = 0, xtx_flops = 0, solve_flops = 0, attention_flops = 0;
  for (const Block& b : a.blocks) {
    double params = 0;
    std::map<std::string, int64_t> inputs;  // one X^T X per distinct input (shared by q/k/v, gate/up)
    for (const auto* list : {&b.attention, &b.mlp}) {
      for (const LinearLayer& ll : *list) {
        params += static_cast<double>(ll.out_features) * ll.in_features;
        const bool shared = ll.kind == "k_proj" || ll.kind == "v_proj" || ll.kind == "up_proj";
        if (!shared) inputs[ll.name] = ll.in_features;
        const double rows = ll.out_features, cols = ll.in_features;
        solve_flops += 2.0 * cols * cols * cols / 3.0 + rows * cols * cols;  // factor + updates
      }
    }
    const double attention = 2.0 * T * seqlen * d_head * a.num_heads;  // QK^T and AV, causal half
    linear_flops += 2.0 * T * params;  // one forward's
    attention_flops += 2.0 * attention;  // both forwards'
    for (const auto& [name, n] : inputs) xtx_flops += static_cast<double>(T) * n * n;
  }
  const double f32_flops = 2.0 * linear_flops + attention_flops, f64_flops = xtx_flops + solve_flops;
  // The rates, best of 3.
  std::mt19937 rng(1);
  std::normal_distribution<float> nd(0.f, 1.f);
  Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> x(seqlen, hidden), w(ffn, hidden);
  for (int64_t i = 0; i < x.size(); ++i) x.data()[i] = nd(rng);
  for (int64_t i = 0; i < w.size(); ++i) w.data()[i] = 0.02f * nd(rng);
  double f32_s = 1e30, f64_s = 1e30, bf16_s = 1e30, int8_s = 1e30, xtx32_s = 1e30;
  float sink = 0;
  std::optional<PackedWeight> wb, wq;
  if (bf16) {
    std::vector<uint16_t> b(w.size());
    (void)EncodeFromF32(DType::kBF16, w.data(), w.size(), reinterpret_cast<uint8_t*>(b.data()));
    wb = PackedWeight::FromBf16(b.data(), ffn, hidden);
    std::vector<int8_t> q(w.size());
    for (int64_t i = 0; i < w.size(); ++i) q[i] = static_cast<int8_t>(static_cast<int>(i * 7 % 15) - 7);
    std::vector<float> scales(ffn * (hidden / 32), 0.01f);
    wq = PackedWeight::FromCodes(q.data(), scales.data(), ffn, hidden);
  }
  for (int r = 0; r < 3; ++r) {
    auto t0 = std::chrono::steady_clock::now();
    auto y = MulABt(x, w);
    f32_s = std::min(f32_s, Seconds(t0));
    sink += y(0, 0);
    LinearStats s;
    t0 = std::chrono::steady_clock::now();
    AccumulateStats(s, x.data(), seqlen, hidden, /*xtx=*/true);
    f64_s = std::min(f64_s, Seconds(t0));
    sink += static_cast<float>(s.xtx[0]);
    if (!bf16) continue;
    t0 = std::chrono::steady_clock::now();
    auto yb = wb->Apply(x);
    bf16_s = std::min(bf16_s, Seconds(t0));
    t0 = std::chrono::steady_clock::now();
    auto yq = wq->Apply(x);
    int8_s = std::min(int8_s, Seconds(t0));
    sink += yb(0, 0) + yq(0, 0);
    LinearStats s32;  // as the driver sums them: 8 windows in f32, then into f64
    AccumulateStats(s32, x.data(), seqlen, hidden, /*xtx=*/true, /*f32_products=*/true);
    FlushStats(s32);
    t0 = std::chrono::steady_clock::now();
    for (int k = 0; k < 8; ++k) AccumulateStats(s32, x.data(), seqlen, hidden, /*xtx=*/true, /*f32_products=*/true);
    FlushStats(s32);
    xtx32_s = std::min(xtx32_s, Seconds(t0) / 8);
    sink += static_cast<float>(s32.xtx[0]);
  }
  const double f32_rate = 2.0 * seqlen * hidden * ffn / f32_s;
  const double f64_rate = static_cast<double>(seqlen) * hidden * hidden / f64_s;  // lower triangle
  double floor_s = f32_flops / f32_rate + f64_flops / f64_rate;
  fmt::print("{}: {} blocks, hidden {}, ffn {}, T = {} x {} tokens, {} threads (sink {:.1f})\n", argv[1],
             a.blocks.size(), hidden, ffn, samples, seqlen, omp_get_max_threads(), sink);
  fmt::print("f32 products: {:.3e} FLOPs at {:.1f} GFLOP/s = {:.2f} s\n", f32_flops, f32_rate / 1e9,
             f32_flops / f32_rate);
  fmt::print("f64 X^T X and solves: {:.3e} FLOPs at {:.1f} GFLOP/s = {:.2f} s\n", f64_flops, f64_rate / 1e9,
             f64_flops / f64_rate);
  if (bf16) {
    const double bf16_rate = 2.0 * seqlen * hidden * ffn / bf16_s, int8_rate = 2.0 * seqlen * hidden * ffn / int8_s;
    const double xtx32_rate = static_cast<double>(seqlen) * hidden * hidden / xtx32_s;
    const double parts[] = {linear_flops / bf16_rate, linear_flops / int8_rate, attention_flops / f32_rate,
                            xtx_flops / xtx32_rate, solve_flops / f64_rate};
    fmt::print("bf16: first forward's linear layers {:.3e} FLOPs at {:.1f} GFLOP/s (bf16) = {:.2f} s, the second's at "
               "{:.1f} (int8) = {:.2f} s; attention {:.3e} at the f32 rate = {:.2f} s; X^T X {:.3e} at {:.1f} "
               "(f32 products) = {:.2f} s; solves {:.3e} at the f64 rate = {:.2f} s\n",
               linear_flops, bf16_rate / 1e9, parts[0], int8_rate / 1e9, parts[1], attention_flops, parts[2],
               xtx_flops, xtx32_rate / 1e9, parts[3], solve_flops, parts[4]);
    fmt::print("f32 floor {:.2f} s\n", floor_s);
    floor_s = parts[0] + parts[1] + parts[2] + parts[3] + parts[4];
  }
  fmt::print("floor {:.2f} s\n", floor_s);
  return 0;
}
