// 64-byte aligned heap buffers for data that vectorized reductions read in place.
//
// Eigen's reductions (sum, dot, norm, coefficient-wise products) treat the elements before
// the first packet-aligned one separately, so the order of their additions, and the last bits
// of the result, depend on where a buffer starts. Buffers Eigen reads through Maps (the ONNX
// interpreter's values, calibration samples) are allocated here on a 64-byte boundary (a full
// AVX-512 packet), which makes results a function of the data alone. Eigen's own matrices
// are aligned by Eigen.
#pragma once

#include <cstddef>
#include <new>
#include <vector>

namespace compress {

inline constexpr std::size_t kBufferAlignment = 64;

template <class T>
struct AlignedAllocator {
  using value_type = T;
  AlignedAllocator() = default;
  template <class U>
  AlignedAllocator(const AlignedAllocator<U>&) noexcept {}
  T* allocate(std::size_t n) {
    return static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t{kBufferAlignment}));
  }
  void deallocate(T* p, std::size_t) noexcept { ::operator delete(p, std::align_val_t{kBufferAlignment}); }
  template <class U>
  bool operator==(const AlignedAllocator<U>&) const noexcept {
    return true;
  }
};

template <class T>
using AlignedVector = std::vector<T, AlignedAllocator<T>>;

}  // namespace compress
