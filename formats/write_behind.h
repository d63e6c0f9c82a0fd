// One write in flight on a second thread while the caller makes the next bytes: the container
// writers (safetensors, GGUF) overlap converting tensor i + 1 with writing tensor i.
#pragma once

#include <functional>
#include <future>
#include <memory>
#include <utility>

#include "absl/status/status.h"
#include "core/buffer.h"
#include "core/file_util.h"
#include "core/status.h"

namespace compress {

class WriteBehind {
 public:
  explicit WriteBehind(FileWriter& w) : w_(w) {}
  ~WriteBehind() { (void)Wait(); }
  WriteBehind(const WriteBehind&) = delete;
  WriteBehind& operator=(const WriteBehind&) = delete;

  // Waits for the write in flight; then, when it succeeded, starts writing `bytes` and `pad`
  // zero bytes (at most 64). `done` runs once that write has ended (e.g. dropping file pages).
  absl::Status Start(std::shared_ptr<const Buffer> bytes, size_t pad = 0, std::function<void()> done = nullptr) {
    RETURN_IF_ERROR(Wait());
    if (pad > sizeof(kZeros)) return Internal("WriteBehind: {} bytes of padding, at most {}", pad, sizeof(kZeros));
    in_flight_ = std::move(bytes);
    done_ = std::move(done);
    writing_ = std::async(std::launch::async, [this, buf = in_flight_.get(), pad]() -> absl::Status {
      RETURN_IF_ERROR(w_.Write(buf->data(), buf->size()));
      return pad > 0 ? w_.Write(kZeros, pad) : absl::OkStatus();
    });
    return absl::OkStatus();
  }
  // The write in flight's status (OK when none); its buffer is released and `done` run.
  absl::Status Wait() {
    if (!writing_.valid()) return absl::OkStatus();
    absl::Status st = writing_.get();
    in_flight_.reset();
    if (done_) std::exchange(done_, nullptr)();
    return st;
  }

 private:
  static constexpr char kZeros[64] = {};
  FileWriter& w_;
  std::future<absl::Status> writing_;
  std::shared_ptr<const Buffer> in_flight_;
  std::function<void()> done_;
};

}  // namespace compress
