// Benchmark: truncated SVD of 4096 x 4096 and 4096 x 11008 weights (exact BDCSVD and
// randomized rank 512 / 1024) against the GEMM floor measured in the same run: the time an
// f64 Eigen GEMM of the same m x n matrix with an n x min(m, n) one takes (2 m n min(m, n)
// FLOPs, the size of the work any dense SVD has to do at least once).
// usage: svd_bench [SIZES...]   (default "4096x4096 4096x11008")
#include <random>

#include "bench/bench_util.h"
#include "fmt/format.h"
#include "passes/math/svd.h"

using namespace compress;
using namespace compress::bench;

int main(int argc, char** argv) {
  std::vector<std::pair<int64_t, int64_t>> sizes = {{4096, 4096}, {4096, 11008}};
  if (argc > 1) {
    sizes.clear();
    for (int i = 1; i < argc; ++i) {
      int64_t m = 0, n = 0;
      if (std::sscanf(argv[i], "%ldx%ld", &m, &n) == 2) sizes.push_back({m, n});
    }
  }
  fmt::print("| matrix | method | seconds | GEMM floor s | x floor | rel. error at rank |\n|---|---|---|---|---|---|\n");
  for (auto [m, n] : sizes) {
    std::mt19937_64 rng(3);
    std::normal_distribution<double> nd(0, 0.02);
    MatD w(m, n);
    for (int64_t j = 0; j < n; ++j)
      for (int64_t i = 0; i < m; ++i) w(i, j) = nd(rng) / (1.0 + 0.01 * std::min(i, j));
    const int64_t k = std::min(m, n);
    MatD g = MatD::Random(n, k);
    auto t = Clock::now();
    MatD prod = w * g;
    const double floor_s = Seconds(t);
    const double gflops = 2.0 * m * n * k / floor_s / 1e9;
    auto report = [&](const char* method, double s, const Svd& svd, int64_t r) {
      MatD a, b;
      TruncatedFactors(svd, r, nullptr, a, b);
      const double err = std::sqrt((w - a * b).squaredNorm() / w.squaredNorm());
      fmt::print("| {}x{} | {} | {:.1f} | {:.2f} ({:.1f} GFLOP/s) | {:.1f} | {:.4f} at {} |\n", m, n, method, s,
                 floor_s, gflops, s / floor_s, err, r);
    };
    t = Clock::now();
    Svd exact = ExactSvd(w);
    report("exact (BDCSVD)", Seconds(t), exact, 512);
    for (int64_t r : {512, 1024}) {
      t = Clock::now();
      Svd rnd = RandomizedSvd(w, r, 10, 2);
      report(r == 512 ? "randomized r=512, q=2" : "randomized r=1024, q=2", Seconds(t), rnd, r);
    }
    if (prod(0, 0) == 12345) return 1;
  }
  fmt::print("peak RSS {:.0f} MiB\n", PeakRssMiB());
  return 0;
}
