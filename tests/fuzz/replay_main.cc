// Replays inputs through a libFuzzer harness without libFuzzer: every file named on the
// command line (folders: every file inside, sorted) goes to LLVMFuzzerTestOneInput once.
// ctest runs it over tests/fuzz/regressions/HARNESS (inputs that once crashed, hung or ran
// out of memory) and tests/fuzz/seeds, in the plain build and under ASan + UBSan
// (scripts/test.sh --sanitize), so a fixed finding stays fixed without clang.
#include <sys/resource.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

int main(int argc, char** argv) {
#ifndef COMPRESS_SANITIZED
  // The fuzzers ran with a 4 GiB limit: an input that allocates more (a size taken from the
  // file without checking it) fails here with std::bad_alloc, as it did there.
  rlimit lim{uint64_t{4} << 30, uint64_t{4} << 30};
  setrlimit(RLIMIT_DATA, &lim);
#endif
  namespace fs = std::filesystem;
  std::vector<fs::path> inputs;
  for (int i = 1; i < argc; ++i) {
    if (fs::is_directory(argv[i])) {
      for (const auto& e : fs::directory_iterator(argv[i]))
        if (e.is_regular_file()) inputs.push_back(e.path());
    } else {
      inputs.emplace_back(argv[i]);
    }
  }
  std::sort(inputs.begin(), inputs.end());
  for (const auto& p : inputs) {
    std::ifstream f(p, std::ios::binary);
    if (!f) {
      std::fprintf(stderr, "cannot read %s\n", p.c_str());
      return 1;
    }
    std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    std::fprintf(stderr, "%s (%zu bytes)\n", p.c_str(), bytes.size());
    LLVMFuzzerTestOneInput(bytes.data(), bytes.size());
  }
  std::fprintf(stderr, "%zu inputs replayed\n", inputs.size());
  return inputs.empty() ? 1 : 0;
}
