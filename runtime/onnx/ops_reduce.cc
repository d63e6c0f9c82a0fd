// Reductions (ReduceSum/Mean/Max/Min/Prod/L1/L2/SumSquare/LogSum/LogSumExp), ArgMax/ArgMin
// and CumSum. Accumulation is in f64; results are stored in the input's type.
#include <cmath>
#include <limits>

#include "runtime/onnx/kernel.h"

namespace compress::onnxrt {
namespace {

enum class Red { kSum, kMean, kMax, kMin, kProd, kL1, kL2, kSumSquare, kLogSum, kLogSumExp };

struct Reduction {
  Shape out_shape;            // with kept dims when keepdims
  std::vector<int64_t> dest;  // per input element: output index
  int64_t out_numel = 0;
  int64_t group = 1;  // input elements per output element
  bool identity = false;
};

absl::StatusOr<Reduction> Plan(const KernelContext& ctx, const Value& x, std::vector<int64_t> axes, bool keepdims) {
  const int r = x.rank();
  Reduction red;
  std::vector<bool> reduce(r, false);
  if (axes.empty()) {
    if (ctx.Int("noop_with_empty_axes", 0) != 0) {
      red.identity = true;
      return red;
    }
    reduce.assign(r, true);
  }
  for (int64_t a : axes) {
    ASSIGN_OR_RETURN(int ax, NormAxis(a, r, ctx.where()));
    reduce[ax] = true;
  }
  Shape dense;  // output shape without kept dims
  for (int d = 0; d < r; ++d) {
    if (reduce[d]) {
      red.group *= x.shape[d];
      if (keepdims) red.out_shape.push_back(1);
    } else {
      red.out_shape.push_back(x.shape[d]);
      dense.push_back(x.shape[d]);
    }
  }
  red.out_numel = NumElements(dense);
  // Output strides on the input's axes (0 on reduced axes).
  std::vector<int64_t> st(r, 0);
  int64_t s = 1;
  for (int d = r - 1; d >= 0; --d) {
    if (!reduce[d]) {
      st[d] = s;
      s *= x.shape[d];
    }
  }
  const int64_t n = x.numel();
  red.dest.resize(n);
  std::vector<int64_t> pos(r, 0);
  int64_t cur = 0;
  for (int64_t k = 0; k < n; ++k) {
    red.dest[k] = cur;
    for (int d = r - 1; d >= 0; --d) {
      if (++pos[d] < x.shape[d]) {
        cur += st[d];
        break;
      }
      cur -= st[d] * (x.shape[d] - 1);
      pos[d] = 0;
    }
  }
  return red;
}

Kernel ReduceKernel(Red kind) {
  return [kind](KernelContext& ctx) -> absl::Status {
    ASSIGN_OR_RETURN(const Value* x, ctx.Required(0));
    std::vector<int64_t> axes;
    if (const Value* a = ctx.in(1)) {
      ASSIGN_OR_RETURN(axes, ToInt64s(*a, ctx.where() + " axes"));
    } else {
      axes = ctx.Ints("axes");
    }
    ASSIGN_OR_RETURN(Reduction red, Plan(ctx, *x, axes, ctx.Int("keepdims", 1) != 0));
    if (red.identity) {
      ctx.out(0) = *x;
      return absl::OkStatus();
    }
    ASSIGN_OR_RETURN(Value xd, CastValue(*x, DType::kF64));
    double init = 0.0;
    if (kind == Red::kMax) init = -std::numeric_limits<double>::infinity();
    if (kind == Red::kMin) init = std::numeric_limits<double>::infinity();
    if (kind == Red::kProd) init = 1.0;
    std::vector<double> acc(red.out_numel, init);
    std::vector<double> mx;
    const double* in = xd.data<double>();
    if (kind == Red::kLogSumExp) {
      mx.assign(red.out_numel, -std::numeric_limits<double>::infinity());
      for (int64_t k = 0; k < xd.numel(); ++k) mx[red.dest[k]] = std::max(mx[red.dest[k]], in[k]);
      for (auto& m : mx)
        if (!std::isfinite(m)) m = 0;
    }
    for (int64_t k = 0; k < xd.numel(); ++k) {
      double& a = acc[red.dest[k]];
      const double v = in[k];
      switch (kind) {
        case Red::kSum: case Red::kMean: case Red::kLogSum: a += v; break;
        case Red::kMax: a = std::isnan(v) || v > a ? v : a; break;
        case Red::kMin: a = std::isnan(v) || v < a ? v : a; break;
        case Red::kProd: a *= v; break;
        case Red::kL1: a += std::abs(v); break;
        case Red::kL2: case Red::kSumSquare: a += v * v; break;
        case Red::kLogSumExp: a += std::exp(v - mx[red.dest[k]]); break;
      }
    }
    for (int64_t i = 0; i < red.out_numel; ++i) {
      if (kind == Red::kMean) acc[i] /= static_cast<double>(red.group);
      if (kind == Red::kL2) acc[i] = std::sqrt(acc[i]);
      if (kind == Red::kLogSum) acc[i] = std::log(acc[i]);
      if (kind == Red::kLogSumExp) acc[i] = std::log(acc[i]) + mx[i];
    }
    Value out = MakeValue(DType::kF64, std::move(acc), red.out_shape);
    if (x->dtype != DType::kF64 && IsFloating(x->dtype)) {
      ASSIGN_OR_RETURN(ctx.out(0), CastValue(out, x->dtype));
    } else if (x->dtype != DType::kF64) {
      // Integer results: round (means) rather than truncate, then cast.
      for (int64_t i = 0; i < out.numel(); ++i) out.data<double>()[i] = std::floor(out.data<double>()[i]);
      ASSIGN_OR_RETURN(ctx.out(0), CastValue(out, x->dtype));
    } else {
      ctx.out(0) = std::move(out);
    }
    return absl::OkStatus();
  };
}

absl::Status ArgKernel(KernelContext& ctx) {
  ASSIGN_OR_RETURN(const Value* x, ctx.Required(0));
  ASSIGN_OR_RETURN(int axis, NormAxis(ctx.Int("axis", 0), x->rank(), ctx.where()));
  const bool keep = ctx.Int("keepdims", 1) != 0, last = ctx.Int("select_last_index", 0) != 0;
  const bool is_max = ctx.op() == "ArgMax";
  ASSIGN_OR_RETURN(Value xd, CastValue(*x, DType::kF64));
  int64_t outer = 1, inner = 1;
  const int64_t dim = x->shape[axis];
  if (dim == 0) return InvalidArgument("{}: axis {} is empty (no element to pick)", ctx.where(), axis);
  for (int d = 0; d < axis; ++d) outer *= x->shape[d];
  for (int d = axis + 1; d < x->rank(); ++d) inner *= x->shape[d];
  Shape out = x->shape;
  if (keep) out[axis] = 1; else out.erase(out.begin() + axis);
  Value& o = Output(ctx, 0, DType::kI64, out);
  for (int64_t b = 0; b < outer; ++b)
    for (int64_t i = 0; i < inner; ++i) {
      int64_t best = 0;
      double bv = xd.data<double>()[b * dim * inner + i];
      for (int64_t j = 1; j < dim; ++j) {
        const double v = xd.data<double>()[(b * dim + j) * inner + i];
        const bool better = is_max ? (last ? v >= bv : v > bv) : (last ? v <= bv : v < bv);
        if (better) {
          bv = v;
          best = j;
        }
      }
      o.data<int64_t>()[b * inner + i] = best;
    }
  return absl::OkStatus();
}

absl::Status CumSumKernel(KernelContext& ctx) {
  ASSIGN_OR_RETURN(const Value* x, ctx.Required(0));
  ASSIGN_OR_RETURN(const Value* a, ctx.Required(1));
  ASSIGN_OR_RETURN(auto axes, ToInt64s(*a, ctx.where() + " axis"));
  if (axes.size() != 1) return InvalidArgument("{}: axis must be a scalar", ctx.where());
  ASSIGN_OR_RETURN(int axis, NormAxis(axes[0], x->rank(), ctx.where()));
  const bool excl = ctx.Int("exclusive", 0) != 0, rev = ctx.Int("reverse", 0) != 0;
  return Dispatch<TypeSet::kNumeric>(x->dtype, ctx.where(), [&](auto t) -> absl::Status {
    using T = decltype(t);
    int64_t outer = 1, inner = 1;
    const int64_t dim = x->shape[axis];
    for (int d = 0; d < axis; ++d) outer *= x->shape[d];
    for (int d = axis + 1; d < x->rank(); ++d) inner *= x->shape[d];
    Value& o = Output(ctx, 0, x->dtype, x->shape);
    for (int64_t b = 0; b < outer; ++b)
      for (int64_t i = 0; i < inner; ++i) {
        T sum = 0;
        for (int64_t s = 0; s < dim; ++s) {
          const int64_t j = rev ? dim - 1 - s : s;
          const int64_t off = (b * dim + j) * inner + i;
          if (excl) {
            o.data<T>()[off] = sum;
            sum = static_cast<T>(sum + x->data<T>()[off]);
          } else {
            sum = static_cast<T>(sum + x->data<T>()[off]);
            o.data<T>()[off] = sum;
          }
        }
      }
    return absl::OkStatus();
  });
}

}  // namespace

void RegisterReduceKernels(KernelRegistry& r) {
  r.Add("", "ReduceSum", ReduceKernel(Red::kSum));
  r.Add("", "ReduceMean", ReduceKernel(Red::kMean));
  r.Add("", "ReduceMax", ReduceKernel(Red::kMax));
  r.Add("", "ReduceMin", ReduceKernel(Red::kMin));
  r.Add("", "ReduceProd", ReduceKernel(Red::kProd));
  r.Add("", "ReduceL1", ReduceKernel(Red::kL1));
  r.Add("", "ReduceL2", ReduceKernel(Red::kL2));
  r.Add("", "ReduceSumSquare", ReduceKernel(Red::kSumSquare));
  r.Add("", "ReduceLogSum", ReduceKernel(Red::kLogSum));
  r.Add("", "ReduceLogSumExp", ReduceKernel(Red::kLogSumExp));
  r.Add("", "ArgMax", ArgKernel);
  r.Add("", "ArgMin", ArgKernel);
  r.Add("", "CumSum", CumSumKernel);
}

}  // namespace compress::onnxrt
