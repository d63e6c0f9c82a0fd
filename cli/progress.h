// Terminal progress line for long work; silent when --quiet or stderr is not a TTY.
#pragma once

#include <chrono>
#include <string>

#include "core/pass.h"

namespace compress {

// One line per phase (a phase is a run of updates with the same label), redrawn in place
// with the line cleared first: label, bar, done/total, elapsed time, rate and ETA.
class TerminalProgress final : public ProgressSink {
 public:
  // Draws only when `enabled` (the caller checks --quiet and isatty).
  explicit TerminalProgress(bool enabled) : enabled_(enabled) {}
  void Update(std::string_view label, int64_t done, int64_t total) override;
  void Done() override;

 private:
  bool enabled_;
  bool drawn_ = false;
  std::string label_;
  std::chrono::steady_clock::time_point start_{}, last_{};
};

bool StderrIsTerminal();

// "42s", "3m05s", "1h02m": the width stays small whatever the duration.
std::string ShortDuration(double seconds);
// The progress line's text (no control characters), for tests.
std::string ProgressLine(std::string_view label, int64_t done, int64_t total, double elapsed_s);

}  // namespace compress
