// Exhaustive and reference-checked tests of the scalar dtype codecs.
#include "core/dtype.h"

#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <random>

namespace compress {
namespace {

float FromBits(uint32_t u) { return std::bit_cast<float>(u); }

TEST(F16, EveryBitPatternRoundTripsThroughF32) {
  for (uint32_t h = 0; h < 65536; ++h) {
    float f = F16ToF32(static_cast<uint16_t>(h));
    uint16_t back = F32ToF16(f);
    if (std::isnan(f)) {
      EXPECT_EQ((back & 0x7C00), 0x7C00);
      EXPECT_NE((back & 0x3FF), 0);
      EXPECT_EQ(back & 0x8000, h & 0x8000);
      EXPECT_EQ(back & 0x1FF, h & 0x1FF) << "payload kept";
    } else {
      ASSERT_EQ(back, h) << "pattern " << h;
    }
  }
}

TEST(F16, MatchesCompilerConversionOnRandomFloats) {
  // GCC's _Float16 conversion (libgcc soft-float, round to nearest even) is the reference.
  std::mt19937 rng(1234);
  std::uniform_int_distribution<uint32_t> any;
  for (int i = 0; i < 2000000; ++i) {
    float f = FromBits(any(rng));
    if (std::isnan(f)) continue;
    _Float16 ref = static_cast<_Float16>(f);
    uint16_t ref_bits;
    std::memcpy(&ref_bits, &ref, 2);
    ASSERT_EQ(F32ToF16(f), ref_bits) << "f=" << f;
  }
  // Edge cases: overflow boundary, subnormal boundary, ties.
  for (float f : {65504.f, 65519.f, 65520.f, 65536.f, 6.1035156e-05f, 5.9604645e-08f, 2.9802322e-08f,
                  2.9802326e-08f, 1.00048828125f, 1.00146484375f, -0.f, 0.f, INFINITY, -INFINITY}) {
    _Float16 ref = static_cast<_Float16>(f);
    uint16_t ref_bits;
    std::memcpy(&ref_bits, &ref, 2);
    EXPECT_EQ(F32ToF16(f), ref_bits) << "f=" << f;
  }
}

TEST(BF16, EveryBitPatternRoundTripsThroughF32) {
  for (uint32_t b = 0; b < 65536; ++b) {
    float f = BF16ToF32(static_cast<uint16_t>(b));
    uint16_t back = F32ToBF16(f);
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(BF16ToF32(back)));
    } else {
      ASSERT_EQ(back, b);
    }
  }
}

TEST(BF16, RoundsToNearestEven) {
  std::mt19937 rng(99);
  std::uniform_int_distribution<uint32_t> any;
  for (int i = 0; i < 2000000; ++i) {
    uint32_t x = any(rng);
    float f = FromBits(x);
    if (std::isnan(f)) continue;
    uint32_t lo = x & 0xFFFF0000u, hi = lo + 0x10000u;
    double dlo = std::fabs(static_cast<double>(FromBits(lo)) - f);
    double dhi = std::isinf(FromBits(hi)) && !std::isinf(f)
                     ? std::fabs(std::ldexp(1.0, 128) - std::fabs(static_cast<double>(f)))
                     : std::fabs(static_cast<double>(FromBits(hi)) - f);
    uint16_t expect = (dlo < dhi || (dlo == dhi && ((lo >> 16) & 1) == 0)) ? lo >> 16 : hi >> 16;
    ASSERT_EQ(F32ToBF16(f), expect) << std::hex << x;
  }
}

// Brute force: the nearest finite code, ties to the even code.
uint8_t NearestCode(float x, const MiniFloatFormat& fmt, int bits) {
  int best = -1;
  double best_d = 0;
  for (int c = 0; c < (1 << bits); ++c) {
    float v = MiniFloatDecode(static_cast<uint8_t>(c), fmt);
    if (!std::isfinite(v)) continue;
    if (std::signbit(v) != std::signbit(x)) continue;
    double d = std::fabs(static_cast<double>(v) - x);
    if (best < 0 || d < best_d || (d == best_d && (c & 1) == 0 && (best & 1) == 1)) {
      best = c;
      best_d = d;
    }
  }
  return static_cast<uint8_t>(best);
}

void CheckMiniFloat(const MiniFloatFormat& fmt, int bits) {
  // Every finite code decodes and re-encodes to itself.
  for (int c = 0; c < (1 << bits); ++c) {
    float v = MiniFloatDecode(static_cast<uint8_t>(c), fmt);
    if (!std::isfinite(v)) continue;
    EXPECT_EQ(MiniFloatEncode(v, fmt), c) << "code " << c << " value " << v;
  }
  // Random values inside the range match brute-force nearest-even (saturating outside).
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> mag(-1.2f * fmt.max_finite, 1.2f * fmt.max_finite);
  std::uniform_real_distribution<float> small(-0.05f, 0.05f);
  for (int i = 0; i < 200000; ++i) {
    float x = (i & 1) ? mag(rng) : small(rng);
    ASSERT_EQ(MiniFloatEncode(x, fmt), NearestCode(x, fmt, bits)) << "x=" << x;
  }
}

TEST(MiniFloat, E4M3MatchesOcpSpec) {
  EXPECT_EQ(MiniFloatDecode(0x7E, kE4M3), 448.f);
  EXPECT_TRUE(std::isnan(MiniFloatDecode(0x7F, kE4M3)));
  EXPECT_EQ(MiniFloatDecode(0x38, kE4M3), 1.f);
  EXPECT_EQ(MiniFloatDecode(0x01, kE4M3), std::ldexp(1.f, -9));
  EXPECT_EQ(MiniFloatEncode(1000.f, kE4M3, true), 0x7E);
  EXPECT_EQ(MiniFloatEncode(1000.f, kE4M3, false), 0x7F);
  EXPECT_EQ(MiniFloatEncode(464.f, kE4M3, false), 0x7E) << "tie rounds to even 448";
  CheckMiniFloat(kE4M3, 8);
}

TEST(MiniFloat, E5M2MatchesOcpSpec) {
  EXPECT_EQ(MiniFloatDecode(0x7B, kE5M2), 57344.f);
  EXPECT_TRUE(std::isinf(MiniFloatDecode(0x7C, kE5M2)));
  EXPECT_EQ(MiniFloatDecode(0x3C, kE5M2), 1.f);
  EXPECT_EQ(MiniFloatEncode(1e6f, kE5M2, false), 0x7C);
  EXPECT_EQ(MiniFloatEncode(1e6f, kE5M2, true), 0x7B);
  CheckMiniFloat(kE5M2, 8);
}

TEST(MiniFloat, E2M1HasTheEightOcpMagnitudes) {
  const float expect[8] = {0, 0.5f, 1, 1.5f, 2, 3, 4, 6};
  for (int c = 0; c < 8; ++c) {
    EXPECT_EQ(MiniFloatDecode(static_cast<uint8_t>(c), kE2M1), expect[c]);
    EXPECT_EQ(MiniFloatDecode(static_cast<uint8_t>(c | 8), kE2M1), -expect[c]);
  }
  EXPECT_EQ(MiniFloatEncode(100.f, kE2M1), 0x7);
  EXPECT_EQ(MiniFloatEncode(2.5f, kE2M1), 0x4) << "tie 2.5 goes to even code (2.0)";
  CheckMiniFloat(kE2M1, 4);
}

TEST(NF4, UsesThePublishedLevels) {
  EXPECT_EQ(kNF4Levels[0], -1.f);
  EXPECT_EQ(kNF4Levels[7], 0.f);
  EXPECT_EQ(kNF4Levels[15], 1.f);
  EXPECT_FLOAT_EQ(kNF4Levels[8], 0.07958029955625534f);
  for (int i = 1; i < 16; ++i) EXPECT_LT(kNF4Levels[i - 1], kNF4Levels[i]);
  for (int c = 0; c < 16; ++c) EXPECT_EQ(NF4Encode(kNF4Levels[c]), c);
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  for (int i = 0; i < 100000; ++i) {
    float x = u(rng);
    float got = NF4Decode(NF4Encode(x));
    for (float l : kNF4Levels) ASSERT_LE(std::fabs(got - x), std::fabs(l - x) + 1e-7f);
  }
}

TEST(Packed4Bit, Int4SignExtendsAndPacksLowNibbleFirst) {
  std::vector<float> v = {-8, -1, 0, 7, 3, -5, 100, -100, 2.5f};
  std::vector<uint8_t> packed(DTypeBytes(DType::kI4, v.size()));
  ASSERT_TRUE(EncodeFromF32(DType::kI4, v.data(), v.size(), packed.data()).ok());
  EXPECT_EQ(packed.size(), 5u);
  EXPECT_EQ(packed[0], 0xF8) << "element 0 in the low nibble";
  std::vector<float> back(v.size());
  ASSERT_TRUE(DecodeToF32(DType::kI4, packed.data(), v.size(), back.data()).ok());
  std::vector<float> expect = {-8, -1, 0, 7, 3, -5, 7, -8, 2};
  EXPECT_EQ(back, expect);
}

TEST(Ints, RoundAndClamp) {
  std::vector<float> v = {-200.f, -1.5f, -0.5f, 0.5f, 1.5f, 127.4f, 300.f, NAN};
  std::vector<uint8_t> out(v.size());
  ASSERT_TRUE(EncodeFromF32(DType::kI8, v.data(), v.size(), out.data()).ok());
  std::vector<float> back(v.size());
  ASSERT_TRUE(DecodeToF32(DType::kI8, out.data(), v.size(), back.data()).ok());
  std::vector<float> expect = {-128, -2, -0, 0, 2, 127, 127, 0};
  EXPECT_EQ(back, expect);
  ASSERT_TRUE(EncodeFromF32(DType::kU8, v.data(), v.size(), out.data()).ok());
  ASSERT_TRUE(DecodeToF32(DType::kU8, out.data(), v.size(), back.data()).ok());
  expect = {0, 0, 0, 0, 2, 127, 255, 0};
  EXPECT_EQ(back, expect);
}

TEST(DTypes, NamesParseBack) {
  for (DType t : kAllDTypes) {
    auto p = ParseDType(DTypeName(t));
    ASSERT_TRUE(p.ok());
    EXPECT_EQ(*p, t);
  }
  auto bad = ParseDType("f7");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("known: f64, f32"), std::string::npos);
}

// The array codecs (vectorized, F16C where the CPU has it) give exactly the per-element
// functions' bits: every f16 and bf16 pattern decoded, and f32 patterns around every f16 / bf16
// rounding boundary (each top-19-bit pattern with the low bits at 0, 1, just under, at and just
// over half, and all ones; NaN payloads, infinities, subnormals included) encoded.
TEST(DType, ArrayHalfCodecsMatchTheElementFunctions) {
  std::vector<uint8_t> halves(2 * 65536);
  for (uint32_t h = 0; h < 65536; ++h) std::memcpy(halves.data() + 2 * h, &h, 2);
  std::vector<float> out(65536);
  for (DType t : {DType::kF16, DType::kBF16}) {
    ASSERT_TRUE(DecodeToF32(t, halves.data(), 65536, out.data()).ok());
    for (uint32_t h = 0; h < 65536; ++h) {
      const float want = t == DType::kF16 ? F16ToF32(static_cast<uint16_t>(h)) : BF16ToF32(static_cast<uint16_t>(h));
      ASSERT_EQ(std::bit_cast<uint32_t>(out[h]), std::bit_cast<uint32_t>(want)) << DTypeName(t) << " " << h;
    }
  }
  std::vector<float> f;
  for (uint32_t top = 0; top < (1u << 19); ++top) {
    for (uint32_t low : {0u, 1u, 0xFFFu, 0x1000u, 0x1001u, 0x1FFFu, 0x7FFFu, 0x8000u, 0x8001u, 0xFFFFu}) {
      if (low > 0x1FFF && (top & 7) != 0) continue;  // the bf16 boundaries need only some tops
      f.push_back(std::bit_cast<float>((top << 13) | (low & 0x1FFF) | (low > 0x1FFF ? (low & 0xE000) : 0)));
    }
  }
  std::vector<uint8_t> enc(2 * f.size());
  for (DType t : {DType::kF16, DType::kBF16}) {
    ASSERT_TRUE(EncodeFromF32(t, f.data(), static_cast<int64_t>(f.size()), enc.data()).ok());
    for (size_t i = 0; i < f.size(); ++i) {
      uint16_t got;
      std::memcpy(&got, enc.data() + 2 * i, 2);
      const uint16_t want = t == DType::kF16 ? F32ToF16(f[i]) : F32ToBF16(f[i]);
      ASSERT_EQ(got, want) << DTypeName(t) << " of 0x" << std::hex << std::bit_cast<uint32_t>(f[i]);
    }
  }
}

}  // namespace
}  // namespace compress
