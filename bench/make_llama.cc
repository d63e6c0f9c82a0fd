// Writes a generated Llama checkpoint (bench/generated_llama.h): make_llama DIR 1b|3b|13b.
#include <fmt/format.h>

#include <string>

#include "bench/bench_util.h"
#include "bench/generated_llama.h"

int main(int argc, char** argv) {
  const std::string which = argc == 3 ? argv[2] : "";
  if (which != "1b" && which != "3b" && which != "13b") {
    fmt::print(stderr, "usage: make_llama DIR 1b|3b|13b\n");
    return 1;
  }
  const auto t = compress::bench::Clock::now();
  const auto s = compress::bench::GenerateLlama(
      argv[1], which == "1b"   ? compress::bench::kLlama1B
               : which == "3b" ? compress::bench::kLlama3B
                               : compress::bench::kLlama13B);
  if (!s.ok()) {
    fmt::print(stderr, "make_llama: {}\n", s.message());
    return 1;
  }
  fmt::print("wrote {} in {:.1f} s, peak RSS {:.0f} MiB\n", argv[1], compress::bench::Seconds(t),
             compress::bench::PeakRssMiB());
  return 0;
}
