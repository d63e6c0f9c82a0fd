#include "core/vector_math.h"

#include <gtest/gtest.h>

#include <cfloat>
#include <cmath>
#include <cstring>
#include <limits>

namespace compress {
namespace {

int64_t UlpDistance(float a, float b) {
  int32_t x, y;
  std::memcpy(&x, &a, 4);
  std::memcpy(&y, &b, 4);
  return std::llabs(static_cast<int64_t>(x) - y);
}

// Every seventh float in [-87.3, 0] (about 1.6e8 values) against e^x rounded from f64.
TEST(VectorMath, FloatExpWithinOneUlpOfTheRoundedResult) {
  int64_t worst = 0, checked = 0;
  for (uint32_t b = 0x80000000u;; b += 7) {
    float x;
    std::memcpy(&x, &b, 4);
    if (!(x >= -87.3f)) break;
    const float want = static_cast<float>(std::exp(static_cast<double>(x)));
    if (want < FLT_MIN) continue;
    worst = std::max(worst, UlpDistance(ExpNonPositive(x), want));
    ++checked;
  }
  EXPECT_GT(checked, 150000000);
  EXPECT_LE(worst, 1);
}

TEST(VectorMath, DoubleExpWithinOneEpsilonRelative) {
  double worst = 0;
  for (int i = 0; i <= 4000000; ++i) {
    const double x = -708.0 * i / 4000000.0 - 1e-7 * (i % 13);
    const long double want = expl(static_cast<long double>(x));
    const double rel = std::fabs(static_cast<double>((ExpNonPositive(x) - want) / want));
    worst = std::max(worst, rel / DBL_EPSILON);
  }
  EXPECT_LT(worst, 1.0);
}

// Every fifth float of [-128, 128] (about 4.5e8; all of them were checked once as well).
TEST(VectorMath, RoundHalfAwaySmallIsRoundf) {
  int64_t checked = 0, wrong = 0;
  for (uint64_t b = 0; b <= 0xFFFFFFFFull; b += 5) {
    const uint32_t u = static_cast<uint32_t>(b);
    float v;
    std::memcpy(&v, &u, 4);
    if (!(std::fabs(v) <= 128.f)) continue;
    ++checked;
    wrong += RoundHalfAwaySmall(v) != static_cast<int32_t>(std::round(v));
  }
  EXPECT_GT(checked, 400000000);
  EXPECT_EQ(wrong, 0);
  for (float v : {0.5f, -0.5f, 1.5f, -2.5f, 0.49999997f, -0.49999997f, 127.5f, -127.49999f})
    EXPECT_EQ(RoundHalfAwaySmall(v), static_cast<int32_t>(std::round(v))) << v;
}

TEST(VectorMath, ExpEdges) {
  EXPECT_EQ(ExpNonPositive(0.f), 1.f);
  EXPECT_EQ(ExpNonPositive(0.0), 1.0);
  EXPECT_EQ(ExpNonPositive(-0.f), 1.f);
  EXPECT_EQ(ExpNonPositive(-INFINITY), 0.f);
  EXPECT_EQ(ExpNonPositive(-std::numeric_limits<double>::infinity()), 0.0);
  EXPECT_EQ(ExpNonPositive(-100.f), 0.f);
  EXPECT_EQ(ExpNonPositive(-1000.0), 0.0);
  EXPECT_TRUE(std::isnan(ExpNonPositive(NAN)));
  EXPECT_TRUE(std::isnan(ExpNonPositive(std::nan(""))));
}

}  // namespace
}  // namespace compress
