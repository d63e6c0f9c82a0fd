// Checked arithmetic for sizes that come from files and flags: element counts, byte sizes
// and offsets that would overflow 64 bits (or pass a sane limit) are errors, never wraps.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string_view>

#include "absl/status/statusor.h"

namespace compress {

// The most elements one tensor may hold (2^48, 256 Ti): far above any real tensor, and
// low enough that element count x element bytes x a few never overflows int64.
inline constexpr int64_t kMaxTensorElements = int64_t{1} << 48;

// a * b and a + b for non-negative operands; nullopt when either is negative or the
// result overflows.
inline std::optional<int64_t> CheckedMul(int64_t a, int64_t b) {
  int64_t r;
  if (a < 0 || b < 0 || __builtin_mul_overflow(a, b, &r)) return std::nullopt;
  return r;
}
inline std::optional<int64_t> CheckedAdd(int64_t a, int64_t b) {
  int64_t r;
  if (a < 0 || b < 0 || __builtin_add_overflow(a, b, &r)) return std::nullopt;
  return r;
}
inline std::optional<uint64_t> CheckedMulU(uint64_t a, uint64_t b) {
  uint64_t r;
  if (__builtin_mul_overflow(a, b, &r)) return std::nullopt;
  return r;
}
inline std::optional<uint64_t> CheckedAddU(uint64_t a, uint64_t b) {
  uint64_t r;
  if (__builtin_add_overflow(a, b, &r)) return std::nullopt;
  return r;
}

// The element count of `dims`; nullopt when a dimension is negative or the count passes
// `limit`.
std::optional<int64_t> CheckedElements(std::span<const int64_t> dims, int64_t limit = kMaxTensorElements);

// CheckedElements as a Status naming `what` (the file and tensor): "shape [..] is negative
// or holds more than 2^48 elements".
absl::StatusOr<int64_t> ShapeElements(std::span<const int64_t> dims, std::string_view what,
                                      int64_t limit = kMaxTensorElements);

}  // namespace compress
