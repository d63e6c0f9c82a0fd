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
class UninitBuffer final : public Buffer {
 public:
  explicit UninitBuffer(size_t n) : bytes_(new uint8_t[n]), size_(n) {}
  const uint8_t* data() const override { return bytes_.get(); }
  uint8_t* mutable_data() { return bytes_.get(); }
  size_t size() const override { return size_; }

 private:
  std::unique_ptr<uint8_t[]> bytes_;
  size_t size_;
};

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

 private:
  MappedFile(std::string path, const uint8_t* data, size_t size)
      : path_(std::move(path)), data_(data), size_(size) {}
  std::string path_;
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
