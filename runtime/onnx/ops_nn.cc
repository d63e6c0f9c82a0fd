// Neural-network ONNX operators: MatMul, Gemm, Conv (im2col + GEMM), pooling, batch /
// layer / instance normalization, Softmax / LogSoftmax / Hardmax.
#include <cmath>
#include <limits>

#include "runtime/onnx/kernel.h"

namespace compress::onnxrt {
namespace {

// C[m, n] = A[m, k] B[k, n] for row-major blocks.
template <class T>
void Gemm(const T* a, const T* b, T* c, int64_t m, int64_t k, int64_t n) {
  if constexpr (std::is_floating_point_v<T>) {
    // Small products run single-threaded (lazyProduct): waking OpenMP workers for them
    // costs more than the arithmetic.
    if (m * n * k < (int64_t{1} << 18)) {
      MapM<T>(c, m, n).noalias() = MapC<T>(a, m, k).lazyProduct(MapC<T>(b, k, n));
    } else {
      MapM<T>(c, m, n).noalias() = MapC<T>(a, m, k) * MapC<T>(b, k, n);
    }
  } else {
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) {
        T s = 0;
        for (int64_t t = 0; t < k; ++t) s = static_cast<T>(s + a[i * k + t] * b[t * n + j]);
        c[i * n + j] = s;
      }
  }
}

absl::Status MatMulKernel(KernelContext& ctx) {
  ASSIGN_OR_RETURN(const Value* a, ctx.Required(0));
  ASSIGN_OR_RETURN(const Value* b, ctx.Required(1));
  if (a->dtype != b->dtype) return InvalidArgument("{}: input types differ", ctx.where());
  if (a->rank() == 0 || b->rank() == 0) return InvalidArgument("{}: inputs must have rank >= 1", ctx.where());
  Shape as = a->shape, bs = b->shape;
  const bool a_vec = as.size() == 1, b_vec = bs.size() == 1;
  if (a_vec) as.insert(as.begin(), 1);
  if (b_vec) bs.push_back(1);
  const int64_t m = as[as.size() - 2], k = as.back(), n = bs.back();
  if (bs[bs.size() - 2] != k) {
    return InvalidArgument("{}: shapes {} and {} do not multiply", ctx.where(), ShapeString(a->shape),
                           ShapeString(b->shape));
  }
  Shape ab(as.begin(), as.end() - 2), bb(bs.begin(), bs.end() - 2);
  ASSIGN_OR_RETURN(Shape batch, BroadcastShapes(ab, bb, ctx.where()));
  Shape out = batch;
  if (!a_vec) out.push_back(m);
  if (!b_vec) out.push_back(n);
  const auto ia = BroadcastIndex(ab, batch), ib = BroadcastIndex(bb, batch);
  Value& o = Output(ctx, 0, a->dtype, out);
  return Dispatch<TypeSet::kNumeric>(a->dtype, ctx.where(), [&](auto t) -> absl::Status {
    using T = decltype(t);
    for (size_t bi = 0; bi < ia.size(); ++bi)
      Gemm<T>(a->data<T>() + ia[bi] * m * k, b->data<T>() + ib[bi] * k * n, o.data<T>() + bi * m * n, m, k, n);
    return absl::OkStatus();
  });
}

absl::Status GemmKernel(KernelContext& ctx) {
  ASSIGN_OR_RETURN(const Value* a, ctx.Required(0));
  ASSIGN_OR_RETURN(const Value* b, ctx.Required(1));
  const Value* c = ctx.in(2);
  if (a->rank() != 2 || b->rank() != 2) return InvalidArgument("{}: A and B must be 2-D", ctx.where());
  const bool ta = ctx.Int("transA", 0) != 0, tb = ctx.Int("transB", 0) != 0;
  const double alpha = ctx.Float("alpha", 1.f), beta = ctx.Float("beta", 1.f);
  const int64_t m = ta ? a->shape[1] : a->shape[0], k = ta ? a->shape[0] : a->shape[1];
  const int64_t kb = tb ? b->shape[1] : b->shape[0], n = tb ? b->shape[0] : b->shape[1];
  if (k != kb) return InvalidArgument("{}: inner dimensions {} and {} differ", ctx.where(), k, kb);
  return Dispatch<TypeSet::kNumeric>(a->dtype, ctx.where(), [&](auto t) -> absl::Status {
    using T = decltype(t);
    Value& o = Output(ctx, 0, a->dtype, {m, n});
    MapM<T> y(o.data<T>(), m, n);
    MapC<T> am(a->data<T>(), a->shape[0], a->shape[1]);
    MapC<T> bm(b->data<T>(), b->shape[0], b->shape[1]);
    Mat<T> prod;
    if (ta && tb) prod = am.transpose() * bm.transpose();
    else if (ta) prod = am.transpose() * bm;
    else if (tb) prod = am * bm.transpose();
    else prod = am * bm;
    y = prod * static_cast<T>(alpha);
    if (c && beta != 0) {
      if (c->dtype != a->dtype) return InvalidArgument("{}: C type differs", ctx.where());
      Value cb;
      RETURN_IF_ERROR((Broadcast2<T, T, T>(o, *c, a->dtype, ctx.where(), cb, [&](T yv, T cv) {
        return static_cast<T>(yv + static_cast<T>(beta) * cv);
      })));
      if (cb.shape != o.shape) return InvalidArgument("{}: C does not broadcast to [{}, {}]", ctx.where(), m, n);
      o = std::move(cb);
    }
    return absl::OkStatus();
  });
}

// Geometry shared by Conv and the pools: N-d spatial sizes, kernel, strides, pads, dilations.
struct Window {
  int nd = 0;
  std::vector<int64_t> in, k, stride, dil, pad_begin, pad_end, out;
  int64_t in_prod() const { return NumElements(in); }
  int64_t k_prod() const { return NumElements(k); }
  int64_t out_prod() const { return NumElements(out); }
};

absl::StatusOr<Window> MakeWindow(const KernelContext& ctx, const Shape& x, std::vector<int64_t> kernel, bool ceil_mode) {
  Window w;
  w.nd = static_cast<int>(x.size()) - 2;
  if (w.nd < 1) return InvalidArgument("{}: input must be N x C x spatial", ctx.where());
  if (static_cast<int>(kernel.size()) != w.nd) return InvalidArgument("{}: kernel rank differs from the input's", ctx.where());
  w.in.assign(x.begin() + 2, x.end());
  w.k = kernel;
  w.stride = ctx.Ints("strides");
  w.dil = ctx.Ints("dilations");
  auto pads = ctx.Ints("pads");
  if (w.stride.empty()) w.stride.assign(w.nd, 1);
  if (w.dil.empty()) w.dil.assign(w.nd, 1);
  if (pads.empty()) pads.assign(2 * w.nd, 0);
  if (static_cast<int>(w.stride.size()) != w.nd || static_cast<int>(w.dil.size()) != w.nd ||
      static_cast<int>(pads.size()) != 2 * w.nd)
    return InvalidArgument("{}: strides/dilations/pads do not match {} spatial dims", ctx.where(), w.nd);
  const std::string auto_pad = ctx.String("auto_pad", "NOTSET");
  w.pad_begin.assign(pads.begin(), pads.begin() + w.nd);
  w.pad_end.assign(pads.begin() + w.nd, pads.end());
  w.out.resize(w.nd);
  for (int d = 0; d < w.nd; ++d) {
    if (w.stride[d] <= 0 || w.dil[d] <= 0 || w.k[d] <= 0) return InvalidArgument("{}: non-positive stride, dilation or kernel", ctx.where());
    const int64_t ext = w.dil[d] * (w.k[d] - 1) + 1;
    if (auto_pad == "SAME_UPPER" || auto_pad == "SAME_LOWER") {
      w.out[d] = (w.in[d] + w.stride[d] - 1) / w.stride[d];
      const int64_t total = std::max<int64_t>(0, (w.out[d] - 1) * w.stride[d] + ext - w.in[d]);
      w.pad_begin[d] = auto_pad == "SAME_UPPER" ? total / 2 : total - total / 2;
      w.pad_end[d] = total - w.pad_begin[d];
    } else {
      if (auto_pad == "VALID") w.pad_begin[d] = w.pad_end[d] = 0;
      const int64_t span = w.in[d] + w.pad_begin[d] + w.pad_end[d] - ext;
      if (span < 0) return InvalidArgument("{}: kernel is larger than the padded input", ctx.where());
      w.out[d] = (ceil_mode ? (span + w.stride[d] - 1) / w.stride[d] : span / w.stride[d]) + 1;
      if (ceil_mode && (w.out[d] - 1) * w.stride[d] >= w.in[d] + w.pad_begin[d]) --w.out[d];
    }
  }
  return w;
}

// For output position p and kernel offset q: the input spatial index (flattened), or -1 in padding.
template <class Fn>
void ForEachTap(const Window& w, Fn fn) {
  std::vector<int64_t> op(w.nd, 0);
  const auto in_st = Strides(w.in);
  // Each tap's dilated kernel offset per dimension, computed once (not per position) for kernels
  // of up to 2^20 taps (pools take theirs from an attribute: no table past that, a slower walk).
  const int64_t kp = w.k_prod();
  const bool table = kp <= (int64_t{1} << 20);
  std::vector<int64_t> kq(static_cast<size_t>(table ? kp * w.nd : w.nd));
  auto tap = [&](int64_t q, int64_t* dst) {
    int64_t r2 = q;
    for (int d = w.nd - 1; d >= 0; --d) {
      dst[d] = (r2 % w.k[d]) * w.dil[d];
      r2 /= w.k[d];
    }
  };
  if (table)
    for (int64_t q = 0; q < kp; ++q) tap(q, kq.data() + q * w.nd);
  for (int64_t p = 0; p < w.out_prod(); ++p) {
    int64_t rem = p;
    for (int d = w.nd - 1; d >= 0; --d) {
      op[d] = rem % w.out[d];
      rem /= w.out[d];
    }
    for (int64_t q = 0; q < kp; ++q) {
      int64_t off = 0;
      bool inside = true;
      const int64_t* k = table ? kq.data() + q * w.nd : kq.data();
      if (!table) tap(q, kq.data());
      for (int d = 0; d < w.nd; ++d) {
        const int64_t i = op[d] * w.stride[d] - w.pad_begin[d] + k[d];
        if (i < 0 || i >= w.in[d]) {
          inside = false;
          break;
        }
        off += i * in_st[d];
      }
      fn(p, q, inside ? off : -1);
    }
  }
}

struct ConvSetup {
  Window w;
  int64_t n = 0, c = 0, m = 0, group = 1, cg = 0;
};

absl::StatusOr<ConvSetup> SetupConv(const KernelContext& ctx, const Value& x, const Value& wt) {
  ConvSetup s;
  if (wt.rank() != x.rank() || x.rank() < 3) return InvalidArgument("{}: X and W ranks must match (>= 3)", ctx.where());
  std::vector<int64_t> kernel(wt.shape.begin() + 2, wt.shape.end());
  if (auto ks = ctx.Ints("kernel_shape"); !ks.empty() && ks != kernel)
    return InvalidArgument("{}: kernel_shape differs from W's shape", ctx.where());
  ASSIGN_OR_RETURN(s.w, MakeWindow(ctx, x.shape, kernel, false));
  s.n = x.shape[0];
  s.c = x.shape[1];
  s.m = wt.shape[0];
  s.group = ctx.Int("group", 1);
  if (s.group <= 0 || s.c % s.group || s.m % s.group) return InvalidArgument("{}: bad group {}", ctx.where(), s.group);
  s.cg = s.c / s.group;
  if (wt.shape[1] != s.cg) return InvalidArgument("{}: W has {} input channels per group, X gives {}", ctx.where(), wt.shape[1], s.cg);
  return s;
}

// col[(c * kprod + q), p] for batch n, group g.
void Im2Col(const ConvSetup& s, const float* x, int64_t n, int64_t g, float* col) {
  const int64_t kp = s.w.k_prod(), op = s.w.out_prod(), ip = s.w.in_prod();
  for (int64_t c = 0; c < s.cg; ++c) {
    const float* xc = x + (n * s.c + g * s.cg + c) * ip;
    float* dst = col + c * kp * op;
    ForEachTap(s.w, [&](int64_t p, int64_t q, int64_t off) { dst[q * op + p] = off < 0 ? 0.0f : xc[off]; });
  }
}

absl::Status ConvKernel(KernelContext& ctx) {
  ASSIGN_OR_RETURN(const Value* xv, ctx.Required(0));
  ASSIGN_OR_RETURN(const Value* wv, ctx.Required(1));
  if (xv->dtype != DType::kF32 || wv->dtype != DType::kF32) return Unimplemented("{}: only f32 Conv is supported", ctx.where());
  ASSIGN_OR_RETURN(ConvSetup s, SetupConv(ctx, *xv, *wv));
  const Value* bv = ctx.in(2);
  if (bv && bv->numel() != s.m) return InvalidArgument("{}: bias has {} values for {} channels", ctx.where(), bv->numel(), s.m);
  Shape out = {s.n, s.m};
  out.insert(out.end(), s.w.out.begin(), s.w.out.end());
  Value& o = Output(ctx, 0, DType::kF32, out);
  const int64_t kp = s.w.k_prod(), op = s.w.out_prod(), mg = s.m / s.group;
  std::vector<float> col(s.cg * kp * op);
  for (int64_t n = 0; n < s.n; ++n)
    for (int64_t g = 0; g < s.group; ++g) {
      Im2Col(s, xv->data<float>(), n, g, col.data());
      float* y = o.data<float>() + (n * s.m + g * mg) * op;
      Gemm<float>(wv->data<float>() + g * mg * s.cg * kp, col.data(), y, mg, s.cg * kp, op);
      if (bv)
        for (int64_t j = 0; j < mg; ++j)
          for (int64_t p = 0; p < op; ++p) y[j * op + p] += bv->data<float>()[g * mg + j];
    }
  return absl::OkStatus();
}

// ConvTranspose: the adjoint of Conv. Each input position scatters W^T x into the output
// positions its kernel taps reach (col2im); ForEachTap runs with the output as the "input" grid.
absl::Status ConvTransposeKernel(KernelContext& ctx) {
  ASSIGN_OR_RETURN(const Value* xv, ctx.Required(0));
  ASSIGN_OR_RETURN(const Value* wv, ctx.Required(1));
  if (xv->dtype != DType::kF32 || wv->dtype != DType::kF32)
    return Unimplemented("{}: only f32 ConvTranspose is supported", ctx.where());
  const int nd = xv->rank() - 2;
  if (nd < 1 || wv->rank() != xv->rank()) return InvalidArgument("{}: X and W ranks must match (>= 3)", ctx.where());
  const int64_t n = xv->shape[0], c = xv->shape[1], group = ctx.Int("group", 1);
  if (group <= 0 || c % group || wv->shape[0] != c) return InvalidArgument("{}: W must be [C, M/group, k...]", ctx.where());
  const int64_t mg = wv->shape[1], m = mg * group, cg = c / group;
  Window w;
  w.nd = nd;
  w.out.assign(xv->shape.begin() + 2, xv->shape.end());  // the tap walk's "output" is X's grid
  w.k.assign(wv->shape.begin() + 2, wv->shape.end());
  w.stride = ctx.Ints("strides");
  w.dil = ctx.Ints("dilations");
  auto pads = ctx.Ints("pads");
  auto out_pad = ctx.Ints("output_padding");
  const auto out_shape = ctx.Ints("output_shape");
  if (w.stride.empty()) w.stride.assign(nd, 1);
  if (w.dil.empty()) w.dil.assign(nd, 1);
  if (pads.empty()) pads.assign(2 * nd, 0);
  if (out_pad.empty()) out_pad.assign(nd, 0);
  if (static_cast<int>(w.stride.size()) != nd || static_cast<int>(w.dil.size()) != nd ||
      static_cast<int>(pads.size()) != 2 * nd || static_cast<int>(out_pad.size()) != nd)
    return InvalidArgument("{}: strides/dilations/pads/output_padding do not match {} spatial dims", ctx.where(), nd);
  const std::string auto_pad = ctx.String("auto_pad", "NOTSET");
  w.pad_begin.assign(pads.begin(), pads.begin() + nd);
  w.pad_end.assign(pads.begin() + nd, pads.end());
  w.in.resize(nd);
  for (int d = 0; d < nd; ++d) {
    const int64_t full = w.stride[d] * (w.out[d] - 1) + out_pad[d] + (w.k[d] - 1) * w.dil[d] + 1;
    if (!out_shape.empty() || auto_pad == "SAME_UPPER" || auto_pad == "SAME_LOWER") {
      int64_t target = w.out[d] * w.stride[d];
      if (!out_shape.empty()) target = out_shape[out_shape.size() - nd + d];
      // Negative padding is not applied: positions past the full result stay 0 (+ bias).
      const int64_t total = std::max<int64_t>(0, full - target);
      if (auto_pad == "SAME_UPPER") {
        w.pad_begin[d] = total / 2;
        w.pad_end[d] = total - total / 2;
      } else {
        w.pad_begin[d] = total - total / 2;
        w.pad_end[d] = total / 2;
      }
      w.in[d] = target;
    } else {
      if (auto_pad == "VALID") w.pad_begin[d] = w.pad_end[d] = 0;
      w.in[d] = full - w.pad_begin[d] - w.pad_end[d];
    }
    if (w.in[d] <= 0) return InvalidArgument("{}: output dimension {} is not positive", ctx.where(), w.in[d]);
  }
  const Value* bv = ctx.in(2);
  if (bv && bv->numel() != m) return InvalidArgument("{}: bias has {} values for {} channels", ctx.where(), bv->numel(), m);
  Shape out = {n, m};
  out.insert(out.end(), w.in.begin(), w.in.end());
  Value& o = Output(ctx, 0, DType::kF32, out);
  const int64_t kp = w.k_prod(), ip = w.out_prod(), op = w.in_prod();
  Mat<float> col(mg * kp, ip);
  for (int64_t b = 0; b < n; ++b)
    for (int64_t g = 0; g < group; ++g) {
      // col[(j, q), p] = sum_c W[c, j, q] X[c, p]
      MapC<float> wg(wv->data<float>() + g * cg * mg * kp, cg, mg * kp);
      MapC<float> xg(xv->data<float>() + (b * c + g * cg) * ip, cg, ip);
      col.noalias() = wg.transpose() * xg;
      float* y = o.data<float>() + (b * m + g * mg) * op;
      // One walk of the taps for every output channel (each channel's sums in the same tap order).
      ForEachTap(w, [&](int64_t p, int64_t q, int64_t off) {
        if (off < 0) return;
        for (int64_t j = 0; j < mg; ++j) y[j * op + off] += col(j * kp + q, p);
      });
      if (bv)
        for (int64_t j = 0; j < mg; ++j)
          for (int64_t t = 0; t < op; ++t) y[j * op + t] += bv->data<float>()[g * mg + j];
    }
  return absl::OkStatus();
}

absl::Status PoolKernel(KernelContext& ctx) {
  ASSIGN_OR_RETURN(const Value* xv, ctx.Required(0));
  if (xv->rank() < 3) return InvalidArgument("{}: input must be N x C x spatial", ctx.where());
  const bool global = ctx.op().rfind("Global", 0) == 0;
  const bool is_max = ctx.op().find("Max") != std::string::npos;
  std::vector<int64_t> kernel = global ? std::vector<int64_t>(xv->shape.begin() + 2, xv->shape.end()) : ctx.Ints("kernel_shape");
  if (kernel.empty()) return InvalidArgument("{}: kernel_shape is required", ctx.where());
  if (!global && is_max && ctx.Int("storage_order", 0) != 0)
    return Unimplemented("{}: storage_order 1 is not supported", ctx.where());
  if (ctx.num_outputs() > 1 && !ctx.node().output(1).empty())
    return Unimplemented("{}: the Indices output is not supported", ctx.where());
  ASSIGN_OR_RETURN(Window w, MakeWindow(ctx, xv->shape, kernel, !global && ctx.Int("ceil_mode", 0) != 0));
  const bool include_pad = ctx.Int("count_include_pad", 0) != 0;
  ASSIGN_OR_RETURN(Value xd, CastValue(*xv, DType::kF64));
  Shape out = {xv->shape[0], xv->shape[1]};
  out.insert(out.end(), w.out.begin(), w.out.end());
  Value od(DType::kF64, out);
  const int64_t planes = xv->shape[0] * xv->shape[1], ip = w.in_prod(), op = w.out_prod();
  std::vector<double> acc(op);
  std::vector<int64_t> cnt(op), cnt_pad(op);
  // Taps inside the padded (not ceil-extended) area, for count_include_pad.
  std::vector<int64_t> pad_taps(op, 0);
  if (!is_max && include_pad) {
    std::vector<int64_t> opos(w.nd);
    for (int64_t p = 0; p < op; ++p) {
      int64_t rem = p, taps = 1;
      for (int d = w.nd - 1; d >= 0; --d) {
        opos[d] = rem % w.out[d];
        rem /= w.out[d];
      }
      for (int d = 0; d < w.nd; ++d) {
        const int64_t lo = opos[d] * w.stride[d] - w.pad_begin[d];
        const int64_t hi = std::min(lo + (w.k[d] - 1) * w.dil[d] + 1, w.in[d] + w.pad_end[d]);
        taps *= std::max<int64_t>(0, (hi - lo + w.dil[d] - 1) / w.dil[d]);
      }
      pad_taps[p] = taps;
    }
  }
  for (int64_t pl = 0; pl < planes; ++pl) {
    const double* x = xd.data<double>() + pl * ip;
    std::fill(acc.begin(), acc.end(), is_max ? -std::numeric_limits<double>::infinity() : 0.0);
    std::fill(cnt.begin(), cnt.end(), 0);
    ForEachTap(w, [&](int64_t p, int64_t, int64_t off) {
      if (off < 0) return;
      if (is_max) acc[p] = std::max(acc[p], x[off]);
      else acc[p] += x[off];
      ++cnt[p];
    });
    for (int64_t p = 0; p < op; ++p) {
      double v = acc[p];
      if (!is_max) v = v / static_cast<double>(include_pad ? pad_taps[p] : std::max<int64_t>(cnt[p], 1));
      od.data<double>()[pl * op + p] = v;
    }
  }
  ASSIGN_OR_RETURN(ctx.out(0), CastValue(od, xv->dtype));
  return absl::OkStatus();
}

absl::Status BatchNormKernel(KernelContext& ctx) {
  ASSIGN_OR_RETURN(const Value* x, ctx.Required(0));
  if (ctx.Int("training_mode", 0) != 0) return Unimplemented("{}: training_mode is not supported", ctx.where());
  std::vector<std::vector<double>> p(4);
  for (int i = 0; i < 4; ++i) {
    ASSIGN_OR_RETURN(const Value* v, ctx.Required(i + 1));
    ASSIGN_OR_RETURN(Value d, CastValue(*v, DType::kF64));
    p[i].assign(d.data<double>(), d.data<double>() + d.numel());
  }
  const double eps = ctx.Float("epsilon", 1e-5f);
  if (x->rank() < 2) return InvalidArgument("{}: input must be N x C x ...", ctx.where());
  const int64_t c = x->shape[1], inner = x->numel() / std::max<int64_t>(1, x->shape[0] * c);
  for (auto& v : p)
    if (static_cast<int64_t>(v.size()) != c) return InvalidArgument("{}: parameters must have {} values", ctx.where(), c);
  ASSIGN_OR_RETURN(Value xd, CastValue(*x, DType::kF64));
  for (int64_t i = 0; i < xd.numel(); ++i) {
    const int64_t ch = (i / inner) % c;
    double& v = xd.data<double>()[i];
    v = (v - p[2][ch]) / std::sqrt(p[3][ch] + eps) * p[0][ch] + p[1][ch];
  }
  ASSIGN_OR_RETURN(ctx.out(0), CastValue(xd, x->dtype));
  return absl::OkStatus();
}

// Mean and 1 / sqrt(variance + eps) of n values (two passes, f64).
std::pair<double, double> MeanInvStd(const double* v, int64_t n, double eps) {
  double mu = 0, var = 0;
  for (int64_t i = 0; i < n; ++i) mu += v[i];
  mu /= static_cast<double>(n);
  for (int64_t i = 0; i < n; ++i) var += (v[i] - mu) * (v[i] - mu);
  var /= static_cast<double>(n);
  return {mu, 1.0 / std::sqrt(var + eps)};
}

absl::Status LayerNormKernel(KernelContext& ctx) {
  ASSIGN_OR_RETURN(const Value* x, ctx.Required(0));
  ASSIGN_OR_RETURN(const Value* scale, ctx.Required(1));
  const Value* bias = ctx.in(2);
  ASSIGN_OR_RETURN(int axis, NormAxis(ctx.Int("axis", -1), x->rank(), ctx.where()));
  const double eps = ctx.Float("epsilon", 1e-5f);
  int64_t outer = 1;
  for (int d = 0; d < axis; ++d) outer *= x->shape[d];
  const int64_t inner = outer ? x->numel() / outer : 0;
  ASSIGN_OR_RETURN(Value xd, CastValue(*x, DType::kF64));
  ASSIGN_OR_RETURN(Value sd, CastValue(*scale, DType::kF64));
  Value bd;
  if (bias) {
    ASSIGN_OR_RETURN(bd, CastValue(*bias, DType::kF64));
  }
  Shape stat_shape = x->shape;
  for (int d = axis; d < x->rank(); ++d) stat_shape[d] = 1;
  Value mean(DType::kF64, stat_shape), inv(DType::kF64, stat_shape);
  // Scale and bias broadcast over the normalized dims.
  Shape norm_shape(x->shape.begin() + axis, x->shape.end());
  for (const Value* p : {&sd, bias ? &bd : nullptr}) {
    if (!p) continue;
    ASSIGN_OR_RETURN(Shape b, BroadcastShapes(p->shape, norm_shape, ctx.where()));
    if (b != norm_shape) {
      return InvalidArgument("{}: {} of shape {} does not broadcast to the normalized shape {}", ctx.where(),
                             p == &sd ? "scale" : "bias", ShapeString(p->shape), ShapeString(norm_shape));
    }
  }
  const auto is = BroadcastIndex(sd.shape, norm_shape);
  std::vector<int64_t> ib;
  if (bias) ib = BroadcastIndex(bd.shape, norm_shape);
  for (int64_t o = 0; o < outer; ++o) {
    double* v = xd.data<double>() + o * inner;
    const auto [mu, r] = MeanInvStd(v, inner, eps);
    mean.data<double>()[o] = mu;
    inv.data<double>()[o] = r;
    for (int64_t i = 0; i < inner; ++i)
      v[i] = (v[i] - mu) * r * sd.data<double>()[is[i]] + (bias ? bd.data<double>()[ib[i]] : 0.0);
  }
  ASSIGN_OR_RETURN(ctx.out(0), CastValue(xd, x->dtype));
  DType stash = DType::kF32;
  if (ctx.Int("stash_type", 1) != 1) stash = x->dtype;
  if (ctx.num_outputs() > 1) {
    ASSIGN_OR_RETURN(ctx.out(1), CastValue(mean, stash));
  }
  if (ctx.num_outputs() > 2) {
    ASSIGN_OR_RETURN(ctx.out(2), CastValue(inv, stash));
  }
  return absl::OkStatus();
}

absl::Status InstanceNormKernel(KernelContext& ctx) {
  ASSIGN_OR_RETURN(const Value* x, ctx.Required(0));
  ASSIGN_OR_RETURN(const Value* scale, ctx.Required(1));
  ASSIGN_OR_RETURN(const Value* bias, ctx.Required(2));
  if (x->rank() < 3) return InvalidArgument("{}: input must be N x C x spatial", ctx.where());
  const double eps = ctx.Float("epsilon", 1e-5f);
  const int64_t c = x->shape[1], planes = x->shape[0] * c, inner = planes ? x->numel() / planes : 0;
  ASSIGN_OR_RETURN(Value xd, CastValue(*x, DType::kF64));
  ASSIGN_OR_RETURN(Value sd, CastValue(*scale, DType::kF64));
  ASSIGN_OR_RETURN(Value bd, CastValue(*bias, DType::kF64));
  if (sd.numel() != c || bd.numel() != c) return InvalidArgument("{}: scale and B must have {} values", ctx.where(), c);
  for (int64_t pl = 0; pl < planes; ++pl) {
    double* v = xd.data<double>() + pl * inner;
    const auto [mu, r] = MeanInvStd(v, inner, eps);
    for (int64_t i = 0; i < inner; ++i) v[i] = (v[i] - mu) * r * sd.data<double>()[pl % c] + bd.data<double>()[pl % c];
  }
  ASSIGN_OR_RETURN(ctx.out(0), CastValue(xd, x->dtype));
  return absl::OkStatus();
}

// Softmax / LogSoftmax / Hardmax: over one axis (opset >= 13) or over all dims from `axis`
// on (older opsets, default axis 1).
absl::Status SoftmaxKernel(KernelContext& ctx) {
  ASSIGN_OR_RETURN(const Value* x, ctx.Required(0));
  const bool legacy = ctx.opset() < 13;
  ASSIGN_OR_RETURN(int axis, NormAxis(ctx.Int("axis", legacy ? 1 : -1), x->rank(), ctx.where()));
  int64_t outer = 1, dim = 1, inner = 1;
  for (int d = 0; d < axis; ++d) outer *= x->shape[d];
  if (legacy) {
    for (int d = axis; d < x->rank(); ++d) dim *= x->shape[d];
  } else {
    dim = x->rank() ? x->shape[axis] : 1;
    for (int d = axis + 1; d < x->rank(); ++d) inner *= x->shape[d];
  }
  const std::string& op = ctx.op();
  return Dispatch<TypeSet::kFloat>(x->dtype, ctx.where(), [&](auto t) -> absl::Status {
    using T = decltype(t);
    Value& o = Output(ctx, 0, x->dtype, x->shape);
    for (int64_t b = 0; b < outer; ++b)
      for (int64_t i = 0; i < inner; ++i) {
        const T* in = x->data<T>() + b * dim * inner + i;
        T* out = o.data<T>() + b * dim * inner + i;
        T mx = -std::numeric_limits<T>::infinity();
        int64_t arg = 0;
        for (int64_t j = 0; j < dim; ++j)
          if (in[j * inner] > mx) {
            mx = in[j * inner];
            arg = j;
          }
        if (op == "Hardmax") {
          for (int64_t j = 0; j < dim; ++j) out[j * inner] = j == arg ? T(1) : T(0);
          continue;
        }
        // exp(z) for z < -745 is 0 in f64; skipping it avoids libm's slow underflow path
        // (masked attention scores are large negatives).
        auto ex = [](double z) { return z < -745.0 ? 0.0 : std::exp(z); };
        double sum = 0;
        for (int64_t j = 0; j < dim; ++j) sum += ex(static_cast<double>(in[j * inner] - mx));
        const bool log_out = op == "LogSoftmax";
        const double log_sum = std::log(sum), inv = 1.0 / sum;
        for (int64_t j = 0; j < dim; ++j) {
          const double z = static_cast<double>(in[j * inner] - mx);
          out[j * inner] = static_cast<T>(log_out ? z - log_sum : ex(z) * inv);
        }
      }
    return absl::OkStatus();
  });
}

}  // namespace

absl::StatusOr<Value> ConvPatches(const KernelContext& ctx) {
  ASSIGN_OR_RETURN(const Value* xv, ctx.Required(0));
  ASSIGN_OR_RETURN(const Value* wv, ctx.Required(1));
  ASSIGN_OR_RETURN(Value x, CastValue(*xv, DType::kF32));
  ASSIGN_OR_RETURN(ConvSetup s, SetupConv(ctx, x, *wv));
  if (s.group != 1) return Unimplemented("{}: patches of grouped convolutions", ctx.where());
  const int64_t kp = s.w.k_prod(), op = s.w.out_prod(), cols = s.c * kp;
  Value out(DType::kF32, {s.n * op, cols});
  std::vector<float> col(cols * op);
  for (int64_t n = 0; n < s.n; ++n) {
    Im2Col(s, x.data<float>(), n, 0, col.data());
    for (int64_t r = 0; r < cols; ++r)
      for (int64_t p = 0; p < op; ++p) out.data<float>()[(n * op + p) * cols + r] = col[r * op + p];
  }
  return out;
}

void RegisterNnKernels(KernelRegistry& r) {
  r.Add("", "MatMul", MatMulKernel);
  r.Add("", "Gemm", GemmKernel);
  r.Add("", "Conv", ConvKernel);
  r.Add("", "ConvTranspose", ConvTransposeKernel);
  r.Add("", "MaxPool", PoolKernel);
  r.Add("", "AveragePool", PoolKernel);
  r.Add("", "GlobalMaxPool", PoolKernel);
  r.Add("", "GlobalAveragePool", PoolKernel);
  r.Add("", "BatchNormalization", BatchNormKernel);
  r.Add("", "LayerNormalization", LayerNormKernel);
  r.Add("", "InstanceNormalization", InstanceNormKernel);
  r.Add("", "Softmax", SoftmaxKernel);
  r.Add("", "LogSoftmax", SoftmaxKernel);
  r.Add("", "Hardmax", SoftmaxKernel);
}

}  // namespace compress::onnxrt
