// Resize (opsets 10-18 semantics without antialias) and Upsample: separable nearest /
// linear / cubic interpolation with every coordinate transformation mode, applied one axis
// at a time in f64.
#include <algorithm>
#include <cmath>

#include "runtime/onnx/kernel.h"

namespace compress::onnxrt {
namespace {

struct Taps {  // per output index along one axis: input indices and weights
  std::vector<std::vector<std::pair<int64_t, double>>> at;
  std::vector<bool> outside;  // tf_crop_and_resize: coordinate outside the input -> extrapolation
};

struct ResizeMode {
  std::string mode = "nearest", coord = "half_pixel", nearest = "round_prefer_floor";
  double cubic_a = -0.75;
  bool exclude_outside = false;
};

// The input coordinate of output index xr. `len` is the resized length as ONNX defines it,
// in * scale before flooring (the output size when sizes were given).
double Original(const ResizeMode& m, int64_t xr, double scale, int64_t in, double len, double roi_start,
                double roi_end) {
  const double x = static_cast<double>(xr);
  if (m.coord == "half_pixel") return (x + 0.5) / scale - 0.5;
  if (m.coord == "pytorch_half_pixel") return len > 1 ? (x + 0.5) / scale - 0.5 : 0.0;
  if (m.coord == "align_corners") return len == 1 ? 0.0 : x * (in - 1) / (len - 1);
  if (m.coord == "asymmetric") return x / scale;
  if (m.coord == "tf_half_pixel_for_nn") return (x + 0.5) / scale;
  // tf_crop_and_resize
  return len > 1 ? roi_start * (in - 1) + x * (roi_end - roi_start) * (in - 1) / (len - 1)
                 : 0.5 * (roi_start + roi_end) * (in - 1);
}

// A coordinate as an index: NaN and values past +-2^62 (what a bad roi or scale gives) have no
// int64 conversion; every tap clamps to the input anyway.
int64_t AsIndex(double v) { return std::isnan(v) ? 0 : static_cast<int64_t>(std::clamp(v, -0x1p62, 0x1p62)); }

int64_t Nearest(const std::string& rule, double x) {
  if (rule == "floor") return AsIndex(std::floor(x));
  if (rule == "ceil") return AsIndex(std::ceil(x));
  const double f = std::floor(x);
  if (x - f == 0.5) return AsIndex(rule == "round_prefer_ceil" ? f + 1 : f);
  return AsIndex(std::round(x));
}

// The output size of an axis of `in` elements scaled by `s`, or an error for a scale that is not
// a positive finite number or a size past 2^40.
absl::StatusOr<int64_t> ScaledSize(const KernelContext& ctx, int64_t in, double s) {
  if (!(s > 0) || !(static_cast<double>(in) * s <= 0x1p40))
    return InvalidArgument("{}: scale {} of an axis of {} is not a positive size", ctx.where(), s, in);
  return static_cast<int64_t>(std::floor(static_cast<double>(in) * s));
}

Taps MakeTaps(const ResizeMode& m, int64_t in, int64_t out, double scale, double roi_start, double roi_end) {
  Taps t;
  t.at.resize(out);
  t.outside.assign(out, false);
  auto clampi = [&](int64_t i) { return std::clamp<int64_t>(i, 0, in - 1); };
  for (int64_t o = 0; o < out; ++o) {
    const double x = Original(m, o, scale, in, in * scale, roi_start, roi_end);
    if (m.coord == "tf_crop_and_resize" && (x < 0 || x > in - 1)) t.outside[o] = true;
    auto& taps = t.at[o];
    if (m.mode == "nearest") {
      taps.push_back({clampi(Nearest(m.nearest, x)), 1.0});
    } else if (m.mode == "linear") {
      const double xc = m.coord == "tf_crop_and_resize" ? x : std::clamp(x, 0.0, static_cast<double>(in - 1));
      const int64_t i0 = AsIndex(std::floor(xc));
      const double r = xc - static_cast<double>(i0);
      taps.push_back({clampi(i0), 1 - r});
      taps.push_back({clampi(i0 + 1), r});
    } else {  // cubic
      const int64_t i0 = AsIndex(std::floor(x));
      const double r = x - static_cast<double>(i0), a = m.cubic_a;
      const double c[4] = {((a * (r + 1) - 5 * a) * (r + 1) + 8 * a) * (r + 1) - 4 * a,
                           ((a + 2) * r - (a + 3)) * r * r + 1,
                           ((a + 2) * (1 - r) - (a + 3)) * (1 - r) * (1 - r) + 1,
                           ((a * (2 - r) - 5 * a) * (2 - r) + 8 * a) * (2 - r) - 4 * a};
      double sum = 0;
      for (int k = 0; k < 4; ++k) {
        const int64_t i = i0 - 1 + k;
        if (m.exclude_outside && (i < 0 || i >= in)) continue;
        taps.push_back({clampi(i), c[k]});
        sum += c[k];
      }
      if (m.exclude_outside && sum != 0)
        for (auto& tp : taps) tp.second /= sum;
    }
  }
  return t;
}

absl::Status Interpolate(KernelContext& ctx, const Value& x, const Shape& out_shape, const std::vector<double>& scales,
                         const ResizeMode& m, const std::vector<double>& roi, double extrapolation) {
  const int r = x.rank();
  ASSIGN_OR_RETURN(Value cur, CastValue(x, DType::kF64));
  std::vector<uint8_t> outside_any;  // per element of the final output (tf_crop_and_resize)
  std::vector<Taps> all(r);
  for (int d = 0; d < r; ++d) {
    const double rs = roi.size() == static_cast<size_t>(2 * r) ? roi[d] : 0.0;
    const double re = roi.size() == static_cast<size_t>(2 * r) ? roi[r + d] : 1.0;
    all[d] = MakeTaps(m, x.shape[d], out_shape[d], scales[d], rs, re);
  }
  for (int d = 0; d < r; ++d) {
    if (cur.shape[d] == out_shape[d] && m.coord != "tf_crop_and_resize" && scales[d] == 1.0) {
      bool identity = true;
      for (int64_t o = 0; o < out_shape[d] && identity; ++o)
        identity = all[d].at[o].size() == 1 && all[d].at[o][0].first == o;
      if (identity) continue;
    }
    Shape next_shape = cur.shape;
    next_shape[d] = out_shape[d];
    Value next(DType::kF64, next_shape);
    int64_t outer = 1, inner = 1;
    for (int k = 0; k < d; ++k) outer *= cur.shape[k];
    for (int k = d + 1; k < r; ++k) inner *= cur.shape[k];
    const int64_t in_len = cur.shape[d], out_len = out_shape[d];
    const double* src = cur.data<double>();
    double* dst = next.data<double>();
    for (int64_t b = 0; b < outer; ++b)
      for (int64_t o = 0; o < out_len; ++o) {
        double* drow = dst + (b * out_len + o) * inner;
        for (int64_t i = 0; i < inner; ++i) drow[i] = 0;
        for (const auto& [idx, wgt] : all[d].at[o]) {
          const double* srow = src + (b * in_len + idx) * inner;
          for (int64_t i = 0; i < inner; ++i) drow[i] += wgt * srow[i];
        }
      }
    cur = std::move(next);
  }
  if (m.coord == "tf_crop_and_resize") {
    const auto st = Strides(out_shape);
    for (int64_t k = 0; k < cur.numel(); ++k) {
      int64_t rem = k;
      for (int d = 0; d < r; ++d) {
        const int64_t p = rem / st[d];
        rem %= st[d];
        if (all[d].outside[p]) {
          cur.data<double>()[k] = extrapolation;
          break;
        }
      }
    }
  }
  ASSIGN_OR_RETURN(ctx.out(0), CastValue(cur, x.dtype));
  return absl::OkStatus();
}

absl::Status ResizeKernel(KernelContext& ctx) {
  ASSIGN_OR_RETURN(const Value* x, ctx.Required(0));
  const int r = x->rank();
  ResizeMode m;
  m.mode = ctx.String("mode", "nearest");
  m.nearest = ctx.String("nearest_mode", "round_prefer_floor");
  m.cubic_a = ctx.Float("cubic_coeff_a", -0.75f);
  m.exclude_outside = ctx.Int("exclude_outside", 0) != 0;
  m.coord = ctx.String("coordinate_transformation_mode", ctx.opset() < 11 ? "asymmetric" : "half_pixel");
  if (m.mode != "nearest" && m.mode != "linear" && m.mode != "cubic")
    return Unimplemented("{}: mode '{}' is not supported", ctx.where(), m.mode);
  if (ctx.Int("antialias", 0) != 0) return Unimplemented("{}: antialias is not supported", ctx.where());
  if (ctx.attr("axes")) return Unimplemented("{}: the axes attribute is not supported", ctx.where());
  if (ctx.String("keep_aspect_ratio_policy", "stretch") != "stretch")
    return Unimplemented("{}: keep_aspect_ratio_policy other than stretch", ctx.where());
  if (ctx.opset() < 11 && ctx.op() == "Resize") m.nearest = "floor";
  std::vector<double> roi, scales;
  Shape out(r);
  const Value* roi_v = ctx.opset() >= 11 ? ctx.in(1) : nullptr;
  const Value* scales_v = ctx.opset() >= 11 ? ctx.in(2) : ctx.in(1);
  const Value* sizes_v = ctx.opset() >= 11 ? ctx.in(3) : nullptr;
  if (roi_v && roi_v->numel()) {
    ASSIGN_OR_RETURN(Value rd, CastValue(*roi_v, DType::kF64));
    roi.assign(rd.data<double>(), rd.data<double>() + rd.numel());
  }
  if (sizes_v && sizes_v->numel()) {
    ASSIGN_OR_RETURN(auto sizes, ToInt64s(*sizes_v, ctx.where() + " sizes"));
    if (static_cast<int>(sizes.size()) != r) return InvalidArgument("{}: sizes must have {} entries", ctx.where(), r);
    for (int d = 0; d < r; ++d) {
      out[d] = sizes[d];
      scales.push_back(x->shape[d] ? static_cast<double>(sizes[d]) / x->shape[d] : 1.0);
    }
  } else if (scales_v && scales_v->numel()) {
    ASSIGN_OR_RETURN(Value sd, CastValue(*scales_v, DType::kF64));
    if (sd.numel() != r) return InvalidArgument("{}: scales must have {} entries", ctx.where(), r);
    for (int d = 0; d < r; ++d) {
      const double s = sd.data<double>()[d];
      scales.push_back(s);
      ASSIGN_OR_RETURN(out[d], ScaledSize(ctx, x->shape[d], s));
    }
  } else if (ctx.op() == "Upsample" && ctx.attr("scales")) {
    for (int d = 0; d < r; ++d) {
      const auto f = ctx.Floats("scales");
      if (static_cast<int>(f.size()) != r) return InvalidArgument("{}: scales must have {} entries", ctx.where(), r);
      scales.push_back(f[d]);
      ASSIGN_OR_RETURN(out[d], ScaledSize(ctx, x->shape[d], f[d]));
    }
  } else {
    return InvalidArgument("{}: give scales or sizes", ctx.where());
  }
  if (ctx.op() == "Upsample") {
    m.coord = "asymmetric";
    m.nearest = "floor";
    if (m.mode == "bilinear") m.mode = "linear";
  }
  return Interpolate(ctx, *x, out, scales, m, roi, ctx.Float("extrapolation_value", 0.f));
}

}  // namespace

void RegisterResizeKernels(KernelRegistry& r) {
  r.Add("", "Resize", ResizeKernel);
  r.Add("", "Upsample", ResizeKernel);
}

}  // namespace compress::onnxrt
