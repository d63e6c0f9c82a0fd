// File-backed buffers (core/buffer.h).
#include "core/buffer.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <mutex>
#include <new>
#include <vector>

#include "core/status.h"

namespace compress {
namespace {

struct RecycledPool {
  struct Block {
    size_t capacity;
    uint8_t* bytes;
  };
  std::mutex mu;
  std::deque<Block> blocks;  // oldest first
  size_t bytes = 0;
  size_t limit = kRecycledPoolMax;

  // Frees the oldest blocks past the limit (the lock held; the frees after it is released).
  void Evict(std::vector<uint8_t*>& evicted) {
    while (bytes > limit) {
      evicted.push_back(blocks.front().bytes);
      bytes -= blocks.front().capacity;
      blocks.pop_front();
    }
  }
};

constexpr int kKeptDescriptors = 256;
std::atomic<int>& KeptDescriptors() {
  static std::atomic<int> n{0};
  return n;
}

RecycledPool& Pool() {
  static RecycledPool* pool = new RecycledPool;  // never destroyed: buffers may outlive statics
  return *pool;
}

}  // namespace

UninitBuffer::UninitBuffer(size_t n) : size_(n), capacity_(n) {
  if (n >= kRecycledBlockMin) {  // the smallest pooled block that n fills at least half of
    RecycledPool& pool = Pool();
    std::lock_guard<std::mutex> lock(pool.mu);
    auto best = pool.blocks.end();
    for (auto it = pool.blocks.begin(); it != pool.blocks.end(); ++it) {
      if (it->capacity >= n && it->capacity / 2 <= n && (best == pool.blocks.end() || it->capacity < best->capacity)) {
        best = it;
      }
    }
    if (best != pool.blocks.end()) {
      capacity_ = best->capacity;
      bytes_ = best->bytes;
      pool.bytes -= capacity_;
      pool.blocks.erase(best);
      return;
    }
  }
  bytes_ = static_cast<uint8_t*>(std::malloc(n ? n : 1));
  if (!bytes_) throw std::bad_alloc();
}

UninitBuffer::~UninitBuffer() {
  if (capacity_ < kRecycledBlockMin || capacity_ > kRecycledPoolMax) {
    std::free(bytes_);
    return;
  }
  std::vector<uint8_t*> evicted;  // the oldest blocks, past the pool's limit
  RecycledPool& pool = Pool();
  {
    std::lock_guard<std::mutex> lock(pool.mu);
    pool.blocks.push_back({capacity_, bytes_});
    pool.bytes += capacity_;
    pool.Evict(evicted);
  }
  for (uint8_t* b : evicted) std::free(b);
}

void SetRecycledPoolLimit(size_t bytes) {
  std::vector<uint8_t*> evicted;
  RecycledPool& pool = Pool();
  {
    std::lock_guard<std::mutex> lock(pool.mu);
    pool.limit = std::min(bytes, kRecycledPoolMax);
    pool.Evict(evicted);
  }
  for (uint8_t* b : evicted) std::free(b);
}

size_t RecycledPoolBytes() {
  RecycledPool& pool = Pool();
  std::lock_guard<std::mutex> lock(pool.mu);
  return pool.bytes;
}

absl::StatusOr<std::shared_ptr<MappedFile>> MappedFile::Open(const std::string& path) {
  // O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused below.
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) return IoError("open", path);
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    return IoError("stat", path);
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return InvalidArgument("{}: not a regular file (a pipe, device or socket cannot be read as a model)", path);
  }
  size_t size = static_cast<size_t>(st.st_size);
  const uint8_t* data = nullptr;
  if (size > 0) {
    void* p = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      ::close(fd);
      return IoError("mmap", path);
    }
    data = static_cast<const uint8_t*>(p);
  }
  // The descriptor stays open for ReadAt, for files a tensor as large as a recycled block can
  // be in and while fewer than kKeptDescriptors are kept (an ONNX export with one external
  // file per tensor may have thousands); other files are read from their mapping.
  if (size < kRecycledBlockMin || KeptDescriptors().fetch_add(1) >= kKeptDescriptors) {
    if (size >= kRecycledBlockMin) KeptDescriptors().fetch_sub(1);
    ::close(fd);
    fd = -1;
  }
  return std::shared_ptr<MappedFile>(new MappedFile(path, fd, data, size));
}

MappedFile::~MappedFile() {
  if (data_) ::munmap(const_cast<uint8_t*>(data_), size_);
  if (fd_ >= 0) {
    ::close(fd_);
    KeptDescriptors().fetch_sub(1);
  }
}

namespace {
// pread until `length` bytes are in.
absl::Status PreadAll(int fd, size_t offset, size_t length, uint8_t* dst, const std::string& path) {
  while (length > 0) {
    const ssize_t r = ::pread(fd, dst, std::min<size_t>(length, size_t{1} << 30), static_cast<off_t>(offset));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return IoError("read", path);
    if (r == 0) return DataLoss("{}: the file became shorter while it was read", path);
    dst += r, offset += static_cast<size_t>(r), length -= static_cast<size_t>(r);
  }
  return absl::OkStatus();
}
}  // namespace

absl::Status MappedFile::ReadAt(size_t offset, size_t length, uint8_t* dst) const {
  if (offset > size_ || length > size_ - offset) return Internal("{}: read past the end of the file", path_);
  if (fd_ < 0) {
    std::memcpy(dst, data_ + offset, length);
    return absl::OkStatus();
  }
  // A large read in pieces on every thread: the kernel's copy out of the page cache (and the
  // first touch of fresh destination pages) runs on one core per pread.
  constexpr size_t kPiece = size_t{8} << 20;
  if (length < 2 * kPiece || omp_in_parallel() || omp_get_max_threads() < 2) {
    return PreadAll(fd_, offset, length, dst, path_);
  }
  const int64_t pieces = static_cast<int64_t>((length + kPiece - 1) / kPiece);
  std::vector<absl::Status> st(static_cast<size_t>(pieces));
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t i = 0; i < pieces; ++i) {
    const size_t at = static_cast<size_t>(i) * kPiece;
    st[static_cast<size_t>(i)] = PreadAll(fd_, offset + at, std::min(kPiece, length - at), dst + at, path_);
  }
  for (const absl::Status& s : st) RETURN_IF_ERROR(s);
  return absl::OkStatus();
}

void MappedFile::Release(size_t offset, size_t length) const {
  if (!data_ || length == 0) return;
  const size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
  size_t begin = (offset + page - 1) / page * page;  // only whole pages inside the range
  size_t end = (offset + length) / page * page;
  if (end > begin) ::madvise(const_cast<uint8_t*>(data_) + begin, end - begin, MADV_DONTNEED);
}

}  // namespace compress
