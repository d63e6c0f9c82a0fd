// Buffer: bytes that stay valid while a shared_ptr to them lives (owned, mapped from a file,
// or a slice of another buffer).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace compress {

// A block of bytes that stays valid while the shared_ptr lives.
class Buffer {
 public:
  virtual ~Buffer() = default;
  virtual const uint8_t* data() const = 0;
  virtual size_t size() const = 0;
  std::span<const uint8_t> span() const { return {data(), size()}; }
};

// Bytes owned by the buffer, zero-filled.
class OwnedBuffer final : public Buffer {
 public:
  explicit OwnedBuffer(size_t n) : bytes_(n) {}
  explicit OwnedBuffer(std::vector<uint8_t> b) : bytes_(std::move(b)) {}
  const uint8_t* data() const override { return bytes_.data(); }
  uint8_t* mutable_data() { return bytes_.data(); }
  size_t size() const override { return bytes_.size(); }

 private:
  std::vector<uint8_t> bytes_;
};

// Bytes owned by the buffer and left uninitialized: for a kernel that writes every byte
// (a fresh allocation costs no zero-fill pass over memory it is about to overwrite).
// Blocks of kRecycledBlockMin bytes or more are recycled (below).
class UninitBuffer final : public Buffer {
 public:
  explicit UninitBuffer(size_t n);
  ~UninitBuffer() override;
  UninitBuffer(const UninitBuffer&) = delete;
  UninitBuffer& operator=(const UninitBuffer&) = delete;
  const uint8_t* data() const override { return bytes_; }
  uint8_t* mutable_data() { return bytes_; }
  size_t size() const override { return size_; }

 private:
  uint8_t* bytes_;
  size_t size_;      // bytes asked for
  size_t capacity_;  // bytes of the block (a recycled block may be larger)
};

// Large short-lived blocks (a tensor's codes, a tensor being encoded for the writer) go back
// to a process-wide pool when their UninitBuffer dies and are handed out again to the next
// request they fit (at most twice its size). glibc gives every block past its largest mmap
// threshold (32 MB) back to the system, and a fresh page costs a fault and a clear: on this
// project's VMs a hypervisor trap per page, about 2 s per GB of fresh memory, more than the
// quantizers' own arithmetic. The pool holds at most kRecycledPoolMax bytes (the oldest blocks
// are freed first), so at most that much memory stays in use after its buffers died.
inline constexpr size_t kRecycledBlockMin = size_t{4} << 20;
inline constexpr size_t kRecycledPoolMax = size_t{256} << 20;
// Bytes the pool holds now (for tests).
size_t RecycledPoolBytes();
// Lowers (or restores) the pool's limit, at most kRecycledPoolMax; blocks past it are freed at
// once. Calibrated runs set 0: their peak is set by matrices far larger than a pooled block, and
// memory held idle would only raise it.
void SetRecycledPoolLimit(size_t bytes);

// A read-only private mapping of a whole file.
class MappedFile final : public Buffer {
 public:
  static absl::StatusOr<std::shared_ptr<MappedFile>> Open(const std::string& path);
  ~MappedFile() override;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  const uint8_t* data() const override { return data_; }
  size_t size() const override { return size_; }
  const std::string& path() const { return path_; }
  // Tells the kernel the range is no longer needed, dropping its pages from our RSS.
  void Release(size_t offset, size_t length) const;
  // Copies bytes [offset, offset + length) of the file into `dst` with pread (the file the
  // mapping was made of, kept open): a reader that goes over a range once does not fault the
  // mapping's pages in. Mapping page-cache pages costs a fault per few pages (about 0.5 s per
  // GB on this project's VMs, where each is a hypervisor trap); pread copies at memory speed.
  absl::Status ReadAt(size_t offset, size_t length, uint8_t* dst) const;

 private:
  MappedFile(std::string path, int fd, const uint8_t* data, size_t size)
      : path_(std::move(path)), fd_(fd), data_(data), size_(size) {}
  std::string path_;
  int fd_;
  const uint8_t* data_;
  size_t size_;
};

// A sub-range of another buffer (a tensor inside a mapped file).
class SliceBuffer final : public Buffer {
 public:
  SliceBuffer(std::shared_ptr<const Buffer> base, size_t offset, size_t size)
      : base_(std::move(base)), offset_(offset), size_(size) {}
  const uint8_t* data() const override { return base_->data() + offset_; }
  size_t size() const override { return size_; }
  const Buffer& base() const { return *base_; }
  size_t offset() const { return offset_; }

 private:
  std::shared_ptr<const Buffer> base_;
  size_t offset_, size_;
};

}  // namespace compress
