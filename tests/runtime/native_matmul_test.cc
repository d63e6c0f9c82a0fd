#include "runtime/native_matmul.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>

#include "core/act_quant.h"
#include "core/block_quant.h"
#include "core/buffer.h"
#include "core/dtype.h"
#include "core/quant.h"
#include "core/tensor.h"

namespace compress {
namespace {

using RowMatrix = PackedWeight::RowMatrix;

RowMatrix RandomActs(int64_t m, int64_t in, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> n(0.f, 1.f);
  RowMatrix x(m, in);
  for (int64_t i = 0; i < x.size(); ++i) x.data()[i] = n(rng) * ((i % 37 == 0) ? 20.f : 1.f);  // outlier features
  return x;
}

std::vector<float> NormalWeights(int64_t count, float stddev, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> n(0.f, stddev);
  std::vector<float> w(count);
  for (auto& v : w) v = n(rng);
  return w;
}

struct IntCase {
  std::vector<int8_t> codes;
  std::vector<float> group_scales;
};

IntCase RandomCodes(int64_t out, int64_t in, int bits, uint32_t seed) {
  std::mt19937 rng(seed);
  const int hi = (1 << (bits - 1)) - 1;
  std::uniform_int_distribution<int> q(-hi - 1, hi);
  std::uniform_real_distribution<float> s(0.001f, 0.05f);
  IntCase c{std::vector<int8_t>(out * in), std::vector<float>(out * in / 32)};
  for (auto& v : c.codes) v = static_cast<int8_t>(q(rng));
  for (auto& v : c.group_scales) v = s(rng);
  return c;
}

std::vector<uint16_t> RandomBf16(int64_t out, int64_t in, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> n(0.f, 0.05f);
  std::vector<uint16_t> w(out * in);
  for (auto& v : w) v = F32ToBF16(n(rng));
  return w;
}

// f16 weights, some of them subnormal (1 in 16) and some zero.
std::vector<uint16_t> RandomF16(int64_t out, int64_t in, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> n(0.f, 0.05f);
  std::vector<uint16_t> w(out * in);
  for (size_t i = 0; i < w.size(); ++i) w[i] = F32ToF16(i % 16 == 3 ? n(rng) * 1e-4f : i % 29 == 0 ? 0.f : n(rng));
  return w;
}

// y = x W^T with x rounded to int8 per block of 32 (step d = max|x| / 127): |error| <=
// sum_k |w_k| d_b / 2, plus f32 rounding (`rounding` x sum |w| (|x| + d)).
void ExpectWithinInt8ActivationBound(const RowMatrix& x, const RowMatrix& w, const RowMatrix& y, double rounding) {
  for (int64_t r = 0; r < x.rows(); ++r) {
    for (int64_t n = 0; n < w.rows(); ++n) {
      double exact = 0, bound = 0, mag = 0;
      for (int64_t b = 0; b < x.cols() / 32; ++b) {
        double amax = 0;
        for (int64_t i = 0; i < 32; ++i) amax = std::max(amax, std::fabs(static_cast<double>(x(r, b * 32 + i))));
        for (int64_t i = 0; i < 32; ++i) {
          const double wk = w(n, b * 32 + i), xk = x(r, b * 32 + i);
          exact += wk * xk;
          bound += std::fabs(wk) * amax / 127 / 2;
          mag += std::fabs(wk) * (std::fabs(xk) + amax / 127);
        }
      }
      ASSERT_LE(std::fabs(y(r, n) - exact), bound * (1 + 1e-5) + mag * rounding) << "at " << r << "," << n;
    }
  }
}

// The [in, out] form (channel_axis 1) of [out, in] codes: GPT-2's Conv1D layout.
Tensor TransposedQuantized(const std::vector<int8_t>& codes, QuantInfo info, int64_t out, int64_t in) {
  std::vector<int8_t> t(in * out);
  for (int64_t n = 0; n < out; ++n)
    for (int64_t k = 0; k < in; ++k) t[k * out + n] = codes[n * in + k];
  info.channel_axis = 1;
  return Tensor::Quantized({in, out}, std::move(t), std::move(info));
}

struct Shape {
  int64_t m, out, in;
};
// Edges of every tile: 1-4 activation rows, partial row groups, one and several tiles.
const Shape kShapes[] = {{1, 16, 32}, {5, 37, 96}, {130, 50, 64}, {3, 1, 32}, {9, 129, 160}, {260, 70, 256}};

// Runs `body` once per kernel set this CPU has ("avx2", "avx512"), restoring the default.
template <class Body>
void ForEachIsa(Body&& body) {
  const std::string initial = NativeMatmulIsa();
  int ran = 0;
  for (const char* isa : {"avx2", "avx512"}) {
    if (!SetNativeMatmulIsa(isa)) continue;
    SCOPED_TRACE(isa);
    ASSERT_EQ(NativeMatmulIsa(), isa);
    body();
    ++ran;
  }
  ASSERT_TRUE(SetNativeMatmulIsa(initial));
  if (ran == 0) GTEST_SKIP() << "no AVX2 / AVX-512 here: every run takes the portable loop";
}

// The vector kernels (each set this CPU has) and the portable loop give the same bits, for
// every packed kind.
TEST(NativeMatmul, KernelsMatchThePortableLoopBitForBit) {
  ForEachIsa([] {
    for (const Shape& s : kShapes) {
      const RowMatrix x = RandomActs(s.m, s.in, 1);
      // 8-bit codes and small ones (AVX2 adds 2, 4 or 8 quads' pair sums in 16 bits for them).
      for (int bits : {8, 7, 6, 5, 4, 2}) {
        SCOPED_TRACE(bits);
        const IntCase ci = RandomCodes(s.out, s.in, bits, 2);
        const PackedWeight qi = PackedWeight::FromCodes(ci.codes.data(), ci.group_scales.data(), s.out, s.in);
        EXPECT_TRUE((qi.Apply(x).array() == qi.ApplyPortable(x).array()).all())
            << s.m << "x" << s.out << "x" << s.in;
        // Scales and offsets per 16 inputs (K-quants), with and without offsets.
        std::vector<float> s16(s.out * s.in / 16), o16(s16.size());
        for (size_t i = 0; i < s16.size(); ++i)
          s16[i] = 0.001f + 0.0007f * static_cast<float>(i % 13), o16[i] = -0.01f * static_cast<float>(i % 7);
        for (const float* off : {static_cast<const float*>(o16.data()), static_cast<const float*>(nullptr)}) {
          const PackedWeight pg =
              PackedWeight::FromGroupedCodes(ci.codes.data(), s16.data(), off, s.out, s.in);
          EXPECT_TRUE((pg.Apply(x).array() == pg.ApplyPortable(x).array()).all())
              << s.m << "x" << s.out << "x" << s.in;
        }
      }
      const IntCase c = RandomCodes(s.out, s.in, 8, 2);
      // 16 levels, scales per 8 inputs.
      std::vector<uint8_t> lc(s.out * s.in);
      for (size_t i = 0; i < lc.size(); ++i) lc[i] = static_cast<uint8_t>(c.codes[i] & 15);
      const float levels[16] = {-1.f,  -0.7f, -0.53f, -0.39f, -0.28f, -0.18f, -0.09f, 0.f,
                                0.08f, 0.16f, 0.25f,  0.34f,  0.44f,  0.56f,  0.72f,  1.f};
      std::vector<float> ls(s.out * s.in / 8);
      for (size_t i = 0; i < ls.size(); ++i) ls[i] = 0.01f + 0.001f * static_cast<float>(i % 11);
      const PackedWeight pl = PackedWeight::FromLevelCodes(lc.data(), levels, ls.data(), s.out, s.in, 8);
      EXPECT_TRUE((pl.Apply(x).array() == pl.ApplyPortable(x).array()).all())
          << s.m << "x" << s.out << "x" << s.in;
      const std::vector<uint16_t> w = RandomBf16(s.out, s.in + 1, 3);  // odd widths pad a pair
      for (int64_t in : {s.in, s.in + 1}) {
        const RowMatrix xb = RandomActs(s.m, in, 4);
        const PackedWeight pb = PackedWeight::FromBf16(w.data(), s.out, in);
        EXPECT_TRUE((pb.Apply(xb).array() == pb.ApplyPortable(xb).array()).all())
            << s.m << "x" << s.out << "x" << in;
        const std::vector<uint16_t> h = RandomF16(s.out, in, 12);
        const PackedWeight ph = PackedWeight::FromF16(h.data(), s.out, in);
        EXPECT_TRUE((ph.Apply(xb).array() == ph.ApplyPortable(xb).array()).all())
            << s.m << "x" << s.out << "x" << in;
        const std::vector<float> wf = NormalWeights(s.out * in, 0.05f, 15);
        const PackedWeight pf = PackedWeight::FromF32(wf.data(), s.out, in);
        EXPECT_TRUE((pf.Apply(xb).array() == pf.ApplyPortable(xb).array()).all())
            << s.m << "x" << s.out << "x" << in;
      }
    }
  });
}

// Where the AVX2 kernels' shortcuts would not be exact they hand the product to the portable
// loop: bf16 products that reach the subnormal range (tiny activations times tiny weights,
// subnormal weights) and integer activation codes of -128 (VPMADDUBSW's pairs would pass 2^15).
TEST(NativeMatmul, KernelsKeepThePortableBitsAtTheEdges) {
  ForEachIsa([] {
    const int64_t m = 6, out = 40, in = 64;
    std::vector<uint16_t> w = RandomBf16(out, in, 21);
    RowMatrix x = RandomActs(m, in, 22);
    for (int64_t i = 0; i < x.size(); i += 5) x.data()[i] *= 1e-36f;  // products near 2^-126 and below
    const PackedWeight pb = PackedWeight::FromBf16(w.data(), out, in);
    const RowMatrix y = pb.Apply(x);
    EXPECT_TRUE((y.array() == pb.ApplyPortable(x).array()).all());
    for (int64_t i = 0; i < out * in; i += 7)
      w[i] = static_cast<uint16_t>((w[i] & 0x8000) | 0x0003);  // subnormal
    const PackedWeight ps = PackedWeight::FromBf16(w.data(), out, in);
    const RowMatrix xn = RandomActs(m, in, 23);
    EXPECT_TRUE((ps.Apply(xn).array() == ps.ApplyPortable(xn).array()).all());
    // Codes of -128 (a step per row) times weight codes of -128.
    std::vector<int8_t> codes(out * in);
    for (size_t i = 0; i < codes.size(); ++i)
      codes[i] = static_cast<int8_t>(i % 3 == 0 ? -128 : 127 - static_cast<int>(i % 255));
    const std::vector<float> scales(out * in / 32, 0.01f);
    const PackedWeight pi = PackedWeight::FromCodes(codes.data(), scales.data(), out, in);
    RowMatrix xq(m, in);
    std::vector<float> steps(m, 0.5f);
    for (int64_t i = 0; i < xq.size(); ++i)
      xq.data()[i] = 0.5f * static_cast<float>(i % 2 ? -128 : 127 - i % 200);
    const RowMatrix yq = pi.ApplyCodedActs(xq, steps, in);
    EXPECT_TRUE((yq.array() == pi.ApplyCodedActs(xq, steps, in, true).array()).all());
    std::vector<int8_t> small(codes.size());  // 4-bit codes: the unsigned-activation kernel
    for (size_t i = 0; i < small.size(); ++i)
      small[i] = static_cast<int8_t>(i % 3 == 0 ? -8 : static_cast<int>(i % 16) - 8);
    const PackedWeight p4 = PackedWeight::FromCodes(small.data(), scales.data(), out, in);
    EXPECT_TRUE(
        (p4.ApplyCodedActs(xq, steps, in).array() == p4.ApplyCodedActs(xq, steps, in, true).array()).all());
    // Exact: the integer sums are small enough to check in f64.
    for (int64_t r = 0; r < m; ++r) {
      double exact = 0;
      for (int64_t k = 0; k < in; ++k) exact += static_cast<double>(codes[k]) * xq(r, k) / 0.5;
      EXPECT_NEAR(yq(r, 0), exact * 0.01 * 0.5, 1e-3 * std::fabs(exact * 0.005) + 1e-4) << r;
    }
  });
}

// Against the f32 product of the weight's values: each block's activations are rounded to
// int8 with step d = max|x| / 127, so |error| <= sum_k |w_k| d_b / 2, plus f32 rounding.
TEST(NativeMatmul, Int8ProductWithinTheActivationRoundingBound) {
  for (const Shape& s : kShapes) {
    for (int bits : {4, 8}) {
      const RowMatrix x = RandomActs(s.m, s.in, 5);
      const IntCase c = RandomCodes(s.out, s.in, bits, 6);
      const PackedWeight p = PackedWeight::FromCodes(c.codes.data(), c.group_scales.data(), s.out, s.in);
      const RowMatrix w = p.ToF32();
      for (int64_t n = 0; n < s.out; ++n)
        for (int64_t k = 0; k < s.in; ++k)
          ASSERT_EQ(w(n, k), c.codes[n * s.in + k] * c.group_scales[n * s.in / 32 + k / 32]);
      SCOPED_TRACE(std::to_string(bits) + "-bit " + std::to_string(s.m) + "x" + std::to_string(s.out) + "x" +
                   std::to_string(s.in));
      ExpectWithinInt8ActivationBound(x, w, p.Apply(x), 4e-7);
    }
  }
}

// bf16 activations: |x - bf16(x)| <= 2^-8 |x| per element, plus f32 rounding of the sums.
TEST(NativeMatmul, Bf16ProductWithinTheActivationRoundingBound) {
  for (const Shape& s : kShapes) {
    const RowMatrix x = RandomActs(s.m, s.in, 7);
    const std::vector<uint16_t> wb = RandomBf16(s.out, s.in, 8);
    const PackedWeight p = PackedWeight::FromBf16(wb.data(), s.out, s.in);
    const RowMatrix w = p.ToF32();
    const RowMatrix y = p.Apply(x);
    for (int64_t r = 0; r < s.m; ++r) {
      for (int64_t n = 0; n < s.out; ++n) {
        double exact = 0, mag = 0;
        for (int64_t k = 0; k < s.in; ++k) {
          ASSERT_EQ(w(n, k), BF16ToF32(wb[n * s.in + k]));
          exact += static_cast<double>(w(n, k)) * x(r, k);
          mag += std::fabs(static_cast<double>(w(n, k)) * x(r, k));
        }
        ASSERT_LE(std::fabs(y(r, n) - exact), mag * (std::ldexp(1.0, -8) + s.in * 6e-8)) << r << "," << n;
      }
    }
  }
}

// f16 and f32 weights multiply the f32 activations as they are: each output is the chain of
// fused multiply-adds over the inputs in order, bit for bit.
TEST(NativeMatmul, F16AndF32ProductsAreTheInOrderFmaChain) {
  for (const Shape& s : kShapes) {
    for (int64_t in : {s.in, s.in + 3})
    for (bool f16 : {true, false}) {
      const RowMatrix x = RandomActs(s.m, in, 13);
      const std::vector<uint16_t> h = RandomF16(s.out, in, 14);
      std::vector<float> wide(h.size());
      for (size_t i = 0; i < h.size(); ++i) wide[i] = F16ToF32(h[i]) * (f16 ? 1.f : 1.0001f);
      const PackedWeight p = f16 ? PackedWeight::FromF16(h.data(), s.out, in) : PackedWeight::FromF32(wide.data(), s.out, in);
      EXPECT_EQ(p.kind(), f16 ? PackedWeight::Kind::kF16 : PackedWeight::Kind::kF32);
      const RowMatrix w = p.ToF32();
      const RowMatrix y = p.Apply(x);
      for (int64_t n = 0; n < s.out; ++n) {
        for (int64_t k = 0; k < in; ++k) ASSERT_EQ(w(n, k), wide[n * in + k]);
        for (int64_t r = 0; r < s.m; ++r) {
          float f = 0.f;
          for (int64_t k = 0; k < in; ++k) f = std::fma(x(r, k), w(n, k), f);
          ASSERT_EQ(y(r, n), f) << s.m << "x" << s.out << "x" << in << " at " << r << "," << n;
        }
      }
    }
  }
}

// MatmulMode::kBf16: f32 and f16 weights packed with dense_as_bf16 are their values rounded to
// bf16 (nearest even) and run the bf16 product: the same bits as packing those bf16 values; an
// odd input width keeps the dense form, and without the flag nothing is rounded.
TEST(NativeMatmul, DenseWeightsRoundToBf16WhenAsked) {
  const int64_t out = 37, in = 96, row0 = 3, rows = out - 3;
  const std::vector<float> w = NormalWeights(out * (in + 1), 0.05f, 21);
  const RowMatrix x = RandomActs(7, in, 22);
  for (DType dt : {DType::kF32, DType::kF16}) {
    SCOPED_TRACE(std::string(DTypeName(dt)));
    for (int64_t width : {in, in + 1}) {
      auto buf = std::make_shared<OwnedBuffer>(static_cast<size_t>(DTypeBytes(dt, out * width)));
      ASSERT_TRUE(EncodeFromF32(dt, w.data(), out * width, buf->mutable_data()).ok());
      const Tensor t(dt, {out, width}, buf);
      const std::vector<float> values = *t.ToF32();
      auto plain = PackedWeight::Pack(t, row0, rows);
      auto p = PackedWeight::Pack(t, row0, rows, nullptr, /*dense_as_bf16=*/true);
      ASSERT_TRUE(plain && p);
      const auto dense_kind = dt == DType::kF32 ? PackedWeight::Kind::kF32 : PackedWeight::Kind::kF16;
      EXPECT_EQ(plain->kind(), dense_kind);
      if (width % 2 == 1) {
        EXPECT_EQ(p->kind(), dense_kind);  // no bf16 pairs for an odd width
        continue;
      }
      ASSERT_EQ(p->kind(), PackedWeight::Kind::kBf16);
      std::vector<uint16_t> bits(rows * width);
      for (int64_t i = 0; i < rows * width; ++i) bits[i] = F32ToBF16(values[row0 * width + i]);
      const PackedWeight ref = PackedWeight::FromBf16(bits.data(), rows, width);
      const RowMatrix pw = p->ToF32();
      for (int64_t i = 0; i < rows * width; ++i) ASSERT_EQ(pw.data()[i], BF16ToF32(bits[i])) << i;
      const RowMatrix y = p->Apply(x), yr = ref.Apply(x);
      for (int64_t i = 0; i < y.size(); ++i) ASSERT_EQ(y.data()[i], yr.data()[i]) << i;
      int64_t rounded = 0;
      for (int64_t i = 0; i < rows * width; ++i) rounded += pw.data()[i] != values[row0 * width + i];
      EXPECT_GT(rounded, rows * width / 2);  // the values really moved to bf16
    }
  }
}

// fp8-e4m3 weights with a scale per output row (W8A8 FP8) pack as f16 codes: each row's
// in-order FMA chain of its e4m3 values times the f32 activations, then times its scale; a row
// slice keeps its rows' scales; group scales and NaN codes are refused.
TEST(NativeMatmul, Fp8WeightsPackAsF16TimesTheirRowScales) {
  for (const Shape& s : kShapes) {
    const int64_t in = s.in + 7;  // any width
    const std::vector<float> wf = NormalWeights(s.out * in, 0.05f, 31);
    auto [codes, info] = QuantizeFp8(wf, s.out, in, 0);
    const Tensor t = Tensor::Quantized({s.out, in}, codes, info);
    ASSERT_TRUE(HasNativeForm(t));
    ASSERT_TRUE(NativeFormTakesF32Acts(t));
    const std::vector<float> full = *t.ToF32();
    const int64_t row0 = s.out > 16 ? 3 : 0, rows = s.out - row0;
    std::string why;
    auto p = PackedWeight::Pack(t, row0, rows, &why);
    ASSERT_TRUE(p) << why;
    EXPECT_EQ(p->kind(), PackedWeight::Kind::kF16);
    EXPECT_TRUE(p->TakesF32Acts());
    const RowMatrix w = p->ToF32();
    const RowMatrix x = RandomActs(s.m, in, 32);
    const RowMatrix y = p->Apply(x);
    const RowMatrix yp = p->ApplyPortable(x);
    for (int64_t n = 0; n < rows; ++n) {
      const float sc = info.scales()[row0 + n];
      for (int64_t k = 0; k < in; ++k) {
        ASSERT_EQ(w(n, k), full[(row0 + n) * in + k]);  // the dequantized value e4m3(q) x s
      }
      for (int64_t r = 0; r < s.m; ++r) {
        float f = 0.f;
        for (int64_t k = 0; k < in; ++k) {
          f = std::fma(x(r, k), MiniFloatDecode(static_cast<uint8_t>(codes[(row0 + n) * in + k]), kE4M3), f);
        }
        ASSERT_EQ(y(r, n), f * sc) << s.m << "x" << s.out << "x" << in << " at " << r << "," << n;
        ASSERT_EQ(yp(r, n), y(r, n));
      }
    }
  }
  const std::vector<float> wf = NormalWeights(8 * 64, 0.05f, 33);
  auto [codes, info] = QuantizeFp8(wf, 8, 64, 0);
  std::string why;
  QuantInfo grouped = info;
  grouped.group_size = 32;
  grouped.groups = 2;
  grouped.mutable_scales().assign(16, 0.01f);
  EXPECT_FALSE(PackedWeight::Pack(Tensor::Quantized({8, 64}, codes, grouped), 0, 8, &why));
  EXPECT_EQ(why, "fp8 weights with other than one scale per output row");
  EXPECT_FALSE(HasNativeForm(Tensor::Quantized({8, 64}, codes, grouped)));
  std::vector<int8_t> nan = codes;
  nan[70] = static_cast<int8_t>(0x7F);
  EXPECT_FALSE(PackedWeight::Pack(Tensor::Quantized({8, 64}, nan, info), 0, 8, &why));
  EXPECT_EQ(why, "an e4m3 NaN code");
}

TEST(NativeMatmul, NonFiniteActivationsGiveNaN) {
  const IntCase c = RandomCodes(16, 64, 8, 9);
  const PackedWeight p = PackedWeight::FromCodes(c.codes.data(), c.group_scales.data(), 16, 64);
  RowMatrix x = RandomActs(2, 64, 10);
  x(1, 40) = NAN;
  const RowMatrix y = p.Apply(x);
  EXPECT_TRUE(y.row(0).array().isFinite().all());
  EXPECT_TRUE(y.row(1).array().isNaN().all());
}

// A block of activations so small that its step max|x| / 127 has no finite reciprocal (below
// 2^-128) is coded by division: the product stays within the rounding bound (x * (1 / d) was
// NaN there, and its int conversion undefined, which UBSan builds stop at: found by fuzz_gguf).
TEST(NativeMatmul, SubnormalActivationBlocksKeepTheRoundingBound) {
  const IntCase c = RandomCodes(16, 64, 8, 11);
  const PackedWeight p = PackedWeight::FromCodes(c.codes.data(), c.group_scales.data(), 16, 64);
  RowMatrix x = RandomActs(3, 64, 12);
  for (int64_t k = 0; k < 32; ++k) {
    x(1, k) *= 1e-39f;  // block 0 of row 1: max |x| about 1e-39, step about 8e-42
    x(2, k + 32) = k % 3 == 0 ? 0x1p-140f * static_cast<float>(k) : 0.f;  // block 1 of row 2
  }
  const RowMatrix y = p.Apply(x);
  EXPECT_TRUE(y.array().isFinite().all());
  ExpectWithinInt8ActivationBound(x, p.ToF32(), y, 4e-7);
}

// Packing from tensors: quantized int weights (any group that is a multiple of 32, zero
// points folded into the codes), a row slice of a fused weight, and the refused forms.
TEST(NativeMatmul, PacksQuantizedTensorsAndRefusesOtherForms) {
  const int64_t out = 40, in = 128;
  std::mt19937 rng(11);
  std::uniform_int_distribution<int> q(-8, 7);
  std::vector<int8_t> codes(out * in);
  for (auto& v : codes) v = static_cast<int8_t>(q(rng));
  QuantInfo info;
  info.bits = 4;
  info.symmetric = false;
  info.group_size = 64;
  info.channels = out;
  info.groups = in / 64;
  for (int64_t i = 0; i < out * info.groups; ++i) {
    info.mutable_scales().push_back(0.01f * static_cast<float>(1 + i % 7));
    info.mutable_zero_points().push_back(static_cast<int8_t>(i % 5 - 2));
  }
  const Tensor t = Tensor::Quantized({out, in}, codes, info);
  const std::vector<float> full = *t.ToF32();
  std::string why;
  auto p = PackedWeight::Pack(t, 8, 20, &why);
  ASSERT_TRUE(p) << why;
  EXPECT_EQ(p->kind(), PackedWeight::Kind::kInt8);
  const RowMatrix w = p->ToF32();
  for (int64_t r = 0; r < 20; ++r)
    for (int64_t k = 0; k < in; ++k) ASSERT_EQ(w(r, k), full[(8 + r) * in + k]);

  QuantInfo g16 = info;
  g16.group_size = 16;
  g16.groups = in / 16;
  g16.mutable_scales().assign(out * g16.groups, 0.01f);
  g16.mutable_zero_points().assign(out * g16.groups, 0);
  EXPECT_FALSE(PackedWeight::Pack(Tensor::Quantized({out, in}, codes, g16), 0, out, &why));
  EXPECT_EQ(why, "groups not a multiple of 32");
  QuantInfo outliers = info;
  outliers.outlier_inputs = {3, 2};  // not ascending
  outliers.outlier_values.assign(out * 2, 0.f);
  EXPECT_FALSE(PackedWeight::Pack(Tensor::Quantized({out, in}, codes, outliers), 0, out, &why));
  EXPECT_EQ(why, "outlier inputs out of order");
  const std::vector<float> f(out * in, 0.5f);
  auto f32 = PackedWeight::Pack(*Tensor::FromF32(f, {out, in}, DType::kF32), 2, 33, &why);
  ASSERT_TRUE(f32);
  EXPECT_EQ(f32->kind(), PackedWeight::Kind::kF32);
  EXPECT_TRUE((f32->ToF32().array() == 0.5f).all());
  auto bf = PackedWeight::Pack(*Tensor::FromF32(f, {out, in}, DType::kBF16), 0, out, &why);
  ASSERT_TRUE(bf);
  EXPECT_EQ(bf->kind(), PackedWeight::Kind::kBf16);
  EXPECT_TRUE((bf->ToF32().array() == 0.5f).all());
  EXPECT_FALSE(bf->IsZero());
  auto h = PackedWeight::Pack(*Tensor::FromF32(f, {out, in}, DType::kF16), 4, 30, &why);
  ASSERT_TRUE(h);
  EXPECT_EQ(h->kind(), PackedWeight::Kind::kF16);
  EXPECT_EQ(h->out(), 30);
  EXPECT_TRUE((h->ToF32().array() == 0.5f).all());
  EXPECT_FALSE(h->IsZero());
  const std::vector<float> z(out * in, -0.f);
  EXPECT_TRUE(PackedWeight::Pack(*Tensor::FromF32(z, {out, in}, DType::kF16), 0, out, &why)->IsZero());
}

// FP4 / MXFP4 codebook weights pack as int8 codes m x level with scales s / m (m a power of
// two): the packed values are the dequantized ones bit for bit, the kernels agree with the
// portable loop, the product stays within the activation rounding bound; NF4 (levels that are
// no multiples of a power of two) packs as 16 f32 levels instead (next test).
TEST(NativeMatmul, Fp4CodebooksPackAsInt8Levels) {
  const int64_t out = 37, in = 256, m = 5;
  const std::vector<float> w = NormalWeights(out * in, 0.03f, 21);
  const RowMatrix x = RandomActs(m, in, 22);
  struct Case {
    const char* format;
    int64_t group;
    CodebookOptions::Scale scale;
    int mult;
  };
  using S = CodebookOptions::Scale;
  for (const Case& c : {Case{"mxfp4", 32, S::kE8M0, 2}, Case{"fp4-e2m1", 128, S::kSearch, 2},
                        Case{"fp4-e3m0", 64, S::kAbsmax, 4}, Case{"fp4-e1m2", 32, S::kAbsmax, 2},
                        Case{"nf4", 64, S::kAbsmax, 0}}) {
    SCOPED_TRACE(c.format);
    CodebookOptions o;
    o.format = c.format;
    o.group_size = c.group;
    o.scale = c.scale;
    auto q = QuantizeCodebook(w, out, in, o);
    ASSERT_TRUE(q.ok()) << q.status();
    EXPECT_EQ(IntegerLevelMultiplier(q->info.levels()), c.mult);
    const Tensor t = Tensor::Quantized({out, in}, q->codes, q->info);
    EXPECT_TRUE(HasNativeForm(t));
    std::string why;
    auto p = PackedWeight::Pack(t, 0, out, &why);
    ASSERT_TRUE(p) << why;
    if (c.mult == 0) {
      EXPECT_EQ(p->kind(), PackedWeight::Kind::kLevels16);
      continue;
    }
    EXPECT_EQ(p->kind(), PackedWeight::Kind::kInt8);
    const std::vector<float> full = *t.ToF32();
    const RowMatrix pw = p->ToF32();
    for (int64_t r = 0; r < out; ++r)
      for (int64_t k = 0; k < in; ++k) ASSERT_EQ(pw(r, k), full[r * in + k]) << r << "," << k;
    const RowMatrix y = p->Apply(x);
    EXPECT_TRUE((y.array() == p->ApplyPortable(x).array()).all());
    ExpectWithinInt8ActivationBound(x, pw, y, 4e-7);
  }
}

// NF4 (levels with no integer form) packs its 4-bit codes with the 16 levels: every packed
// value is the decoder's levels[c] x s, the kernels give the portable loop's bits, and each
// output is the in-order chain of fused multiply-adds over those values, bit for bit (the f32
// path's values up to the order of the sum); row slices, [in, out] weights and group sizes
// down to 2; odd groups, or groups that do not divide the width, are refused.
TEST(NativeMatmul, Nf4PacksItsLevels) {
  for (const Shape& s : kShapes) {
    for (int64_t group : {int64_t{2}, int64_t{32}, s.in}) {
      SCOPED_TRACE(::testing::Message() << s.m << "x" << s.out << "x" << s.in << " group " << group);
      const std::vector<float> w = NormalWeights(s.out * s.in, 0.03f, 41);
      CodebookOptions o;
      o.format = "nf4";
      o.group_size = group;
      o.scale = CodebookOptions::Scale::kAbsmax;
      auto q = QuantizeCodebook(w, s.out, s.in, o);
      ASSERT_TRUE(q.ok()) << q.status();
      const Tensor t = Tensor::Quantized({s.out, s.in}, q->codes, q->info);
      ASSERT_TRUE(HasNativeForm(t));
      const int64_t row0 = s.out > 3 ? 1 : 0, rows = s.out - row0;
      std::string why;
      auto p = PackedWeight::Pack(t, row0, rows, &why);
      ASSERT_TRUE(p) << why;
      EXPECT_EQ(p->kind(), PackedWeight::Kind::kLevels16);
      const std::vector<float> full = *t.ToF32();
      const RowMatrix pw = p->ToF32();
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t k = 0; k < s.in; ++k) ASSERT_EQ(pw(r, k), full[(row0 + r) * s.in + k]) << r << "," << k;
      const RowMatrix x = RandomActs(s.m, s.in, 42);
      const RowMatrix y = p->Apply(x);
      EXPECT_TRUE((y.array() == p->ApplyPortable(x).array()).all());
      for (int64_t r = 0; r < s.m; ++r)
        for (int64_t n = 0; n < rows; ++n) {
          float f = 0.f;
          for (int64_t k = 0; k < s.in; ++k) f = std::fma(x(r, k), pw(n, k), f);
          ASSERT_EQ(y(r, n), f) << r << "," << n;
        }
    }
  }
  // [in, out] (channel_axis 1): the transpose of the same codes.
  const int64_t in = 64, out = 24;
  const std::vector<float> w = NormalWeights(out * in, 0.03f, 43);
  CodebookOptions o;
  o.format = "nf4";
  o.group_size = 16;
  o.scale = CodebookOptions::Scale::kAbsmax;
  auto q = QuantizeCodebook(w, out, in, o);
  ASSERT_TRUE(q.ok()) << q.status();
  const Tensor tt = TransposedQuantized(q->codes, q->info, out, in);
  ASSERT_TRUE(HasNativeForm(tt, 1));
  std::string why;
  auto pt = PackedWeight::PackTransposed(tt, &why);
  ASSERT_TRUE(pt) << why;
  EXPECT_EQ(pt->kind(), PackedWeight::Kind::kLevels16);
  const std::vector<float> full = *Tensor::Quantized({out, in}, q->codes, q->info).ToF32();
  const RowMatrix pw = pt->ToF32();
  for (int64_t n = 0; n < out; ++n)
    for (int64_t k = 0; k < in; ++k) ASSERT_EQ(pw(n, k), full[n * in + k]);
  // Refused: an odd group, and a group that does not divide the width (the f32 path runs them).
  for (int64_t bad : {int64_t{3}, int64_t{48}}) {
    QuantInfo b = q->info;
    b.group_size = bad;
    b.groups = (in + bad - 1) / bad;
    b.mutable_scales().assign(out * b.groups, 0.01f);
    const Tensor tb = Tensor::Quantized({out, in}, q->codes, b);
    EXPECT_FALSE(HasNativeForm(tb));
    EXPECT_FALSE(PackedWeight::Pack(tb, 0, out, &why));
  }
}

// LLM.int8() weights: int8 codes per output channel with f16 outlier input features kept
// apart. The product is the codes' product of the activations with those features zeroed
// (the features do not widen their blocks' int8 steps), plus each feature's f32 fused
// multiply-add in order: equal bit for bit to that sum made from its two parts, within the
// int8 activation bound of the exact product of the non-outlier part, and the packed values
// are the decoder's (outliers included), [out, in] and [in, out].
TEST(NativeMatmul, LlmInt8OutliersStayApart) {
  const int64_t out = 37, in = 160, m = 6;
  std::vector<float> w = NormalWeights(out * in, 0.03f, 51);
  const std::vector<int64_t> features = {5, 40, 41, 159};
  std::vector<float> values(out * features.size());
  for (int64_t n = 0; n < out; ++n)
    for (size_t j = 0; j < features.size(); ++j) {
      float& v = w[n * in + features[j]];
      values[n * features.size() + j] = F16ToF32(F32ToF16(v * 40.f));
      v = 0.f;
    }
  auto q = QuantizeRtn(w, out, in, 8, true, 0, 0);
  ASSERT_TRUE(q.ok()) << q.status();
  q->second.outlier_inputs = features;
  q->second.outlier_values = values;
  const Tensor t = Tensor::Quantized({out, in}, q->first, q->second);
  ASSERT_TRUE(HasNativeForm(t));
  std::string why;
  auto p = PackedWeight::Pack(t, 0, out, &why);
  ASSERT_TRUE(p) << why;
  EXPECT_EQ(p->kind(), PackedWeight::Kind::kInt8);
  const std::vector<float> full = *t.ToF32();
  const RowMatrix pw = p->ToF32();
  for (int64_t n = 0; n < out; ++n)
    for (int64_t k = 0; k < in; ++k) ASSERT_EQ(pw(n, k), full[n * in + k]) << n << "," << k;
  RowMatrix x = RandomActs(m, in, 52);
  for (int64_t k : features) x.col(k) *= 50.f;  // the outlier features are large
  const RowMatrix y = p->Apply(x);
  EXPECT_TRUE((y.array() == p->ApplyPortable(x).array()).all());
  // The two parts: the codes alone on the masked activations, then the features in order.
  std::vector<float> scales(out * in / 32);
  for (int64_t n = 0; n < out; ++n)
    for (int64_t b = 0; b < in / 32; ++b) scales[n * (in / 32) + b] = q->second.scales()[n];
  const PackedWeight codes_only = PackedWeight::FromCodes(q->first.data(), scales.data(), out, in);
  RowMatrix xm = x;
  for (int64_t k : features) xm.col(k).setZero();
  RowMatrix expect = codes_only.Apply(xm);
  for (int64_t r = 0; r < m; ++r)
    for (int64_t n = 0; n < out; ++n)
      for (size_t j = 0; j < features.size(); ++j)
        expect(r, n) = std::fma(x(r, features[j]), values[n * features.size() + j], expect(r, n));
  EXPECT_TRUE((y.array() == expect.array()).all());
  ExpectWithinInt8ActivationBound(xm, codes_only.ToF32(), codes_only.Apply(xm), 4e-7);
  // [in, out]: the transposed codes with channel_axis 1 give the same packed values.
  const Tensor tt = TransposedQuantized(q->first, q->second, out, in);
  ASSERT_TRUE(HasNativeForm(tt, 1));
  auto pt = PackedWeight::PackTransposed(tt, &why);
  ASSERT_TRUE(pt) << why;
  EXPECT_TRUE((pt->ToF32().array() == pw.array()).all());
  EXPECT_TRUE((pt->Apply(x).array() == y.array()).all());
}

// Activations an integer activation quantization has already coded (W8A8 per token, per
// group of 64, static per tensor with clipping, LLM.int8()'s per-token inputs with f16
// outlier features): the integer product runs on those codes, so the result is the f32
// product of the quantized activations and the weight's values up to f32 rounding only (no
// second activation rounding), and the kernels give the portable loop's bits.
TEST(NativeMatmul, CodedActivationsRunAsTheirOwnCodes) {
  const int64_t out = 37, in = 192, m = 7;
  std::vector<float> w = NormalWeights(out * in, 0.03f, 61);
  const std::vector<int64_t> features = {7, 100};
  std::vector<float> values(out * features.size());
  for (int64_t n = 0; n < out; ++n)
    for (size_t j = 0; j < features.size(); ++j) {
      values[n * features.size() + j] = F16ToF32(F32ToF16(w[n * in + features[j]]));
      w[n * in + features[j]] = 0.f;
    }
  struct Case {
    const char* what;
    ActivationQuant act;
    bool outliers;
  };
  ActivationQuant token, group, stat, llm, fp4, fp4s;
  group.granularity = ActivationQuant::Granularity::kGroup;
  group.group_size = 64;
  stat.granularity = ActivationQuant::Granularity::kTensor;
  stat.dynamic = false;
  stat.scale = 0.05f;  // clips the larger activations, down to code -128
  llm.f16_outliers = true;
  fp4.format = fp4s.format = ActFormat::kFp4;  // W4A4's inputs: FP4 levels x 2 or x 4 as codes
  fp4.bits = fp4s.bits = 4;
  fp4.fp4_format = "fp4-e2m1";
  fp4s.fp4_format = "fp4-e3m0";
  fp4s.granularity = ActivationQuant::Granularity::kTensor;
  fp4s.dynamic = false;
  fp4s.scale = 0.1f;
  // LLM-FP4's per-channel exponents (W4A4's default): the step is s x 2^(smallest) / m and each
  // feature's code its level x m x 2^(e - smallest); e2m1's largest code 12 fits int8 up to
  // 2^3 above the smallest, so features 9 (2^4) and 150 (2^6) are kept apart in f32.
  ActivationQuant shifted = fp4s;
  shifted.fp4_format = "fp4-e2m1";
  shifted.scale = 0.5f;
  shifted.channel_exp.assign(in, -1);
  shifted.channel_exp[3] = 2, shifted.channel_exp[9] = 3, shifted.channel_exp[40] = 1, shifted.channel_exp[150] = 5;
  shifted.channel_exp[100] = 2;  // an LLM.int8() outlier feature too (the weight's own values)
  ActivationQuant shifted_int = shifted;  // int4 codes x 2^(e - smallest): up to 2^4 above it fit
  shifted_int.format = ActFormat::kInt;
  shifted_int.fp4_format.clear();
  ASSERT_TRUE(shifted.Validate(in).ok());
  ASSERT_TRUE(shifted_int.Validate(in).ok());
  EXPECT_EQ(CodedActApart(shifted), (std::vector<int64_t>{9, 150}));
  EXPECT_EQ(CodedActApart(shifted_int), (std::vector<int64_t>{150}));
  EXPECT_TRUE(CodedActApart(fp4s).empty());
  for (const Case& c : {Case{"per token", token, false}, Case{"groups of 64", group, false},
                        Case{"static", stat, false}, Case{"llm.int8", llm, true}, Case{"fp4 e2m1 per token", fp4, false},
                        Case{"fp4 e3m0 static", fp4s, false}, Case{"fp4 e2m1 channel exponents", shifted, false},
                        Case{"fp4 e2m1 channel exponents, llm.int8 outliers", shifted, true},
                        Case{"int4 channel exponents", shifted_int, false}}) {
    SCOPED_TRACE(c.what);
    auto q = QuantizeRtn(w, out, in, 8, true, 0, 0);
    ASSERT_TRUE(q.ok()) << q.status();
    if (c.outliers) {
      q->second.outlier_inputs = features;
      q->second.outlier_values = values;
    }
    const Tensor t = Tensor::Quantized({out, in}, q->first, q->second);
    auto p = PackedWeight::Pack(t, 0, out);
    ASSERT_TRUE(p);
    const RowMatrix before = p->ToF32();
    const int64_t group_in = CodedActGroup(c.act, in);
    ASSERT_GT(group_in, 0);
    ASSERT_TRUE(p->TakesCodedActs(group_in));
    ASSERT_TRUE(p->KeepInputsApart(CodedActApart(c.act)));
    EXPECT_TRUE((p->ToF32().array() == before.array()).all());  // the same weight, partly apart
    RowMatrix xq = RandomActs(m, in, 62);
    if (!c.act.channel_exp.empty())  // a shifted feature's inputs on its own scale
      for (int64_t k = 0; k < in; ++k) xq.col(k) *= std::ldexp(1.f, c.act.channel_exp[k]);
    std::vector<float> steps;
    const std::span<const int64_t> keep = c.act.f16_outliers ? std::span<const int64_t>(features) : std::span<const int64_t>();
    FakeQuantize(c.act, keep, xq.data(), m, in, &steps);
    ASSERT_EQ(steps.size(), static_cast<size_t>(m * (in / group_in)));
    const RowMatrix y = p->ApplyCodedActs(xq, steps, group_in);
    EXPECT_TRUE((y.array() == p->ApplyCodedActs(xq, steps, group_in, true).array()).all());
    const RowMatrix pw = p->ToF32();
    for (int64_t r = 0; r < m; ++r)
      for (int64_t n = 0; n < out; ++n) {
        double exact = 0, mag = 0;
        for (int64_t k = 0; k < in; ++k) {
          exact += static_cast<double>(xq(r, k)) * pw(n, k);
          mag += std::fabs(static_cast<double>(xq(r, k)) * pw(n, k));
        }
        ASSERT_LE(std::fabs(y(r, n) - exact), mag * 2e-6) << r << "," << n;
      }
  }
  {
    // 8-bit inputs with a zero point (ONNX's DynamicQuantizeLinear): x' = (q - zp) x s, q in
    // [0, 255]; the product runs on q - 128 (int8) and adds (128 - zp) x s x each row's sum.
    SCOPED_TRACE("zero point");
    ActivationQuant zp;
    zp.granularity = ActivationQuant::Granularity::kTensor;
    zp.zero_point = true;
    ASSERT_TRUE(zp.Validate(in).ok());
    ASSERT_EQ(CodedActGroup(zp, in), in);
    auto q = QuantizeRtn(w, out, in, 4, true, 0, 32);
    ASSERT_TRUE(q.ok()) << q.status();
    auto p = PackedWeight::Pack(Tensor::Quantized({out, in}, q->first, q->second), 0, out);
    ASSERT_TRUE(p && p->TakesCodedActs(in));
    RowMatrix xq = (RandomActs(m, in, 63).cwiseAbs().array() - 0.3f).matrix();  // mostly positive: zp far from 128
    std::vector<float> steps;
    float offset = 0;
    FakeQuantize(zp, {}, xq.data(), m, in, &steps, &offset);
    ASSERT_EQ(steps.size(), static_cast<size_t>(m));
    EXPECT_GT(std::fabs(offset), 20.f) << "the codes are shifted";
    RowMatrix xs = xq;
    for (int64_t r = 0; r < m; ++r) xs.row(r).array() -= offset * steps[r];
    RowMatrix y = p->ApplyCodedActs(xs, steps, in);
    const std::vector<double> sums = p->CodedRowSums();
    const RowMatrix pw = p->ToF32();
    for (int64_t r = 0; r < m; ++r)
      for (int64_t n = 0; n < out; ++n) {
        double exact = 0, mag = 0, rowsum = 0;
        for (int64_t k = 0; k < in; ++k) {
          exact += static_cast<double>(xq(r, k)) * pw(n, k);
          mag += std::fabs(static_cast<double>(xq(r, k)) * pw(n, k));
          rowsum += pw(n, k);
          // every shifted value is an int8 code times the step
          if (r == 0 && n == 0) {
            const double c = xs(r, k) / steps[r];
            ASSERT_NEAR(c, std::nearbyint(c), 1e-3) << k;
            ASSERT_GE(std::nearbyint(c), -128) << k;
            ASSERT_LE(std::nearbyint(c), 127) << k;
          }
        }
        ASSERT_NEAR(sums[n], rowsum, 1e-9 * (1 + std::fabs(rowsum)));
        ASSERT_LE(std::fabs(y(r, n) + offset * steps[r] * sums[n] - exact), mag * 4e-6) << r << "," << n;
      }
    // All-zero inputs: x' = 0, a step of 1 and no offset (not a division by a zero step).
    RowMatrix zeros = RowMatrix::Zero(2, in);
    FakeQuantize(zp, {}, zeros.data(), 2, in, &steps, &offset);
    EXPECT_EQ(steps, (std::vector<float>{1.f, 1.f}));
    EXPECT_EQ(offset, 0.f);
    EXPECT_EQ(p->ApplyCodedActs(zeros, steps, in).cwiseAbs().maxCoeff(), 0.f);
  }
  ActivationQuant fp8;
  fp8.format = ActFormat::kFp8E4M3;
  EXPECT_EQ(CodedActGroup(fp8, in), 0);
  ActivationQuant nf4 = fp4;
  nf4.fp4_format = "nf4";
  EXPECT_EQ(CodedActGroup(nf4, in), 0);
}

// [in, out] weights (GPT-2's Conv1D) pack as their transpose: bf16 bits, and integer codes
// with scales per output column (channel_axis 1), the packed values the dequantized ones.
TEST(NativeMatmul, InOutWeightsPackTransposed) {
  const int64_t in = 96, out = 40;
  const std::vector<float> w = NormalWeights(in * out, 0.05f, 31);
  auto q = QuantizeRtn(w, in, out, 4, false, /*channel_axis=*/1, 32);
  ASSERT_TRUE(q.ok()) << q.status();
  const Tensor tq = Tensor::Quantized({in, out}, q->first, q->second);
  const Tensor tb = *Tensor::FromF32(w, {in, out}, DType::kBF16);
  const Tensor th = *Tensor::FromF32(w, {in, out}, DType::kF16);
  const Tensor tf = *Tensor::FromF32(w, {in, out}, DType::kF32);
  for (const Tensor* t : {&tq, &tb, &th, &tf}) {
    EXPECT_TRUE(HasNativeForm(*t, 1));
    EXPECT_FALSE(HasNativeForm(*t, 0) && t->quant());  // quantized along the other axis
    std::string why;
    auto p = PackedWeight::PackTransposed(*t, &why);
    ASSERT_TRUE(p) << why;
    EXPECT_EQ(p->out(), out);
    EXPECT_EQ(p->in(), in);
    const std::vector<float> full = *t->ToF32();
    const RowMatrix pw = p->ToF32();
    for (int64_t o = 0; o < out; ++o)
      for (int64_t k = 0; k < in; ++k) ASSERT_EQ(pw(o, k), full[k * out + o]) << o << "," << k;
  }
  QuantInfo other_axis = q->second;  // scales along the other axis
  other_axis.channel_axis = 0;
  std::string why;
  EXPECT_FALSE(PackedWeight::PackTransposed(Tensor::Quantized({in, out}, q->first, other_axis), &why));
  EXPECT_EQ(why, "quantized along another axis");
}

// GGUF block weights pack their stored codes with the blocks' scales (and mins): the packed
// values are the decoder's bit for bit, the kernels agree with the portable loop, and the
// product stays within the activation rounding bound of the decoded weights' product.
TEST(NativeMatmul, GgufBlockTypesPackTheirCodes) {
  const int64_t out = 35, in = 512, m = 6;
  const std::vector<float> w = NormalWeights(out * in, 0.02f, 12);
  const RowMatrix x = RandomActs(m, in, 13);
  int packed_types = 0;
  for (DType t : kAllDTypes) {
    if (!IsBlockType(t)) continue;
    SCOPED_TRACE(std::string(DTypeName(t)));
    auto buf = std::make_shared<OwnedBuffer>(static_cast<size_t>(DTypeBytes(t, out * in)));
    ASSERT_TRUE(EncodeFromF32(t, w.data(), out * in, buf->mutable_data()).ok());
    const Tensor tensor(t, {out, in}, buf);
    const std::vector<float> decoded = *tensor.ToF32();
    std::string why;
    auto p = PackedWeight::Pack(tensor, 3, out - 3, &why);
    ASSERT_TRUE(p) << why;
    ++packed_types;
    const RowMatrix pw = p->ToF32();
    for (int64_t r = 0; r < out - 3; ++r)
      for (int64_t k = 0; k < in; ++k) ASSERT_EQ(pw(r, k), decoded[(3 + r) * in + k]) << r << "," << k;
    const RowMatrix y = p->Apply(x);
    EXPECT_TRUE((y.array() == p->ApplyPortable(x).array()).all());
    ExpectWithinInt8ActivationBound(x, pw, y, 1e-6);
  }
  EXPECT_EQ(packed_types, 12);
}

}  // namespace
}  // namespace compress
