// Benchmark: GPTQ and SparseGPT on one d x d layer (default 4096) against the GEMM floor
// measured in the same run: about 2 d^3 FLOPs (the Cholesky-based inverse and the block
// updates) at the f64 GFLOP/s of an Eigen d x d x d GEMM on this machine.
// usage: second_order_bench [D]
#include <chrono>
#include <cstdio>
#include <random>

#include "fmt/format.h"
#include "passes/quantize/gptq.h"
#include "passes/prune/prune.h"

using Clock = std::chrono::steady_clock;
static double Since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

int main(int argc, char** argv) {
  const int64_t d = argc > 1 ? std::stoll(argv[1]) : 4096;
  std::mt19937 rng(1);
  std::normal_distribution<float> nd(0.f, 0.02f);
  std::vector<float> w(d * d);
  for (auto& x : w) x = nd(rng);
  // A well-conditioned random Hessian: X^T X with X [2d, d].
  Eigen::MatrixXd x = Eigen::MatrixXd::Random(2 * d, d);
  compress::RowMatD h = x.transpose() * x;
  std::vector<double> xtx(h.data(), h.data() + h.size());

  Eigen::MatrixXd a = Eigen::MatrixXd::Random(d, d), b = Eigen::MatrixXd::Random(d, d), c(d, d);
  auto t = Clock::now();
  c.noalias() = a * b;
  const double gemm_s = Since(t);
  const double gflops = 2.0 * d * d * d / gemm_s / 1e9;
  const double floor_s = 2.0 * d * d * d / (gflops * 1e9);
  fmt::print("d = {}: f64 GEMM {:.2f} s = {:.1f} GFLOP/s; floor for 2 d^3 FLOPs: {:.2f} s (c[0]={:.3f})\n", d,
             gemm_s, gflops, floor_s, c(0, 0));

  t = Clock::now();
  auto g = compress::GptqQuantize(w, d, d, xtx, {4, true, 128, 128, 0.01});
  const double gptq_s = Since(t);
  if (!g.ok()) return 1;
  fmt::print("GPTQ int4 g128:      {:.2f} s = {:.2f}x the floor (target <= 3x)\n", gptq_s, gptq_s / floor_s);

  t = Clock::now();
  auto s = compress::SparseGpt(w, d, d, xtx, {0.5, 0, 0}, 128, 0.01);
  const double sgpt_s = Since(t);
  if (!s.ok()) return 1;
  fmt::print("SparseGPT 50%:       {:.2f} s = {:.2f}x the floor (target <= 3x)\n", sgpt_s, sgpt_s / floor_s);
  t = Clock::now();
  auto s24 = compress::SparseGpt(w, d, d, xtx, {0, 2, 4}, 128, 0.01);
  const double s24_s = Since(t);
  if (!s24.ok()) return 1;
  fmt::print("SparseGPT 2:4:       {:.2f} s = {:.2f}x the floor (target <= 3x)\n", s24_s, s24_s / floor_s);
  return 0;
}
