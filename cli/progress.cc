// Throttled single-line progress bar on stderr.
#include "cli/progress.h"

#include <unistd.h>

#include <cstdio>

#include "fmt/format.h"

namespace compress {

bool StderrIsTerminal() { return ::isatty(STDERR_FILENO) == 1; }

void TerminalProgress::Update(std::string_view label, int64_t done, int64_t total) {
  if (!enabled_) return;
  auto now = std::chrono::steady_clock::now();
  if (drawn_ && done < total && now - last_ < std::chrono::milliseconds(100)) return;
  last_ = now;
  const int width = 30;
  int filled = total > 0 ? static_cast<int>(width * done / total) : 0;
  std::string bar(filled, '#');
  bar.append(width - filled, '.');
  std::fputs(fmt::format("\r{:<10} [{}] {}/{}", label, bar, done, total).c_str(), stderr);
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
