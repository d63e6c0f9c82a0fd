// Tensor storage: owned, mmap-backed and lazy tensors; f32 conversion.
#include "core/tensor.h"

#include <Eigen/Core>

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "core/status.h"

namespace compress {

int64_t NumElements(const Shape& s) {
  if (std::find(s.begin(), s.end(), 0) != s.end()) return 0;  // before any product of the others overflows
  int64_t n = 1;
  for (int64_t d : s) {
    if (__builtin_mul_overflow(n, d, &n)) return INT64_MAX;  // never wraps to a small count
  }
  return n;
}

std::string ShapeString(const Shape& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

Tensor::Tensor(DType dtype, Shape shape, std::shared_ptr<const Buffer> data)
    : dtype_(dtype), shape_(std::move(shape)), data_(std::move(data)) {}

Tensor Tensor::Lazy(DType dtype, Shape shape, Producer producer) {
  Tensor t;
  t.dtype_ = dtype;
  t.shape_ = std::move(shape);
  t.producer_ = std::move(producer);
  return t;
}

absl::StatusOr<Tensor> Tensor::FromF32(std::span<const float> values, Shape shape, DType dtype) {
  if (NumElements(shape) != static_cast<int64_t>(values.size())) {
    return Internal("FromF32: {} values for shape {}", values.size(), ShapeString(shape));
  }
  auto buf = std::make_shared<OwnedBuffer>(DTypeBytes(dtype, values.size()));
  RETURN_IF_ERROR(EncodeFromF32(dtype, values.data(), values.size(), buf->mutable_data()));
  return Tensor(dtype, std::move(shape), std::move(buf));
}

Tensor Tensor::Quantized(Shape shape, std::vector<int8_t> codes, QuantInfo info) {
  auto bytes = std::make_shared<UninitBuffer>(codes.size());
  std::memcpy(bytes->mutable_data(), codes.data(), codes.size());
  return Quantized(std::move(shape), std::shared_ptr<const Buffer>(std::move(bytes)), std::move(info));
}

Tensor Tensor::Quantized(Shape shape, std::shared_ptr<const Buffer> codes, QuantInfo info) {
  Tensor t(DType::kI8, std::move(shape), std::move(codes));
  t.quant_ = std::make_shared<const QuantInfo>(std::move(info));
  return t;
}

Tensor Tensor::LazyQuantized(Shape shape, QuantInfo info, Producer codes) {
  Tensor t = Lazy(DType::kI8, std::move(shape), std::move(codes));
  t.quant_ = std::make_shared<const QuantInfo>(std::move(info));
  return t;
}

Tensor Tensor::DeferredQuantized(Shape shape, QuantInfo info) {
  auto shared = std::make_shared<const QuantInfo>(std::move(info));
  Tensor t = Lazy(DType::kI8, std::move(shape), [shared] { return DeferredQuant::Codes(*shared); });
  t.quant_ = std::move(shared);
  return t;
}

int64_t ResultMemoryBudget() {
  if (const char* v = std::getenv("COMPRESS_MEMORY_BUDGET")) {
    char* end = nullptr;
    const long long n = std::strtoll(v, &end, 10);
    if (end != v && n >= 0) return n;
  }
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
  return pages > 0 && page > 0 ? static_cast<int64_t>(pages) * page / 4 : int64_t{4} << 30;
}

Tensor Tensor::Factorized(DType dtype, Shape shape, LowRankFactors f) {
  auto shared = std::make_shared<const LowRankFactors>(std::move(f));
  const int64_t rows = shape[0], cols = shape[1];
  Tensor t = Lazy(dtype, shape, [shared, rows, cols, dtype]() -> absl::StatusOr<std::shared_ptr<const Buffer>> {
    using Mat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
    const int64_t r = shared->rank;
    Mat w = Eigen::Map<const Mat>(shared->a.data(), rows, r) * Eigen::Map<const Mat>(shared->b.data(), r, cols);
    auto buf = std::make_shared<OwnedBuffer>(DTypeBytes(dtype, rows * cols));
    RETURN_IF_ERROR(EncodeFromF32(dtype, w.data(), rows * cols, buf->mutable_data()));
    return buf;
  });
  t.factors_ = std::move(shared);
  return t;
}

int64_t Tensor::storage_bytes() const {
  if (factors_) return DTypeBytes(dtype_, factors_->rank * (shape_[0] + shape_[1]));
  if (!quant_) return nbytes();
  // What the writers store: codes packed at `bits` each, f32 scales (one byte for E8M0),
  // one-byte zero points, and per LLM.int8() outlier input an index and f16 column.
  const QuantInfo& q = *quant_;
  const int64_t codes = (numel() * q.bits + 7) / 8;
  // A deferred quantization's counts come from its layout (its values do not exist yet).
  const int64_t nscales = q.deferred() ? q.channels * q.groups : static_cast<int64_t>(q.scales().size());
  const int64_t nzero = q.deferred() ? (q.symmetric ? 0 : nscales) : static_cast<int64_t>(q.zero_points().size());
  const int64_t scales = nscales * (q.e8m0_scales() ? 1 : 4);
  const int64_t outliers = static_cast<int64_t>(q.outlier_inputs.size()) * 8 +
                           static_cast<int64_t>(q.outlier_values.size()) * 2;
  return codes + scales + nzero + outliers;
}

absl::StatusOr<std::shared_ptr<const Buffer>> Tensor::Data() const {
  if (data_) return data_;
  if (!producer_) return Internal("tensor has neither data nor producer");
  ASSIGN_OR_RETURN(auto buf, producer_());
  if (static_cast<int64_t>(buf->size()) != nbytes()) {
    return Internal("lazy tensor produced {} bytes, expected {}", buf->size(), nbytes());
  }
  return buf;
}

namespace {
// The file and the range of it that `data` is, when it is a slice of a mapped file.
const MappedFile* MappedRange(const Buffer* data, const SliceBuffer** slice) {
  *slice = dynamic_cast<const SliceBuffer*>(data);
  return *slice ? dynamic_cast<const MappedFile*>(&(*slice)->base()) : nullptr;
}
}  // namespace

bool Tensor::mapped() const {
  const SliceBuffer* slice;
  return MappedRange(data_.get(), &slice) != nullptr;
}

absl::StatusOr<std::shared_ptr<const Buffer>> Tensor::ReadOnce() const {
  const SliceBuffer* slice;
  const MappedFile* file = MappedRange(data_.get(), &slice);
  if (!file || slice->size() < kRecycledBlockMin || slice->size() > kRecycledPoolMax) return Data();
  return ReadCopy();
}

absl::StatusOr<std::shared_ptr<const Buffer>> Tensor::ReadCopy() const {
  if (is_lazy()) return Data();
  const SliceBuffer* slice;
  auto copy = std::make_shared<UninitBuffer>(data_->size());
  if (const MappedFile* file = MappedRange(data_.get(), &slice)) {
    RETURN_IF_ERROR(file->ReadAt(slice->offset(), slice->size(), copy->mutable_data()));
  } else {
    std::memcpy(copy->mutable_data(), data_->data(), data_->size());
  }
  return std::shared_ptr<const Buffer>(std::move(copy));
}

absl::StatusOr<std::vector<float>> Tensor::ToF32() const {
  ASSIGN_OR_RETURN(auto buf, Data());
  std::vector<float> out(numel());
  if (quant_) {
    // A kernel of rank > 2 (an ONNX convolution's) is quantized as the matrix [shape[0], rest].
    const bool matrix = shape_.size() == 2 || (shape_.size() > 2 && quant_->channel_axis == 0 && shape_[0] > 0);
    if (!matrix || dtype_ != DType::kI8) return Internal("quantized tensor must be a 2-D (or kernel) int8 tensor");
    const int64_t rows = shape_[0], cols = MatrixCols();
    Dequantize({reinterpret_cast<const int8_t*>(buf->data()), buf->size()}, rows, cols, *quant_, out.data());
    return out;
  }
  RETURN_IF_ERROR(DecodeToF32(dtype_, buf->data(), numel(), out.data()));
  return out;
}

void Tensor::ReleasePages() const {
  const SliceBuffer* slice;
  if (const MappedFile* file = MappedRange(data_.get(), &slice)) file->Release(slice->offset(), slice->size());
}

absl::Status NonFiniteWeightError(std::string_view name, float v, int64_t i, int64_t cols) {
  cols = std::max<int64_t>(cols, 1);
  return InvalidArgument("tensor '{}' holds {} at [{}, {}]; fix the checkpoint or exclude the tensor", name, v,
                         i / cols, i % cols);
}

absl::StatusOr<std::vector<float>> FiniteWeights(const Tensor& t, const std::string& name) {
  ASSIGN_OR_RETURN(std::vector<float> w, t.ToF32());
  const int64_t cols = t.shape().empty() ? 1 : t.shape().back();
  const int64_t n = static_cast<int64_t>(w.size());
  bool bad = false;  // found in parallel; the first one is then located in order
#pragma omp parallel for reduction(|| : bad) schedule(static) if (n > (1 << 16))
  for (int64_t i = 0; i < n; ++i) bad = bad || !std::isfinite(w[i]);
  if (!bad) return w;
  for (size_t i = 0; i < w.size(); ++i) {
    if (std::isfinite(w[i])) continue;
    return NonFiniteWeightError(name, w[i], static_cast<int64_t>(i), cols);
  }
  return w;
}

Tensor ZeroPointTensor(const Tensor& t) {
  const QuantInfo& q = *t.quant();
  return Tensor::Lazy(DType::kI8, {q.channels, q.groups}, [t]() -> absl::StatusOr<std::shared_ptr<const Buffer>> {
    const std::vector<int8_t>& z = t.quant()->zero_points();
    auto b = std::make_shared<UninitBuffer>(z.size());
    std::memcpy(b->mutable_data(), z.data(), z.size());
    return std::shared_ptr<const Buffer>(std::move(b));
  });
}

Tensor I64Tensor(const std::vector<int64_t>& v, const Shape& shape) {
  auto buf = std::make_shared<OwnedBuffer>(v.size() * sizeof(int64_t));
  std::memcpy(buf->mutable_data(), v.data(), v.size() * sizeof(int64_t));
  return Tensor(DType::kI64, shape, std::move(buf));
}

}  // namespace compress
