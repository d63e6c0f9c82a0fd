// Tensors and report entries as bytes between MPI ranks (core/wire.h): every kind of tensor a
// pass leaves comes back bit for bit, and cut bytes are an error, not a crash.
#include "core/wire.h"

#include "gtest/gtest.h"

namespace compress {
namespace {

Tensor RoundTrip(const Tensor& t) {
  ByteWriter w;
  EXPECT_TRUE(PutTensor(w, t).ok());
  std::vector<std::byte> bytes = w.Take();
  ByteReader r(bytes, "test");
  auto back = GetTensor(r);
  EXPECT_TRUE(back.ok()) << back.status();
  EXPECT_TRUE(r.done());
  return back.ok() ? *back : Tensor();
}

std::vector<uint8_t> Bytes(const Tensor& t) {
  auto d = t.Data();
  EXPECT_TRUE(d.ok());
  return {(*d)->data(), (*d)->data() + (*d)->size()};
}

TEST(Wire, DenseQuantizedAndFactorizedTensorsComeBackExactly) {
  auto dense = Tensor::FromF32(std::vector<float>{1.5f, -2.25f, 3.f, 0.f, 1e-3f, -7.f}, {2, 3}, DType::kBF16);
  ASSERT_TRUE(dense.ok());
  Tensor d2 = RoundTrip(*dense);
  EXPECT_EQ(d2.dtype(), DType::kBF16);
  EXPECT_EQ(d2.shape(), (Shape{2, 3}));
  EXPECT_EQ(Bytes(d2), Bytes(*dense));
  EXPECT_EQ(d2.quant(), nullptr);

  QuantInfo q;
  q.bits = 4;
  q.symmetric = false;
  q.channel_axis = 1;
  q.group_size = 2;
  q.channels = 3;
  q.groups = 1;
  q.mutable_scales() = {0.5f, 0.25f, 0.125f};
  q.mutable_zero_points() = {1, -2, 3};
  q.original_dtype = DType::kF16;
  q.outlier_inputs = {1};
  q.outlier_values = {9.f, 8.f, 7.f};
  Tensor quant = Tensor::Quantized({2, 3}, {1, -2, 3, -4, 5, -6}, q);
  Tensor q2 = RoundTrip(quant);
  ASSERT_NE(q2.quant(), nullptr);
  EXPECT_EQ(Bytes(q2), Bytes(quant));
  const QuantInfo& b = *q2.quant();
  EXPECT_EQ(b.bits, 4);
  EXPECT_FALSE(b.symmetric);
  EXPECT_EQ(b.channel_axis, 1);
  EXPECT_EQ(b.group_size, 2);
  EXPECT_EQ(b.scales(), q.scales());
  EXPECT_EQ(b.zero_points(), q.zero_points());
  EXPECT_EQ(b.original_dtype, DType::kF16);
  EXPECT_EQ(b.outlier_inputs, q.outlier_inputs);
  EXPECT_EQ(b.outlier_values, q.outlier_values);
  EXPECT_EQ(b.format(), "int");

  LowRankFactors f{1, {1.f, 2.f}, {3.f, 4.f, 5.f}};
  Tensor lr = Tensor::Factorized(DType::kF32, {2, 3}, f);
  Tensor lr2 = RoundTrip(lr);
  ASSERT_NE(lr2.factors(), nullptr);
  EXPECT_EQ(lr2.factors()->a, f.a);
  EXPECT_EQ(lr2.factors()->b, f.b);
  EXPECT_EQ(Bytes(lr2), Bytes(lr));  // the product, computed from the same factors
}

TEST(Wire, ReportEntriesComeBackAndCutBytesAreAnError) {
  TensorChange c{"w", {4, 8}, {4, 8}, "bf16", "int4", 64, 20, "gptq int4", {{"rel_fro_error", 0.125}, {"block", 3}}};
  ByteWriter w;
  PutTensorChange(w, c);
  auto bytes = w.Take();
  ByteReader r(bytes, "test");
  auto back = GetTensorChange(r);
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(back->name, "w");
  EXPECT_EQ(back->shape_after, (Shape{4, 8}));
  EXPECT_EQ(back->dtype_after, "int4");
  EXPECT_EQ(back->bytes_after, 20);
  EXPECT_EQ(back->metrics, c.metrics);
  for (size_t cut : {size_t{0}, size_t{5}, bytes.size() / 2, bytes.size() - 1}) {
    ByteReader short_reader(std::span<const std::byte>(bytes).first(cut), "layer results");
    auto bad = GetTensorChange(short_reader);
    ASSERT_FALSE(bad.ok()) << cut;
    EXPECT_NE(bad.status().message().find("layer results: truncated"), std::string::npos);
  }
}

}  // namespace
}  // namespace compress
