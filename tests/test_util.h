// Test helpers: shared model paths, scratch folders, running the compress binary, tensor equality.
#pragma once

#include <gtest/gtest.h>
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "core/model.h"

namespace compress::testing {

inline std::string SharedModel(const std::string& rel) {
  return std::string(COMPRESS_SHARED_DIR) + "/models/" + rel;
}

#define REQUIRE_SHARED(path) \
  if (!std::filesystem::exists(path)) GTEST_SKIP() << "missing " << (path)

// A fresh folder under the system temp dir, removed at the end of the test.
class ScratchDir {
 public:
  ScratchDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "compress-test-XXXXXX").string();
    path_ = ::mkdtemp(tmpl.data());
  }
  ~ScratchDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  std::string operator/(const std::string& rel) const { return (path_ / rel).string(); }
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

// rows x cols values drawn from N(0, stddev^2) with a seeded std::mt19937, row-major.
inline std::vector<float> RandomNormal(int64_t rows, int64_t cols, uint32_t seed, float stddev) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.f, stddev);
  std::vector<float> v(rows * cols);
  for (auto& x : v) x = nd(rng);
  return v;
}

inline void WriteFile(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
}
inline std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

struct CommandResult {
  int exit_code = -1;
  std::string out, err;
};

// Runs the compress binary with `args` (shell-quoted by the caller); captures both streams.
// With `timeout_s` > 0 a run that takes longer is killed (exit code 124 or 137: a hang).
inline CommandResult RunCompress(const std::string& args, const std::string& scratch, int timeout_s = 0) {
  std::string err_file = scratch + "/.stderr";
  std::string cmd = (timeout_s > 0 ? "timeout -s KILL " + std::to_string(timeout_s) + " " : std::string()) +
                    std::string(COMPRESS_BINARY) + " " + args + " 2>" + err_file;
  CommandResult r;
  FILE* p = ::popen(cmd.c_str(), "r");
  std::array<char, 4096> buf;
  size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), p)) > 0) r.out.append(buf.data(), n);
  int status = ::pclose(p);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  r.err = ReadFile(err_file);
  std::filesystem::remove(err_file);
  return r;
}

// Same names, order, dtypes, shapes and bytes.
inline void ExpectSameTensors(const TensorStore& a, const TensorStore& b) {
  ASSERT_EQ(a.names(), b.names());
  for (const auto& n : a.names()) {
    const Tensor& x = a.at(n);
    const Tensor& y = b.at(n);
    ASSERT_EQ(x.dtype(), y.dtype()) << n;
    ASSERT_EQ(x.shape(), y.shape()) << n;
    auto dx = x.Data();
    auto dy = y.Data();
    ASSERT_TRUE(dx.ok() && dy.ok()) << n;
    ASSERT_EQ((*dx)->size(), (*dy)->size()) << n;
    ASSERT_EQ(0, std::memcmp((*dx)->data(), (*dy)->data(), (*dx)->size())) << n << " differs";
  }
}

}  // namespace compress::testing
