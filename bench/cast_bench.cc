// Benchmark: cast{dtype=bf16} over a generated >= 1 GiB f32 safetensors model, end to end
// (load, pass, streaming write), against this machine's memory-copy bandwidth measured in
// the same run; also reports peak RSS against the largest single tensor.
// usage: cast_bench [WORK_DIR] [GiB]
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <random>

#include "bench/bench_util.h"
#include "core/pass_manager.h"
#include "fmt/format.h"
#include "formats/model_io.h"
#include "formats/safetensors.h"
#include "passes/registry.h"

using namespace compress;
namespace fs = std::filesystem;
using namespace compress::bench;

// Time to write `bytes` to a file in `dir` from memory: the storage floor for the output.
static double WriteFloorSeconds(const fs::path& dir, int64_t bytes) {
  std::vector<uint8_t> buf(64u << 20, 7);
  auto t = Clock::now();
  std::FILE* f = std::fopen((dir / "floor.bin").c_str(), "wb");
  for (int64_t done = 0; done < bytes; done += buf.size()) {
    std::fwrite(buf.data(), 1, std::min<int64_t>(buf.size(), bytes - done), f);
  }
  std::fclose(f);
  double s = Seconds(t);
  fs::remove(dir / "floor.bin");
  return s;
}

int main(int argc, char** argv) {
  fs::path work = argc > 1 ? argv[1] : fs::temp_directory_path() / "compress-cast-bench";
  double gib = argc > 2 ? std::stod(argv[2]) : 1.0;
  fs::remove_all(work);
  fs::create_directories(work / "in");
  // Generate: 4096x4096 f32 tensors (64 MiB each) until the model reaches `gib`.
  const int64_t rows = 4096, cols = 4096;
  const int count = static_cast<int>(gib * 1024 / 64 + 0.5);
  {
    TensorStore store;
    std::mt19937 rng(1);
    std::normal_distribution<float> nd(0.f, 0.02f);
    for (int i = 0; i < count; ++i) {
      std::vector<float> v(rows * cols);
      for (auto& x : v) x = nd(rng);
      store.Set(fmt::format("model.layers.{}.mlp.up_proj.weight", i),
                *Tensor::FromF32(v, {rows, cols}, DType::kF32));
      // Written as soon as the store is complete; each tensor owns its buffer until then.
    }
    auto w = WriteSafetensors(store, (work / "in").string(), {});
    if (!w.ok()) {
      fmt::print(stderr, "generate: {}\n", w.status().message());
      return 1;
    }
  }
  const int64_t in_bytes = static_cast<int64_t>(fs::file_size(work / "in/model.safetensors"));
  const double rss_before = PeakRssMiB();  // the generator's own peak, before the measured run
  const double copy_gbps = MemcpyGBps();
  const double write_floor = WriteFloorSeconds(work, in_bytes / 2);

  PassRegistry reg;
  if (!RegisterBuiltinPasses(reg).ok()) return 1;
  auto steps = ResolvePipeline(reg, *ParsePipelineText("cast{dtype=bf16}"));
  // Measure in a child-free way: reset is impossible for ru_maxrss, so run the measured
  // part in a fork and read the child's peak.
  int fds[2];
  if (pipe(fds) != 0) return 1;
  pid_t pid = fork();
  if (pid == 0) {
    auto t = Clock::now();
    auto m = LoadModel((work / "in").string());
    if (!m.ok()) _exit(2);
    const double t_load = Seconds(t);
    PassManager pm;
    RunReport r;
    if (!pm.Run(*m, *steps, r).ok()) _exit(3);
    const double t_pass = Seconds(t) - t_load;
    if (!SaveModel(*m, (work / "out").string(), {}).ok()) _exit(4);
    fmt::print("  phases: load {:.3f} s, pass (error metrics) {:.3f} s, convert + write {:.3f} s\n", t_load,
               t_pass, Seconds(t) - t_load - t_pass);
    std::fflush(stdout);
    double s = Seconds(t);
    double rss = PeakRssMiB();
    dprintf(fds[1], "%f %f\n", s, rss);
    _exit(0);
  }
  close(fds[1]);
  char buf[128] = {0};
  ssize_t got = read(fds[0], buf, sizeof buf - 1);
  int status = 0;
  waitpid(pid, &status, 0);
  if (got <= 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    fmt::print(stderr, "measured run failed (status {})\n", status);
    return 1;
  }
  double secs = 0, rss_child = 0;
  std::sscanf(buf, "%lf %lf", &secs, &rss_child);
  const double gbps = in_bytes / secs / 1e9;
  const double largest_mib = rows * cols * 4 / 1048576.0;
  fmt::print("cast{{dtype=bf16}} on {:.2f} GiB f32 safetensors ({} tensors of {}x{})\n",
             in_bytes / 1073741824.0, count, rows, cols);
  fmt::print("  end-to-end time        {:.3f} s (load + pass + streaming write)\n", secs);
  fmt::print("  throughput             {:.2f} GB/s of input\n", gbps);
  fmt::print("  memcpy bandwidth       {:.2f} GB/s (same run)\n", copy_gbps);
  fmt::print("  ratio                  {:.0f}% (target >= 50%)\n", 100 * gbps / copy_gbps);
  fmt::print("  write floor            {:.3f} s to write the {:.2f} GiB output from memory (same disk)\n",
             write_floor, in_bytes / 2 / 1073741824.0);
  fmt::print(
      "  peak RSS               {:.0f} MiB; largest tensor {:.0f} MiB; excess {:.0f} MiB (target < 512)\n",
      rss_child, largest_mib, rss_child - largest_mib);
  (void)rss_before;
  fs::remove_all(work);
  return 0;
}
