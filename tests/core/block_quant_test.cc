// ggml block types: our decoder against blocks ggml itself wrote (tests/golden/ggml/blocks.json,
// made by make_blocks.sh from llama.cpp's source), and our encoder's error against ggml's.
#include "core/block_quant.h"

#include <gtest/gtest.h>

#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "nlohmann/json.hpp"
#include "tests/test_util.h"

namespace compress {
namespace {

struct Golden {
  std::vector<float> input;
  struct Type {
    DType dtype;
    std::vector<uint8_t> blocks;
    std::vector<float> decoded;
  };
  std::vector<Type> types;
};

const Golden& LoadGolden() {
  static const Golden* g = [] {
    auto* out = new Golden;
    const auto j = nlohmann::json::parse(testing::ReadFile(std::string(COMPRESS_SOURCE_DIR) + "/tests/golden/ggml/blocks.json"));
    out->input = j["input"].get<std::vector<float>>();
    for (const auto& t : j["types"]) {
      Golden::Type gt;
      std::string name = t["type"];
      for (char& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      gt.dtype = *ParseDType(name);
      const std::string hex = t["blocks"];
      for (size_t i = 0; i + 1 < hex.size(); i += 2) gt.blocks.push_back(std::stoi(hex.substr(i, 2), nullptr, 16));
      gt.decoded = t["decoded"].get<std::vector<float>>();
      out->types.push_back(std::move(gt));
    }
    return out;
  }();
  return *g;
}

double Sse(const std::vector<float>& a, const std::vector<float>& b) {
  double e = 0;
  for (size_t i = 0; i < a.size(); ++i) e += (static_cast<double>(a[i]) - b[i]) * (static_cast<double>(a[i]) - b[i]);
  return e;
}

TEST(BlockQuant, GoldenCoversEveryBlockType) {
  const Golden& g = LoadGolden();
  int block_types = 0;
  for (DType t : kAllDTypes) block_types += IsBlockType(t);
  EXPECT_EQ(static_cast<int>(g.types.size()), block_types);
}

TEST(BlockQuant, DecodesBlocksGgmlWroteAsGgmlDoes) {
  const Golden& g = LoadGolden();
  for (const auto& t : g.types) {
    SCOPED_TRACE(std::string(DTypeName(t.dtype)));
    const int64_t n = static_cast<int64_t>(g.input.size());
    ASSERT_EQ(static_cast<int64_t>(t.blocks.size()), DTypeBytes(t.dtype, n));
    std::vector<float> y(n);
    ASSERT_TRUE(DecodeToF32(t.dtype, t.blocks.data(), n, y.data()).ok());
    for (int64_t i = 0; i < n; ++i) {
      // ggml's build may fuse a multiply-add (d sc q - dmin m) that ours rounds twice: one
      // rounding of the larger term apart at most.
      const float tol = 2e-7f * std::max(1.0f, std::fabs(t.decoded[i])) * 4;
      ASSERT_NEAR(y[i], t.decoded[i], tol) << "element " << i;
    }
  }
}

// LinearCodeOf reads back each element as scale x code + offset: exactly the decoder's value
// for blocks ggml wrote, with codes in int8 and one scale/offset per ScaleGroupElements.
TEST(BlockQuant, LinearCodesGiveTheDecodersValues) {
  const Golden& g = LoadGolden();
  for (const auto& t : g.types) {
    SCOPED_TRACE(std::string(DTypeName(t.dtype)));
    const int64_t n = static_cast<int64_t>(g.input.size()), be = BlockElements(t.dtype), bb = BlockBytes(t.dtype);
    std::vector<float> y(n);
    DecodeBlocks(t.dtype, t.blocks.data(), n, y.data());
    const int per = ScaleGroupElements(t.dtype);
    for (int64_t k = 0; k < n; ++k) {
      const uint8_t* block = t.blocks.data() + (k / be) * bb;
      const LinearCode c = LinearCodeOf(t.dtype, block, static_cast<int>(k % be));
      ASSERT_GE(c.code, -128);
      ASSERT_LE(c.code, 127);
      const float v = static_cast<float>(c.code) * c.scale;
      ASSERT_EQ(c.offset == 0 ? v : v + c.offset, y[k]) << "element " << k;
      const LinearCode first = LinearCodeOf(t.dtype, block, static_cast<int>((k % be) / per * per));
      ASSERT_EQ(c.scale, first.scale);
      ASSERT_EQ(c.offset, first.offset);
    }
  }
}

// EncodeBlocksReference writes, byte for byte, what ggml's quantizer wrote without an
// importance matrix for the types that have a reference rounding.
TEST(BlockQuant, ReferenceRoundingWritesGgmlsBytes) {
  const Golden& g = LoadGolden();
  int checked = 0;
  for (const auto& t : g.types) {
    if (!HasReferenceRounding(t.dtype)) continue;
    SCOPED_TRACE(std::string(DTypeName(t.dtype)));
    const int64_t n = static_cast<int64_t>(g.input.size());
    std::vector<uint8_t> ours(DTypeBytes(t.dtype, n));
    EncodeBlocksReference(t.dtype, g.input.data(), n, ours.data());
    EXPECT_EQ(ours, t.blocks);
    ++checked;
  }
  EXPECT_EQ(checked, 12);  // every block type
  // An all-zero block whose first element is -0: ggml's scan keeps max = +0, so d = +0 / -8
  // is -0 (f16 0x8000) for Q4_0 and Q5_0.
  std::vector<float> zeros(32, 0.f);
  zeros[0] = -0.f;
  for (DType t : {DType::kQ4_0, DType::kQ5_0}) {
    std::vector<uint8_t> b(BlockBytes(t));
    EncodeBlocksReference(t, zeros.data(), 32, b.data());
    EXPECT_EQ(b[0], 0x00) << DTypeName(t);
    EXPECT_EQ(b[1], 0x80) << DTypeName(t);
  }
}

// The fused Q4_0 / Q5_0 / Q8_0 reference encoder (quantize-gguf search=false) writes the same bytes
// as EncodeBlocksReference and the same floats as DecodeBlocks of them: the golden input, and
// blocks of Gaussian, tied, all-zero (+0 and -0 first), subnormal and wide-ranging values.
TEST(BlockQuant, FusedReferenceEncoderGivesTheSameBytesAndDecodedValues) {
  std::vector<float> x = LoadGolden().input;
  x.resize(x.size() / 32 * 32);
  std::mt19937 rng(7);
  std::normal_distribution<float> g(0.f, 1.f);
  for (int b = 0; b < 512; ++b) {
    const float scale = std::ldexp(1.0f, static_cast<int>(rng() % 60) - 40);
    for (int j = 0; j < 32; ++j) x.push_back(g(rng) * scale);
  }
  for (int j = 0; j < 32; ++j) x.push_back(j % 2 ? 3.f : -3.f);  // ties for the largest magnitude
  for (int j = 0; j < 32; ++j) x.push_back(j == 0 ? -0.f : 0.f);
  for (int j = 0; j < 32; ++j) x.push_back(0.f);
  for (int j = 0; j < 32; ++j) x.push_back(j * 1e-41f);  // subnormal
  for (int j = 0; j < 32; ++j) x.push_back(j == 5 ? -6e4f : 1e-3f * j);
  const int64_t n = static_cast<int64_t>(x.size());
  EXPECT_FALSE(EncodeDecodeReference(DType::kQ4_K, x.data(), 256, nullptr, nullptr));
  for (DType t : {DType::kQ4_0, DType::kQ5_0, DType::kQ8_0}) {
    SCOPED_TRACE(std::string(DTypeName(t)));
    std::vector<uint8_t> want(DTypeBytes(t, n)), got(want.size());
    std::vector<float> want_back(n), got_back(n);
    EncodeBlocksReference(t, x.data(), n, want.data());
    DecodeBlocks(t, want.data(), n, want_back.data());
    ASSERT_TRUE(EncodeDecodeReference(t, x.data(), n, got.data(), got_back.data()));
    EXPECT_EQ(got, want);
    EXPECT_EQ(std::memcmp(got_back.data(), want_back.data(), n * sizeof(float)), 0);
  }
}

TEST(BlockQuant, EncoderErrorIsAtMostGgmls) {
  const Golden& g = LoadGolden();
  const int64_t n = static_cast<int64_t>(g.input.size());
  for (const auto& t : g.types) {
    SCOPED_TRACE(std::string(DTypeName(t.dtype)));
    std::vector<uint8_t> ours(DTypeBytes(t.dtype, n));
    const double err = EncodeBlocks(t.dtype, g.input.data(), n, nullptr, ours.data());
    std::vector<float> y(n);
    DecodeBlocks(t.dtype, ours.data(), n, y.data());
    EXPECT_NEAR(err, Sse(g.input, y), 1e-9 + 1e-6 * err) << "returned error is the decoded one";
    const double theirs = Sse(g.input, t.decoded);
    std::printf("%-7s ours %.4e  ggml %.4e  ratio %.3f\n", std::string(DTypeName(t.dtype)).c_str(), err, theirs,
                err / theirs);
    EXPECT_LE(err, theirs * 1.0001);
    // the all-zero block stays exactly zero
    for (int i = 256; i < 288; ++i) EXPECT_EQ(y[i], 0.0f) << i;
  }
}

TEST(BlockQuant, ImportanceMovesErrorOffImportantInputs) {
  const Golden& g = LoadGolden();
  const int64_t n = static_cast<int64_t>(g.input.size());
  std::vector<float> h(n, 1.0f);
  for (int64_t i = 0; i < n; i += 3) h[i] = 50.0f;
  for (DType t : {DType::kQ2_K, DType::kQ3_K, DType::kQ4_K, DType::kQ6_K, DType::kIQ4_XS, DType::kQ4_0, DType::kQ5_1}) {
    SCOPED_TRACE(std::string(DTypeName(t)));
    std::vector<uint8_t> plain(DTypeBytes(t, n)), weighted(DTypeBytes(t, n));
    EncodeBlocks(t, g.input.data(), n, nullptr, plain.data());
    const double werr = EncodeBlocks(t, g.input.data(), n, h.data(), weighted.data());
    std::vector<float> y(n);
    DecodeBlocks(t, plain.data(), n, y.data());
    double plain_werr = 0;
    for (int64_t i = 0; i < n; ++i) plain_werr += h[i] * (g.input[i] - y[i]) * (g.input[i] - y[i]);
    EXPECT_LT(werr, plain_werr);
  }
}

TEST(BlockQuant, SetNearestKeepsDecodedValuesAndRoundsOnTheBlocksGrid) {
  const Golden& g = LoadGolden();
  const int64_t n = static_cast<int64_t>(g.input.size());
  for (const auto& t : g.types) {
    SCOPED_TRACE(std::string(DTypeName(t.dtype)));
    const int64_t be = BlockElements(t.dtype), bb = BlockBytes(t.dtype);
    // each decoded value is its own nearest grid point: the blocks stay byte for byte
    std::vector<uint8_t> b = t.blocks;
    for (int64_t i = 0; i < n; ++i) {
      const float y = SetNearest(t.dtype, b.data() + (i / be) * bb, static_cast<int>(i % be), t.decoded[i]);
      ASSERT_EQ(y, t.decoded[i]) << i;
    }
    std::vector<float> back(n);
    DecodeBlocks(t.dtype, b.data(), n, back.data());
    ASSERT_EQ(back, t.decoded);
    // rounding the input on the fixed grids: never worse than ggml's codes, and what it returns is decoded
    for (int64_t i = 0; i < n; ++i) {
      const float y = SetNearest(t.dtype, b.data() + (i / be) * bb, static_cast<int>(i % be), g.input[i]);
      ASSERT_LE(std::fabs(g.input[i] - y), std::fabs(g.input[i] - t.decoded[i]) + 1e-7f) << i;
    }
    DecodeBlocks(t.dtype, b.data(), n, back.data());
    for (int64_t i = 0; i < n; ++i) {
      ASSERT_LE(std::fabs(g.input[i] - back[i]), std::fabs(g.input[i] - t.decoded[i]) + 1e-7f) << i;
    }
  }
}

TEST(BlockQuant, CastEncodesWholeBlocksOnly) {
  std::vector<float> x(100, 1.0f);
  std::vector<uint8_t> out(1024);
  auto st = EncodeFromF32(DType::kQ4_K, x.data(), 100, out.data());
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("blocks of 256"), std::string::npos) << st.message();
}

// The encoder's bytes are pinned: a faster search must choose exactly the same blocks. FNV-1a of
// the encodings of 64 super-blocks (normal values, a heavy tail, all zero, tiny values, one
// outlier, all positive) with and without importance weights, per type; the hashes were
// recorded from the scalar search of 2026-12-03 (commit 60b99c9) built with -ffp-contract=off
// (core/CMakeLists.txt): no fused multiply-adds, so builds with and without FMA agree.
uint64_t Fnv(uint64_t h, const uint8_t* p, size_t n) {
  for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}

TEST(BlockQuant, EncoderBytesArePinned) {
  const int64_t n = 64 * 256;
  std::mt19937 rng(7);
  std::normal_distribution<float> nd(0.f, 0.02f);
  std::student_t_distribution<float> td(2.f);
  std::vector<float> x(n), h(n);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t sb = i / 256;
    x[i] = sb % 6 == 0 ? nd(rng) : sb % 6 == 1 ? 0.01f * td(rng) : sb % 6 == 2 ? 0.f
         : sb % 6 == 3 ? 1e-7f * nd(rng) : sb % 6 == 4 ? (i % 256 == 17 ? 1.5f : nd(rng)) : std::fabs(nd(rng)) + 0.01f;
    h[i] = 0.1f + std::fabs(nd(rng)) * 50.f;
  }
  struct Pin {
    DType t;
    uint64_t plain, weighted;
  };
  const Pin pins[] = {
      {DType::kQ4_0, 0x55e560a6663458e6ull, 0xe3b74b94f5b7d8caull},
      {DType::kQ4_1, 0x23da183891d2f895ull, 0x02c33af55f8f06b5ull},
      {DType::kQ5_0, 0xb4e651acd4790cf2ull, 0x868902bc9c0f8a4dull},
      {DType::kQ5_1, 0xfa170e18a9ad87e5ull, 0xd40824ef0b2fa3a6ull},
      {DType::kQ8_0, 0x9ee156a5c7e6bbecull, 0x2784bf18069fd655ull},
      {DType::kQ2_K, 0x1577be29b10a2d88ull, 0x3f247a6b0dfafeb5ull},
      {DType::kQ3_K, 0x6f013f3ceaba764aull, 0xe0d2ea0cb58aedbdull},
      {DType::kQ4_K, 0x2b6d6431de3298e7ull, 0xd8a86f003999f5b2ull},
      {DType::kQ5_K, 0x4811bd3c5cb0c81aull, 0x500c87dcddbbf93aull},
      {DType::kQ6_K, 0xaefdd05dc49760acull, 0x8a4621d68a90c0ddull},
      {DType::kIQ4_NL, 0xd8c5fd4c3732fad5ull, 0xe384846a16e37363ull},
      {DType::kIQ4_XS, 0xdf7f40584147c2a2ull, 0x8d7093596a0c5f4aull},
  };
  for (const Pin& p : pins) {
    uint64_t got[2];
    for (int w = 0; w < 2; ++w) {
      std::vector<uint8_t> out(n / BlockElements(p.t) * BlockBytes(p.t));
      EncodeBlocks(p.t, x.data(), n, w ? h.data() : nullptr, out.data());
      got[w] = Fnv(1469598103934665603ull, out.data(), out.size());
    }
    EXPECT_EQ(got[0], p.plain) << DTypeName(p.t);
    EXPECT_EQ(got[1], p.weighted) << DTypeName(p.t);
  }
}

}  // namespace
}  // namespace compress
