// Shape and data-movement ONNX operators. They move elements by byte width, so they work
// for every element type of at least one byte.
#include <algorithm>
#include <cmath>
#include <numeric>

#include "formats/onnx_io.h"
#include "runtime/onnx/kernel.h"

namespace compress::onnxrt {
namespace {

absl::StatusOr<size_t> Width(const Value& v, const KernelContext& ctx) {
  const int bits = DTypeBits(v.dtype);
  if (bits < 8) return Unimplemented("{}: sub-byte element type {} is not supported", ctx.where(), DTypeName(v.dtype));
  return static_cast<size_t>(bits / 8);
}

// dst[i] = src[offset + sum_d pos_d * strides_d] over the row-major positions of `shape`
// (strides in elements, possibly zero or negative).
template <size_t W>
void CopyStridedT(const std::byte* src, const Shape& shape, const std::vector<int64_t>& strides, int64_t offset,
                  std::byte* dst) {
  const int64_t n = NumElements(shape);
  const int r = static_cast<int>(shape.size());
  if (n == 0) return;
  if (r == 0) {
    CopyBytes(dst, src + offset * W, W);
    return;
  }
  // The innermost axis runs as a tight loop; the outer positions advance like an odometer.
  const int64_t inner = shape[r - 1], inner_stride = strides[r - 1];
  std::vector<int64_t> pos(r, 0);
  int64_t cur = offset;
  for (int64_t k = 0; k < n; k += inner) {
    const std::byte* s = src + cur * W;
    std::byte* d = dst + k * W;
    if (inner_stride == 1) {
      CopyBytes(d, s, inner * W);
    } else {
      for (int64_t i = 0; i < inner; ++i) CopyBytes(d + i * W, s + i * inner_stride * W, W);
    }
    for (int dd = r - 2; dd >= 0; --dd) {
      if (++pos[dd] < shape[dd]) {
        cur += strides[dd];
        break;
      }
      cur -= strides[dd] * (shape[dd] - 1);
      pos[dd] = 0;
    }
  }
}

void CopyStrided(const std::byte* src, size_t w, const Shape& shape, const std::vector<int64_t>& strides,
                 int64_t offset, std::byte* dst) {
  switch (w) {
    case 1: return CopyStridedT<1>(src, shape, strides, offset, dst);
    case 2: return CopyStridedT<2>(src, shape, strides, offset, dst);
    case 4: return CopyStridedT<4>(src, shape, strides, offset, dst);
    case 8: return CopyStridedT<8>(src, shape, strides, offset, dst);
    default: break;
  }
  const int64_t n = NumElements(shape);
  if (n == 0) return;
  const int r = static_cast<int>(shape.size());
  std::vector<int64_t> pos(r, 0);
  int64_t cur = offset;
  for (int64_t k = 0; k < n; ++k) {
    CopyBytes(dst + k * w, src + cur * w, w);
    for (int d = r - 1; d >= 0; --d) {
      if (++pos[d] < shape[d]) {
        cur += strides[d];
        break;
      }
      cur -= strides[d] * (shape[d] - 1);
      pos[d] = 0;
    }
  }
}

// Axes from the input at `index` (newer opsets) or the attribute `name` (older ones).
absl::StatusOr<std::vector<int64_t>> AxesArg(const KernelContext& ctx, int index, const std::string& name) {
  if (const Value* v = ctx.in(index)) return ToInt64s(*v, ctx.where() + " " + name);
  return ctx.Ints(name);
}

absl::Status ShapeKernel(KernelContext& ctx) {
  ASSIGN_OR_RETURN(const Value* x, ctx.Required(0));
  const int r = x->rank();
  int64_t start = ctx.Int("start", 0), end = ctx.Int("end", r);
  if (start < 0) start += r;
  if (end < 0) end += r;
  start = std::clamp<int64_t>(start, 0, r);
  end = std::clamp<int64_t>(end, 0, r);
  std::vector<int64_t> dims(x->shape.begin() + start, x->shape.begin() + std::max(start, end));
  const int64_t n = static_cast<int64_t>(dims.size());
  ctx.out(0) = MakeValue(DType::kI64, std::move(dims), {n});
  return absl::OkStatus();
}

absl::Status SizeKernel(KernelContext& ctx) {
  ASSIGN_OR_RETURN(const Value* x, ctx.Required(0));
  ctx.out(0) = MakeValue(DType::kI64, std::vector<int64_t>{x->numel()}, {});
  return absl::OkStatus();
}

absl::Status ReshapeTo(KernelContext& ctx, const Value& x, Shape shape) {
  Value o = x;
  o.shape = std::move(shape);
  if (CheckedElements(o.shape) != x.numel()) {
    return InvalidArgument("{}: cannot reshape {} to {}", ctx.where(), ShapeString(x.shape), ShapeString(o.shape));
  }
  ctx.out(0) = std::move(o);
  return absl::OkStatus();
}

absl::Status ReshapeKernel(KernelContext& ctx) {
  ASSIGN_OR_RETURN(const Value* x, ctx.Required(0));
  std::vector<int64_t> target;
  if (ctx.opset() < 5) {
    target = ctx.Ints("shape");
  } else {
    ASSIGN_OR_RETURN(const Value* s, ctx.Required(1));
    ASSIGN_OR_RETURN(target, ToInt64s(*s, ctx.where() + " shape"));
  }
  const bool allowzero = ctx.Int("allowzero", 0) != 0;
  int infer = -1;
  int64_t known = 1;
  for (size_t i = 0; i < target.size(); ++i) {
    if (target[i] == 0 && !allowzero) {
      if (i >= x->shape.size()) return InvalidArgument("{}: shape entry 0 at axis {} has no input dim", ctx.where(), i);
      target[i] = x->shape[i];
    }
    if (target[i] == -1) {
      if (infer >= 0) return InvalidArgument("{}: more than one -1 in the target shape", ctx.where());
      infer = static_cast<int>(i);
    } else if (target[i] < 0) {
      return InvalidArgument("{}: negative dimension {} in the target shape", ctx.where(), target[i]);
    } else {
      auto k = CheckedMul(known, target[i]);
      if (!k) return InvalidArgument("{}: target shape {} is too large", ctx.where(), ShapeString(target));
      known = *k;
    }
  }
  if (infer >= 0) {
    if (known == 0 || x->numel() % known) {
      return InvalidArgument("{}: cannot infer -1 reshaping {} to {}", ctx.where(), ShapeString(x->shape),
                             ShapeString(target));
    }
    target[infer] = x->numel() / known;
  }
  return ReshapeTo(ctx, *x, std::move(target));
}

absl::Status FlattenKernel(KernelContext& ctx) {
  ASSIGN_OR_RETURN(const Value* x, ctx.Required(0));
  int64_t a = ctx.Int("axis", 1);
  if (a < -x->rank() || a > x->rank()) return InvalidArgument("{}: axis {} is out of range", ctx.where(), a);
  const int axis = static_cast<int>(a < 0 ? a + x->rank() : a);
  int64_t outer = 1;
  for (int i = 0; i < axis; ++i) outer *= x->shape[i];
  return ReshapeTo(ctx, *x, {outer, outer ? x->numel() / outer : 0});
}

absl::Status TransposeKernel(KernelContext& ctx) {
  ASSIGN_OR_RETURN(const Value* x, ctx.Required(0));
  ASSIGN_OR_RETURN(size_t w, Width(*x, ctx));
  const int r = x->rank();
  std::vector<int64_t> perm = ctx.Ints("perm");
  if (perm.empty()) {
    for (int i = r - 1; i >= 0; --i) perm.push_back(i);
  }
  if (static_cast<int>(perm.size()) != r) return InvalidArgument("{}: perm has {} entries for rank {}", ctx.where(), perm.size(), r);
  const auto st = Strides(x->shape);
  Shape out(r);
  std::vector<int64_t> ost(r);
  std::vector<bool> seen(r, false);
  for (int i = 0; i < r; ++i) {
    ASSIGN_OR_RETURN(int p, NormAxis(perm[i], r, ctx.where()));
    if (seen[p]) return InvalidArgument("{}: perm repeats axis {}", ctx.where(), p);
    seen[p] = true;
    out[i] = x->shape[p];
    ost[i] = st[p];
  }
  Value& o = Output(ctx, 0, x->dtype, out);
  CopyStrided(x->bytes.data(), w, out, ost, 0, o.bytes.data());
  return absl::OkStatus();
}

absl::Status SqueezeKernel(KernelContext& ctx) {
  ASSIGN_OR_RETURN(const Value* x, ctx.Required(0));
  ASSIGN_OR_RETURN(auto axes, AxesArg(ctx, 1, "axes"));
  const int r = x->rank();
  std::vector<bool> drop(r, false);
  if (axes.empty()) {
    for (int i = 0; i < r; ++i) drop[i] = x->shape[i] == 1;
  }
  for (int64_t a : axes) {
    ASSIGN_OR_RETURN(int ax, NormAxis(a, r, ctx.where()));
    if (x->shape[ax] != 1) return InvalidArgument("{}: axis {} has size {}, not 1", ctx.where(), ax, x->shape[ax]);
    drop[ax] = true;
  }
  Shape s;
  for (int i = 0; i < r; ++i)
    if (!drop[i]) s.push_back(x->shape[i]);
  return ReshapeTo(ctx, *x, s);
}

absl::Status UnsqueezeKernel(KernelContext& ctx) {
  ASSIGN_OR_RETURN(const Value* x, ctx.Required(0));
  ASSIGN_OR_RETURN(auto axes, AxesArg(ctx, 1, "axes"));
  const int r = x->rank() + static_cast<int>(axes.size());
  std::vector<bool> ins(r, false);
  for (int64_t a : axes) {
    ASSIGN_OR_RETURN(int ax, NormAxis(a, r, ctx.where()));
    if (ins[ax]) return InvalidArgument("{}: axis {} repeats", ctx.where(), ax);
    ins[ax] = true;
  }
  Shape s;
  int k = 0;
  for (int i = 0; i < r; ++i) s.push_back(ins[i] ? 1 : x->shape[k++]);
  return ReshapeTo(ctx, *x, s);
}

absl::Status ConcatKernel(KernelContext& ctx) {
  ASSIGN_OR_RETURN(const Value* first, ctx.Required(0));
  ASSIGN_OR_RETURN(size_t w, Width(*first, ctx));
  const int r = first->rank();
  ASSIGN_OR_RETURN(int axis, NormAxis(ctx.Int("axis", 0), r, ctx.where()));
  Shape out = first->shape;
  out[axis] = 0;
  for (int i = 0; i < ctx.num_inputs(); ++i) {
    ASSIGN_OR_RETURN(const Value* v, ctx.Required(i));
    if (v->dtype != first->dtype || v->rank() != r) return InvalidArgument("{}: inputs differ in type or rank", ctx.where());
    for (int d = 0; d < r; ++d)
      if (d != axis && v->shape[d] != first->shape[d])
        return InvalidArgument("{}: input {} has shape {}, expected {} off axis {}", ctx.where(), i,
                               ShapeString(v->shape), ShapeString(first->shape), axis);
    out[axis] += v->shape[axis];
  }
  int64_t outer = 1, inner = 1;
  for (int d = 0; d < axis; ++d) outer *= out[d];
  for (int d = axis + 1; d < r; ++d) inner *= out[d];
  Value& o = Output(ctx, 0, first->dtype, out);
  int64_t col = 0;
  for (int i = 0; i < ctx.num_inputs(); ++i) {
    const Value* v = ctx.in(i);
    const int64_t chunk = v->shape[axis] * inner * w;
    for (int64_t b = 0; b < outer; ++b)
      CopyBytes(o.bytes.data() + (b * out[axis] * inner + col * inner) * w, v->bytes.data() + b * chunk, chunk);
    col += v->shape[axis];
  }
  return absl::OkStatus();
}

absl::Status SplitKernel(KernelContext& ctx) {
  ASSIGN_OR_RETURN(const Value* x, ctx.Required(0));
  ASSIGN_OR_RETURN(size_t w, Width(*x, ctx));
  ASSIGN_OR_RETURN(int axis, NormAxis(ctx.Int("axis", 0), x->rank(), ctx.where()));
  std::vector<int64_t> split;
  if (ctx.opset() >= 13) {
    if (const Value* s = ctx.in(1)) {
      ASSIGN_OR_RETURN(split, ToInt64s(*s, ctx.where() + " split"));
    }
  } else {
    split = ctx.Ints("split");
  }
  const int n = ctx.num_outputs();
  const int64_t dim = x->shape[axis];
  if (split.empty()) {
    const int64_t chunk = (dim + n - 1) / n;
    for (int i = 0; i < n; ++i) split.push_back(std::max<int64_t>(0, std::min(chunk, dim - chunk * i)));
    if (!ctx.attr("num_outputs") && dim % n) return InvalidArgument("{}: {} does not split evenly into {}", ctx.where(), dim, n);
  }
  if (static_cast<int>(split.size()) != n || std::accumulate(split.begin(), split.end(), int64_t{0}) != dim) {
    return InvalidArgument("{}: split sizes do not sum to the axis length {}", ctx.where(), dim);
  }
  int64_t outer = 1, inner = 1;
  for (int d = 0; d < axis; ++d) outer *= x->shape[d];
  for (int d = axis + 1; d < x->rank(); ++d) inner *= x->shape[d];
  int64_t col = 0;
  for (int i = 0; i < n; ++i) {
    Shape s = x->shape;
    s[axis] = split[i];
    Value& o = Output(ctx, i, x->dtype, s);
    const int64_t chunk = split[i] * inner * w;
    for (int64_t b = 0; b < outer; ++b)
      CopyBytes(o.bytes.data() + b * chunk, x->bytes.data() + (b * dim + col) * inner * w, chunk);
    col += split[i];
  }
  return absl::OkStatus();
}

absl::Status SliceKernel(KernelContext& ctx) {
  ASSIGN_OR_RETURN(const Value* x, ctx.Required(0));
  ASSIGN_OR_RETURN(size_t w, Width(*x, ctx));
  std::vector<int64_t> starts, ends, axes, steps;
  if (ctx.opset() < 10) {
    starts = ctx.Ints("starts");
    ends = ctx.Ints("ends");
    axes = ctx.Ints("axes");
  } else {
    ASSIGN_OR_RETURN(const Value* s, ctx.Required(1));
    ASSIGN_OR_RETURN(const Value* e, ctx.Required(2));
    ASSIGN_OR_RETURN(starts, ToInt64s(*s, ctx.where() + " starts"));
    ASSIGN_OR_RETURN(ends, ToInt64s(*e, ctx.where() + " ends"));
    if (const Value* a = ctx.in(3)) {
      ASSIGN_OR_RETURN(axes, ToInt64s(*a, ctx.where() + " axes"));
    }
    if (const Value* st = ctx.in(4)) {
      ASSIGN_OR_RETURN(steps, ToInt64s(*st, ctx.where() + " steps"));
    }
  }
  const int r = x->rank();
  if (axes.empty())
    for (size_t i = 0; i < starts.size(); ++i) axes.push_back(static_cast<int64_t>(i));
  if (steps.empty()) steps.assign(starts.size(), 1);
  if (ends.size() != starts.size() || axes.size() != starts.size() || steps.size() != starts.size())
    return InvalidArgument("{}: starts/ends/axes/steps differ in length", ctx.where());
  Shape out = x->shape;
  const auto st = Strides(x->shape);
  std::vector<int64_t> ost = st;
  int64_t offset = 0;
  for (size_t i = 0; i < starts.size(); ++i) {
    ASSIGN_OR_RETURN(int ax, NormAxis(axes[i], r, ctx.where()));
    const int64_t dim = x->shape[ax], step = steps[i];
    if (step == 0) return InvalidArgument("{}: step 0", ctx.where());
    int64_t b = starts[i], e = ends[i];
    if (b < 0) b += dim;
    if (e < 0) e += dim;
    int64_t len;
    if (step > 0) {
      b = std::clamp<int64_t>(b, 0, dim);
      e = std::clamp<int64_t>(e, 0, dim);
      len = e > b ? (e - b + step - 1) / step : 0;
    } else {
      b = std::clamp<int64_t>(b, 0, dim - 1);
      e = std::clamp<int64_t>(e, -1, dim - 1);
      len = b > e ? (b - e + (-step) - 1) / (-step) : 0;
    }
    out[ax] = len;
    offset += len ? b * st[ax] : 0;
    ost[ax] = st[ax] * step;
  }
  Value& o = Output(ctx, 0, x->dtype, out);
  CopyStrided(x->bytes.data(), w, out, ost, offset, o.bytes.data());
  return absl::OkStatus();
}

absl::Status GatherKernel(KernelContext& ctx) {
  ASSIGN_OR_RETURN(const Value* x, ctx.Required(0));
  ASSIGN_OR_RETURN(const Value* ind, ctx.Required(1));
  ASSIGN_OR_RETURN(size_t w, Width(*x, ctx));
  ASSIGN_OR_RETURN(int axis, NormAxis(ctx.Int("axis", 0), x->rank(), ctx.where()));
  ASSIGN_OR_RETURN(auto idx, ToInt64s(*ind, ctx.where() + " indices"));
  const int64_t dim = x->shape[axis];
  int64_t outer = 1, inner = 1;
  for (int d = 0; d < axis; ++d) outer *= x->shape[d];
  for (int d = axis + 1; d < x->rank(); ++d) inner *= x->shape[d];
  Shape out(x->shape.begin(), x->shape.begin() + axis);
  out.insert(out.end(), ind->shape.begin(), ind->shape.end());
  out.insert(out.end(), x->shape.begin() + axis + 1, x->shape.end());
  for (auto& i : idx) {
    if (i < -dim || i >= dim) return InvalidArgument("{}: index {} is out of range [-{}, {})", ctx.where(), i, dim, dim);
    if (i < 0) i += dim;
  }
  Value& o = Output(ctx, 0, x->dtype, out);
  const int64_t n = static_cast<int64_t>(idx.size());
  const size_t chunk = inner * w;
  for (int64_t b = 0; b < outer; ++b)
    for (int64_t j = 0; j < n; ++j)
      CopyBytes(o.bytes.data() + (b * n + j) * chunk, x->bytes.data() + (b * dim + idx[j]) * chunk, chunk);
  return absl::OkStatus();
}

absl::Status GatherElementsKernel(KernelContext& ctx) {
  ASSIGN_OR_RETURN(const Value* x, ctx.Required(0));
  ASSIGN_OR_RETURN(const Value* ind, ctx.Required(1));
  ASSIGN_OR_RETURN(size_t w, Width(*x, ctx));
  ASSIGN_OR_RETURN(int axis, NormAxis(ctx.Int("axis", 0), x->rank(), ctx.where()));
  ASSIGN_OR_RETURN(auto idx, ToInt64s(*ind, ctx.where() + " indices"));
  if (ind->rank() != x->rank()) return InvalidArgument("{}: indices rank differs from data rank", ctx.where());
  Value& o = Output(ctx, 0, x->dtype, ind->shape);
  const auto xs = Strides(x->shape);
  const auto is = Strides(ind->shape);
  const int64_t dim = x->shape[axis];
  for (int64_t k = 0; k < ind->numel(); ++k) {
    int64_t off = 0, rem = k;
    for (int d = 0; d < x->rank(); ++d) {
      int64_t p = rem / is[d];
      rem %= is[d];
      if (d == axis) {
        p = idx[k];
        if (p < -dim || p >= dim) return InvalidArgument("{}: index {} is out of range", ctx.where(), p);
        if (p < 0) p += dim;
      }
      off += p * xs[d];
    }
    CopyBytes(o.bytes.data() + k * w, x->bytes.data() + off * w, w);
  }
  return absl::OkStatus();
}

absl::Status ExpandKernel(KernelContext& ctx) {
  ASSIGN_OR_RETURN(const Value* x, ctx.Required(0));
  ASSIGN_OR_RETURN(const Value* s, ctx.Required(1));
  ASSIGN_OR_RETURN(size_t w, Width(*x, ctx));
  ASSIGN_OR_RETURN(auto target, ToInt64s(*s, ctx.where() + " shape"));
  ASSIGN_OR_RETURN(Shape out, BroadcastShapes(x->shape, target, ctx.where()));
  const int r = static_cast<int>(out.size());
  std::vector<int64_t> st(r, 0);
  const auto xs = Strides(x->shape);
  const int off = r - x->rank();
  for (int i = 0; i < x->rank(); ++i) st[i + off] = x->shape[i] == 1 ? 0 : xs[i];
  Value& o = Output(ctx, 0, x->dtype, out);
  CopyStrided(x->bytes.data(), w, out, st, 0, o.bytes.data());
  return absl::OkStatus();
}

absl::Status TileKernel(KernelContext& ctx) {
  ASSIGN_OR_RETURN(const Value* x, ctx.Required(0));
  ASSIGN_OR_RETURN(const Value* rep, ctx.Required(1));
  ASSIGN_OR_RETURN(size_t w, Width(*x, ctx));
  ASSIGN_OR_RETURN(auto reps, ToInt64s(*rep, ctx.where() + " repeats"));
  if (static_cast<int>(reps.size()) != x->rank()) return InvalidArgument("{}: repeats length differs from rank", ctx.where());
  Shape out = x->shape;
  for (int d = 0; d < x->rank(); ++d) {
    if (reps[d] < 0) return InvalidArgument("{}: negative repeat", ctx.where());
    out[d] *= reps[d];
  }
  Value& o = Output(ctx, 0, x->dtype, out);
  const auto os = Strides(out), xs = Strides(x->shape);
  for (int64_t k = 0; k < o.numel(); ++k) {
    int64_t off = 0, rem = k;
    for (int d = 0; d < x->rank(); ++d) {
      off += (rem / os[d]) % x->shape[d] * xs[d];
      rem %= os[d];
    }
    CopyBytes(o.bytes.data() + k * w, x->bytes.data() + off * w, w);
  }
  return absl::OkStatus();
}

absl::Status ConstantKernel(KernelContext& ctx) {
  const GraphNode& n = ctx.node();
  if (const Tensor* t = ctx.TensorAttr("value")) {
    ASSIGN_OR_RETURN(ctx.out(0), FromTensor(*t));
  } else if (ctx.attr("value_float")) {
    ctx.out(0) = MakeValue(DType::kF32, std::vector<float>{ctx.Float("value_float", 0)}, {});
  } else if (ctx.attr("value_floats")) {
    std::vector<float> v = ctx.Floats("value_floats");
    const int64_t k = static_cast<int64_t>(v.size());
    ctx.out(0) = MakeValue(DType::kF32, std::move(v), {k});
  } else if (ctx.attr("value_int")) {
    ctx.out(0) = MakeValue(DType::kI64, std::vector<int64_t>{n.IntAttribute("value_int", 0)}, {});
  } else if (ctx.attr("value_ints")) {
    std::vector<int64_t> v = ctx.Ints("value_ints");
    const int64_t k = static_cast<int64_t>(v.size());
    ctx.out(0) = MakeValue(DType::kI64, std::move(v), {k});
  } else {
    return Unimplemented("{}: only tensor, float(s) and int(s) constants are supported", ctx.where());
  }
  return absl::OkStatus();
}

absl::Status ConstantOfShapeKernel(KernelContext& ctx) {
  ASSIGN_OR_RETURN(const Value* s, ctx.Required(0));
  ASSIGN_OR_RETURN(auto dims, ToInt64s(*s, ctx.where() + " shape"));
  for (int64_t d : dims)
    if (d < 0) return InvalidArgument("{}: negative dimension {}", ctx.where(), d);
  Value fill = MakeValue(DType::kF32, std::vector<float>{0.f}, {1});
  if (const Tensor* t = ctx.TensorAttr("value")) {
    ASSIGN_OR_RETURN(fill, FromTensor(*t));
  }
  if (fill.numel() != 1) return InvalidArgument("{}: value must hold one element", ctx.where());
  ASSIGN_OR_RETURN(size_t w, Width(fill, ctx));
  Value& o = Output(ctx, 0, fill.dtype, dims);
  for (int64_t k = 0; k < o.numel(); ++k) CopyBytes(o.bytes.data() + k * w, fill.bytes.data(), w);
  return absl::OkStatus();
}

absl::Status RangeKernel(KernelContext& ctx) {
  ASSIGN_OR_RETURN(const Value* start, ctx.Required(0));
  ASSIGN_OR_RETURN(const Value* limit, ctx.Required(1));
  ASSIGN_OR_RETURN(const Value* delta, ctx.Required(2));
  return Dispatch<TypeSet::kSigned>(start->dtype, ctx.where(), [&](auto t) -> absl::Status {
    using T = decltype(t);
    if (limit->dtype != start->dtype || delta->dtype != start->dtype || !start->numel() || !limit->numel() ||
        !delta->numel())
      return InvalidArgument("{}: start, limit and delta must be scalars of one type", ctx.where());
    const T a = start->data<T>()[0], b = limit->data<T>()[0], d = delta->data<T>()[0];
    if (d == 0) return InvalidArgument("{}: delta is 0", ctx.where());
    const double cnt = std::ceil((static_cast<double>(b) - static_cast<double>(a)) / static_cast<double>(d));
    if (!(cnt <= 0x1p34)) return InvalidArgument("{}: {} elements is too many", ctx.where(), cnt);  // NaN too
    const int64_t n = cnt > 0 ? static_cast<int64_t>(cnt) : 0;
    Value& o = Output(ctx, 0, start->dtype, {n});
    for (int64_t i = 0; i < n; ++i) o.data<T>()[i] = static_cast<T>(a + static_cast<T>(i) * d);
    return absl::OkStatus();
  });
}

absl::Status TriluKernel(KernelContext& ctx) {
  ASSIGN_OR_RETURN(const Value* x, ctx.Required(0));
  ASSIGN_OR_RETURN(size_t w, Width(*x, ctx));
  if (x->rank() < 2) return InvalidArgument("{}: input rank must be >= 2", ctx.where());
  int64_t k = 0;
  if (const Value* kv = ctx.in(1)) {
    ASSIGN_OR_RETURN(auto ks, ToInt64s(*kv, ctx.where() + " k"));
    if (!ks.empty()) k = ks[0];
  }
  const bool upper = ctx.Int("upper", 1) != 0;
  Value& o = Output(ctx, 0, x->dtype, x->shape);
  o.bytes = x->bytes;
  const int64_t rows = x->shape[x->rank() - 2], cols = x->shape[x->rank() - 1];
  const int64_t mats = rows * cols != 0 ? x->numel() / (rows * cols) : 0;
  for (int64_t m = 0; m < mats; ++m)
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t j = 0; j < cols; ++j) {
        const bool keep = upper ? j - i >= k : j - i <= k;
        if (!keep) std::memset(o.bytes.data() + ((m * rows + i) * cols + j) * w, 0, w);
      }
  return absl::OkStatus();
}

absl::Status PadKernel(KernelContext& ctx) {
  ASSIGN_OR_RETURN(const Value* x, ctx.Required(0));
  ASSIGN_OR_RETURN(size_t w, Width(*x, ctx));
  const int r = x->rank();
  std::vector<int64_t> pads;
  Value fill(x->dtype, {});  // zero
  if (ctx.opset() < 11) {
    pads = ctx.Ints("pads");
    ASSIGN_OR_RETURN(fill, CastValue(MakeValue(DType::kF32, std::vector<float>{ctx.Float("value", 0.f)}, {}), x->dtype));
  } else {
    ASSIGN_OR_RETURN(const Value* p, ctx.Required(1));
    ASSIGN_OR_RETURN(pads, ToInt64s(*p, ctx.where() + " pads"));
    if (const Value* c = ctx.in(2); c && c->numel()) {
      if (c->dtype != x->dtype) return InvalidArgument("{}: constant_value type differs from data", ctx.where());
      fill = *c;
      fill.shape = {};
    }
  }
  std::vector<int64_t> axes;
  if (const Value* a = ctx.in(3)) {
    ASSIGN_OR_RETURN(axes, ToInt64s(*a, ctx.where() + " axes"));
  }
  if (axes.empty())
    for (int i = 0; i < r; ++i) axes.push_back(i);
  if (pads.size() != 2 * axes.size()) return InvalidArgument("{}: pads must hold 2 x {} values", ctx.where(), axes.size());
  std::vector<int64_t> before(r, 0), after(r, 0);
  for (size_t i = 0; i < axes.size(); ++i) {
    ASSIGN_OR_RETURN(int ax, NormAxis(axes[i], r, ctx.where()));
    before[ax] = pads[i];
    after[ax] = pads[i + axes.size()];
  }
  const std::string mode = ctx.String("mode", "constant");
  if (mode != "constant" && mode != "reflect" && mode != "edge")
    return Unimplemented("{}: mode '{}' is not supported", ctx.where(), mode);
  Shape out(r);
  for (int d = 0; d < r; ++d) {
    out[d] = x->shape[d] + before[d] + after[d];
    if (out[d] < 0) return InvalidArgument("{}: pads make axis {} negative", ctx.where(), d);
    if (mode != "constant" && x->shape[d] == 0 && out[d] > 0)
      return InvalidArgument("{}: cannot {}-pad an empty axis", ctx.where(), mode);
  }
  Value& o = Output(ctx, 0, x->dtype, out);
  const auto os = Strides(out), xs = Strides(x->shape);
  for (int64_t k = 0; k < o.numel(); ++k) {
    int64_t off = 0, rem = k;
    bool outside = false;
    for (int d = 0; d < r; ++d) {
      int64_t p = rem / os[d] - before[d];
      rem %= os[d];
      const int64_t n = x->shape[d];
      if (p < 0 || p >= n) {
        if (mode == "constant") {
          outside = true;
          break;
        }
        if (mode == "edge") {
          p = std::clamp<int64_t>(p, 0, n - 1);
        } else {  // reflect without repeating the edge
          if (n == 1) {
            p = 0;
          } else {
            const int64_t period = 2 * (n - 1);
            p = ((p % period) + period) % period;
            if (p >= n) p = period - p;
          }
        }
      }
      off += p * xs[d];
    }
    CopyBytes(o.bytes.data() + k * w, outside ? fill.bytes.data() : x->bytes.data() + off * w, w);
  }
  return absl::OkStatus();
}

absl::Status NonZeroKernel(KernelContext& ctx) {
  ASSIGN_OR_RETURN(const Value* x, ctx.Required(0));
  ASSIGN_OR_RETURN(size_t w, Width(*x, ctx));
  std::vector<int64_t> hits;
  for (int64_t k = 0; k < x->numel(); ++k) {
    bool nz = false;
    for (size_t b = 0; b < w; ++b) nz |= x->bytes[k * w + b] != std::byte{0};
    if (x->dtype == DType::kF32 && nz) nz = x->data<float>()[k] != 0.0f;  // -0.0 is zero
    if (x->dtype == DType::kF64 && nz) nz = x->data<double>()[k] != 0.0;
    if (nz) hits.push_back(k);
  }
  const int r = x->rank();
  const int64_t n = static_cast<int64_t>(hits.size());
  Value& o = Output(ctx, 0, DType::kI64, {r, n});
  const auto st = Strides(x->shape);
  for (int64_t j = 0; j < n; ++j) {
    int64_t rem = hits[j];
    for (int d = 0; d < r; ++d) {
      o.data<int64_t>()[d * n + j] = rem / st[d];
      rem %= st[d];
    }
  }
  return absl::OkStatus();
}

absl::Status EyeLikeKernel(KernelContext& ctx) {
  ASSIGN_OR_RETURN(const Value* x, ctx.Required(0));
  if (x->rank() != 2) return InvalidArgument("{}: input must be 2-D", ctx.where());
  DType t = x->dtype;
  if (ctx.attr("dtype")) {
    const int64_t code = ctx.Int("dtype", 0);
    auto dt = DTypeFromOnnx(static_cast<int>(code));
    if (!dt.ok()) return Unimplemented("{}: dtype {} is not supported", ctx.where(), code);
    t = *dt;
  }
  const int64_t k = ctx.Int("k", 0);
  Value f(DType::kF32, x->shape);
  for (int64_t i = 0; i < x->shape[0]; ++i) {
    const int64_t j = i + k;
    if (j >= 0 && j < x->shape[1]) f.data<float>()[i * x->shape[1] + j] = 1.0f;
  }
  ASSIGN_OR_RETURN(ctx.out(0), CastValue(f, t));
  return absl::OkStatus();
}

// DepthToSpace (DCR / CRD) and SpaceToDepth on NCHW.
absl::Status DepthSpaceKernel(KernelContext& ctx) {
  ASSIGN_OR_RETURN(const Value* x, ctx.Required(0));
  ASSIGN_OR_RETURN(size_t w, Width(*x, ctx));
  if (x->rank() != 4) return InvalidArgument("{}: input must be NCHW", ctx.where());
  const int64_t b = ctx.Int("blocksize", 0);
  if (b <= 0 || b > (1 << 20)) return InvalidArgument("{}: blocksize {} is not in [1, 2^20]", ctx.where(), b);
  const int64_t n = x->shape[0], c = x->shape[1], h = x->shape[2], wd = x->shape[3];
  Shape tmp, out;
  std::vector<int64_t> perm;
  if (ctx.op() == "DepthToSpace") {
    if (c % (b * b)) return InvalidArgument("{}: channels not divisible by blocksize^2", ctx.where());
    if (ctx.String("mode", "DCR") == "DCR") {
      tmp = {n, b, b, c / (b * b), h, wd};
      perm = {0, 3, 4, 1, 5, 2};
    } else {
      tmp = {n, c / (b * b), b, b, h, wd};
      perm = {0, 1, 4, 2, 5, 3};
    }
    out = {n, c / (b * b), h * b, wd * b};
  } else {
    if (h % b || wd % b) return InvalidArgument("{}: spatial dims not divisible by blocksize", ctx.where());
    tmp = {n, c, h / b, b, wd / b, b};
    perm = {0, 3, 5, 1, 2, 4};
    out = {n, c * b * b, h / b, wd / b};
  }
  const auto ts = Strides(tmp);
  Shape ps(6);
  std::vector<int64_t> pst(6);
  for (int i = 0; i < 6; ++i) {
    ps[i] = tmp[perm[i]];
    pst[i] = ts[perm[i]];
  }
  Value& o = Output(ctx, 0, x->dtype, out);
  CopyStrided(x->bytes.data(), w, ps, pst, 0, o.bytes.data());
  return absl::OkStatus();
}

}  // namespace

void RegisterShapeKernels(KernelRegistry& r) {
  r.Add("", "Shape", ShapeKernel);
  r.Add("", "Size", SizeKernel);
  r.Add("", "Reshape", ReshapeKernel);
  r.Add("", "Flatten", FlattenKernel);
  r.Add("", "Transpose", TransposeKernel);
  r.Add("", "Squeeze", SqueezeKernel);
  r.Add("", "Unsqueeze", UnsqueezeKernel);
  r.Add("", "Concat", ConcatKernel);
  r.Add("", "Split", SplitKernel);
  r.Add("", "Slice", SliceKernel);
  r.Add("", "Gather", GatherKernel);
  r.Add("", "GatherElements", GatherElementsKernel);
  r.Add("", "Expand", ExpandKernel);
  r.Add("", "Tile", TileKernel);
  r.Add("", "Constant", ConstantKernel);
  r.Add("", "ConstantOfShape", ConstantOfShapeKernel);
  r.Add("", "Range", RangeKernel);
  r.Add("", "Trilu", TriluKernel);
  r.Add("", "Pad", PadKernel);
  r.Add("", "NonZero", NonZeroKernel);
  r.Add("", "EyeLike", EyeLikeKernel);
  r.Add("", "DepthToSpace", DepthSpaceKernel);
  r.Add("", "SpaceToDepth", DepthSpaceKernel);
}

}  // namespace compress::onnxrt
