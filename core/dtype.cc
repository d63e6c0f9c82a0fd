// Scalar reference codecs for every element type compress reads or writes.
#include "core/dtype.h"

#ifdef __F16C__
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "core/block_quant.h"
#include "core/status.h"

namespace compress {
namespace {

struct DTypeInfo {
  DType type;
  std::string_view name;
  int bits;
  bool floating;
};

constexpr DTypeInfo kInfo[] = {
    {DType::kF64, "f64", 64, true},      {DType::kF32, "f32", 32, true},
    {DType::kF16, "f16", 16, true},      {DType::kBF16, "bf16", 16, true},
    {DType::kF8E4M3, "f8e4m3", 8, true}, {DType::kF8E5M2, "f8e5m2", 8, true},
    {DType::kI64, "int64", 64, false},   {DType::kI32, "int32", 32, false},
    {DType::kI16, "int16", 16, false},   {DType::kI8, "int8", 8, false},
    {DType::kU64, "uint64", 64, false},  {DType::kU32, "uint32", 32, false},
    {DType::kU16, "uint16", 16, false},  {DType::kU8, "uint8", 8, false},
    {DType::kBool, "bool", 8, false},    {DType::kI4, "int4", 4, false},
    {DType::kU4, "uint4", 4, false},     {DType::kF4E2M1, "fp4e2m1", 4, false},
    {DType::kNF4, "nf4", 4, false},      {DType::kQ4_0, "q4_0", 0, false},
    {DType::kQ4_1, "q4_1", 0, false},    {DType::kQ5_0, "q5_0", 0, false},
    {DType::kQ5_1, "q5_1", 0, false},    {DType::kQ8_0, "q8_0", 0, false},
    {DType::kQ2_K, "q2_k", 0, false},    {DType::kQ3_K, "q3_k", 0, false},
    {DType::kQ4_K, "q4_k", 0, false},    {DType::kQ5_K, "q5_k", 0, false},
    {DType::kQ6_K, "q6_k", 0, false},    {DType::kIQ4_NL, "iq4_nl", 0, false},
    {DType::kIQ4_XS, "iq4_xs", 0, false},
};

const DTypeInfo& Info(DType t) { return kInfo[static_cast<int>(t)]; }

inline uint32_t FloatBits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float BitsFloat(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

uint8_t MiniFloatEncodeExact(double v, const MiniFloatFormat& fmt) {
  // `v` is a positive value representable in the format.
  const int emin = 1 - fmt.bias;
  int e = std::ilogb(v);
  if (e < emin) {
    return static_cast<uint8_t>(std::ldexp(v, fmt.mantissa_bits - emin));
  }
  int mant = static_cast<int>(std::ldexp(v, fmt.mantissa_bits - e)) - (1 << fmt.mantissa_bits);
  return static_cast<uint8_t>(((e + fmt.bias) << fmt.mantissa_bits) | mant);
}

template <typename T>
T ClampRound(float x) {
  if (std::isnan(x)) return 0;
  double r = std::nearbyint(static_cast<double>(x));
  constexpr double lo = static_cast<double>(std::numeric_limits<T>::lowest());
  constexpr double hi = static_cast<double>(std::numeric_limits<T>::max());
  if (r <= lo) return std::numeric_limits<T>::lowest();
  if (r >= hi) return std::numeric_limits<T>::max();
  return static_cast<T>(r);
}

template <typename T>
void DecodeInts(const uint8_t* src, int64_t n, float* dst) {
#pragma omp parallel for if (n > (1 << 18))
  for (int64_t i = 0; i < n; ++i) {
    T v;
    std::memcpy(&v, src + i * sizeof(T), sizeof(T));
    dst[i] = static_cast<float>(v);
  }
}

template <typename T>
void EncodeInts(const float* src, int64_t n, uint8_t* dst) {
#pragma omp parallel for if (n > (1 << 18))
  for (int64_t i = 0; i < n; ++i) {
    T v = ClampRound<T>(src[i]);
    std::memcpy(dst + i * sizeof(T), &v, sizeof(T));
  }
}

// Applies `enc` to every f32 and packs the 4-bit codes two per byte.
template <typename Enc>
void EncodeNibbles(const float* src, int64_t n, uint8_t* dst, Enc enc) {
  const int64_t pairs = n / 2;
#pragma omp parallel for if (n > (1 << 18))
  for (int64_t p = 0; p < pairs; ++p) {
    dst[p] = static_cast<uint8_t>((enc(src[2 * p]) & 0xF) | ((enc(src[2 * p + 1]) & 0xF) << 4));
  }
  if (n & 1) dst[pairs] = enc(src[n - 1]) & 0xF;
}

template <typename Dec>
void DecodeNibbles(const uint8_t* src, int64_t n, float* dst, Dec dec) {
#pragma omp parallel for if (n > (1 << 18))
  for (int64_t i = 0; i < n; ++i) dst[i] = dec(GetNibble(src, i));
}

}  // namespace

std::string_view DTypeName(DType t) { return Info(t).name; }
int DTypeBits(DType t) { return Info(t).bits; }
bool IsFloating(DType t) { return Info(t).floating; }
int64_t DTypeBytes(DType t, int64_t numel) {
  if (IsBlockType(t)) return (numel + BlockElements(t) - 1) / BlockElements(t) * BlockBytes(t);
  return (numel * Info(t).bits + 7) / 8;
}

std::vector<std::pair<std::string, DType>> DTypeChoices(std::initializer_list<DType> types) {
  std::vector<std::pair<std::string, DType>> out;
  for (DType t : types) out.emplace_back(DTypeName(t), t);
  return out;
}

absl::StatusOr<DType> ParseDType(std::string_view name) {
  for (const auto& i : kInfo) {
    if (i.name == name) return i.type;
  }
  std::string all;
  for (const auto& i : kInfo) all += (all.empty() ? "" : ", ") + std::string(i.name);
  return InvalidArgument("unknown dtype '{}'; known: {}", name, all);
}

uint8_t MiniFloatEncode(float x, const MiniFloatFormat& fmt, bool saturate) {
  const int m = fmt.mantissa_bits;
  const uint8_t sign = std::signbit(x) ? static_cast<uint8_t>(1 << (fmt.exponent_bits + m)) : 0;
  const uint8_t exp_ones = static_cast<uint8_t>((1 << fmt.exponent_bits) - 1);
  const uint8_t max_code = MiniFloatEncodeExact(fmt.max_finite, fmt);
  const uint8_t inf_code = static_cast<uint8_t>(exp_ones << m);
  const uint8_t nan_code = fmt.has_inf ? static_cast<uint8_t>(inf_code | (1 << (m - 1)))
                                       : static_cast<uint8_t>((exp_ones << m) | ((1 << m) - 1));
  const bool can_saturate_only = !fmt.has_inf && !fmt.has_nan;
  if (std::isnan(x)) return fmt.has_nan ? (sign | nan_code) : sign;
  double a = std::fabs(static_cast<double>(x));
  auto overflow = [&]() -> uint8_t {
    if (saturate || can_saturate_only) return sign | max_code;
    return sign | (fmt.has_inf ? inf_code : nan_code);
  };
  if (std::isinf(a)) return overflow();
  if (a == 0) return sign;
  const int emin = 1 - fmt.bias;
  int e = std::max(std::ilogb(a), emin);
  double q = std::nearbyint(std::ldexp(a, m - e));
  double v = std::ldexp(q, e - m);
  if (v > fmt.max_finite) return overflow();
  if (v == 0) return sign;
  return sign | MiniFloatEncodeExact(v, fmt);
}

float MiniFloatDecode(uint8_t code, const MiniFloatFormat& fmt) {
  const int m = fmt.mantissa_bits;
  const int sign_shift = fmt.exponent_bits + m;
  const bool neg = (code >> sign_shift) & 1;
  const int exp_ones = (1 << fmt.exponent_bits) - 1;
  const int e = (code >> m) & exp_ones;
  const int mant = code & ((1 << m) - 1);
  float v;
  if (fmt.has_inf && e == exp_ones) {
    v = mant == 0 ? std::numeric_limits<float>::infinity() : std::numeric_limits<float>::quiet_NaN();
  } else if (!fmt.has_inf && fmt.has_nan && e == exp_ones && mant == (1 << m) - 1) {
    v = std::numeric_limits<float>::quiet_NaN();
  } else if (e == 0) {
    v = static_cast<float>(std::ldexp(static_cast<double>(mant), 1 - fmt.bias - m));
  } else {
    v = static_cast<float>(std::ldexp(static_cast<double>(mant + (1 << m)), e - fmt.bias - m));
  }
  return neg ? -v : v;
}

const std::array<float, 16> kNF4Levels = {
    -1.0f,
    -0.6961928009986877f,
    -0.5250730514526367f,
    -0.39491748809814453f,
    -0.28444138169288635f,
    -0.18477343022823334f,
    -0.09105003625154495f,
    0.0f,
    0.07958029955625534f,
    0.16093020141124725f,
    0.24611230194568634f,
    0.33791524171829224f,
    0.44070982933044434f,
    0.5626170039176941f,
    0.7229568362236023f,
    1.0f,
};

uint8_t NF4Encode(float x) {
  uint8_t best = 0;
  // Levels ascend, so the nearest is the last one whose midpoint with its
  // predecessor lies below x (ties go to the lower level).
  for (uint8_t i = 1; i < 16; ++i) {
    if (x > 0.5f * (kNF4Levels[i - 1] + kNF4Levels[i])) best = i;
  }
  return best;
}

namespace {

// f16 / bf16 <-> f32 over arrays, bit for bit what F16ToF32 / BF16ToF32 / F32ToF16 / F32ToBF16
// give per element (tests/core/dtype_test.cc checks every f16 and a sweep of f32 values), in
// branch-free loops the compiler vectorizes, and F16C's conversion (round to nearest even, NaN
// quieted as F32ToF16 does) where the CPU has it.
inline uint32_t HalfBits(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16, exp = (h >> 10) & 0x1F, mant = h & 0x3FF;
  const uint32_t normal = sign | ((exp + 112) << 23) | (mant << 13);
  const uint32_t special = sign | 0x7F800000u | (mant << 13);
  const uint32_t sub = detail::FloatBits(static_cast<float>(mant) * 0x1p-24f) | sign;  // exact
  return exp == 0 ? sub : exp == 31 ? special : normal;
}

// Elements [i0, i1).
void HalvesToF32Span(bool bf, const uint8_t* src, int64_t i0, int64_t i1, float* dst) {
  if (bf) {
#pragma omp simd
    for (int64_t i = i0; i < i1; ++i) {
      uint16_t h;
      std::memcpy(&h, src + 2 * i, 2);
      dst[i] = detail::BitsFloat(static_cast<uint32_t>(h) << 16);
    }
  } else {
    int64_t i = i0;
#ifdef __F16C__
    // F16C's conversion is exact; it differs from HalfBits only in quieting signalling NaNs,
    // so a group holding a NaN or infinity (exponent 31) keeps the portable loop's bits.
    for (; i + 8 <= i1; i += 8) {
      const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 2 * i));
      const __m128i exp = _mm_and_si128(h, _mm_set1_epi16(0x7C00));
      if (!_mm_testz_si128(_mm_cmpeq_epi16(exp, _mm_set1_epi16(0x7C00)), _mm_set1_epi16(-1))) break;
      _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(h));
    }
#endif
#pragma omp simd
    for (int64_t k = i; k < i1; ++k) {
      uint16_t h;
      std::memcpy(&h, src + 2 * k, 2);
      dst[k] = detail::BitsFloat(HalfBits(h));
    }
  }
}

void F32ToHalvesSpan(bool bf, const float* src, int64_t i0, int64_t i1, uint8_t* dst) {
  int64_t i = i0;
  if (bf) {
#pragma omp simd
    for (int64_t k = i0; k < i1; ++k) {
      const uint32_t x = detail::FloatBits(src[k]);
      const uint32_t rounded = (x + 0x7FFFu + ((x >> 16) & 1)) >> 16;
      const uint16_t h = static_cast<uint16_t>((x & 0x7FFFFFFFu) > 0x7F800000u ? (x >> 16) | 0x0040 : rounded);
      std::memcpy(dst + 2 * k, &h, 2);
    }
    return;
  }
#ifdef __F16C__
  for (; i + 8 <= i1; i += 8) {
    const __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + 2 * i), h);
  }
#endif
  for (; i < i1; ++i) {
    const uint16_t h = F32ToF16(src[i]);
    std::memcpy(dst + 2 * i, &h, 2);
  }
}

// Steps of 16,384 elements over the threads; small arrays on the calling thread without
// opening a parallel region (callers convert cache-sized chunks inside their own regions).
template <typename Span>
void OverSteps(int64_t n, Span span) {
  constexpr int64_t kStep = int64_t{1} << 14;
  if (n <= (int64_t{1} << 18)) {
    span(0, n);
    return;
  }
#pragma omp parallel for schedule(static)
  for (int64_t i0 = 0; i0 < n; i0 += kStep) span(i0, std::min(n, i0 + kStep));
}

void HalvesToF32(bool bf, const uint8_t* src, int64_t n, float* dst) {
  OverSteps(n, [&](int64_t i0, int64_t i1) { HalvesToF32Span(bf, src, i0, i1, dst); });
}

void F32ToHalves(bool bf, const float* src, int64_t n, uint8_t* dst) {
  OverSteps(n, [&](int64_t i0, int64_t i1) { F32ToHalvesSpan(bf, src, i0, i1, dst); });
}

}  // namespace

absl::Status DecodeToF32(DType t, const uint8_t* src, int64_t n, float* dst) {
  switch (t) {
    case DType::kF32:
      std::memcpy(dst, src, n * 4);
      return absl::OkStatus();
    case DType::kF64: {
#pragma omp parallel for if (n > (1 << 18))
      for (int64_t i = 0; i < n; ++i) {
        double d;
        std::memcpy(&d, src + 8 * i, 8);
        dst[i] = static_cast<float>(d);
      }
      return absl::OkStatus();
    }
    case DType::kF16:
    case DType::kBF16:
      HalvesToF32(t == DType::kBF16, src, n, dst);
      return absl::OkStatus();
    case DType::kF8E4M3:
    case DType::kF8E5M2: {
      const MiniFloatFormat& f = t == DType::kF8E4M3 ? kE4M3 : kE5M2;
      float table[256];
      for (int c = 0; c < 256; ++c) table[c] = MiniFloatDecode(static_cast<uint8_t>(c), f);
      for (int64_t i = 0; i < n; ++i) dst[i] = table[src[i]];
      return absl::OkStatus();
    }
    case DType::kI64:
      DecodeInts<int64_t>(src, n, dst);
      return absl::OkStatus();
    case DType::kI32:
      DecodeInts<int32_t>(src, n, dst);
      return absl::OkStatus();
    case DType::kI16:
      DecodeInts<int16_t>(src, n, dst);
      return absl::OkStatus();
    case DType::kI8:
      DecodeInts<int8_t>(src, n, dst);
      return absl::OkStatus();
    case DType::kU64:
      DecodeInts<uint64_t>(src, n, dst);
      return absl::OkStatus();
    case DType::kU32:
      DecodeInts<uint32_t>(src, n, dst);
      return absl::OkStatus();
    case DType::kU16:
      DecodeInts<uint16_t>(src, n, dst);
      return absl::OkStatus();
    case DType::kU8:
    case DType::kBool:
      DecodeInts<uint8_t>(src, n, dst);
      return absl::OkStatus();
    case DType::kI4:
      DecodeNibbles(src, n, dst, [](uint8_t c) { return static_cast<float>((c ^ 8) - 8); });
      return absl::OkStatus();
    case DType::kU4:
      DecodeNibbles(src, n, dst, [](uint8_t c) { return static_cast<float>(c); });
      return absl::OkStatus();
    case DType::kF4E2M1:
      DecodeNibbles(src, n, dst, [](uint8_t c) { return MiniFloatDecode(c, kE2M1); });
      return absl::OkStatus();
    case DType::kNF4:
      DecodeNibbles(src, n, dst, NF4Decode);
      return absl::OkStatus();
    default:
      if (!IsBlockType(t)) break;
      if (n % BlockElements(t) != 0) {
        return InvalidArgument("{} holds blocks of {} elements; {} elements is not a whole number of blocks",
                               DTypeName(t), BlockElements(t), n);
      }
      DecodeBlocks(t, src, n, dst);
      return absl::OkStatus();
  }
  return Internal("unhandled dtype {}", static_cast<int>(t));
}

absl::Status EncodeFromF32(DType t, const float* src, int64_t n, uint8_t* dst) {
  switch (t) {
    case DType::kF32:
      std::memcpy(dst, src, n * 4);
      return absl::OkStatus();
    case DType::kF64: {
#pragma omp parallel for if (n > (1 << 18))
      for (int64_t i = 0; i < n; ++i) {
        double d = src[i];
        std::memcpy(dst + 8 * i, &d, 8);
      }
      return absl::OkStatus();
    }
    case DType::kF16:
    case DType::kBF16:
      F32ToHalves(t == DType::kBF16, src, n, dst);
      return absl::OkStatus();
    case DType::kF8E4M3:
    case DType::kF8E5M2: {
      const MiniFloatFormat& f = t == DType::kF8E4M3 ? kE4M3 : kE5M2;
#pragma omp parallel for if (n > (1 << 16))
      for (int64_t i = 0; i < n; ++i) dst[i] = MiniFloatEncode(src[i], f, /*saturate=*/true);
      return absl::OkStatus();
    }
    case DType::kI64:
      EncodeInts<int64_t>(src, n, dst);
      return absl::OkStatus();
    case DType::kI32:
      EncodeInts<int32_t>(src, n, dst);
      return absl::OkStatus();
    case DType::kI16:
      EncodeInts<int16_t>(src, n, dst);
      return absl::OkStatus();
    case DType::kI8:
      EncodeInts<int8_t>(src, n, dst);
      return absl::OkStatus();
    case DType::kU64:
      EncodeInts<uint64_t>(src, n, dst);
      return absl::OkStatus();
    case DType::kU32:
      EncodeInts<uint32_t>(src, n, dst);
      return absl::OkStatus();
    case DType::kU16:
      EncodeInts<uint16_t>(src, n, dst);
      return absl::OkStatus();
    case DType::kU8:
      EncodeInts<uint8_t>(src, n, dst);
      return absl::OkStatus();
    case DType::kI4:
      EncodeNibbles(src, n, dst, [](float x) {
        float r = std::isnan(x) ? 0.f : std::nearbyint(std::clamp(x, -8.f, 7.f));
        return static_cast<uint8_t>(static_cast<int>(r) & 0xF);
      });
      return absl::OkStatus();
    case DType::kU4:
      EncodeNibbles(src, n, dst, [](float x) {
        float r = std::isnan(x) ? 0.f : std::nearbyint(std::clamp(x, 0.f, 15.f));
        return static_cast<uint8_t>(r);
      });
      return absl::OkStatus();
    case DType::kF4E2M1:
      EncodeNibbles(src, n, dst, [](float x) { return MiniFloatEncode(x, kE2M1, true); });
      return absl::OkStatus();
    case DType::kNF4:
      EncodeNibbles(src, n, dst, NF4Encode);
      return absl::OkStatus();
    case DType::kBool:
      return InvalidArgument("cannot encode floating-point values as bool");
    default:
      if (!IsBlockType(t)) break;
      if (n % BlockElements(t) != 0) {
        return InvalidArgument("{} holds blocks of {} elements; {} elements is not a whole number of blocks",
                               DTypeName(t), BlockElements(t), n);
      }
      {
        const int64_t rows = n / BlockElements(t), bb = BlockBytes(t);
#pragma omp parallel for schedule(dynamic, 16) if (rows > 64)
        for (int64_t r = 0; r < rows; ++r) {
          EncodeBlocks(t, src + r * BlockElements(t), BlockElements(t), nullptr, dst + r * bb);
        }
      }
      return absl::OkStatus();
  }
  return Internal("unhandled dtype {}", static_cast<int>(t));
}

}  // namespace compress
