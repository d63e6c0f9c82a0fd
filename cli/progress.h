// Terminal progress line for long work; silent when --quiet or stderr is not a TTY.
#pragma once

#include <chrono>
#include <string>

#include "core/pass.h"

namespace compress {

class TerminalProgress final : public ProgressSink {
 public:
  // Draws only when `enabled` (the caller checks --quiet and isatty).
  explicit TerminalProgress(bool enabled) : enabled_(enabled) {}
  void Update(std::string_view label, int64_t done, int64_t total) override;
  void Done() override;

 private:
  bool enabled_;
  bool drawn_ = false;
  std::chrono::steady_clock::time_point last_{};
};

bool StderrIsTerminal();

}  // namespace compress
