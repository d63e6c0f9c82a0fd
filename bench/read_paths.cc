// read_paths FILE: what reading a file once costs through its mapping vs pread into one reused
// buffer (page cache warm), and what writing the same bytes from user space costs (issue #22).
// On this project's VMs every mapped or fresh page is a fault handled by the hypervisor, which
// is why the data-free passes read with Tensor::ReadOnce (core/tensor.h) and recycle buffers.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

namespace {

double Now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

uint64_t Touch(const uint8_t* p, size_t n) {  // one byte per cache line
  uint64_t s = 0;
  for (size_t i = 0; i < n; i += 64) s += p[i];
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: read_paths FILE\n");
    return 2;
  }
  const int fd = ::open(argv[1], O_RDONLY);
  struct stat st;
  if (fd < 0 || ::fstat(fd, &st) != 0 || st.st_size == 0) {
    std::fprintf(stderr, "read_paths: cannot read %s\n", argv[1]);
    return 2;
  }
  const size_t n = static_cast<size_t>(st.st_size);
  std::vector<uint8_t> warm(size_t{4} << 20);
  while (::read(fd, warm.data(), warm.size()) > 0) {
  }
  for (int rep = 0; rep < 2; ++rep) {
    double t0 = Now();
    auto* m = static_cast<const uint8_t*>(::mmap(nullptr, n, PROT_READ, MAP_PRIVATE, fd, 0));
    uint64_t a = Touch(m, n);
    ::munmap(const_cast<uint8_t*>(m), n);
    const double mapped = Now() - t0;
    std::vector<uint8_t> buf(size_t{4} << 20, 1);
    t0 = Now();
    uint64_t b = 0;
    for (size_t off = 0; off < n;) {
      const ssize_t r = ::pread(fd, buf.data(), buf.size(), static_cast<off_t>(off));
      if (r <= 0) break;
      b += Touch(buf.data(), static_cast<size_t>(r));
      off += static_cast<size_t>(r);
    }
    const double pread = Now() - t0;
    // The same bytes written from a reused user buffer into a new file (page cache, no fsync).
    const std::string out = std::string(argv[1]) + ".read_paths.tmp";
    const int wfd = ::open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    t0 = Now();
    for (size_t off = 0; off < n && wfd >= 0; off += buf.size()) {
      if (::write(wfd, buf.data(), std::min(buf.size(), n - off)) < 0) break;
    }
    const double written = Now() - t0;
    if (wfd >= 0) ::close(wfd);
    ::unlink(out.c_str());
    std::printf("%.2f GB: mapped %.3f s (%.2f GB/s), pread %.3f s (%.2f GB/s), write %.3f s (%.2f GB/s)%s\n",
                n / 1e9, mapped, n / mapped / 1e9, pread, n / pread / 1e9, written, n / written / 1e9,
                a == b ? "" : " (sums differ)");
  }
  ::close(fd);
  return 0;
}
