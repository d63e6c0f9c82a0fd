// Throttled single-line progress on stderr with elapsed time, rate and ETA.
#include "cli/progress.h"

#include <unistd.h>

#include <cmath>
#include <cstdio>

#include "fmt/format.h"

namespace compress {

bool StderrIsTerminal() { return ::isatty(STDERR_FILENO) == 1; }

std::string ShortDuration(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  const int64_t t = std::llround(s);
  if (t < 60) return fmt::format("{}s", t);
  if (t < 3600) return fmt::format("{}m{:02d}s", t / 60, t % 60);
  return fmt::format("{}h{:02d}m", t / 3600, (t % 3600) / 60);
}

std::string ProgressLine(std::string_view label, int64_t done, int64_t total, double elapsed_s) {
  const int width = 24;
  const int filled = total > 0 ? static_cast<int>(width * std::min(done, total) / total) : 0;
  std::string bar(filled, '#');
  bar.append(width - filled, '.');
  std::string line = fmt::format("{:<10} [{}] {}/{} {}", label, bar, done, total, ShortDuration(elapsed_s));
  if (done > 0 && elapsed_s > 0) {
    const double rate = done / elapsed_s;
    line += rate >= 1 ? fmt::format(", {:.1f}/s", rate) : fmt::format(", {:.1f}s each", 1 / rate);
    if (done < total) line += fmt::format(", ETA {}", ShortDuration((total - done) / rate));
  }
  return line;
}

void TerminalProgress::Update(std::string_view label, int64_t done, int64_t total) {
  if (!enabled_) return;
  const auto now = std::chrono::steady_clock::now();
  if (!drawn_ || label != label_) {  // a new phase: its own clock
    label_ = std::string(label);
    start_ = now;
  } else if (done < total && now - last_ < std::chrono::milliseconds(100)) {
    return;
  }
  last_ = now;
  const double elapsed = std::chrono::duration<double>(now - start_).count();
  // \r then clear to the end of the line: a shorter line never leaves the old one's tail.
  std::fputs(fmt::format("\r\033[K{}", ProgressLine(label, done, total, elapsed)).c_str(), stderr);
  std::fflush(stderr);
  drawn_ = true;
}

void TerminalProgress::Done() {
  if (!enabled_ || !drawn_) return;
  std::fputs("\r\033[K", stderr);
  std::fflush(stderr);
  drawn_ = false;
}

}  // namespace compress
