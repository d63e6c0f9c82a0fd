// Helpers the benchmarks share: a steady clock, peak RSS, and this machine's memcpy bandwidth.
#pragma once

#include <sys/resource.h>

#include <chrono>
#include <cstdint>
#include <cstring>
#include <vector>

namespace compress::bench {

using Clock = std::chrono::steady_clock;

inline double Seconds(Clock::time_point a) { return std::chrono::duration<double>(Clock::now() - a).count(); }

inline double PeakRssMiB() {
  rusage u;
  getrusage(RUSAGE_SELF, &u);
  return u.ru_maxrss / 1024.0;
}

// Best of several memcpy passes over 256 MiB buffers, as bytes copied per second (read and
// written bytes counted once).
inline double MemcpyGBps() {
  const size_t n = 256u << 20;
  std::vector<uint8_t> a(n, 1), b(n, 2);
  double best = 0;
  for (int i = 0; i < 5; ++i) {
    auto t = Clock::now();
    std::memcpy(b.data(), a.data(), n);
    best = std::max(best, n / Seconds(t) / 1e9);
    a[i] = b[n - 1 - i];
  }
  return best;
}

}  // namespace compress::bench
