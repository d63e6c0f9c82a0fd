// Elementwise ONNX operators: unary math and activations, broadcasting binary arithmetic,
// comparisons and logic, variadic Sum/Mean/Max/Min, Where, Clip, Cast, Identity.
#include <cmath>
#include <limits>
#include <type_traits>

#include "formats/onnx_io.h"
#include "runtime/onnx/kernel.h"

namespace compress::onnxrt {
namespace {

constexpr TypeSet kF = TypeSet::kFloat;
constexpr TypeSet kN = TypeSet::kNumeric;

// A kernel applying make(ctx)(x) to every element of input 0 (types in `set`).
template <TypeSet set, class Make>
Kernel Unary(Make make) {
  return [make](KernelContext& ctx) -> absl::Status {
    ASSIGN_OR_RETURN(const Value* x, ctx.Required(0));
    auto fn = make(ctx);
    return Dispatch<set>(x->dtype, ctx.where(), [&](auto t) -> absl::Status {
      using T = decltype(t);
      Value& o = Output(ctx, 0, x->dtype, x->shape);
      const T* in = x->data<T>();
      T* out = o.data<T>();
      for (int64_t i = 0; i < x->numel(); ++i) out[i] = static_cast<T>(fn(in[i]));
      return absl::OkStatus();
    });
  };
}

template <TypeSet set, class Fn>
Kernel Simple(Fn fn) {
  return Unary<set>([fn](const KernelContext&) { return fn; });
}

// Integer division and modulo never trap: x / 0 gives 0 (ONNX leaves it undefined).
template <class T>
T SafeDiv(T a, T b) {
  if constexpr (std::is_integral_v<T>) {
    if (b == 0) return 0;
    if constexpr (std::is_signed_v<T>) {
      if (b == -1) return static_cast<T>(-static_cast<std::make_unsigned_t<T>>(a));
    }
  }
  return a / b;
}

template <TypeSet set, class Fn>
Kernel Binary(Fn fn) {
  return [fn](KernelContext& ctx) -> absl::Status {
    ASSIGN_OR_RETURN(const Value* a, ctx.Required(0));
    ASSIGN_OR_RETURN(const Value* b, ctx.Required(1));
    if (a->dtype != b->dtype) {
      return InvalidArgument("{}: input types differ ({} and {})", ctx.where(), DTypeName(a->dtype),
                             DTypeName(b->dtype));
    }
    return Dispatch<set>(a->dtype, ctx.where(), [&](auto t) -> absl::Status {
      using T = decltype(t);
      return Broadcast2<T, T, T>(*a, *b, a->dtype, ctx.where(), ctx.out(0),
                                 [&](T x, T y) { return static_cast<T>(fn(x, y)); });
    });
  };
}

// Comparisons: numeric or bool inputs, bool output.
template <class Fn>
Kernel Compare(Fn fn) {
  return [fn](KernelContext& ctx) -> absl::Status {
    ASSIGN_OR_RETURN(const Value* a, ctx.Required(0));
    ASSIGN_OR_RETURN(const Value* b, ctx.Required(1));
    if (a->dtype != b->dtype) return InvalidArgument("{}: input types differ", ctx.where());
    if (a->dtype == DType::kBool) {
      return Broadcast2<uint8_t, uint8_t, uint8_t>(*a, *b, DType::kBool, ctx.where(), ctx.out(0),
                                                   [&](uint8_t x, uint8_t y) -> uint8_t { return fn(x, y); });
    }
    return Dispatch<kN>(a->dtype, ctx.where(), [&](auto t) -> absl::Status {
      using T = decltype(t);
      return Broadcast2<T, T, uint8_t>(*a, *b, DType::kBool, ctx.where(), ctx.out(0),
                                       [&](T x, T y) -> uint8_t { return fn(x, y) ? 1 : 0; });
    });
  };
}

template <class Fn>
Kernel Logic(Fn fn) {
  return [fn](KernelContext& ctx) -> absl::Status {
    ASSIGN_OR_RETURN(const Value* a, ctx.Required(0));
    ASSIGN_OR_RETURN(const Value* b, ctx.Required(1));
    if (a->dtype != DType::kBool || b->dtype != DType::kBool)
      return InvalidArgument("{}: inputs must be bool", ctx.where());
    return Broadcast2<uint8_t, uint8_t, uint8_t>(*a, *b, DType::kBool, ctx.where(), ctx.out(0),
                                                 [&](uint8_t x, uint8_t y) -> uint8_t { return fn(x != 0, y != 0); });
  };
}

// Sum / Mean / Max / Min over any number of broadcasting inputs.
template <TypeSet set, class Fn>
Kernel Variadic(bool mean, Fn fn) {
  return [mean, fn](KernelContext& ctx) -> absl::Status {
    ASSIGN_OR_RETURN(const Value* first, ctx.Required(0));
    Value acc = *first;
    for (int i = 1; i < ctx.num_inputs(); ++i) {
      ASSIGN_OR_RETURN(const Value* b, ctx.Required(i));
      if (b->dtype != acc.dtype) return InvalidArgument("{}: input types differ", ctx.where());
      Value next;
      RETURN_IF_ERROR(Dispatch<set>(acc.dtype, ctx.where(), [&](auto t) -> absl::Status {
        using T = decltype(t);
        return Broadcast2<T, T, T>(acc, *b, acc.dtype, ctx.where(), next,
                                   [&](T x, T y) { return static_cast<T>(fn(x, y)); });
      }));
      acc = std::move(next);
    }
    if (mean) {
      RETURN_IF_ERROR(Dispatch<kF>(acc.dtype, ctx.where(), [&](auto t) -> absl::Status {
        using T = decltype(t);
        for (int64_t i = 0; i < acc.numel(); ++i) acc.data<T>()[i] /= static_cast<T>(ctx.num_inputs());
        return absl::OkStatus();
      }));
    }
    ctx.out(0) = std::move(acc);
    return absl::OkStatus();
  };
}

absl::Status PowKernel(KernelContext& ctx) {
  ASSIGN_OR_RETURN(const Value* a, ctx.Required(0));
  ASSIGN_OR_RETURN(const Value* b, ctx.Required(1));
  if (a->dtype == DType::kF32 && b->dtype == DType::kF32) {
    return Broadcast2<float, float, float>(*a, *b, DType::kF32, ctx.where(), ctx.out(0), [](float x, float y) {
      return y == 2.0f ? x * x : std::pow(x, y);
    });
  }
  ASSIGN_OR_RETURN(Value x, CastValue(*a, DType::kF64));
  ASSIGN_OR_RETURN(Value y, CastValue(*b, DType::kF64));
  Value r;
  RETURN_IF_ERROR((Broadcast2<double, double, double>(x, y, DType::kF64, ctx.where(), r,
                                                      [](double p, double q) { return std::pow(p, q); })));
  ASSIGN_OR_RETURN(ctx.out(0), CastValue(r, a->dtype));
  return absl::OkStatus();
}

absl::Status ModKernel(KernelContext& ctx) {
  ASSIGN_OR_RETURN(const Value* a, ctx.Required(0));
  ASSIGN_OR_RETURN(const Value* b, ctx.Required(1));
  const bool fmod_mode = ctx.Int("fmod", 0) != 0;
  if (a->dtype != b->dtype) return InvalidArgument("{}: input types differ", ctx.where());
  return Dispatch<kN>(a->dtype, ctx.where(), [&](auto t) -> absl::Status {
    using T = decltype(t);
    if constexpr (std::is_floating_point_v<T>) {
      return Broadcast2<T, T, T>(*a, *b, a->dtype, ctx.where(), ctx.out(0), [&](T x, T y) -> T {
        T r = std::fmod(x, y);
        if (!fmod_mode && r != 0 && ((r < 0) != (y < 0))) r += y;
        return r;
      });
    } else {
      return Broadcast2<T, T, T>(*a, *b, a->dtype, ctx.where(), ctx.out(0), [&](T x, T y) -> T {
        if (y == 0) return 0;
        if constexpr (std::is_signed_v<T>) {
          if (y == -1) return 0;
          T r = static_cast<T>(x % y);
          if (!fmod_mode && r != 0 && ((r < 0) != (y < 0))) r = static_cast<T>(r + y);
          return r;
        } else {
          return static_cast<T>(x % y);
        }
      });
    }
  });
}

absl::Status BitShiftKernel(KernelContext& ctx) {
  ASSIGN_OR_RETURN(const Value* a, ctx.Required(0));
  ASSIGN_OR_RETURN(const Value* b, ctx.Required(1));
  const bool left = ctx.String("direction", "") == "LEFT";
  if (a->dtype != b->dtype) return InvalidArgument("{}: input types differ", ctx.where());
  return Dispatch<kN>(a->dtype, ctx.where(), [&](auto t) -> absl::Status {
    using T = decltype(t);
    if constexpr (std::is_unsigned_v<T>) {
      return Broadcast2<T, T, T>(*a, *b, a->dtype, ctx.where(), ctx.out(0), [&](T x, T y) -> T {
        if (y >= sizeof(T) * 8) return 0;
        return static_cast<T>(left ? x << y : x >> y);
      });
    } else {
      return InvalidArgument("{}: BitShift takes unsigned integers", ctx.where());
    }
  });
}

absl::Status WhereKernel(KernelContext& ctx) {
  ASSIGN_OR_RETURN(const Value* c, ctx.Required(0));
  ASSIGN_OR_RETURN(const Value* x, ctx.Required(1));
  ASSIGN_OR_RETURN(const Value* y, ctx.Required(2));
  if (c->dtype != DType::kBool) return InvalidArgument("{}: condition must be bool", ctx.where());
  if (x->dtype != y->dtype) return InvalidArgument("{}: X and Y types differ", ctx.where());
  ASSIGN_OR_RETURN(Shape s1, BroadcastShapes(c->shape, x->shape, ctx.where()));
  ASSIGN_OR_RETURN(Shape s, BroadcastShapes(s1, y->shape, ctx.where()));
  Value& o = Output(ctx, 0, x->dtype, s);
  const auto ic = BroadcastIndex(c->shape, s), ix = BroadcastIndex(x->shape, s), iy = BroadcastIndex(y->shape, s);
  const size_t w = DTypeBits(x->dtype) / 8;
  if (w == 0) return Unimplemented("{}: sub-byte element types are not supported", ctx.where());
  const auto* pc = c->data<uint8_t>();
  for (int64_t i = 0; i < o.numel(); ++i) {
    const std::byte* src = pc[ic[i]] ? x->bytes.data() + ix[i] * w : y->bytes.data() + iy[i] * w;
    CopyBytes(o.bytes.data() + i * w, src, w);
  }
  return absl::OkStatus();
}

absl::Status ClipKernel(KernelContext& ctx) {
  ASSIGN_OR_RETURN(const Value* x, ctx.Required(0));
  return Dispatch<kN>(x->dtype, ctx.where(), [&](auto t) -> absl::Status {
    using T = decltype(t);
    T lo = std::numeric_limits<T>::lowest(), hi = std::numeric_limits<T>::max();
    if (ctx.opset() < 11) {
      // An attribute past an integer type's range clamps to it (the cast alone would be undefined).
      auto bound = [&](const char* name, T def) -> T {
        const float f = ctx.Float(name, static_cast<float>(def));
        if constexpr (std::is_integral_v<T>) {
          if (std::isnan(f)) return def;
          if (f <= static_cast<float>(std::numeric_limits<T>::lowest()))
            return std::numeric_limits<T>::lowest();
          if (f >= static_cast<float>(std::numeric_limits<T>::max())) return std::numeric_limits<T>::max();
        }
        return static_cast<T>(f);
      };
      lo = bound("min", lo);
      hi = bound("max", hi);
      if constexpr (std::is_floating_point_v<T>) {
        if (!ctx.attr("min")) lo = -std::numeric_limits<T>::infinity();
        if (!ctx.attr("max")) hi = std::numeric_limits<T>::infinity();
      }
    } else {
      for (int k : {1, 2}) {
        const Value* v = ctx.in(k);
        if (!v) continue;
        if (v->dtype != x->dtype || v->numel() != 1) return InvalidArgument("{}: min/max must be scalars of X's type", ctx.where());
        (k == 1 ? lo : hi) = v->data<T>()[0];
      }
    }
    Value& o = Output(ctx, 0, x->dtype, x->shape);
    for (int64_t i = 0; i < x->numel(); ++i) {
      T v = x->data<T>()[i];
      o.data<T>()[i] = v < lo ? lo : (v > hi ? hi : v);
    }
    return absl::OkStatus();
  });
}

absl::Status CastKernel(KernelContext& ctx) {
  ASSIGN_OR_RETURN(const Value* x, ctx.Required(0));
  DType to;
  if (ctx.op() == "CastLike") {
    ASSIGN_OR_RETURN(const Value* like, ctx.Required(1));
    to = like->dtype;
  } else {
    auto t = DTypeFromOnnx(static_cast<int>(ctx.Int("to", 0)));
    if (!t.ok()) return Unimplemented("{}: target type {} is not supported", ctx.where(), ctx.Int("to", 0));
    to = *t;
  }
  ASSIGN_OR_RETURN(ctx.out(0), CastValue(*x, to));
  return absl::OkStatus();
}

absl::Status IdentityKernel(KernelContext& ctx) {
  ASSIGN_OR_RETURN(const Value* x, ctx.Required(0));
  ctx.out(0) = *x;
  return absl::OkStatus();
}

absl::Status DropoutKernel(KernelContext& ctx) {
  ASSIGN_OR_RETURN(const Value* x, ctx.Required(0));
  bool training = false;
  if (const Value* tm = ctx.in(2)) training = tm->numel() && tm->data<uint8_t>()[0];
  float ratio = ctx.Float("ratio", 0.5f);
  if (const Value* r = ctx.in(1)) {
    ASSIGN_OR_RETURN(auto f, ToFloats(*r));
    if (!f.empty()) ratio = f[0];
  }
  if (training && ratio > 0) return Unimplemented("{}: Dropout in training mode is not supported", ctx.where());
  ctx.out(0) = *x;
  if (ctx.num_outputs() > 1 && !ctx.node().output(1).empty()) {
    Value& m = Output(ctx, 1, DType::kBool, x->shape);
    std::fill(m.bytes.begin(), m.bytes.end(), std::byte{1});
  }
  return absl::OkStatus();
}

absl::Status PReluKernel(KernelContext& ctx) {
  ASSIGN_OR_RETURN(const Value* x, ctx.Required(0));
  ASSIGN_OR_RETURN(const Value* s, ctx.Required(1));
  return Dispatch<kN>(x->dtype, ctx.where(), [&](auto t) -> absl::Status {
    using T = decltype(t);
    return Broadcast2<T, T, T>(*x, *s, x->dtype, ctx.where(), ctx.out(0),
                               [](T v, T a) { return v < 0 ? static_cast<T>(v * a) : v; });
  });
}

absl::Status IsNaNKernel(KernelContext& ctx) {
  ASSIGN_OR_RETURN(const Value* x, ctx.Required(0));
  const bool is_inf = ctx.op() == "IsInf";
  const bool neg = ctx.Int("detect_negative", 1) != 0, pos = ctx.Int("detect_positive", 1) != 0;
  return Dispatch<kF>(x->dtype, ctx.where(), [&](auto t) -> absl::Status {
    using T = decltype(t);
    Value& o = Output(ctx, 0, DType::kBool, x->shape);
    for (int64_t i = 0; i < x->numel(); ++i) {
      const T v = x->data<T>()[i];
      const bool r = is_inf ? (std::isinf(v) && ((v > 0 && pos) || (v < 0 && neg))) : std::isnan(v);
      o.data<uint8_t>()[i] = r;
    }
    return absl::OkStatus();
  });
}

absl::Status NotKernel(KernelContext& ctx) {
  ASSIGN_OR_RETURN(const Value* x, ctx.Required(0));
  if (x->dtype != DType::kBool) return InvalidArgument("{}: input must be bool", ctx.where());
  Value& o = Output(ctx, 0, DType::kBool, x->shape);
  for (int64_t i = 0; i < x->numel(); ++i) o.data<uint8_t>()[i] = x->data<uint8_t>()[i] ? 0 : 1;
  return absl::OkStatus();
}

template <class T>
T GeluExact(T x) {
  return static_cast<T>(0.5) * x * (static_cast<T>(1) + std::erf(x / std::sqrt(static_cast<T>(2))));
}
template <class T>
T GeluTanh(T x) {
  const T c = static_cast<T>(0.7978845608028654);  // sqrt(2 / pi)
  return static_cast<T>(0.5) * x * (static_cast<T>(1) + std::tanh(c * (x + static_cast<T>(0.044715) * x * x * x)));
}

}  // namespace

void RegisterElementwiseKernels(KernelRegistry& r) {
  r.Add("", "Abs", Simple<kN>([](auto x) {
          if constexpr (std::is_unsigned_v<decltype(x)>) return x; else return x < 0 ? -x : x;
        }));
  r.Add("", "Neg", Simple<TypeSet::kSigned>([](auto x) { return -x; }));
  r.Add("", "Sign", Simple<kN>([](auto x) { return static_cast<decltype(x)>((x > 0) - (x < 0)); }));
  r.Add("", "Exp", Simple<kF>([](auto x) { return std::exp(x); }));
  r.Add("", "Log", Simple<kF>([](auto x) { return std::log(x); }));
  r.Add("", "Sqrt", Simple<kF>([](auto x) { return std::sqrt(x); }));
  r.Add("", "Reciprocal", Simple<kF>([](auto x) { return decltype(x)(1) / x; }));
  r.Add("", "Floor", Simple<kF>([](auto x) { return std::floor(x); }));
  r.Add("", "Ceil", Simple<kF>([](auto x) { return std::ceil(x); }));
  r.Add("", "Round", Simple<kF>([](auto x) { return std::nearbyint(x); }));
  r.Add("", "Sin", Simple<kF>([](auto x) { return std::sin(x); }));
  r.Add("", "Cos", Simple<kF>([](auto x) { return std::cos(x); }));
  r.Add("", "Tan", Simple<kF>([](auto x) { return std::tan(x); }));
  r.Add("", "Asin", Simple<kF>([](auto x) { return std::asin(x); }));
  r.Add("", "Acos", Simple<kF>([](auto x) { return std::acos(x); }));
  r.Add("", "Atan", Simple<kF>([](auto x) { return std::atan(x); }));
  r.Add("", "Sinh", Simple<kF>([](auto x) { return std::sinh(x); }));
  r.Add("", "Cosh", Simple<kF>([](auto x) { return std::cosh(x); }));
  r.Add("", "Asinh", Simple<kF>([](auto x) { return std::asinh(x); }));
  r.Add("", "Acosh", Simple<kF>([](auto x) { return std::acosh(x); }));
  r.Add("", "Atanh", Simple<kF>([](auto x) { return std::atanh(x); }));
  r.Add("", "Erf", Simple<kF>([](auto x) { return std::erf(x); }));
  r.Add("", "Tanh", Simple<kF>([](auto x) { return std::tanh(x); }));
  r.Add("", "Relu", Simple<TypeSet::kSigned>([](auto x) { return x > 0 ? x : decltype(x)(0); }));
  r.Add("", "Sigmoid", Simple<kF>([](auto x) {
          using T = decltype(x);
          return x >= 0 ? T(1) / (T(1) + std::exp(-x)) : std::exp(x) / (T(1) + std::exp(x));
        }));
  r.Add("", "Softplus", Simple<kF>([](auto x) {
          using T = decltype(x);
          return x > T(20) ? x : std::log1p(std::exp(x));
        }));
  r.Add("", "Softsign", Simple<kF>([](auto x) { return x / (decltype(x)(1) + std::abs(x)); }));
  r.Add("", "HardSwish", Simple<kF>([](auto x) {
          using T = decltype(x);
          return x * std::max(T(0), std::min(T(1), x / T(6) + T(0.5)));
        }));
  r.Add("", "Elu", Unary<kF>([](const KernelContext& c) {
          const double a = c.Float("alpha", 1.0f);
          return [a](auto x) { return x >= 0 ? x : static_cast<decltype(x)>(a * (std::exp(x) - 1)); };
        }));
  r.Add("", "Celu", Unary<kF>([](const KernelContext& c) {
          const double a = c.Float("alpha", 1.0f);
          return [a](auto x) {
            using T = decltype(x);
            return std::max(T(0), x) + std::min(T(0), static_cast<T>(a * (std::exp(x / a) - 1)));
          };
        }));
  r.Add("", "Selu", Unary<kF>([](const KernelContext& c) {
          const double a = c.Float("alpha", 1.67326319217681884765625f);
          const double g = c.Float("gamma", 1.05070102214813232421875f);
          return [a, g](auto x) { return static_cast<decltype(x)>(x > 0 ? g * x : g * a * (std::exp(x) - 1)); };
        }));
  r.Add("", "LeakyRelu", Unary<kF>([](const KernelContext& c) {
          const double a = c.Float("alpha", 0.01f);
          return [a](auto x) { return x >= 0 ? x : static_cast<decltype(x)>(a * x); };
        }));
  r.Add("", "ThresholdedRelu", Unary<kF>([](const KernelContext& c) {
          const double a = c.Float("alpha", 1.0f);
          return [a](auto x) { return x > a ? x : decltype(x)(0); };
        }));
  r.Add("", "HardSigmoid", Unary<kF>([](const KernelContext& c) {
          const double a = c.Float("alpha", 0.2f), b = c.Float("beta", 0.5f);
          return [a, b](auto x) { return static_cast<decltype(x)>(std::max(0.0, std::min(1.0, a * x + b))); };
        }));
  r.Add("", "Shrink", Unary<kN>([](const KernelContext& c) {
          const double l = c.Float("lambd", 0.5f), b = c.Float("bias", 0.0f);
          return [l, b](auto x) {
            const double v = static_cast<double>(x);
            return static_cast<decltype(x)>(v < -l ? v + b : (v > l ? v - b : 0.0));
          };
        }));
  auto gelu = Unary<kF>([](const KernelContext& c) {
    const bool tanh = c.String("approximate", "none") == "tanh" || c.op() == "FastGelu";
    return [tanh](auto x) { return tanh ? GeluTanh(x) : GeluExact(x); };
  });
  r.Add("", "Gelu", gelu);
  r.Add("com.microsoft", "Gelu", gelu);
  r.Add("com.microsoft", "FastGelu", gelu);

  r.Add("", "Add", Binary<kN>([](auto a, auto b) { return a + b; }));
  r.Add("", "Sub", Binary<kN>([](auto a, auto b) { return a - b; }));
  r.Add("", "Mul", Binary<kN>([](auto a, auto b) { return a * b; }));
  r.Add("", "Div", Binary<kN>([](auto a, auto b) { return SafeDiv(a, b); }));
  r.Add("", "Pow", PowKernel);
  r.Add("", "Mod", ModKernel);
  r.Add("", "BitShift", BitShiftKernel);
  r.Add("", "PRelu", PReluKernel);
  r.Add("", "Sum", Variadic<kN>(false, [](auto a, auto b) { return a + b; }));
  r.Add("", "Mean", Variadic<kF>(true, [](auto a, auto b) { return a + b; }));
  r.Add("", "Max", Variadic<kN>(false, [](auto a, auto b) { return a != a ? a : (b != b ? b : std::max(a, b)); }));
  r.Add("", "Min", Variadic<kN>(false, [](auto a, auto b) { return a != a ? a : (b != b ? b : std::min(a, b)); }));
  r.Add("", "Equal", Compare([](auto a, auto b) { return a == b; }));
  r.Add("", "Less", Compare([](auto a, auto b) { return a < b; }));
  r.Add("", "Greater", Compare([](auto a, auto b) { return a > b; }));
  r.Add("", "LessOrEqual", Compare([](auto a, auto b) { return a <= b; }));
  r.Add("", "GreaterOrEqual", Compare([](auto a, auto b) { return a >= b; }));
  r.Add("", "And", Logic([](bool a, bool b) { return a && b; }));
  r.Add("", "Or", Logic([](bool a, bool b) { return a || b; }));
  r.Add("", "Xor", Logic([](bool a, bool b) { return a != b; }));
  r.Add("", "Not", NotKernel);
  r.Add("", "IsNaN", IsNaNKernel);
  r.Add("", "IsInf", IsNaNKernel);
  r.Add("", "Where", WhereKernel);
  r.Add("", "Clip", ClipKernel);
  r.Add("", "Cast", CastKernel);
  r.Add("", "CastLike", CastKernel);
  r.Add("", "Identity", IdentityKernel);
  r.Add("", "Dropout", DropoutKernel);
}

Value& Output(KernelContext& ctx, int i, DType t, Shape shape) {
  ctx.out(i) = Value(t, std::move(shape));
  return ctx.out(i);
}

}  // namespace compress::onnxrt
