// Values flowing through the ONNX interpreter: a dtype, a shape and little-endian element
// bytes. Conversions from/to ONNX TensorProto, and the element-type dispatch kernels use.
#pragma once

#include <cstdint>
#include <cstring>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/aligned.h"
#include "core/checked_math.h"
#include "core/dtype.h"
#include "core/status.h"
#include "core/tensor.h"

namespace onnx {
class TensorProto;
}

namespace compress::onnxrt {

// memcpy that accepts n == 0 with null pointers (the data() of empty buffers), which memcpy
// itself does not (UndefinedBehaviorSanitizer reports it).
inline void CopyBytes(void* dst, const void* src, size_t n) {
  if (n > 0) std::memcpy(dst, src, n);
}

// A value shape whose element count overflows or passes kMaxTensorElements.
struct ShapeTooLarge : std::length_error {
  using std::length_error::length_error;
};

// The element count of `shape`, or throws ShapeTooLarge.
int64_t CheckedNumel(const Shape& shape);

struct Value {
  DType dtype = DType::kF32;
  Shape shape;
  AlignedVector<std::byte> bytes;  // 64-byte aligned: Eigen reads values in place (core/aligned.h)

  Value() = default;
  // Throws ShapeTooLarge when the shape's element count overflows or passes
  // kMaxTensorElements; Interpreter::Run turns that into an error naming the node.
  Value(DType t, Shape s) : dtype(t), shape(std::move(s)), bytes(DTypeBytes(t, CheckedNumel(shape))) {}
  int64_t numel() const { return NumElements(shape); }
  int rank() const { return static_cast<int>(shape.size()); }
  template <class T>
  T* data() {
    return reinterpret_cast<T*>(bytes.data());
  }
  template <class T>
  const T* data() const {
    return reinterpret_cast<const T*>(bytes.data());
  }
  template <class T>
  std::span<const T> span() const {
    return {data<T>(), static_cast<size_t>(numel())};
  }
};

// A value of `dtype` holding the given elements (shape [n] unless given).
template <class T>
Value MakeValue(DType dtype, std::vector<T> v, Shape shape) {
  Value out(dtype, std::move(shape));
  CopyBytes(out.bytes.data(), v.data(), out.bytes.size());
  return out;
}

// Integer view of an int32/int64 value (shape inputs, indices, axes).
absl::StatusOr<std::vector<int64_t>> ToInt64s(const Value& v, const std::string& what);
// Elements converted to f32 / f64 (any numeric type).
absl::StatusOr<std::vector<float>> ToFloats(const Value& v);
// `v` converted to `to` with ONNX Cast semantics (float -> int truncates; -> bool is != 0).
absl::StatusOr<Value> CastValue(const Value& v, DType to);

absl::StatusOr<Value> FromTensorProto(const onnx::TensorProto& t);
// A TensorProto file (input_N.pb / output_N.pb of the ONNX test-data layout); errors name it.
absl::StatusOr<Value> ReadTensorFile(const std::string& path);
absl::StatusOr<Value> FromTensor(const Tensor& t);  // store tensors: dequantized / multiplied out
void ToTensorProto(const Value& v, const std::string& name, onnx::TensorProto& out);

// Calls f(T{}) with T the C++ type of `t`, for the element types the kernels compute in.
// kFloat: f32/f64; kNumeric adds the integer types; bool is handled by kernels themselves.
enum class TypeSet { kFloat, kSigned, kNumeric };
template <TypeSet set, class F>
absl::Status Dispatch(DType t, const std::string& op, F&& f) {
  switch (t) {
    case DType::kF32: return f(float{});
    case DType::kF64: return f(double{});
    default: break;
  }
  if constexpr (set != TypeSet::kFloat) {
    switch (t) {
      case DType::kI64: return f(int64_t{});
      case DType::kI32: return f(int32_t{});
      case DType::kI16: return f(int16_t{});
      case DType::kI8: return f(int8_t{});
      default: break;
    }
  }
  if constexpr (set == TypeSet::kNumeric) {
    switch (t) {
      case DType::kU64: return f(uint64_t{});
      case DType::kU32: return f(uint32_t{});
      case DType::kU16: return f(uint16_t{});
      case DType::kU8: return f(uint8_t{});
      default: break;
    }
  }
  return Unimplemented("{}: element type {} is not supported", op, DTypeName(t));
}

// Row-major strides of a shape.
std::vector<int64_t> Strides(const Shape& s);
// Numpy-style broadcast of two shapes.
absl::StatusOr<Shape> BroadcastShapes(const Shape& a, const Shape& b, const std::string& op);
// For each output element (row-major over `out`), the element index into an input of shape
// `in` broadcast to `out`.
std::vector<int64_t> BroadcastIndex(const Shape& in, const Shape& out);
// Normalizes a possibly negative axis against `rank`.
absl::StatusOr<int> NormAxis(int64_t axis, int rank, const std::string& op);

}  // namespace compress::onnxrt
