// Tensor: name-less typed view (dtype, shape) over owned, memory-mapped or lazily computed bytes.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "core/buffer.h"
#include "core/dtype.h"
#include "core/quant.h"

namespace compress {

using Shape = std::vector<int64_t>;
// The element count; INT64_MAX when the product overflows (shapes read from files are
// checked with ShapeElements in core/checked_math.h first).
int64_t NumElements(const Shape& s);

// A 2-D weight stored as the product of two factors: W [rows, cols] = A [rows, rank] x
// B [rank, cols]. Values are f32, already rounded to the tensor's dtype.
struct LowRankFactors {
  int64_t rank = 0;
  std::vector<float> a, b;
};
std::string ShapeString(const Shape& s);  // "[8192, 128]"

// Bytes of pass results a run keeps in memory before it produces them on demand instead
// (Tensor::LazyQuantized): COMPRESS_MEMORY_BUDGET (bytes) when set, else a quarter of the
// machine's physical memory.
int64_t ResultMemoryBudget();

// A tensor's bytes are either present (owned or mapped) or produced on demand by a
// function, so a pipeline over a large model streams one tensor at a time through
// the writer instead of holding every converted tensor in memory.
class Tensor {
 public:
  using Producer = std::function<absl::StatusOr<std::shared_ptr<const Buffer>>()>;

  Tensor() = default;
  Tensor(DType dtype, Shape shape, std::shared_ptr<const Buffer> data);
  static Tensor Lazy(DType dtype, Shape shape, Producer producer);
  // Copies f32 values into a new tensor of type `dtype`.
  static absl::StatusOr<Tensor> FromF32(std::span<const float> values, Shape shape, DType dtype);

  // An int8 code tensor carrying integer quantization parameters; values are (q - z) * s.
  static Tensor Quantized(Shape shape, std::vector<int8_t> codes, QuantInfo info);
  static Tensor Quantized(Shape shape, std::shared_ptr<const Buffer> codes, QuantInfo info);
  // The same, with the codes produced on demand (`codes` must give the same bytes every
  // call): a pass over a model larger than memory keeps only the quantization parameters.
  static Tensor LazyQuantized(Shape shape, QuantInfo info, Producer codes);
  // The same for a deferred quantization (DeferredQuant::MakeDeferred): its codes come from
  // the production `info` shares.
  static Tensor DeferredQuantized(Shape shape, QuantInfo info);
  // A low-rank weight of type `dtype`: Data()/ToF32() give the dense product A x B (computed
  // on demand); writers that know the form store the factors instead.
  static Tensor Factorized(DType dtype, Shape shape, LowRankFactors factors);

  DType dtype() const { return dtype_; }
  const QuantInfo* quant() const { return quant_.get(); }
  const LowRankFactors* factors() const { return factors_.get(); }
  const Shape& shape() const { return shape_; }
  int64_t numel() const { return NumElements(shape_); }
  // The columns of the tensor read as the matrix [shape[0], the rest]: a 2-D tensor's shape[1],
  // a convolution kernel [M, C/group, k...]'s C/group x k... (how such kernels are quantized:
  // one row per output channel); 0 when shape[0] is 0, 1 for a scalar.
  int64_t MatrixCols() const {
    return shape_.empty() ? 1 : shape_[0] == 0 ? 0 : numel() / shape_[0];
  }
  int64_t nbytes() const { return DTypeBytes(dtype_, numel()); }  // the element bytes only
  // Bytes a writer stores for this tensor: elements plus quantization scales/zero points, or
  // the two factors of a low-rank weight.
  int64_t storage_bytes() const;
  bool is_lazy() const { return !data_; }
  // Whether the bytes are a range of a file mapped by a reader: reading them again costs a
  // copy (ReadOnce), not a recomputation.
  bool mapped() const;
  // Whether `o` is this same tensor: same type, shape and the same storage objects (a pass
  // that wrote a tensor made new ones). Used to tell whether a pass changed anything.
  bool SameAs(const Tensor& o) const {
    return dtype_ == o.dtype_ && shape_ == o.shape_ && data_ == o.data_ && quant_ == o.quant_ &&
           factors_ == o.factors_ && static_cast<bool>(producer_) == static_cast<bool>(o.producer_);
  }

  // The raw little-endian bytes (computed now if lazy; not cached).
  absl::StatusOr<std::shared_ptr<const Buffer>> Data() const;
  // Data() for a reader that goes over the bytes once and drops them (the data-free
  // quantizers, cast): a tensor mapped from a file, up to kRecycledPoolMax bytes, comes as a
  // copy read into a recycled buffer (MappedFile::ReadAt) rather than as the mapping's pages,
  // which cost a fault each few pages. Larger or other tensors: Data().
  absl::StatusOr<std::shared_ptr<const Buffer>> ReadOnce() const;
  // The bytes in a buffer of their own, never a view of a file's pages (which a caller may
  // then release): read from the file (any size) when mapped, produced when lazy, else copied.
  absl::StatusOr<std::shared_ptr<const Buffer>> ReadCopy() const;
  // All elements decoded to f32 (dequantized when quantized).
  absl::StatusOr<std::vector<float>> ToF32() const;
  // Drops the pages of a file-backed tensor from memory once a reader is done with it.
  void ReleasePages() const;

 private:
  DType dtype_ = DType::kF32;
  Shape shape_;
  std::shared_ptr<const Buffer> data_;
  Producer producer_;
  std::shared_ptr<const QuantInfo> quant_;
  std::shared_ptr<const LowRankFactors> factors_;
};

// The zero points of quantized `t` as an I8 tensor [channels, groups], made when a writer asks
// (a deferred quantization's exist once its codes are produced).
Tensor ZeroPointTensor(const Tensor& t);

// An I64 tensor of `shape` holding `v` (shape lists, index lists, row offsets).
Tensor I64Tensor(const std::vector<int64_t>& v, const Shape& shape);

// The tensor's values as f32 for a compression method: an error naming `name` and the first
// position when a value is NaN or infinite (quantizing or pruning it would hide the damage).
absl::StatusOr<std::vector<float>> FiniteWeights(const Tensor& t, const std::string& name);
// That error for the value v at flat index i of a tensor with `cols` columns.
absl::Status NonFiniteWeightError(std::string_view name, float v, int64_t i, int64_t cols);

}  // namespace compress
