#include "runtime/onnx/value.h"

#include <cmath>
#include <type_traits>

#include "core/file_util.h"
#include "formats/onnx_io.h"
#include "onnx/onnx_pb.h"

namespace compress::onnxrt {

int64_t CheckedNumel(const Shape& shape) {
  auto n = CheckedElements(shape);
  if (!n) throw ShapeTooLarge(fmt::format("shape {} is negative or holds more than 2^48 elements", ShapeString(shape)));
  return *n;
}
namespace {

// True for the types stored as plain C++ arithmetic values.
template <class F>
bool DispatchPlain(DType t, F&& f) {
  switch (t) {
    case DType::kF32: f(float{}); return true;
    case DType::kF64: f(double{}); return true;
    case DType::kI64: f(int64_t{}); return true;
    case DType::kI32: f(int32_t{}); return true;
    case DType::kI16: f(int16_t{}); return true;
    case DType::kI8: f(int8_t{}); return true;
    case DType::kU64: f(uint64_t{}); return true;
    case DType::kU32: f(uint32_t{}); return true;
    case DType::kU16: f(uint16_t{}); return true;
    case DType::kU8: f(uint8_t{}); return true;
    case DType::kBool: f(bool{}); return true;
    default: return false;
  }
}

template <class D, class S>
D ConvertElement(S x) {
  if constexpr (std::is_same_v<D, bool>) {
    return x != S{};
  } else if constexpr (std::is_floating_point_v<S> && std::is_integral_v<D>) {
    if (!std::isfinite(x)) return D{};
    // Truncate toward zero through a wide integer (out-of-range results are unspecified in ONNX).
    const double t = std::trunc(static_cast<double>(x));
    if (t >= 9.2e18 || t <= -9.2e18) return D{};
    return static_cast<D>(static_cast<int64_t>(t));
  } else {
    return static_cast<D>(x);
  }
}

}  // namespace

absl::StatusOr<std::vector<int64_t>> ToInt64s(const Value& v, const std::string& what) {
  std::vector<int64_t> out(v.numel());
  if (v.dtype == DType::kI64) {
    CopyBytes(out.data(), v.bytes.data(), out.size() * 8);
  } else if (v.dtype == DType::kI32) {
    for (int64_t i = 0; i < v.numel(); ++i) out[i] = v.data<int32_t>()[i];
  } else {
    return InvalidArgument("{}: expected int64 or int32, got {}", what, DTypeName(v.dtype));
  }
  return out;
}

absl::StatusOr<std::vector<float>> ToFloats(const Value& v) {
  ASSIGN_OR_RETURN(Value f, CastValue(v, DType::kF32));
  return std::vector<float>(f.data<float>(), f.data<float>() + f.numel());
}

absl::StatusOr<Value> CastValue(const Value& v, DType to) {
  if (v.dtype == to) return v;
  const int64_t n = v.numel();
  // Non-plain float types (f16, bf16, fp8) go through f32.
  Value src_f32;
  const Value* src = &v;
  bool plain_src = DispatchPlain(v.dtype, [](auto) {});
  if (!plain_src) {
    if (!IsFloating(v.dtype)) return Unimplemented("Cast: source type {} is not supported", DTypeName(v.dtype));
    src_f32 = Value(DType::kF32, v.shape);
    RETURN_IF_ERROR(DecodeToF32(v.dtype, reinterpret_cast<const uint8_t*>(v.bytes.data()), n, src_f32.data<float>()));
    src = &src_f32;
    if (to == DType::kF32) return src_f32;
  }
  const bool plain_dst = DispatchPlain(to, [](auto) {});
  const DType mid = plain_dst ? to : DType::kF32;
  if (!plain_dst && !IsFloating(to)) return Unimplemented("Cast: target type {} is not supported", DTypeName(to));
  Value out(mid, v.shape);
  DispatchPlain(src->dtype, [&](auto s) {
    using S = decltype(s);
    const S* in = src->data<S>();
    DispatchPlain(mid, [&](auto d) {
      using D = decltype(d);
      D* o = out.data<D>();
      for (int64_t i = 0; i < n; ++i) o[i] = ConvertElement<D>(in[i]);
    });
  });
  if (plain_dst) return out;
  Value enc(to, v.shape);
  RETURN_IF_ERROR(EncodeFromF32(to, out.data<float>(), n, reinterpret_cast<uint8_t*>(enc.bytes.data())));
  return enc;
}

absl::StatusOr<Value> FromTensorProto(const onnx::TensorProto& t) {
  const std::string what = fmt::format("tensor '{}'", t.name());
  auto dt = DTypeFromOnnx(t.data_type());
  if (!dt.ok()) return Unimplemented("{}: ONNX data type {} is not supported", what, t.data_type());
  ASSIGN_OR_RETURN(auto bytes, OnnxInlineTensorBytes(t, *dt, what));
  Value v;
  v.dtype = *dt;
  v.shape.assign(t.dims().begin(), t.dims().end());
  v.bytes.resize(bytes.size());
  CopyBytes(v.bytes.data(), bytes.data(), bytes.size());
  return v;
}

absl::StatusOr<Value> FromTensor(const Tensor& t) {
  if (t.quant() || t.factors()) {
    ASSIGN_OR_RETURN(auto f, t.ToF32());
    return MakeValue(DType::kF32, std::move(f), t.shape());
  }
  ASSIGN_OR_RETURN(auto buf, t.Data());
  Value v;
  v.dtype = t.dtype();
  v.shape = t.shape();
  v.bytes.resize(buf->size());
  CopyBytes(v.bytes.data(), buf->data(), buf->size());
  return v;
}

absl::StatusOr<Value> ReadTensorFile(const std::string& path) {
  ASSIGN_OR_RETURN(std::string bytes, ReadSmallFile(path, 1ull << 32));
  onnx::TensorProto t;
  if (!t.ParseFromString(bytes)) return DataLoss("{}: not an ONNX TensorProto", path);
  auto v = FromTensorProto(t);
  if (!v.ok()) return Annotate(v.status(), path);
  return v;
}

void ToTensorProto(const Value& v, const std::string& name, onnx::TensorProto& out) {
  out.set_name(name);
  out.set_data_type(OnnxFromDType(v.dtype));
  for (int64_t d : v.shape) out.add_dims(d);
  out.set_raw_data(std::string(reinterpret_cast<const char*>(v.bytes.data()), v.bytes.size()));
}

std::vector<int64_t> Strides(const Shape& s) {
  std::vector<int64_t> st(s.size(), 1);
  for (int i = static_cast<int>(s.size()) - 2; i >= 0; --i) st[i] = st[i + 1] * s[i + 1];
  return st;
}

absl::StatusOr<Shape> BroadcastShapes(const Shape& a, const Shape& b, const std::string& op) {
  const size_t r = std::max(a.size(), b.size());
  Shape out(r);
  for (size_t i = 0; i < r; ++i) {
    const int64_t da = i < r - a.size() ? 1 : a[i - (r - a.size())];
    const int64_t db = i < r - b.size() ? 1 : b[i - (r - b.size())];
    if (da != db && da != 1 && db != 1) {
      return InvalidArgument("{}: shapes {} and {} do not broadcast", op, ShapeString(a), ShapeString(b));
    }
    out[i] = da == 1 ? db : da;
  }
  if (!CheckedElements(out)) {
    return InvalidArgument("{}: broadcasting {} and {} gives more than 2^48 elements", op, ShapeString(a),
                           ShapeString(b));
  }
  return out;
}

std::vector<int64_t> BroadcastIndex(const Shape& in, const Shape& out) {
  const int64_t n = NumElements(out);
  std::vector<int64_t> idx(n);
  const int r = static_cast<int>(out.size());
  // Input strides aligned to the output's axes; 0 where the input is broadcast.
  std::vector<int64_t> st(r, 0);
  const auto in_st = Strides(in);
  const int off = r - static_cast<int>(in.size());
  for (int i = 0; i < static_cast<int>(in.size()); ++i) st[i + off] = in[i] == 1 ? 0 : in_st[i];
  std::vector<int64_t> pos(r, 0);
  int64_t cur = 0;
  for (int64_t k = 0; k < n; ++k) {
    idx[k] = cur;
    for (int d = r - 1; d >= 0; --d) {
      if (++pos[d] < out[d]) {
        cur += st[d];
        break;
      }
      cur -= st[d] * (out[d] - 1);
      pos[d] = 0;
    }
  }
  return idx;
}

absl::StatusOr<int> NormAxis(int64_t axis, int rank, const std::string& op) {
  // No axis of a scalar: every caller indexes rank-sized arrays with the result.
  if (axis < -rank || axis >= rank) {
    return InvalidArgument("{}: axis {} is out of range for rank {}", op, axis, rank);
  }
  return static_cast<int>(axis < 0 ? axis + rank : axis);
}

}  // namespace compress::onnxrt
