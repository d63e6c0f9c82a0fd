// Benchmark: throughput of every weight quantizer over >= 1e9 parameters (4096 x 4096 f32
// matrices, cycled), against the memcpy bandwidth measured in the same run. Throughput is
// counted as f32 input bytes per second (4 bytes per parameter), the same "bytes per second"
// the memcpy figure uses. The searching FP4 quantizer runs on 1/16 of the parameters (it
// evaluates 33 clip ratios x 3 formats per group) and says so.
// usage: quant_bench [PARAMS]   (default 1e9)
#include <random>

#include "bench/bench_util.h"
#include "core/quant.h"
#include "fmt/format.h"

using namespace compress;
using namespace compress::bench;

int main(int argc, char** argv) {
  const double target = argc > 1 ? std::stod(argv[1]) : 1e9;
  const int64_t rows = 4096, cols = 4096, per = rows * cols;
  const int distinct = 4;  // distinct matrices, cycled (1 GiB of f32 in memory at once would be 4 GiB)
  std::vector<std::vector<float>> mats(distinct, std::vector<float>(per));
  std::mt19937 rng(1);
  std::normal_distribution<float> nd(0.f, 0.02f);
  for (auto& m : mats)
    for (auto& x : m) x = nd(rng);
  const double memcpy_gbps = MemcpyGBps();
  fmt::print("memcpy: {:.2f} GB/s (best of 5 x 256 MiB)\n", memcpy_gbps);
  fmt::print("| quantizer | parameters | seconds | GB/s of f32 input | % of memcpy |\n|---|---|---|---|---|\n");
  struct Case {
    const char* name;
    double fraction;  // of the target parameters
    std::function<void(const std::vector<float>&)> run;
  };
  volatile int64_t sink = 0;
  auto rtn = [&](int bits, int64_t group) {
    return [&, bits, group](const std::vector<float>& w) {
      auto r = QuantizeRtn(w, rows, cols, bits, true, 0, group);
      sink = sink + r->first[7];
    };
  };
  auto book = [&](const char* format, int64_t group, CodebookOptions::Scale scale) {
    return [&, format, group, scale](const std::vector<float>& w) {
      CodebookOptions o;
      o.format = format;
      o.group_size = group;
      o.scale = scale;
      auto r = QuantizeCodebook(w, rows, cols, o);
      sink = sink + r->codes[7];
    };
  };
  using S = CodebookOptions::Scale;
  const Case cases[] = {
      {"int8 per channel (quantize-int8)", 1, rtn(8, 0)},
      {"int4 group 128 (quantize-int)", 1, rtn(4, 128)},
      {"nf4 block 64 (quantize-nf4)", 1, book("nf4", 64, S::kAbsmax)},
      {"mxfp4 (quantize-mxfp4)", 1, book("mxfp4", 32, S::kE8M0)},
      {"fp4 e2m1 group 128, absmax (quantize-fp4{search=false})", 1, book("fp4-e2m1", 128, S::kAbsmax)},
      {"fp4 e2m1 group 128, clip search (one format)", 1.0 / 16, book("fp4-e2m1", 128, S::kSearch)},
  };
  for (const Case& c : cases) {
    const int64_t n = static_cast<int64_t>(std::ceil(target * c.fraction / per));
    c.run(mats[0]);  // warm-up: thread pool, allocator
    auto t = Clock::now();
    for (int64_t i = 0; i < n; ++i) c.run(mats[i % distinct]);
    const double s = Seconds(t), params = static_cast<double>(n) * per;
    const double gbps = params * 4 / s / 1e9;
    fmt::print("| {} | {:.3g} | {:.2f} | {:.2f} | {:.0f}% |\n", c.name, params, s, gbps, 100 * gbps / memcpy_gbps);
  }
  fmt::print("peak RSS {:.0f} MiB\n", PeakRssMiB());
  return sink == 42 ? 1 : 0;
}
