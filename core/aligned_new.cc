// Global operator new: heap blocks of 64 bytes or more start on a 64-byte boundary.
//
// Eigen's vectorized reductions (sum, dot, norm) handle the elements before the first
// packet-aligned one separately, so their summation order, and the last bits of the result,
// depend on where a buffer starts. glibc's malloc only guarantees 16 bytes, which is a full
// SSE packet but not an AVX (32) or AVX-512 (64) one: with -march=native the same model
// evaluated twice could differ in the last bits. Aligning every large block to 64 bytes makes
// results a function of the data alone. Blocks are released with free(), as libstdc++'s
// operator delete does, so only allocation is replaced. Linked into every program through
// libcompress_core, which the dynamic linker searches before libstdc++.
#include <cstdlib>
#include <new>

void* operator new(std::size_t n) {
  void* p = nullptr;
  if (n >= 64) {
    if (posix_memalign(&p, 64, n) != 0) p = nullptr;
  } else {
    p = std::malloc(n == 0 ? 1 : n);
  }
  if (p == nullptr) throw std::bad_alloc();
  return p;
}

void* operator new[](std::size_t n) { return ::operator new(n); }
