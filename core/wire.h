// Model pieces as bytes between the processes of one distributed run (core/distributed.h):
// a byte writer / reader for plain values, strings and arrays, and the encodings of a Tensor
// (with its quantization or low-rank factors) and of a report's TensorChange. The processes of
// one job share their byte order, so values are copied as they are in memory.
#pragma once

#include <cstddef>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/report.h"
#include "core/tensor.h"

namespace compress {

class ByteWriter {
 public:
  template <class T>
  void Put(const T& v) {
    static_assert(std::is_trivially_copyable_v<T>);
    const auto* p = reinterpret_cast<const std::byte*>(&v);
    out_.insert(out_.end(), p, p + sizeof(T));
  }
  void PutString(std::string_view s) {
    Put<uint64_t>(s.size());
    const auto* p = reinterpret_cast<const std::byte*>(s.data());
    out_.insert(out_.end(), p, p + s.size());
  }
  template <class V>
  void PutArray(const V& v) {
    Put<uint64_t>(v.size());
    const auto* p = reinterpret_cast<const std::byte*>(v.data());
    out_.insert(out_.end(), p, p + v.size() * sizeof(v[0]));
  }
  std::vector<std::byte> Take() { return std::move(out_); }

 private:
  std::vector<std::byte> out_;
};

// Reads what ByteWriter wrote; every Get fails (InvalidArgument naming `what`) instead of
// reading past the end.
class ByteReader {
 public:
  ByteReader(std::span<const std::byte> in, std::string what) : in_(in), what_(std::move(what)) {}
  template <class T>
  absl::Status Get(T& v) {
    static_assert(std::is_trivially_copyable_v<T>);
    if (in_.size() - at_ < sizeof(T)) return Truncated();
    std::memcpy(&v, in_.data() + at_, sizeof(T));
    at_ += sizeof(T);
    return absl::OkStatus();
  }
  absl::Status GetString(std::string& s);
  template <class V>
  absl::Status GetArray(V& v) {
    uint64_t n = 0;
    if (absl::Status s = Get(n); !s.ok()) return s;
    if (n > (in_.size() - at_) / sizeof(v[0])) return Truncated();
    v.resize(n);
    std::memcpy(v.data(), in_.data() + at_, n * sizeof(v[0]));
    at_ += n * sizeof(v[0]);
    return absl::OkStatus();
  }
  bool done() const { return at_ == in_.size(); }
  size_t at() const { return at_; }  // bytes read so far
  absl::Status Skip(uint64_t n) {
    if (n > in_.size() - at_) return Truncated();
    at_ += n;
    return absl::OkStatus();
  }

 private:
  absl::Status Truncated() const;
  std::span<const std::byte> in_;
  std::string what_;
  size_t at_ = 0;
};

// A tensor with its bytes (a lazy one is produced first), quantization and factors.
absl::Status PutTensor(ByteWriter& w, const Tensor& t);
absl::StatusOr<Tensor> GetTensor(ByteReader& r);
// Where PutTensor's element bytes of the tensor that starts at r's position lie: {offset from
// the start of r's input, byte count}; r ends after the tensor. Factorized tensors have none.
absl::StatusOr<std::pair<size_t, size_t>> TensorDataRange(ByteReader& r);

void PutTensorChange(ByteWriter& w, const TensorChange& c);
absl::StatusOr<TensorChange> GetTensorChange(ByteReader& r);
void PutExpertCoverage(ByteWriter& w, const ExpertCoverage& c);
absl::StatusOr<ExpertCoverage> GetExpertCoverage(ByteReader& r);

}  // namespace compress
