// The one-read kernels of the data-free passes in memory: nanoseconds per weight of
// QuantizeRtnMeasured (quantize-int8 per channel, quantize-int g32 with f16 scales, g128 asymmetric),
// QuantizeCodebookMeasured (nf4 g64, mxfp4 g32, fp4-e2m1 g128), ChooseCodebookFormat (fp4
// format=auto's choice of three) on one 8192 x 8192 bf16 weight (normal, std 0.02), best of
// RUNS, on the threads OpenMP gives (OMP_NUM_THREADS). The figures and metrics printed let two
// builds of libcompress_core.so be compared in one session (LD_LIBRARY_PATH=OLD_BUILD/core):
// the metrics must agree to the last digit.
//   usage: measured_bench [RUNS [CASE]]   (CASE: only the cases whose name contains it, e.g. to
//   count one kernel's cycles with perf stat)
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "core/quant.h"

namespace {

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace

int main(int argc, char** argv) {
  using namespace compress;
  const int runs = argc > 1 ? std::atoi(argv[1]) : 5;
  const int64_t rows = 8192, cols = 8192, n = rows * cols;
  std::vector<uint16_t> w(n);
  std::mt19937 gen(1);
  std::normal_distribution<float> normal(0.f, 0.02f);
  for (auto& x : w) {
    const float f = normal(gen);
    uint32_t b;
    std::memcpy(&b, &f, 4);
    x = static_cast<uint16_t>(b >> 16);
  }
  const std::span<const uint8_t> src(reinterpret_cast<const uint8_t*>(w.data()), static_cast<size_t>(n) * 2);
  // Each case returns a metric of its result (printed, to compare builds).
  const std::string only = argc > 2 ? argv[2] : "";
  auto time = [&](const char* name, const std::function<double()>& f) {
    if (std::string(name).find(only) == std::string::npos) return;
    double best = 1e30, metric = 0;
    for (int r = 0; r < runs; ++r) {
      const double t0 = Now();
      metric = f();
      best = std::min(best, Now() - t0);
    }
    std::printf("%-34s %6.3f ns/weight   metric %.17g\n", name, best / static_cast<double>(n) * 1e9, metric);
  };
  auto rtn = [&](int bits, int64_t group, DType scale, bool symmetric = true) {
    auto m = QuantizeRtnMeasured(DType::kBF16, src, rows, cols, bits, symmetric, 0, group, scale, "w");
    if (!m.ok()) std::exit(1);
    return m->error.rel_fro + m->error.max_abs + m->max_error_over_half_scale;
  };
  auto codebook = [&](std::vector<std::string> formats, int64_t group, CodebookOptions::Scale scale) {
    CodebookOptions o;
    o.group_size = group;
    o.scale = scale;
    auto m = QuantizeCodebookMeasured(DType::kBF16, src, rows, cols, formats, o, "w");
    if (!m.ok()) std::exit(1);
    return m->error.rel_fro + m->error.max_abs;
  };
  using S = CodebookOptions::Scale;
  time("int8 per channel", [&] { return rtn(8, 0, DType::kF32); });
  time("int4 g32, f16 scales", [&] { return rtn(4, 32, DType::kF16); });
  time("int4 g128 asymmetric, f16 scales", [&] { return rtn(4, 128, DType::kF16, false); });
  time("nf4 g64", [&] { return codebook({"nf4"}, 64, S::kAbsmax); });
  time("mxfp4 g32", [&] { return codebook({"mxfp4"}, 32, S::kE8M0); });
  time("fp4-e2m1 g128", [&] { return codebook({"fp4-e2m1"}, 128, S::kAbsmax); });
  // (The estimate alone, ChooseCodebookFormat's work when the bounds decide; the metric is the
  // three formats' estimates, which a change of the estimate's steps must keep.)
  time("fp4 choice of 3, g128 (estimate)", [&] {
    CodebookOptions o;
    o.group_size = 128;
    auto e = EstimateCodebookErrors(DType::kBF16, src, rows, cols, {"fp4-e2m1", "fp4-e3m0", "fp4-e1m2"}, o);
    if (!e) std::exit(1);
    return e->sums[0] + e->sums[1] + e->sums[2];
  });
  return 0;
}
