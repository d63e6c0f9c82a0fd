// Quantization operators: DequantizeLinear / QuantizeLinear (per tensor or per axis),
// DynamicQuantizeLinear, MatMulInteger, and com.microsoft MatMulNBits (4-bit blocks, as our writer emits
// and ONNX Runtime runs).
#include <cmath>

#include "core/checked_math.h"
#include "runtime/onnx/kernel.h"

namespace compress::onnxrt {
namespace {

// Per-element (scale, zero point) index for per-tensor or per-axis parameters.
absl::StatusOr<std::vector<int64_t>> ParamIndex(const KernelContext& ctx, const Value& x, const Value& scale) {
  std::vector<int64_t> idx(x.numel(), 0);
  if (scale.numel() == 1) return idx;
  if (scale.rank() != 1) return Unimplemented("{}: only per-tensor and per-axis (1-D) scales are supported", ctx.where());
  ASSIGN_OR_RETURN(int axis, NormAxis(ctx.Int("axis", 1), x.rank(), ctx.where()));
  if (x.shape[axis] != scale.numel())
    return InvalidArgument("{}: {} scales for axis {} of size {}", ctx.where(), scale.numel(), axis, x.shape[axis]);
  int64_t inner = 1;
  for (int d = axis + 1; d < x.rank(); ++d) inner *= x.shape[d];
  for (int64_t i = 0; i < x.numel(); ++i) idx[i] = (i / inner) % scale.numel();
  return idx;
}

absl::Status DequantizeKernel(KernelContext& ctx) {
  ASSIGN_OR_RETURN(const Value* x, ctx.Required(0));
  ASSIGN_OR_RETURN(const Value* s, ctx.Required(1));
  const Value* zp = ctx.in(2);
  if (s->dtype != DType::kF32) return Unimplemented("{}: only f32 scales are supported", ctx.where());
  ASSIGN_OR_RETURN(auto idx, ParamIndex(ctx, *x, *s));
  ASSIGN_OR_RETURN(Value xd, CastValue(*x, DType::kF64));
  std::vector<double> z(s->numel(), 0.0);
  if (zp) {
    if (zp->numel() != s->numel()) return InvalidArgument("{}: zero point and scale sizes differ", ctx.where());
    ASSIGN_OR_RETURN(Value zd, CastValue(*zp, DType::kF64));
    z.assign(zd.data<double>(), zd.data<double>() + zd.numel());
  }
  Value& o = Output(ctx, 0, DType::kF32, x->shape);
  for (int64_t i = 0; i < x->numel(); ++i)
    o.data<float>()[i] = static_cast<float>((xd.data<double>()[i] - z[idx[i]]) * s->data<float>()[idx[i]]);
  return absl::OkStatus();
}

template <class T>
void Saturate(double v, T* out, double lo, double hi) {
  // NaN (x / scale of a NaN input or a zero scale of zero) becomes 0, as an x86 conversion makes it.
  *out = v == v ? static_cast<T>(std::clamp(std::nearbyint(v), lo, hi)) : T{0};
}

absl::Status QuantizeKernel(KernelContext& ctx) {
  ASSIGN_OR_RETURN(const Value* x, ctx.Required(0));
  ASSIGN_OR_RETURN(const Value* s, ctx.Required(1));
  const Value* zp = ctx.in(2);
  ASSIGN_OR_RETURN(auto idx, ParamIndex(ctx, *x, *s));
  ASSIGN_OR_RETURN(Value xd, CastValue(*x, DType::kF64));
  ASSIGN_OR_RETURN(Value sd, CastValue(*s, DType::kF64));
  const DType out_t = zp ? zp->dtype : DType::kU8;
  if (out_t != DType::kU8 && out_t != DType::kI8) return Unimplemented("{}: output type {}", ctx.where(), DTypeName(out_t));
  std::vector<double> z(s->numel(), 0.0);
  if (zp) {
    ASSIGN_OR_RETURN(Value zd, CastValue(*zp, DType::kF64));
    if (zd.numel() != s->numel()) return InvalidArgument("{}: zero point and scale sizes differ", ctx.where());
    z.assign(zd.data<double>(), zd.data<double>() + zd.numel());
  }
  Value& o = Output(ctx, 0, out_t, x->shape);
  for (int64_t i = 0; i < x->numel(); ++i) {
    // round(x / scale) + zero point: the rounding happens before the zero point is added.
    // Divide in the input's precision (f32 inputs: an f32 quotient, as ONNX Runtime does).
    const double ratio = x->dtype == DType::kF32
                             ? static_cast<double>(static_cast<float>(xd.data<double>()[i]) /
                                                   static_cast<float>(sd.data<double>()[idx[i]]))
                             : xd.data<double>()[i] / sd.data<double>()[idx[i]];
    const double q = std::nearbyint(ratio) + z[idx[i]];
    if (out_t == DType::kU8) Saturate<uint8_t>(q, o.data<uint8_t>() + i, 0, 255);
    else Saturate<int8_t>(q, o.data<int8_t>() + i, -128, 127);
  }
  return absl::OkStatus();
}

absl::Status DynamicQuantizeKernel(KernelContext& ctx) {
  ASSIGN_OR_RETURN(const Value* x, ctx.Required(0));
  ASSIGN_OR_RETURN(auto f, ToFloats(*x));
  float lo = 0.f, hi = 0.f;
  for (float v : f) {
    lo = std::min(lo, v);
    hi = std::max(hi, v);
  }
  const float scale = (hi - lo) / 255.0f;
  const float zpf = scale == 0 ? 0.f : std::clamp(std::nearbyint(0.0f - lo / scale), 0.0f, 255.0f);
  Value& y = Output(ctx, 0, DType::kU8, x->shape);
  for (size_t i = 0; i < f.size(); ++i)
    Saturate<uint8_t>(scale == 0 ? zpf : std::nearbyint(f[i] / scale) + zpf, y.data<uint8_t>() + i, 0, 255);
  ctx.out(1) = MakeValue(DType::kF32, std::vector<float>{scale}, {});
  ctx.out(2) = MakeValue(DType::kU8, std::vector<uint8_t>{static_cast<uint8_t>(zpf)}, {});
  return absl::OkStatus();
}

// Y[..., N] = A[..., K] x W, W[k, n] = (nibble(k of row n) - zp[n, block]) * scale[n, block].
absl::Status MatMulNBitsKernel(KernelContext& ctx) {
  ASSIGN_OR_RETURN(const Value* a, ctx.Required(0));
  ASSIGN_OR_RETURN(const Value* b, ctx.Required(1));
  ASSIGN_OR_RETURN(const Value* s, ctx.Required(2));
  const Value* zp = ctx.in(3);
  const int64_t K = ctx.Int("K", 0), N = ctx.Int("N", 0), bits = ctx.Int("bits", 4), bs = ctx.Int("block_size", 0);
  if (bits != 4) return Unimplemented("{}: only bits=4 is supported", ctx.where());
  if (K <= 0 || N <= 0 || bs < 2 || bs % 2) return InvalidArgument("{}: bad K/N/block_size", ctx.where());
  if (ctx.in(4) || ctx.in(5)) return Unimplemented("{}: g_idx and bias inputs are not supported", ctx.where());
  const int64_t blocks = (K + bs - 1) / bs;
  if (a->dtype != DType::kF32 || s->dtype != DType::kF32 || b->dtype != DType::kU8)
    return Unimplemented("{}: supported types are A f32, B uint8, scales f32", ctx.where());
  const std::optional<int64_t> n_blocks = CheckedMul(N, blocks);
  const std::optional<int64_t> b_bytes = n_blocks ? CheckedMul(*n_blocks, bs / 2) : std::nullopt;
  if (!b_bytes || b->numel() != *b_bytes || s->numel() != *n_blocks)
    return InvalidArgument("{}: B or scales size does not match K={}, N={}, block_size={}", ctx.where(), K, N, bs);
  if (a->rank() < 1 || a->shape.back() != K) return InvalidArgument("{}: A's last dim must be K={}", ctx.where(), K);
  const int64_t zp_bytes = (blocks + 1) / 2;
  if (zp && (zp->dtype != DType::kU8 || zp->numel() != N * zp_bytes))
    return Unimplemented("{}: zero points must be packed uint8 [N * ceil(blocks/2)]", ctx.where());
  Mat<float> w(K, N);
  const uint8_t* pb = b->data<uint8_t>();
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < K; ++k) {
      const int64_t blk = k / bs, j = k % bs;
      const uint8_t byte = pb[(n * blocks + blk) * (bs / 2) + j / 2];
      const int q = (j & 1) ? byte >> 4 : byte & 0xF;
      int z = 8;
      if (zp) {
        const uint8_t zb = zp->data<uint8_t>()[n * zp_bytes + blk / 2];
        z = (blk & 1) ? zb >> 4 : zb & 0xF;
      }
      w(k, n) = static_cast<float>(q - z) * s->data<float>()[n * blocks + blk];
    }
  Shape out = a->shape;
  out.back() = N;
  Value& o = Output(ctx, 0, DType::kF32, out);
  const int64_t rows = a->numel() / K;
  MapM<float>(o.data<float>(), rows, N).noalias() = MapC<float>(a->data<float>(), rows, K) * w;
  return absl::OkStatus();
}

// An 8-bit input as int32 values minus its zero point: scalar, or 1-D along `axis` of the
// matrix ([M] for A's rows, [N] for B's columns).
absl::StatusOr<std::vector<int32_t>> ZeroPoints(const KernelContext& ctx, const Value* zp, DType t, int64_t n,
                                                const char* which) {
  std::vector<int32_t> z(n, 0);
  if (!zp) return z;
  if (zp->dtype != t) return InvalidArgument("{}: {} zero point type differs from its input's", ctx.where(), which);
  if (zp->numel() != 1 && (zp->rank() != 1 || zp->numel() != n))
    return Unimplemented("{}: {} zero point must be a scalar or 1-D of size {}", ctx.where(), which, n);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t j = zp->numel() == 1 ? 0 : i;
    z[i] = t == DType::kU8 ? zp->data<uint8_t>()[j] : zp->data<int8_t>()[j];
  }
  return z;
}

// Y = (A - a_zp) x (B - b_zp) in int32, with MatMul's shapes and broadcasting; A and B uint8 or
// int8. Exact: every product and sum is an integer.
absl::Status MatMulIntegerKernel(KernelContext& ctx) {
  ASSIGN_OR_RETURN(const Value* a, ctx.Required(0));
  ASSIGN_OR_RETURN(const Value* b, ctx.Required(1));
  auto eight_bit = [](DType t) { return t == DType::kU8 || t == DType::kI8; };
  if (!eight_bit(a->dtype) || !eight_bit(b->dtype))
    return InvalidArgument("{}: inputs must be uint8 or int8", ctx.where());
  if (a->rank() < 2 || b->rank() < 2)
    return Unimplemented("{}: inputs of rank >= 2 are supported", ctx.where());
  const int64_t m = a->shape[a->rank() - 2], k = a->shape.back(), n = b->shape.back();
  if (b->shape[b->rank() - 2] != k) {
    return InvalidArgument("{}: shapes {} and {} do not multiply", ctx.where(), ShapeString(a->shape),
                           ShapeString(b->shape));
  }
  ASSIGN_OR_RETURN(auto za, ZeroPoints(ctx, ctx.in(2), a->dtype, m, "A's"));
  ASSIGN_OR_RETURN(auto zb, ZeroPoints(ctx, ctx.in(3), b->dtype, n, "B's"));
  Shape ab(a->shape.begin(), a->shape.end() - 2), bb(b->shape.begin(), b->shape.end() - 2);
  ASSIGN_OR_RETURN(Shape batch, BroadcastShapes(ab, bb, ctx.where()));
  Shape out = batch;
  out.push_back(m);
  out.push_back(n);
  const auto ia = BroadcastIndex(ab, batch), ib = BroadcastIndex(bb, batch);
  auto widen = [](const Value& v) {
    std::vector<int32_t> r(v.numel());
    for (int64_t i = 0; i < v.numel(); ++i) r[i] = v.dtype == DType::kU8 ? v.data<uint8_t>()[i] : v.data<int8_t>()[i];
    return r;
  };
  const std::vector<int32_t> av = widen(*a), bv = widen(*b);
  Value& o = Output(ctx, 0, DType::kI32, out);
  int32_t* y = o.data<int32_t>();
  std::vector<int32_t> col(k);
  for (size_t bi = 0; bi < ia.size(); ++bi) {
    const int32_t* pa = av.data() + ia[bi] * m * k;
    const int32_t* pb = bv.data() + ib[bi] * k * n;
    for (int64_t j = 0; j < n; ++j) {
      for (int64_t t = 0; t < k; ++t) col[t] = pb[t * n + j] - zb[j];
      for (int64_t i = 0; i < m; ++i) {
        int32_t s = 0;
        for (int64_t t = 0; t < k; ++t) s += (pa[i * k + t] - za[i]) * col[t];
        y[bi * m * n + i * n + j] = s;
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace

void RegisterQuantKernels(KernelRegistry& r) {
  r.Add("", "DequantizeLinear", DequantizeKernel);
  r.Add("", "QuantizeLinear", QuantizeKernel);
  r.Add("", "DynamicQuantizeLinear", DynamicQuantizeKernel);
  r.Add("", "MatMulInteger", MatMulIntegerKernel);
  r.Add("com.microsoft", "MatMulNBits", MatMulNBitsKernel);
}

}  // namespace compress::onnxrt
