// The 4-bit codebook tables and their nearest-value encoder.
#include "core/codebook.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include "core/codebook_avx2.h"
#include "core/dtype.h"
#include "core/status.h"
#include "core/vector_math.h"

namespace compress {

void Codebook::Build() {
  std::vector<std::pair<float, uint8_t>> v;
  for (int c = 0; c < 16; ++c) {
    const float x = levels[c] == 0.f ? 0.f : levels[c];  // -0 and +0 are one value
    auto same = std::find_if(v.begin(), v.end(), [&](const auto& p) { return p.first == x; });
    if (same == v.end()) {
      v.push_back({x, static_cast<uint8_t>(c)});
    } else if (std::signbit(levels[same->second]) && !std::signbit(levels[c])) {
      same->second = static_cast<uint8_t>(c);  // prefer +0's code
    }
  }
  std::sort(v.begin(), v.end());
  distinct_ = static_cast<int>(v.size());
  max_abs = 0;
  for (int i = 0; i < distinct_; ++i) {
    order_[i] = v[i].second;
    max_abs = std::max(max_abs, std::fabs(v[i].first));
    if (i + 1 < distinct_) cuts_[i] = 0.5f * (v[i].first + v[i + 1].first);
  }
  for (int c = 0; c < 16; ++c) {
    cut16_[c] = c + 1 < distinct_ ? cuts_[c] : std::numeric_limits<float>::quiet_NaN();
    ord16_[c] = order_[c];
  }
  BuildBuckets();
}

// The value's bucket lies within its float rounding (relative 2^-22 or so, in bucket units at
// most 2^-17) of the bucket that holds it: far inside the eighth of a bucket each side is
// widened by, so the count of cuts below the value is at least start[j] and at most the count
// below the widened upper edge, which the check below holds to start[j] + 1. Values past the
// levels clamp to the first / last bucket, whose widened edges lie past every cut.
void Codebook::BuildBuckets() {
  buckets_ = false;
  const float lo = *std::min_element(levels.begin(), levels.end());
  const float hi = *std::max_element(levels.begin(), levels.end());
  if (!(hi > lo)) return;
  const double width = (static_cast<double>(hi) - lo) / 32, margin = width / 8;
  auto below = [&](double x) {  // cuts < x (the NaN ones never)
    int n = 0;
    for (float c : cut16_) n += c < x ? 1 : 0;
    return n;
  };
  for (int j = 0; j < 32; ++j) {
    bucket_start_[j] = std::min(below(lo + j * width - margin), 14);
    if (below(lo + (j + 1) * width + margin) > bucket_start_[j] + 1) return;  // two cuts in reach
  }
  bucket_from_ = lo;
  bucket_per_ = 32.f / (hi - lo);
  buckets_ = true;
}

uint8_t Codebook::Encode(float x) const {
  if (std::isnan(x)) x = 0.f;
  // Index of the first cut >= x: values below every cut map to the smallest level.
  const float* begin = cuts_.data();
  const float* end = begin + (distinct_ - 1);
  const float* it = std::lower_bound(begin, end, x);
  const int i = static_cast<int>(it - begin);
  if (it != end && *it == x) {  // exactly between levels i and i+1
    const uint8_t a = order_[i], b = order_[i + 1];
    return (a & 1) == 0 ? a : b;
  }
  return order_[i];
}

namespace {

// The cut comparisons of up to 64 values in vector lanes: below[k] counts the cuts under value
// k, ties[k] the cuts equal to it; v[k] is the scaled value (non-finite as 0).
template <typename Load>
inline void CompareTile(Load load, int64_t m, float scale, const std::array<float, 15>& cuts, float* v, int* below,
                        int* ties) {
#pragma omp simd
  for (int64_t k = 0; k < m; ++k) {
    const float raw = load(k);
    const bool finite = IsFiniteValue(raw);  // non-finite counts as 0
    const float q = raw / scale;
    const float val = finite ? q : 0.f;
    int b = 0, t = 0;
    for (int c = 0; c < 15; ++c) {
      b += cuts[c] < val ? 1 : 0;
      t += cuts[c] == val ? 1 : 0;
    }
    v[k] = val;
    below[k] = b;
    ties[k] = t;
  }
}

#if defined(__AVX2__)
// 16 int32 lanes holding values 0..255 (two registers, in order) narrowed to 16 bytes.
inline __m128i PackBytes16(__m256i lo, __m256i hi) {
  const __m256i words = _mm256_permute4x64_epi64(_mm256_packs_epi32(lo, hi), 0xD8);
  return _mm_packus_epi16(_mm256_castsi256_si128(words), _mm256_extracti128_si256(words, 1));
}
#endif

}  // namespace

void Codebook::EncodeScaled(const float* x, int64_t n, int64_t stride, float scale, uint8_t* codes,
                            int64_t code_stride) const {
  int64_t start = 0;
#if defined(__AVX512F__)
  // Contiguous values and codes, 16 at a time in one vector: the number of cuts below each
  // value (cuts[c] < value), a value on a cut found by comparing it with the first cut not below it
  // (the cuts ascend strictly, so that is the only one it can equal), codes looked up in a
  // register, ties resolved in the register too.
  if (stride == 1 && code_stride == 1) {
    const CodebookCoder16 coder(*this);
    const __m512 sv = _mm512_set1_ps(scale);
    for (; start + 16 <= n; start += 16) {
      const __m512i code = coder.CodeScaled(_mm512_loadu_ps(x + start), sv);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(codes + start), _mm512_cvtepi32_epi8(code));
    }
  }
#elif defined(__AVX2__)
  if (stride == 1 && code_stride == 1) {  // the same with CodebookCoder8, 16 values a step
    const CodebookCoder8 coder(*this);
    const __m256 sv = _mm256_set1_ps(scale);
    for (; start + 16 <= n; start += 16) {
      const __m256i lo = coder.CodeScaled(_mm256_loadu_ps(x + start), sv);
      const __m256i hi = coder.CodeScaled(_mm256_loadu_ps(x + start + 8), sv);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(codes + start), PackBytes16(lo, hi));
    }
  }
#endif
  if (start == n) return;
  // Unused cuts are NaN: never below nor equal to a value, so every lane compares against 15.
  std::array<float, 15> cuts;
  std::copy(cut16_.begin(), cut16_.begin() + 15, cuts.begin());
  constexpr int64_t kTile = 64;
  float v[kTile];
  int below[kTile], ties[kTile];
  for (int64_t i0 = start; i0 < n; i0 += kTile) {
    const int64_t m = std::min(kTile, n - i0);
    // A value on a cut (rare) goes to Encode.
    if (stride == 1) {
      const float* xt = x + i0;
      CompareTile([xt](int64_t k) { return xt[k]; }, m, scale, cuts, v, below, ties);
    } else {
      CompareTile([&](int64_t k) { return x[(i0 + k) * stride]; }, m, scale, cuts, v, below, ties);
    }
    if (code_stride == 1) {
      int any_tie = 0;
#pragma omp simd reduction(| : any_tie)
      for (int64_t k = 0; k < m; ++k) any_tie |= ties[k];
      if (!any_tie) {
        int64_t k = 0;
#if defined(__AVX2__)
        // 16 at a time: the counts (0..15) narrowed to bytes in order, looked up with PSHUFB.
        const __m128i table = _mm_loadu_si128(reinterpret_cast<const __m128i*>(order_.data()));
        for (; k + 16 <= m; k += 16) {
          const __m128i bytes =
              PackBytes16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(below + k)),
                          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(below + k + 8)));
          _mm_storeu_si128(reinterpret_cast<__m128i*>(codes + i0 + k), _mm_shuffle_epi8(table, bytes));
        }
#endif
        for (; k < m; ++k) codes[i0 + k] = order_[below[k]];
        continue;
      }
    }
    for (int64_t k = 0; k < m; ++k) {
      codes[(i0 + k) * code_stride] = ties[k] ? Encode(v[k]) : order_[below[k]];
    }
  }
}

int IntegerLevelMultiplier(std::span<const float> levels) {
  for (int m = 1; m <= 64; m *= 2) {
    bool ok = !levels.empty();
    for (float l : levels) {
      const float v = l * static_cast<float>(m);  // exact: m is a power of two
      ok = ok && std::isfinite(v) && v == std::nearbyint(v) && std::fabs(v) <= 127.f;
    }
    if (ok) return m;
  }
  return 0;
}

const Codebook& MakeCodebookFor(std::string_view name) {
  auto minifloat = [](const char* n, int e, int m, int bias) {
    Codebook cb;
    cb.name = n;
    for (int c = 0; c < 16; ++c) {
      const int sign = c >> 3, exp = (c >> m) & ((1 << e) - 1), man = c & ((1 << m) - 1);
      const double frac = static_cast<double>(man) / (1 << m);
      const double mag = exp == 0 ? std::ldexp(frac, 1 - bias) : std::ldexp(1.0 + frac, exp - bias);
      cb.levels[c] = static_cast<float>(sign ? -mag : mag);
    }
    cb.Build();
    return cb;
  };
  static const Codebook e2m1 = minifloat("fp4-e2m1", 2, 1, 1);
  static const Codebook e3m0 = minifloat("fp4-e3m0", 3, 0, 3);
  static const Codebook e1m2 = minifloat("fp4-e1m2", 1, 2, 0);
  static const Codebook nf4 = [] {
    Codebook cb;
    cb.name = "nf4";
    std::copy(kNF4Levels.begin(), kNF4Levels.end(), cb.levels.begin());
    cb.Build();
    return cb;
  }();
  if (name == "fp4-e3m0") return e3m0;
  if (name == "fp4-e1m2") return e1m2;
  if (name == "nf4") return nf4;
  return e2m1;
}

absl::StatusOr<const Codebook*> FindCodebook(std::string_view name) {
  if (name == "fp4-e2m1" || name == "fp4-e3m0" || name == "fp4-e1m2" || name == "nf4" || name == "mxfp4") {
    return &MakeCodebookFor(name == "mxfp4" ? "fp4-e2m1" : name);
  }
  return InvalidArgument("unknown 4-bit codebook '{}' (known: fp4-e2m1, fp4-e3m0, fp4-e1m2, nf4, mxfp4)",
                         std::string(name));
}

}  // namespace compress
