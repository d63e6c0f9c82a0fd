// Recycled large buffers and reading a mapped tensor once (core/buffer.h, core/tensor.h).
#include "core/buffer.h"

#include <gtest/gtest.h>
#include <omp.h>

#include <fstream>
#include <numeric>

#include "core/tensor.h"
#include "tests/test_util.h"

namespace compress {
namespace {

TEST(UninitBuffer, LargeBlocksAreHandedOutAgain) {
  const uint8_t* first = nullptr;
  {
    UninitBuffer a(kRecycledBlockMin * 2);
    first = a.data();
    a.mutable_data()[0] = 7;
  }
  EXPECT_GE(RecycledPoolBytes(), kRecycledBlockMin * 2);
  // A request that fills at least half of the pooled block takes it; its size is what was asked.
  UninitBuffer b(kRecycledBlockMin * 2 - 100);
  EXPECT_EQ(b.data(), first);
  EXPECT_EQ(b.size(), kRecycledBlockMin * 2 - 100);
  // One that would leave more than half of it unused does not.
  UninitBuffer c(kRecycledBlockMin);
  EXPECT_NE(c.data(), first);
}

TEST(UninitBuffer, SmallBlocksAreNotPooledAndThePoolStaysBounded) {
  const size_t before = RecycledPoolBytes();
  { UninitBuffer small(kRecycledBlockMin - 1); }
  EXPECT_EQ(RecycledPoolBytes(), before);
  {
    std::vector<std::unique_ptr<UninitBuffer>> many;
    for (size_t total = 0; total < 2 * kRecycledPoolMax; total += 16 << 20) {
      many.push_back(std::make_unique<UninitBuffer>(16 << 20));
    }
  }
  EXPECT_LE(RecycledPoolBytes(), kRecycledPoolMax);
  EXPECT_GE(RecycledPoolBytes(), kRecycledPoolMax - (16 << 20));
}

TEST(UninitBuffer, ALowerLimitEmptiesThePool) {
  { UninitBuffer a(kRecycledBlockMin * 3); }
  EXPECT_GE(RecycledPoolBytes(), kRecycledBlockMin * 3);
  SetRecycledPoolLimit(0);  // what calibrated runs do
  EXPECT_EQ(RecycledPoolBytes(), 0u);
  { UninitBuffer b(kRecycledBlockMin * 3); }
  EXPECT_EQ(RecycledPoolBytes(), 0u);
  SetRecycledPoolLimit(kRecycledPoolMax);
  { UninitBuffer c(kRecycledBlockMin * 3); }
  EXPECT_GE(RecycledPoolBytes(), kRecycledBlockMin * 3);
}

TEST(Tensor, ReadOnceGivesTheMappedBytes) {
  testing::ScratchDir dir;
  const std::string path = dir / "blob";
  // A large range (read with pread into a recycled buffer) and a small one (the mapping).
  std::vector<uint8_t> bytes(kRecycledBlockMin + 4096 * 3 + 13);
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<uint8_t>(i * 131 + i / 977);
  std::ofstream(path, std::ios::binary).write(reinterpret_cast<const char*>(bytes.data()), bytes.size());
  auto file = MappedFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  const size_t big = kRecycledBlockMin + 4096, off = 4096 + 5;
  Tensor t(DType::kU8, {static_cast<int64_t>(big)}, std::make_shared<SliceBuffer>(*file, off, big));
  Tensor s(DType::kU8, {64}, std::make_shared<SliceBuffer>(*file, 3, 64));
  EXPECT_TRUE(t.mapped());
  EXPECT_FALSE(Tensor(DType::kU8, {4}, std::make_shared<OwnedBuffer>(4)).mapped());
  auto once = t.ReadOnce();
  ASSERT_TRUE(once.ok()) << once.status();
  EXPECT_NE((*once)->data(), (*file)->data() + off);  // a copy, not the mapping
  ASSERT_EQ((*once)->size(), big);
  EXPECT_TRUE(std::equal(bytes.begin() + off, bytes.begin() + off + big, (*once)->data()));
  auto small = s.ReadOnce();
  ASSERT_TRUE(small.ok());
  EXPECT_EQ((*small)->data(), (*file)->data() + 3);
  // Past the end of the file: an error, not a short read.
  std::vector<uint8_t> dst(16);
  EXPECT_FALSE((*file)->ReadAt(bytes.size() - 8, 16, dst.data()).ok());
  // A small file keeps no descriptor open: ReadAt copies from its mapping.
  const std::string small_path = dir / "small";
  std::ofstream(small_path, std::ios::binary).write(reinterpret_cast<const char*>(bytes.data()), 100);
  auto small_file = MappedFile::Open(small_path);
  ASSERT_TRUE(small_file.ok());
  ASSERT_TRUE((*small_file)->ReadAt(90, 10, dst.data()).ok());
  EXPECT_TRUE(std::equal(bytes.begin() + 90, bytes.begin() + 100, dst.begin()));
  EXPECT_FALSE((*small_file)->ReadAt(95, 10, dst.data()).ok());
}

}  // namespace
}  // namespace compress

namespace compress {
namespace {

// A read of many pieces (more than two of ReadAt's 8 MiB, at an odd offset and length) gives
// the file's bytes, with one thread and with several.
TEST(MappedFile, LargeReadsInPiecesGiveTheFileBytes) {
  testing::ScratchDir dir;
  const std::string path = dir / "blob";
  std::vector<uint8_t> bytes((size_t{37} << 20) + 4099);
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<uint8_t>(i * 131 + i / 977);
  std::ofstream(path, std::ios::binary).write(reinterpret_cast<const char*>(bytes.data()), bytes.size());
  auto file = MappedFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  const int before = omp_get_max_threads();
  for (int threads : {1, 2, 3}) {
    SCOPED_TRACE(threads);
    omp_set_num_threads(threads);
    const size_t off = 4096 * 3 + 7, len = bytes.size() - off - 11;
    std::vector<uint8_t> dst(len, 0);
    ASSERT_TRUE((*file)->ReadAt(off, len, dst.data()).ok());
    EXPECT_TRUE(std::equal(dst.begin(), dst.end(), bytes.begin() + off));
    EXPECT_FALSE((*file)->ReadAt(off, len + 12, dst.data()).ok()) << "past the end";
  }
  omp_set_num_threads(before);
}

}  // namespace
}  // namespace compress
