// ggml block formats: decoding (ggml's arithmetic, in its order) and our weighted encoder.
#include "core/block_quant.h"
#include "core/vector_math.h"

#include <algorithm>
#include <array>
#include <bit>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

namespace compress {
namespace {

constexpr int64_t kQK = 256;  // K-quant and IQ4_XS super-block
constexpr int64_t kQ = 32;    // legacy and IQ4_NL block

// The IQ4_NL / IQ4_XS levels (ggml's kvalues_iq4nl), ascending.
constexpr std::array<int8_t, 16> kIq4Levels = {-127, -104, -83, -65, -49, -35, -22, -10,
                                               1,    13,   25,  38,  53,  69,  89,  113};

float GetF16(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return F16ToF32(h);
}
void PutF16(uint8_t* p, float v) {
  const uint16_t h = F32ToF16(v);
  std::memcpy(p, &h, 2);
}
float RoundF16(float v) { return F16ToF32(F32ToF16(v)); }
constexpr float kRoundMagic = 12582912.0f;  // 1.5 * 2^23: (t + M) - M rounds |t| < 2^22 to nearest even

// round(t) (to nearest, ties to even: lrint's) clamped to [lo, hi], as a float, branch-free:
// NaN and t <= lo give lo, t >= hi gives hi. |lo|, |hi| < 2^22.
inline float RoundClampF(float t, float lo, float hi) {
  t = t > lo ? t : lo;
  t = t < hi ? t : hi;
  return (t + kRoundMagic) - kRoundMagic;
}

int RoundClamp(float t, int lo, int hi) {
  return static_cast<int>(RoundClampF(t, static_cast<float>(lo), static_cast<float>(hi)));
}

// 6-bit scale j and min j of Q4_K / Q5_K's 12 packed bytes.
void GetScaleMin(int j, const uint8_t* q, int* sc, int* m) {
  if (j < 4) {
    *sc = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
    *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}
void PutScaleMin(const int* sc, const int* m, uint8_t* q) {
  std::memset(q, 0, 12);
  for (int j = 0; j < 8; ++j) {
    if (j < 4) {
      q[j] |= sc[j] & 63;
      q[j + 4] |= m[j] & 63;
    } else {
      q[j + 4] = static_cast<uint8_t>((sc[j] & 0xF) | ((m[j] & 0xF) << 4));
      q[j - 4] |= static_cast<uint8_t>((sc[j] >> 4) << 6);
      q[j] |= static_cast<uint8_t>((m[j] >> 4) << 6);
    }
  }
}
// Q3_K's sixteen 6-bit scales (stored + 32) in 12 bytes.
int GetQ3Scale(int k, const uint8_t* s) {
  const int low = k < 8 ? s[k] & 0xF : s[k - 8] >> 4;
  const int high = (s[8 + k % 4] >> (2 * (k / 4))) & 3;
  return (low | (high << 4)) - 32;
}
void PutQ3Scales(const int* sc, uint8_t* s) {
  std::memset(s, 0, 12);
  for (int k = 0; k < 16; ++k) {
    const int u = sc[k] + 32;
    if (k < 8) {
      s[k] |= u & 0xF;
    } else {
      s[k - 8] |= static_cast<uint8_t>((u & 0xF) << 4);
    }
    s[8 + k % 4] |= static_cast<uint8_t>((u >> 4) << (2 * (k / 4)));
  }
}

// ---- decoding (one block) -----------------------------------------------------------------

void DecodeQ4_0(const uint8_t* b, float* y) {
  const float d = GetF16(b);
  for (int j = 0; j < 16; ++j) {
    y[j] = static_cast<float>((b[2 + j] & 0xF) - 8) * d;
    y[j + 16] = static_cast<float>((b[2 + j] >> 4) - 8) * d;
  }
}
void DecodeQ4_1(const uint8_t* b, float* y) {
  const float d = GetF16(b), m = GetF16(b + 2);
  for (int j = 0; j < 16; ++j) {
    y[j] = static_cast<float>(b[4 + j] & 0xF) * d + m;
    y[j + 16] = static_cast<float>(b[4 + j] >> 4) * d + m;
  }
}
void DecodeQ5(const uint8_t* b, float* y, bool with_min) {
  const float d = GetF16(b), m = with_min ? GetF16(b + 2) : 0.0f;
  const uint8_t* p = b + (with_min ? 4 : 2);
  uint32_t qh;
  std::memcpy(&qh, p, 4);
  const uint8_t* qs = p + 4;
  for (int j = 0; j < 16; ++j) {
    const int h0 = ((qh >> j) << 4) & 0x10, h1 = (qh >> (j + 12)) & 0x10;
    const int x0 = (qs[j] & 0xF) | h0, x1 = (qs[j] >> 4) | h1;
    if (with_min) {
      y[j] = static_cast<float>(x0) * d + m;
      y[j + 16] = static_cast<float>(x1) * d + m;
    } else {
      y[j] = static_cast<float>(x0 - 16) * d;
      y[j + 16] = static_cast<float>(x1 - 16) * d;
    }
  }
}
void DecodeQ8_0(const uint8_t* b, float* y) {
  const float d = GetF16(b);
  for (int j = 0; j < 32; ++j) y[j] = static_cast<float>(static_cast<int8_t>(b[2 + j])) * d;
}
void DecodeQ2_K(const uint8_t* b, float* y) {
  const uint8_t* sc = b;
  const uint8_t* q = b + 16;
  const float d = GetF16(b + 80), dmin = GetF16(b + 82);
  int is = 0;
  for (int n = 0; n < 2; ++n, q += 32) {
    for (int j = 0; j < 4; ++j) {
      const int shift = 2 * j;
      for (int half = 0; half < 2; ++half) {
        const uint8_t s = sc[is++];
        const float dl = d * static_cast<float>(s & 0xF), ml = dmin * static_cast<float>(s >> 4);
        for (int l = 0; l < 16; ++l) *y++ = dl * static_cast<float>((q[l + 16 * half] >> shift) & 3) - ml;
      }
    }
  }
}
void DecodeQ3_K(const uint8_t* b, float* y) {
  const uint8_t* hm = b;
  const uint8_t* q = b + 32;
  const float d = GetF16(b + 108);
  int is = 0;
  uint8_t m = 1;
  for (int n = 0; n < 2; ++n, q += 32) {
    for (int j = 0; j < 4; ++j, m = static_cast<uint8_t>(m << 1)) {
      for (int half = 0; half < 2; ++half) {
        const float dl = d * static_cast<float>(GetQ3Scale(is++, b + 96));
        for (int l = 0; l < 16; ++l) {
          const int low = (q[l + 16 * half] >> (2 * j)) & 3;
          *y++ = dl * static_cast<float>(low - ((hm[l + 16 * half] & m) ? 0 : 4));
        }
      }
    }
  }
}
void DecodeQ45_K(const uint8_t* b, float* y, bool five) {
  const float d = GetF16(b), dmin = GetF16(b + 2);
  const uint8_t* scales = b + 4;
  const uint8_t* qh = b + 16;
  const uint8_t* ql = b + (five ? 48 : 16);
  for (int j = 0; j < 4; ++j, ql += 32) {
    for (int half = 0; half < 2; ++half) {
      const int sub = 2 * j + half;
      int sc, m;
      GetScaleMin(sub, scales, &sc, &m);
      const float d1 = d * static_cast<float>(sc), m1 = dmin * static_cast<float>(m);
      for (int l = 0; l < 32; ++l) {
        int v = half ? ql[l] >> 4 : ql[l] & 0xF;
        if (five && ((qh[l] >> sub) & 1)) v += 16;
        *y++ = d1 * static_cast<float>(v) - m1;
      }
    }
  }
}
void DecodeQ6_K(const uint8_t* b, float* y) {
  const uint8_t* ql = b;
  const uint8_t* qh = b + 128;
  const auto* sc = reinterpret_cast<const int8_t*>(b + 192);
  const float d = GetF16(b + 208);
  for (int n = 0; n < 2; ++n, y += 128, ql += 64, qh += 32, sc += 8) {
    for (int l = 0; l < 32; ++l) {
      const int is = l / 16;
      const int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
      const int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
      const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
      const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
      y[l] = d * static_cast<float>(sc[is]) * static_cast<float>(q1);
      y[l + 32] = d * static_cast<float>(sc[is + 2]) * static_cast<float>(q2);
      y[l + 64] = d * static_cast<float>(sc[is + 4]) * static_cast<float>(q3);
      y[l + 96] = d * static_cast<float>(sc[is + 6]) * static_cast<float>(q4);
    }
  }
}
void DecodeIq4Nl(const uint8_t* b, float* y) {
  const float d = GetF16(b);
  for (int j = 0; j < 16; ++j) {
    y[j] = d * static_cast<float>(kIq4Levels[b[2 + j] & 0xF]);
    y[j + 16] = d * static_cast<float>(kIq4Levels[b[2 + j] >> 4]);
  }
}
void DecodeIq4Xs(const uint8_t* b, float* y) {
  const float d = GetF16(b);
  uint16_t sh;
  std::memcpy(&sh, b + 2, 2);
  const uint8_t* sl = b + 4;
  const uint8_t* qs = b + 8;
  for (int ib = 0; ib < 8; ++ib, y += 32, qs += 16) {
    const int ls = ((sl[ib / 2] >> (4 * (ib % 2))) & 0xF) | (((sh >> (2 * ib)) & 3) << 4);
    const float dl = d * static_cast<float>(ls - 32);
    for (int j = 0; j < 16; ++j) {
      y[j] = dl * static_cast<float>(kIq4Levels[qs[j] & 0xF]);
      y[j + 16] = dl * static_cast<float>(kIq4Levels[qs[j] >> 4]);
    }
  }
}

// ---- sub-block fits -----------------------------------------------------------------------
// Every fit minimises sum h (x - y)^2 over one sub-block of n elements.

// Affine codes q in [0, L] with y = s q - m.
double AffineCodes(const float* x, const float* h, int n, int L, float s, float m, int* q) {
  double e = 0;
  const float inv = s > 0 ? 1.0f / s : 0.0f;
  for (int i = 0; i < n; ++i) {
    const int qi = s > 0 ? RoundClamp((x[i] + m) * inv, 0, L) : 0;
    const float y = s * static_cast<float>(qi) - m;
    e += static_cast<double>(h[i]) * (x[i] - y) * (x[i] - y);
    if (q) q[i] = qi;
  }
  return e;
}

// Weighted least squares x ~ a u + b over codes u, from the sums suu = sum h u u, su = sum h u,
// s1 = sum h, sux = sum h u x, sx = sum h x (each summed in element order); b forced to <= 0
// when `min_free` is false (the K-quant offset -dmin m is never positive). False when degenerate.
bool FitLineFromSums(double suu, double su, double s1, double sux, double sx, bool min_free, double* a, double* b) {
  const double det = suu * s1 - su * su;
  if (det > 1e-12 * suu * s1) {
    *a = (sux * s1 - su * sx) / det;
    *b = (suu * sx - su * sux) / det;
    if (min_free || *b <= 0) return *a > 0;
  }
  if (suu <= 0) return false;
  *a = sux / suu;
  *b = 0;
  return *a > 0;
}

// ---- batched trials -------------------------------------------------------------------------
// A search tries many scales on one sub-block, each trial a sum over its elements in order.
// Those sums are latency-bound one at a time; the kernels below run up to kLanes trials side by
// side (one vector lane each), every lane adding its terms in element order with the same
// operations as Codes / AffineCodes / FitLine, so each trial's result is bit for bit the one
// the scalar code gives, and the search then picks among them in the scalar order.
constexpr int kLanes = 40;

// Affine trials: lane c codes x with (s[c], m[c]) as AffineCodes does and sums e[c]; with
// `fit`, also FitLine's lane-dependent sums over the codes u: suu[c], su[c], sux[c].
template <int kN, bool kFit>
void AffineTrials(const float* x, const float* h, int n, int L, const float* scales, const float* mins, double* e_out,
                  double* suu_out, double* su_out, double* sux_out) {
  float s[kN], m[kN], inv[kN];
  double e[kN], suu[kN], su[kN], sux[kN];
  for (int c = 0; c < kN; ++c) {
    s[c] = scales[c];
    m[c] = mins[c];
    inv[c] = s[c] > 0 ? 1.0f / s[c] : 0.0f;  // s <= 0 codes 0: (x + m) * 0 rounds to 0 (finite x)
    e[c] = suu[c] = su[c] = sux[c] = 0;
  }
  const float fl = static_cast<float>(L);
  for (int i = 0; i < n; ++i) {
    const float xi = x[i];
    const double hd = static_cast<double>(h[i]), xd = static_cast<double>(xi);
#pragma omp simd
    for (int c = 0; c < kN; ++c) {
      const float q = RoundClampF((xi + m[c]) * inv[c], 0.f, fl);
      const float y = s[c] * q - m[c];
      const float d = xi - y;
      e[c] += hd * d * d;
      if constexpr (kFit) {
        const double u = static_cast<double>(q);
        suu[c] += hd * u * u;
        su[c] += hd * u;
        sux[c] += hd * u * xd;
      }
    }
  }
  std::copy(e, e + kN, e_out);
  if (kFit) {
    std::copy(suu, suu + kN, suu_out);
    std::copy(su, su + kN, su_out);
    std::copy(sux, sux + kN, sux_out);
  }
}

struct Affine {
  float s = 0, m = 0;
  double err = 0;
};
// Searches the clipping range [lo', hi'] of the sub-block on a grid of quarter code steps,
// refitting (s, m) by least squares after each trial. `min_free`: m may take either sign
// (Q4_1 / Q5_1); otherwise m >= 0 and the range always includes 0.
Affine FitAffine(const float* x, const float* h, int n, int L, bool min_free) {
  float lo = *std::min_element(x, x + n), hi = *std::max_element(x, x + n);
  if (!min_free) lo = std::min(lo, 0.0f);
  Affine best;
  best.m = -lo;
  best.err = AffineCodes(x, h, n, L, 0, best.m, nullptr);
  if (hi <= lo) return best;
  // Each trial: codes at its start, a least-squares refit, codes again, a second refit, and the
  // codes of that; all trials run side by side (AffineTrials), then are taken in order.
  float s0[kLanes] = {}, m0[kLanes] = {}, s1[kLanes], m1[kLanes], s2[kLanes], m2[kLanes];
  int trials = 0;
  const float step = (hi - lo) / static_cast<float>(4 * L + 4);
  for (int ia = 0; ia < 6; ++ia) {
    for (int ib = 0; ib < 6; ++ib) {
      const float l2 = (lo < 0 || min_free) ? lo + static_cast<float>(ia) * step : lo;
      const float h2 = hi - static_cast<float>(ib) * step;
      if (h2 <= l2 || (ia > 0 && !(lo < 0 || min_free))) continue;
      s0[trials] = (h2 - l2) / static_cast<float>(L);
      m0[trials] = -l2;
      ++trials;
    }
  }
  double s1sum = 0, sx = 0;  // FitLine's sums that do not depend on the codes
  for (int i = 0; i < n; ++i) {
    s1sum += h[i];
    sx += h[i] * static_cast<double>(x[i]);
  }
  double e0[kLanes], e1[kLanes], e2[kLanes], suu[kLanes], su[kLanes], sux[kLanes];
  bool ok0[kLanes], ok1[kLanes];
  // A refit of lane c from its sums; a failed one keeps the lane's scale (its results unused).
  auto refit = [&](const float* s, const float* m, bool* ok, float* s_next, float* m_next) {
    for (int c = 0; c < kLanes; ++c) {
      double a, b;
      ok[c] = c < trials && FitLineFromSums(suu[c], su[c], s1sum, sux[c], sx, min_free, &a, &b);
      s_next[c] = ok[c] ? static_cast<float>(a) : s[c];
      m_next[c] = ok[c] ? static_cast<float>(-b) : m[c];
    }
  };
  AffineTrials<kLanes, true>(x, h, n, L, s0, m0, e0, suu, su, sux);
  refit(s0, m0, ok0, s1, m1);
  AffineTrials<kLanes, true>(x, h, n, L, s1, m1, e1, suu, su, sux);
  refit(s1, m1, ok1, s2, m2);
  AffineTrials<kLanes, false>(x, h, n, L, s2, m2, e2, nullptr, nullptr, nullptr);
  for (int c = 0; c < trials; ++c) {
    // the final codes of a trial whose refit failed repeat its last error: never strictly better
    if (e0[c] < best.err) best = {s0[c], m0[c], e0[c]};
    if (!ok0[c]) continue;
    if (e1[c] < best.err) best = {s1[c], m1[c], e1[c]};
    if (!ok1[c]) continue;
    if (e2[c] < best.err) best = {s2[c], m2[c], e2[c]};
  }
  return best;
}

// Symmetric codes: q the nearest of `levels` (ascending) to x / s, y = s levels[q]. Returns
// the error; writes indices into `q`.
template <typename Levels>
double LevelCodes(const float* x, const float* h, int n, const Levels& lv, float s, int* q) {
  double e = 0;
  const int nl = static_cast<int>(lv.size());
  for (int i = 0; i < n; ++i) {
    int k = 0;
    if (s != 0) {
      const float t = x[i] / s;
      // levels are ascending; the nearest is the last whose midpoint with its predecessor is < t
      int lo = 0, hi = nl - 1;
      while (lo < hi) {
        const int mid = (lo + hi + 1) / 2;
        if (t > 0.5f * (static_cast<float>(lv[mid - 1]) + static_cast<float>(lv[mid]))) {
          lo = mid;
        } else {
          hi = mid - 1;
        }
      }
      k = lo;
    } else {
      // all levels give 0 when s = 0: pick the one nearest 0
      for (int j = 0; j < nl; ++j) {
        if (std::abs(lv[j]) < std::abs(lv[k])) k = j;
      }
    }
    const float y = s * static_cast<float>(lv[k]);
    e += static_cast<double>(h[i]) * (x[i] - y) * (x[i] - y);
    if (q) q[i] = k;
  }
  return e;
}

// The integer levels lo..hi as a small table.
struct IntLevels {
  int lo, hi;
  size_t size() const { return static_cast<size_t>(hi - lo + 1); }
  int operator[](int k) const { return lo + k; }
};
// Integer codes in [lo, hi] by rounding (the same result as LevelCodes, faster).
double IntCodes(const float* x, const float* h, int n, IntLevels lv, float s, int* q) {
  double e = 0;
  const float inv = s != 0 ? 1.0f / s : 0.0f;
  for (int i = 0; i < n; ++i) {
    const int v = s != 0 ? RoundClamp(x[i] * inv, lv.lo, lv.hi) : 0;
    const float y = s * static_cast<float>(v);
    e += static_cast<double>(h[i]) * (x[i] - y) * (x[i] - y);
    if (q) q[i] = v - lv.lo;
  }
  return e;
}
template <typename Levels>
double Codes(const float* x, const float* h, int n, const Levels& lv, float s, int* q) {
  if constexpr (std::is_same_v<Levels, IntLevels>) {
    return IntCodes(x, h, n, lv, s, q);
  } else {
    return LevelCodes(x, h, n, lv, s, q);
  }
}

// Symmetric trials: lane c codes x with scale s[c] as Codes does (the level nearest x / s) and
// sums e[c] = sum h (x - y)^2; with `refit`, also num[c] = sum h v x and den[c] = sum h v v
// over the chosen levels v (FitSym's least-squares refit).
template <typename Levels, bool kRefit>
void SymTrials(const float* x, const float* h, int n, const Levels& lv, const float* scales, double* e_out,
               double* num_out, double* den_out) {
  // Local arrays only: the compiler sees that no lane's store touches another's input.
  float s[kLanes], inv[kLanes], zf[kLanes], lvf[256], mids[256], steps[256];
  double e[kLanes], num[kLanes], den[kLanes];
  const int nl = static_cast<int>(lv.size());
  constexpr bool kInt = std::is_same_v<Levels, IntLevels>;
  constexpr int kTable = [] {  // a level table's fixed size (unused for integer levels)
    if constexpr (kInt) {
      return 1;
    } else {
      return static_cast<int>(std::tuple_size_v<Levels>);
    }
  }();
  int k0 = 0;  // the level nearest 0 (all levels give 0 when s = 0)
  for (int j = 0; j < nl; ++j) {
    lvf[j] = static_cast<float>(lv[j]);
    if (std::abs(lv[j]) < std::abs(lv[k0])) k0 = j;
    if (j > 0) mids[j] = 0.5f * (static_cast<float>(lv[j - 1]) + static_cast<float>(lv[j]));
    if (j > 0) steps[j] = static_cast<float>(lv[j]) - static_cast<float>(lv[j - 1]);
  }
  for (int c = 0; c < kLanes; ++c) {
    s[c] = scales[c];
    zf[c] = s[c] == 0 ? 1.f : 0.f;
    inv[c] = s[c] != 0 ? 1.0f / s[c] : 0.0f;
    e[c] = num[c] = den[c] = 0;
  }
  const float flo = lvf[0], fhi = lvf[nl - 1];
  for (int i = 0; i < n; ++i) {
    const float xi = x[i];
    const double hd = static_cast<double>(h[i]), xd = static_cast<double>(xi);
#pragma omp simd
    for (int c = 0; c < kLanes; ++c) {
      float v;  // the level's value; computed for every lane, then selected (no branches)
      if constexpr (kInt) {
        // s = 0 has inv = 0: the code of 0, which every integer range holds (Codes' v = 0 for
        // finite weights; the blocks are made of finite weights)
        v = RoundClampF(xi * inv[c], flo, fhi);
      } else {
        // levels are ascending: the nearest is past every midpoint below t, its value the sum of
        // the steps passed (small integers: exact); a zero scale takes the level nearest 0
        const float t = xi / s[c];
        float u = lvf[0];
#pragma GCC unroll 16
        for (int j = 1; j < kTable; ++j) u += t > mids[j] ? steps[j] : 0.f;
        v = zf[c] * lvf[k0] + (1.f - zf[c]) * u;
      }
      const float y = s[c] * v;
      const float d = xi - y;
      e[c] += hd * d * d;
      if constexpr (kRefit) {
        const double vd = static_cast<double>(v);
        num[c] += hd * vd * xd;
        den[c] += hd * vd * vd;
      }
    }
  }
  std::copy(e, e + kLanes, e_out);
  if (kRefit) {
    std::copy(num, num + kLanes, num_out);
    std::copy(den, den + kLanes, den_out);
  }
}

struct Sym {
  float s = 0;
  double err = 0;
};
// Symmetric scale search: the largest-magnitude element is mapped near each end level in 17
// steps from 0.7 to 1.04 of it, each trial refit by least squares.
template <typename Levels>
Sym FitSym(const float* x, const float* h, int n, const Levels& lv) {
  int im = 0;
  for (int i = 1; i < n; ++i) {
    if (std::fabs(x[i]) > std::fabs(x[im])) im = i;
  }
  Sym best{0, Codes(x, h, n, lv, 0.0f, nullptr)};
  if (x[im] == 0) return best;
  // Trial scales, in the order they are tried; the lanes past them compute nothing used.
  float s1[kLanes], s2[kLanes];
  std::fill(s1, s1 + kLanes, 1.f);
  int trials = 0;
  const int nl = static_cast<int>(lv.size());
  for (int end : {static_cast<int>(lv[0]), static_cast<int>(lv[nl - 1])}) {
    if (end == 0) continue;
    for (int k = 0; k <= 16; ++k) {
      const float t = static_cast<float>(end) * (1.04f - 0.34f * static_cast<float>(k) / 16.0f);
      s1[trials++] = x[im] / t;
    }
  }
  double e1[kLanes], e2[kLanes], num[kLanes], den[kLanes];
  SymTrials<Levels, true>(x, h, n, lv, s1, e1, num, den);
  for (int c = 0; c < kLanes; ++c) s2[c] = c < trials && !(den[c] <= 0) ? static_cast<float>(num[c] / den[c]) : 1.f;
  SymTrials<Levels, false>(x, h, n, lv, s2, e2, nullptr, nullptr);
  for (int c = 0; c < trials; ++c) {
    if (e1[c] < best.err) best = {s1[c], e1[c]};
    if (den[c] <= 0) continue;  // no refit
    if (e2[c] < best.err) best = {s2[c], e2[c]};
  }
  return best;
}

// ---- super-blocks -------------------------------------------------------------------------

// Affine super-block (Q2_K, Q4_K, Q5_K): `nsub` sub-blocks of g elements, codes in [0, L],
// sub-block scales and mins as integers in [0, smax] times f16 d and dmin.
struct AffineSuper {
  float d = 0, dmin = 0;
  std::array<int, 16> sc{}, mn{};
  std::array<int, 256> q{};
  double err = 0;
};
double SuperAffineCodes(const float* x, const float* h, int nsub, int g, int L, int smax, float d, float dmin,
                        const std::array<float, 16>& s, const std::array<float, 16>& m, AffineSuper* out) {
  double total = 0;
  std::array<int, 256> qt{};
  constexpr int kNear = 16;  // lanes for the (at most 3 x 3) neighbouring scale and min pairs
  for (int j = 0; j < nsub; ++j) {
    const int sc0 = d > 0 ? RoundClamp(s[j] / d, 0, smax) : 0;
    const int mn0 = dmin > 0 ? RoundClamp(m[j] / dmin, 0, smax) : 0;
    float se[kNear] = {}, me[kNear] = {};
    int scs[kNear], mns[kNear], pairs = 0;
    for (int sc = std::max(0, sc0 - 1); sc <= std::min(smax, sc0 + 1); ++sc) {
      for (int mn = std::max(0, mn0 - 1); mn <= std::min(smax, mn0 + 1); ++mn) {
        se[pairs] = d * static_cast<float>(sc);
        me[pairs] = dmin * static_cast<float>(mn);
        scs[pairs] = sc;
        mns[pairs++] = mn;
      }
    }
    double e[kNear];
    AffineTrials<kNear, false>(x + j * g, h + j * g, g, L, se, me, e, nullptr, nullptr, nullptr);
    double best = INFINITY;
    int pick = -1;
    for (int c = 0; c < pairs; ++c) {
      if (e[c] < best) best = e[c], pick = c;
    }
    if (pick >= 0) {  // the winner's codes (the same error again)
      out->sc[j] = scs[pick];
      out->mn[j] = mns[pick];
      AffineCodes(x + j * g, h + j * g, g, L, se[pick], me[pick], qt.data());
      std::copy(qt.begin(), qt.begin() + g, out->q.begin() + j * g);
    }
    total += best;
  }
  out->d = d;
  out->dmin = dmin;
  out->err = total;
  return total;
}
AffineSuper FitAffineSuper(const float* x, const float* h, int nsub, int g, int L, int smax) {
  std::array<float, 16> s{}, m{};
  float max_s = 0, max_m = 0;
  for (int j = 0; j < nsub; ++j) {
    const Affine a = FitAffine(x + j * g, h + j * g, g, L, /*min_free=*/false);
    s[j] = a.s;
    m[j] = a.m;
    max_s = std::max(max_s, a.s);
    max_m = std::max(max_m, a.m);
  }
  AffineSuper best;
  SuperAffineCodes(x, h, nsub, g, L, smax, RoundF16(max_s / smax), RoundF16(max_m / smax), s, m, &best);
  for (int it = 0; it < 3; ++it) {
    // refit d and dmin over the whole super-block: x ~ d (sc q) - dmin mn
    double aa = 0, ab = 0, bb = 0, ax = 0, bx = 0;
    for (int j = 0; j < nsub; ++j) {
      for (int i = 0; i < g; ++i) {
        const double a = static_cast<double>(best.sc[j]) * best.q[j * g + i], b = -best.mn[j];
        const double w = h[j * g + i], v = x[j * g + i];
        aa += w * a * a, ab += w * a * b, bb += w * b * b, ax += w * a * v, bx += w * b * v;
      }
    }
    const double det = aa * bb - ab * ab;
    double d, dmin;
    if (det > 1e-12 * aa * bb) {
      d = (ax * bb - ab * bx) / det;
      dmin = (aa * bx - ab * ax) / det;
    } else if (aa > 0) {
      d = ax / aa;
      dmin = best.dmin;
    } else {
      break;
    }
    if (!(d > 0) || !(dmin >= 0)) break;
    AffineSuper trial;
    SuperAffineCodes(x, h, nsub, g, L, smax, RoundF16(static_cast<float>(d)), RoundF16(static_cast<float>(dmin)), s,
                     m, &trial);
    if (trial.err >= best.err) break;
    best = trial;
  }
  return best;
}

// Symmetric super-block (Q3_K, Q6_K, IQ4_XS): sub-block scales are integers in [slo, shi]
// times an f16 d.
struct SymSuper {
  float d = 0;
  std::array<int, 16> sc{};
  std::array<int, 256> q{};  // level indices
  double err = 0;
};
template <typename Levels>
void SuperSymCodes(const float* x, const float* h, int nsub, int g, const Levels& lv, int slo, int shi, float d,
                   const std::array<float, 16>& s, SymSuper* out) {
  double total = 0;
  std::array<int, 256> qt{};
  for (int j = 0; j < nsub; ++j) {
    const int sc0 = d != 0 ? RoundClamp(s[j] / d, slo, shi) : 0;
    double best = INFINITY;
    for (int sc = std::max(slo, sc0 - 1); sc <= std::min(shi, sc0 + 1); ++sc) {
      const double e = Codes(x + j * g, h + j * g, g, lv, d * static_cast<float>(sc), qt.data());
      if (e < best) {
        best = e;
        out->sc[j] = sc;
        std::copy(qt.begin(), qt.begin() + g, out->q.begin() + j * g);
      }
    }
    total += best;
  }
  out->d = d;
  out->err = total;
}
template <typename Levels>
SymSuper FitSymSuper(const float* x, const float* h, int nsub, int g, const Levels& lv, int slo, int shi) {
  std::array<float, 16> s{};
  int jm = 0;
  for (int j = 0; j < nsub; ++j) {
    s[j] = FitSym(x + j * g, h + j * g, g, lv).s;
    if (std::fabs(s[j]) > std::fabs(s[jm])) jm = j;
  }
  SymSuper best;
  SuperSymCodes(x, h, nsub, g, lv, slo, shi, RoundF16(s[jm] / static_cast<float>(shi)), s, &best);
  if (slo < -shi) {  // the wider negative end: the largest scale at slo
    SymSuper alt;
    SuperSymCodes(x, h, nsub, g, lv, slo, shi, RoundF16(s[jm] / static_cast<float>(slo)), s, &alt);
    if (alt.err < best.err) best = alt;
  }
  for (int it = 0; it < 3; ++it) {
    double num = 0, den = 0;
    for (int j = 0; j < nsub; ++j) {
      for (int i = 0; i < g; ++i) {
        const double a = static_cast<double>(best.sc[j]) * lv[best.q[j * g + i]];
        num += h[j * g + i] * a * x[j * g + i];
        den += h[j * g + i] * a * a;
      }
    }
    if (den <= 0) break;
    SymSuper trial;
    SuperSymCodes(x, h, nsub, g, lv, slo, shi, RoundF16(static_cast<float>(num / den)), s, &trial);
    if (trial.err >= best.err) break;
    best = trial;
  }
  return best;
}

// One f16 scale per block (Q4_0, Q5_0, Q8_0, IQ4_NL): the searched scale rounded to f16, then
// the least-squares refit of it, whichever is better.
template <typename Levels>
float FitBlockScale(const float* x, const float* h, int n, const Levels& lv, int* q) {
  float d = RoundF16(FitSym(x, h, n, lv).s);
  double e = Codes(x, h, n, lv, d, q);
  double num = 0, den = 0;
  for (int i = 0; i < n; ++i) {
    const double v = static_cast<double>(lv[q[i]]);
    num += h[i] * v * x[i];
    den += h[i] * v * v;
  }
  if (den > 0) {
    const float d2 = RoundF16(static_cast<float>(num / den));
    std::array<int, 32> q2{};
    if (Codes(x, h, n, lv, d2, q2.data()) < e) {
      d = d2;
      std::copy(q2.begin(), q2.begin() + n, q);
    }
  }
  return d;
}

// ---- encoding (one block) -----------------------------------------------------------------

void PackLowNibbles(const int* q, uint8_t* qs) {  // element j low nibble, j + 16 high, of 32
  for (int j = 0; j < 16; ++j) qs[j] = static_cast<uint8_t>((q[j] & 0xF) | ((q[j + 16] & 0xF) << 4));
}

void EncodeQ_0(DType t, const float* x, const float* h, uint8_t* b) {
  std::array<int, 32> q{};
  if (t == DType::kIQ4_NL) {
    PutF16(b, FitBlockScale(x, h, 32, kIq4Levels, q.data()));
    PackLowNibbles(q.data(), b + 2);
    return;
  }
  const IntLevels lv = t == DType::kQ4_0 ? IntLevels{-8, 7} : t == DType::kQ5_0 ? IntLevels{-16, 15} : IntLevels{-128, 127};
  PutF16(b, FitBlockScale(x, h, 32, lv, q.data()));  // q holds value - lv.lo
  if (t == DType::kQ8_0) {
    for (int j = 0; j < 32; ++j) b[2 + j] = static_cast<uint8_t>(static_cast<int8_t>(q[j] + lv.lo));
  } else if (t == DType::kQ4_0) {
    PackLowNibbles(q.data(), b + 2);
  } else {  // Q5_0: stored value + 16 = index
    uint32_t qh = 0;
    for (int j = 0; j < 32; ++j) qh |= static_cast<uint32_t>((q[j] >> 4) & 1) << j;
    std::memcpy(b + 2, &qh, 4);
    PackLowNibbles(q.data(), b + 6);
  }
}

void EncodeQ_1(DType t, const float* x, const float* h, uint8_t* b) {
  const int L = t == DType::kQ4_1 ? 15 : 31;
  const Affine a = FitAffine(x, h, 32, L, /*min_free=*/true);
  // y = d q + m with m = -a.m; both stored in f16, then d refit with m fixed
  const float m = RoundF16(-a.m);
  float d = RoundF16(a.s);
  std::array<int, 32> q{};
  double e = AffineCodes(x, h, 32, L, d, -m, q.data());
  double num = 0, den = 0;
  for (int i = 0; i < 32; ++i) {
    num += h[i] * static_cast<double>(q[i]) * (x[i] - m);
    den += h[i] * static_cast<double>(q[i]) * q[i];
  }
  if (den > 0) {
    const float d2 = RoundF16(static_cast<float>(num / den));
    std::array<int, 32> q2{};
    if (d2 > 0 && AffineCodes(x, h, 32, L, d2, -m, q2.data()) < e) {
      d = d2;
      q = q2;
    }
  }
  PutF16(b, d);
  PutF16(b + 2, m);
  if (t == DType::kQ4_1) {
    PackLowNibbles(q.data(), b + 4);
  } else {
    uint32_t qh = 0;
    for (int j = 0; j < 32; ++j) qh |= static_cast<uint32_t>((q[j] >> 4) & 1) << j;
    std::memcpy(b + 4, &qh, 4);
    PackLowNibbles(q.data(), b + 8);
  }
}

void EncodeQ2_K(const float* x, const float* h, uint8_t* b) {
  const AffineSuper f = FitAffineSuper(x, h, 16, 16, 3, 15);
  std::memset(b, 0, 84);
  for (int k = 0; k < 16; ++k) b[k] = static_cast<uint8_t>(f.sc[k] | (f.mn[k] << 4));
  for (int i = 0; i < 256; ++i) {
    const int n = i / 128, r = i % 128, j = r / 32, l = r % 32;
    b[16 + n * 32 + l] |= static_cast<uint8_t>(f.q[i] << (2 * j));
  }
  PutF16(b + 80, f.d);
  PutF16(b + 82, f.dmin);
}

void EncodeQ3_K(const float* x, const float* h, uint8_t* b) {
  const SymSuper f = FitSymSuper(x, h, 16, 16, IntLevels{-4, 3}, -32, 31);
  std::memset(b, 0, 110);
  for (int i = 0; i < 256; ++i) {
    const int n = i / 128, r = i % 128, j = r / 32, l = r % 32;
    const int v = f.q[i];  // value + 4, in [0, 7]
    b[32 + n * 32 + l] |= static_cast<uint8_t>((v & 3) << (2 * j));
    b[l] |= static_cast<uint8_t>((v >> 2) << (n * 4 + j));
  }
  PutQ3Scales(f.sc.data(), b + 96);
  PutF16(b + 108, f.d);
}

void EncodeQ45_K(const float* x, const float* h, uint8_t* b, bool five) {
  const AffineSuper f = FitAffineSuper(x, h, 8, 32, five ? 31 : 15, 63);
  std::memset(b, 0, five ? 176 : 144);
  PutF16(b, f.d);
  PutF16(b + 2, f.dmin);
  PutScaleMin(f.sc.data(), f.mn.data(), b + 4);
  uint8_t* ql = b + (five ? 48 : 16);
  for (int i = 0; i < 256; ++i) {
    const int s = i / 32, l = i % 32, v = f.q[i];
    ql[(s / 2) * 32 + l] |= static_cast<uint8_t>((v & 0xF) << (4 * (s % 2)));
    if (five) b[16 + l] |= static_cast<uint8_t>((v >> 4) << s);
  }
}

void EncodeQ6_K(const float* x, const float* h, uint8_t* b) {
  const SymSuper f = FitSymSuper(x, h, 16, 16, IntLevels{-32, 31}, -128, 127);
  std::memset(b, 0, 210);
  for (int i = 0; i < 256; ++i) {
    const int n = i / 128, r = i % 128, l = r % 32, t = r / 32, u = f.q[i];  // value + 32
    uint8_t* ql = b + n * 64 + l + (t % 2) * 32;
    *ql |= static_cast<uint8_t>((u & 0xF) << (4 * (t / 2)));
    b[128 + n * 32 + l] |= static_cast<uint8_t>((u >> 4) << (2 * t));
  }
  for (int k = 0; k < 16; ++k) b[192 + k] = static_cast<uint8_t>(static_cast<int8_t>(f.sc[k]));
  PutF16(b + 208, f.d);
}

void EncodeIq4Xs(const float* x, const float* h, uint8_t* b) {
  const SymSuper f = FitSymSuper(x, h, 8, 32, kIq4Levels, -32, 31);
  std::memset(b, 0, 136);
  PutF16(b, f.d);
  uint16_t sh = 0;
  for (int ib = 0; ib < 8; ++ib) {
    const int u = f.sc[ib] + 32;
    b[4 + ib / 2] |= static_cast<uint8_t>((u & 0xF) << (4 * (ib % 2)));
    sh = static_cast<uint16_t>(sh | ((u >> 4) << (2 * ib)));
    PackLowNibbles(f.q.data() + ib * 32, b + 8 + ib * 16);
  }
  std::memcpy(b + 2, &sh, 2);
}

void DecodeBlock(DType t, const uint8_t* b, float* y) {
  switch (t) {
    case DType::kQ4_0: return DecodeQ4_0(b, y);
    case DType::kQ4_1: return DecodeQ4_1(b, y);
    case DType::kQ5_0: return DecodeQ5(b, y, false);
    case DType::kQ5_1: return DecodeQ5(b, y, true);
    case DType::kQ8_0: return DecodeQ8_0(b, y);
    case DType::kQ2_K: return DecodeQ2_K(b, y);
    case DType::kQ3_K: return DecodeQ3_K(b, y);
    case DType::kQ4_K: return DecodeQ45_K(b, y, false);
    case DType::kQ5_K: return DecodeQ45_K(b, y, true);
    case DType::kQ6_K: return DecodeQ6_K(b, y);
    case DType::kIQ4_NL: return DecodeIq4Nl(b, y);
    case DType::kIQ4_XS: return DecodeIq4Xs(b, y);
    default: return;
  }
}

void EncodeBlock(DType t, const float* x, const float* h, uint8_t* b) {
  switch (t) {
    case DType::kQ4_0:
    case DType::kQ5_0:
    case DType::kQ8_0:
    case DType::kIQ4_NL: return EncodeQ_0(t, x, h, b);
    case DType::kQ4_1:
    case DType::kQ5_1: return EncodeQ_1(t, x, h, b);
    case DType::kQ2_K: return EncodeQ2_K(x, h, b);
    case DType::kQ3_K: return EncodeQ3_K(x, h, b);
    case DType::kQ4_K: return EncodeQ45_K(x, h, b, false);
    case DType::kQ5_K: return EncodeQ45_K(x, h, b, true);
    case DType::kQ6_K: return EncodeQ6_K(x, h, b);
    case DType::kIQ4_XS: return EncodeIq4Xs(x, h, b);
    default: return;
  }
}

// ---- one element on a fixed grid (SetNearest) ---------------------------------------------

// Element i's grid: y = scale * L(raw) + offset over the raw codes lo..hi, L(raw) = raw - bias
// or a level of the IQ4 table.
struct Grid {
  float scale = 0, offset = 0;
  int lo = 0, hi = 0, bias = 0;
  bool levels = false;
  float Value(int raw) const {
    const float l = levels ? static_cast<float>(kIq4Levels[raw]) : static_cast<float>(raw - bias);
    return offset == 0 ? scale * l : scale * l + offset;
  }
};

Grid GridOf(DType t, const uint8_t* b, int i) {
  switch (t) {
    case DType::kQ4_0: return {GetF16(b), 0, 0, 15, 8};
    case DType::kQ4_1: return {GetF16(b), GetF16(b + 2), 0, 15, 0};
    case DType::kQ5_0: return {GetF16(b), 0, 0, 31, 16};
    case DType::kQ5_1: return {GetF16(b), GetF16(b + 2), 0, 31, 0};
    case DType::kQ8_0: return {GetF16(b), 0, -128, 127, 0};
    case DType::kIQ4_NL: return {GetF16(b), 0, 0, 15, 0, true};
    case DType::kQ2_K: {
      const uint8_t s = b[i / 16];
      return {GetF16(b + 80) * static_cast<float>(s & 0xF), -(GetF16(b + 82) * static_cast<float>(s >> 4)), 0, 3, 0};
    }
    case DType::kQ3_K: return {GetF16(b + 108) * static_cast<float>(GetQ3Scale(i / 16, b + 96)), 0, 0, 7, 4};
    case DType::kQ4_K:
    case DType::kQ5_K: {
      int sc, m;
      GetScaleMin(i / 32, b + 4, &sc, &m);
      return {GetF16(b) * static_cast<float>(sc), -(GetF16(b + 2) * static_cast<float>(m)), 0,
              t == DType::kQ4_K ? 15 : 31, 0};
    }
    case DType::kQ6_K:
      return {GetF16(b + 208) * static_cast<float>(static_cast<int8_t>(b[192 + i / 16])), 0, 0, 63, 32};
    case DType::kIQ4_XS: {
      uint16_t sh;
      std::memcpy(&sh, b + 2, 2);
      const int ib = i / 32;
      const int ls = ((b[4 + ib / 2] >> (4 * (ib % 2))) & 0xF) | (((sh >> (2 * ib)) & 3) << 4);
      return {GetF16(b) * static_cast<float>(ls - 32), 0, 0, 15, 0, true};
    }
    default: return {};
  }
}

void SetNibble32(uint8_t* qs, int i, int raw) {  // element j low nibble, j + 16 high
  const int j = i % 16, shift = i < 16 ? 0 : 4;
  qs[j] = static_cast<uint8_t>((qs[j] & ~(0xF << shift)) | ((raw & 0xF) << shift));
}
void SetBits(uint8_t* p, int shift, int width, int v) {
  const int mask = ((1 << width) - 1) << shift;
  *p = static_cast<uint8_t>((*p & ~mask) | ((v << shift) & mask));
}

void SetRaw(DType t, uint8_t* b, int i, int raw) {
  switch (t) {
    case DType::kQ4_0:
    case DType::kIQ4_NL: return SetNibble32(b + 2, i, raw);
    case DType::kQ4_1: return SetNibble32(b + 4, i, raw);
    case DType::kQ5_0:
    case DType::kQ5_1: {
      uint8_t* p = b + (t == DType::kQ5_0 ? 2 : 4);
      SetBits(p + i / 8, i % 8, 1, raw >> 4);
      return SetNibble32(p + 4, i, raw);
    }
    case DType::kQ8_0: b[2 + i] = static_cast<uint8_t>(static_cast<int8_t>(raw)); return;
    case DType::kQ2_K:
    case DType::kQ3_K: {
      const int n = i / 128, r = i % 128, j = r / 32, l = r % 32;
      SetBits(b + (t == DType::kQ2_K ? 16 : 32) + n * 32 + l, 2 * j, 2, raw & 3);
      if (t == DType::kQ3_K) SetBits(b + l, n * 4 + j, 1, raw >> 2);
      return;
    }
    case DType::kQ4_K:
    case DType::kQ5_K: {
      const int s = i / 32, l = i % 32;
      const bool five = t == DType::kQ5_K;
      SetBits(b + (five ? 48 : 16) + (s / 2) * 32 + l, 4 * (s % 2), 4, raw & 0xF);
      if (five) SetBits(b + 16 + l, s, 1, raw >> 4);
      return;
    }
    case DType::kQ6_K: {
      const int n = i / 128, r = i % 128, l = r % 32, q = r / 32;
      SetBits(b + n * 64 + l + (q % 2) * 32, 4 * (q / 2), 4, raw & 0xF);
      SetBits(b + 128 + n * 32 + l, 2 * q, 2, raw >> 4);
      return;
    }
    case DType::kIQ4_XS: {
      const int ib = i / 32, j = i % 32;
      return SetNibble32(b + 8 + ib * 16, j, raw);
    }
    default: return;
  }
}

int GetRaw(DType t, const uint8_t* b, int i) {
  auto nibble32 = [](const uint8_t* qs, int i) { return (qs[i % 16] >> (i < 16 ? 0 : 4)) & 0xF; };
  auto bits = [](const uint8_t* p, int shift, int width) { return (*p >> shift) & ((1 << width) - 1); };
  switch (t) {
    case DType::kQ4_0:
    case DType::kIQ4_NL: return nibble32(b + 2, i);
    case DType::kQ4_1: return nibble32(b + 4, i);
    case DType::kQ5_0:
    case DType::kQ5_1: {
      const uint8_t* p = b + (t == DType::kQ5_0 ? 2 : 4);
      return nibble32(p + 4, i) | (bits(p + i / 8, i % 8, 1) << 4);
    }
    case DType::kQ8_0: return static_cast<int8_t>(b[2 + i]);
    case DType::kQ2_K:
    case DType::kQ3_K: {
      const int n = i / 128, r = i % 128, j = r / 32, l = r % 32;
      const int low = bits(b + (t == DType::kQ2_K ? 16 : 32) + n * 32 + l, 2 * j, 2);
      return t == DType::kQ3_K ? low | (bits(b + l, n * 4 + j, 1) << 2) : low;
    }
    case DType::kQ4_K:
    case DType::kQ5_K: {
      const int s = i / 32, l = i % 32;
      const bool five = t == DType::kQ5_K;
      const int low = bits(b + (five ? 48 : 16) + (s / 2) * 32 + l, 4 * (s % 2), 4);
      return five ? low | (bits(b + 16 + l, s, 1) << 4) : low;
    }
    case DType::kQ6_K: {
      const int n = i / 128, r = i % 128, l = r % 32, q = r / 32;
      return bits(b + n * 64 + l + (q % 2) * 32, 4 * (q / 2), 4) | (bits(b + 128 + n * 32 + l, 2 * q, 2) << 4);
    }
    case DType::kIQ4_XS: return nibble32(b + 8 + (i / 32) * 16, i % 32);
    default: return 0;
  }
}

}  // namespace

LinearCode LinearCodeOf(DType t, const uint8_t* block, int i) {
  const Grid g = GridOf(t, block, i);
  const int raw = GetRaw(t, block, i);
  return {g.scale, g.offset, g.levels ? static_cast<int>(kIq4Levels[raw]) : raw - g.bias};
}

int ScaleGroupElements(DType t) {
  return t == DType::kQ2_K || t == DType::kQ3_K || t == DType::kQ6_K ? 16 : 32;
}

float SetNearest(DType t, uint8_t* block, int i, float v) {
  const Grid g = GridOf(t, block, i);
  int best = g.levels ? 0 : std::clamp(g.bias, g.lo, g.hi);
  float best_y = g.Value(best);
  auto consider = [&](int raw) {
    const float y = g.Value(raw);
    if (std::fabs(v - y) < std::fabs(v - best_y)) best = raw, best_y = y;
  };
  if (g.levels) {
    for (int raw = g.lo; raw <= g.hi; ++raw) consider(raw);
  } else if (g.scale != 0) {
    const int r0 = RoundClamp((v - g.offset) / g.scale + static_cast<float>(g.bias), g.lo, g.hi);
    for (int raw = std::max(g.lo, r0 - 1); raw <= std::min(g.hi, r0 + 1); ++raw) consider(raw);
    consider(g.lo);
    consider(g.hi);
  }
  SetRaw(t, block, i, best);
  return best_y;
}

bool IsBlockType(DType t) { return BlockElements(t) > 1; }

int64_t BlockElements(DType t) {
  switch (t) {
    case DType::kQ4_0:
    case DType::kQ4_1:
    case DType::kQ5_0:
    case DType::kQ5_1:
    case DType::kQ8_0:
    case DType::kIQ4_NL: return kQ;
    case DType::kQ2_K:
    case DType::kQ3_K:
    case DType::kQ4_K:
    case DType::kQ5_K:
    case DType::kQ6_K:
    case DType::kIQ4_XS: return kQK;
    default: return 1;
  }
}

int64_t BlockBytes(DType t) {
  switch (t) {
    case DType::kQ4_0: return 18;
    case DType::kQ4_1: return 20;
    case DType::kQ5_0: return 22;
    case DType::kQ5_1: return 24;
    case DType::kQ8_0: return 34;
    case DType::kIQ4_NL: return 18;
    case DType::kQ2_K: return 84;
    case DType::kQ3_K: return 110;
    case DType::kQ4_K: return 144;
    case DType::kQ5_K: return 176;
    case DType::kQ6_K: return 210;
    case DType::kIQ4_XS: return 136;
    default: return 0;
  }
}

void DecodeBlocks(DType t, const uint8_t* src, int64_t n, float* dst) {
  const int64_t be = BlockElements(t), bb = BlockBytes(t), blocks = n / be;
#pragma omp parallel for if (blocks > 4096)
  for (int64_t k = 0; k < blocks; ++k) DecodeBlock(t, src + k * bb, dst + k * be);
}

bool HasReferenceRounding(DType t) {
  return t == DType::kQ4_0 || t == DType::kQ4_1 || t == DType::kQ5_0 || t == DType::kQ5_1 || t == DType::kQ8_0 ||
         t == DType::kQ2_K || t == DType::kQ3_K || t == DType::kQ4_K || t == DType::kQ5_K || t == DType::kQ6_K ||
         t == DType::kIQ4_NL || t == DType::kIQ4_XS;
}

namespace {

// The scale and the code offset of a block: symmetric types take the signed value of largest
// magnitude (d = -max / half), affine ones the range (d = (max - min) / levels).
struct RefScale {
  float d, id, min;
};
float AbsMax(const float* x, int n) {
  float amax = 0;
#pragma omp simd reduction(max : amax)
  for (int j = 0; j < n; ++j) amax = std::max(amax, std::fabs(x[j]));
  return amax;
}
// The first element of the largest magnitude, with its sign, as ggml's reference quantizers
// pick it (a strict > scan from 0): +0 when every element is zero, whatever their signs.
float SignedAbsMax(const float* x, int n) {
  const float amax = AbsMax(x, n);
  if (amax == 0) return 0.f;
  int first = n;
#pragma omp simd reduction(min : first)
  for (int j = 0; j < n; ++j) first = std::fabs(x[j]) == amax ? std::min(first, j) : first;
  return first < n ? x[first] : 0.f;  // first == n is unreachable for finite x
}
RefScale SymRefScale(const float* x, int half) {
  const float d = SignedAbsMax(x, 32) / static_cast<float>(-half);
  return {d, d != 0 ? 1.0f / d : 0.0f, 0};
}
RefScale AffineRefScale(const float* x, int levels) {
  float min = FLT_MAX, max = -FLT_MAX;
  for (int j = 0; j < 32; ++j) {
    min = x[j] < min ? x[j] : min;
    max = x[j] > max ? x[j] : max;
  }
  const float d = (max - min) / static_cast<float>(levels);
  return {d, d != 0 ? 1.0f / d : 0.0f, min};
}

// Codes of elements j and j + 16 go into byte j of a 4-bit block (low, high nibble); a 5-bit
// block keeps the fifth bits in a 32-bit mask (bit j for element j).
void PackNibbles(const int* q, uint8_t* qs) {
  for (int j = 0; j < 16; ++j) qs[j] = static_cast<uint8_t>((q[j] & 0xF) | ((q[j + 16] & 0xF) << 4));
}
void PackFifthBits(const int* q, uint8_t* qh) {
  uint32_t h = 0;
  for (int j = 0; j < 32; ++j) h |= static_cast<uint32_t>((q[j] >> 4) & 1) << j;
  std::memcpy(qh, &h, 4);
}

// ggml's rounding to nearest (ties to even) by adding 1.5 * 2^23 and reading the mantissa.
int NearestIntRef(float v) {
  const float val = v + kRoundMagic;
  int32_t i;
  std::memcpy(&i, &val, 4);
  return (i & 0x007fffff) - 0x00400000;
}

// One sub-block's scale by ggml's reference search for symmetric codes in [-nmax, nmax - 1]
// weighted by x^2: the signed extreme's scale, refit by least squares, then 18 neighbouring
// inverse scales -(nmax + 0.1 is) / max, each refit and kept when its fit is better. Writes the
// codes + nmax into L.
float RefSymScaleX2(int n, int nmax, const float* x, int8_t* L) {
  const float max = SignedAbsMax(x, n);
  if (std::fabs(max) < 1e-15f) {
    for (int i = 0; i < n; ++i) L[i] = 0;
    return 0.f;
  }
  // The 19 trial scales (the extreme's, then is = -9..9 without 0) fitted side by side, one
  // lane each; every lane adds its terms in element order with the scalar operations, so its
  // sums are bit for bit those of fitting the trials one after another.
  constexpr int kTrials = 19, kLanes = 24;
  float iscale[kLanes], sumlx[kLanes], suml2[kLanes];
  iscale[0] = -static_cast<float>(nmax) / max;
  for (int is = -9, t = 1; is <= 9; ++is) {
    if (is != 0) iscale[t++] = -(static_cast<float>(nmax) + 0.1f * static_cast<float>(is)) / max;
  }
  for (int t = kTrials; t < kLanes; ++t) iscale[t] = iscale[0];
  for (int t = 0; t < kLanes; ++t) sumlx[t] = suml2[t] = 0;
  const int lo = -nmax, hi = nmax - 1;
  for (int i = 0; i < n; ++i) {
    const float xi = x[i], w = xi * xi, wx = w * xi;
#pragma omp simd
    for (int t = 0; t < kLanes; ++t) {
      const float v = iscale[t] * xi + kRoundMagic;
      int l = (std::bit_cast<int32_t>(v) & 0x007fffff) - 0x00400000;  // NearestIntRef
      l = l < lo ? lo : l > hi ? hi : l;
      const float lf = static_cast<float>(l);
      sumlx[t] += wx * lf;
      suml2[t] += w * lf * lf;
    }
  }
  float scale = suml2[0] != 0 ? sumlx[0] / suml2[0] : 0.0f;
  float best = scale * sumlx[0];
  int chosen = 0;
  for (int t = 1; t < kTrials; ++t) {
    if (suml2[t] > 0 && sumlx[t] * sumlx[t] > best * suml2[t]) {
      scale = sumlx[t] / suml2[t];
      best = scale * sumlx[t];
      chosen = t;
    }
  }
  const float isc = iscale[chosen];
#pragma omp simd
  for (int i = 0; i < n; ++i) {
    const int l = NearestIntRef(isc * x[i]);
    L[i] = static_cast<int8_t>(nmax + (l < -nmax ? -nmax : l > nmax - 1 ? nmax - 1 : l));
  }
  return scale;
}

// Q6_K by ggml's reference: each 16-element sub-block's scale by RefSymScaleX2 (codes in
// [-32, 31]), the sub-block scales as int8 against d = max scale / -128, codes re-rounded to
// d x sc.
void EncodeQ6KReference(const float* x, uint8_t* b) {
  int8_t L[256];
  float scales[16];
  float max_scale = 0, max_abs_scale = 0;
  for (int ib = 0; ib < 16; ++ib) {
    scales[ib] = RefSymScaleX2(16, 32, x + 16 * ib, L + 16 * ib);
    if (std::fabs(scales[ib]) > max_abs_scale) {
      max_abs_scale = std::fabs(scales[ib]);
      max_scale = scales[ib];
    }
  }
  std::memset(b, 0, 210);
  if (max_abs_scale < 1e-15f) return;  // all zero (d = +0)
  const float iscale = -128.f / max_scale;
  PutF16(b + 208, 1 / iscale);
  int8_t* sc = reinterpret_cast<int8_t*>(b + 192);
  for (int ib = 0; ib < 16; ++ib) sc[ib] = static_cast<int8_t>(std::min(127, NearestIntRef(iscale * scales[ib])));
  const float d0 = GetF16(b + 208);
  for (int j = 0; j < 16; ++j) {
    const float d = d0 * static_cast<float>(sc[j]);
    if (d == 0) continue;
#pragma omp simd
    for (int ii = 0; ii < 16; ++ii) {
      const int l = NearestIntRef(x[16 * j + ii] / d);
      L[16 * j + ii] = static_cast<int8_t>((l < -32 ? -32 : l > 31 ? 31 : l) + 32);
    }
  }
  uint8_t* ql = b;
  uint8_t* qh = b + 128;
  for (int j = 0; j < 256; j += 128) {
    for (int l = 0; l < 32; ++l) {
      const int q1 = L[j + l] & 0xF, q2 = L[j + l + 32] & 0xF, q3 = L[j + l + 64] & 0xF, q4 = L[j + l + 96] & 0xF;
      ql[l] = static_cast<uint8_t>(q1 | (q3 << 4));
      ql[l + 32] = static_cast<uint8_t>(q2 | (q4 << 4));
      qh[l] = static_cast<uint8_t>((L[j + l] >> 4) | ((L[j + l + 32] >> 4) << 2) | ((L[j + l + 64] >> 4) << 4) |
                                   ((L[j + l + 96] >> 4) << 6));
    }
    ql += 64;
    qh += 32;
  }
}

// One n-element sub-block's scale and min by ggml's reference search for affine codes in
// [0, nmax] weighted by `w`: min clamped to <= 0, the range's scale, then trials
// iscale = (rmin + rdelta is + nmax) / (max - min), is = 0..nstep, each refit by weighted least
// squares (min again clamped to <= 0) and kept when its weighted error (squared, or absolute
// with kMad) is lower. Returns
// the scale; *neg_min = -min. Float arithmetic in ggml's order (no contraction in this file).
template <int n, bool kMad>
float RefAffineScale(const float* x, const float* w, int nmax, float rmin, float rdelta, int nstep, uint8_t* L,
                     float* neg_min) {
  float min = x[0], max = x[0], sum_w = w[0], sum_x = sum_w * x[0];
  for (int i = 1; i < n; ++i) {
    if (x[i] < min) min = x[i];
    if (x[i] > max) max = x[i];
    sum_w += w[i];
    sum_x += w[i] * x[i];
  }
  if (min > 0) min = 0;
  if (max == min) {
    std::memset(L, 0, n);
    *neg_min = -min;
    return 0.f;
  }
  float iscale = static_cast<float>(nmax) / (max - min);
  float scale = 1 / iscale;
  float best_error = 0;
  for (int i = 0; i < n; ++i) {
    const int l = NearestIntRef(iscale * (x[i] - min));
    L[i] = static_cast<uint8_t>(std::max(0, std::min(nmax, l)));
    const float diff = scale * static_cast<float>(L[i]) + min - x[i];
    best_error += w[i] * (kMad ? std::fabs(diff) : diff * diff);
  }
  // The trials side by side, one vector lane each, every lane adding its terms in element
  // order with the scalar operations (so its sums are bit for bit a one-at-a-time loop's): the
  // sums first, then each trial's least-squares fit, then its error; taken in order. A trial
  // that is kept moves `min`, which the later trials' codes and scales depend on: those are
  // run again from there (kept trials are few).
  const int trials = nstep + 1;
  auto code = [nmax](float v) {  // NearestIntRef, clamped to [0, nmax]
    int l = (std::bit_cast<int32_t>(v + kRoundMagic) & 0x007fffff) - 0x00400000;
    return l < 0 ? 0 : l > nmax ? nmax : l;
  };
  // Runs trials first .. first + kLanes - 1 (those < trials) from the current min; returns the
  // first of them that is kept (its index from `first`), -1 when none is, after keeping it.
  auto pass = [&]<int kLanes>(int first) {
    float is_[kLanes], sum_l[kLanes] = {}, sum_l2[kLanes] = {}, sum_xl[kLanes] = {}, ts[kLanes], tm[kLanes],
        cur[kLanes] = {};
    for (int t = 0; t < kLanes; ++t) {
      const int k = first + t < trials ? first + t : first;
      is_[t] = (rmin + rdelta * static_cast<float>(k) + static_cast<float>(nmax)) / (max - min);
    }
    for (int i = 0; i < n; ++i) {
      const float xm = x[i] - min, wi = w[i], xi = x[i];
#pragma omp simd
      for (int t = 0; t < kLanes; ++t) {
        const float lf = static_cast<float>(code(is_[t] * xm));
        sum_l[t] += wi * lf;
        sum_l2[t] += wi * lf * lf;
        sum_xl[t] += wi * lf * xi;
      }
    }
    bool ok[kLanes];
    for (int t = 0; t < kLanes; ++t) {
      const float D = sum_w * sum_l2[t] - sum_l[t] * sum_l[t];
      ok[t] = first + t < trials && D > 0;
      ts[t] = ok[t] ? (sum_w * sum_xl[t] - sum_x * sum_l[t]) / D : 0.f;
      tm[t] = ok[t] ? (sum_l2[t] * sum_x - sum_l[t] * sum_xl[t]) / D : 0.f;
      if (ok[t] && tm[t] > 0) {
        tm[t] = 0;
        ts[t] = sum_xl[t] / sum_l2[t];
      }
    }
    for (int i = 0; i < n; ++i) {
      const float xm = x[i] - min, wi = w[i], xi = x[i];
#pragma omp simd
      for (int t = 0; t < kLanes; ++t) {
        const float diff = ts[t] * static_cast<float>(code(is_[t] * xm)) + tm[t] - xi;
        cur[t] += wi * (kMad ? std::fabs(diff) : diff * diff);
      }
    }
    int kept = -1;
    for (int t = 0; t < kLanes && first + t < trials && kept < 0; ++t) {
      if (ok[t] && cur[t] < best_error) kept = t;
    }
    if (kept < 0) return -1;
    for (int i = 0; i < n; ++i) L[i] = static_cast<uint8_t>(code(is_[kept] * (x[i] - min)));
    best_error = cur[kept];
    scale = ts[kept];
    min = tm[kept];
    return kept;
  };
  // The trials side by side, one vector lane each, every lane adding its terms in element
  // order with the scalar operations (so its sums are bit for bit a one-at-a-time loop's): the
  // sums first, then each trial's least-squares fit, then its error; taken in order. A trial
  // that is kept moves `min`, which the later trials' codes and scales depend on: those are
  // run again from there, in as few lanes as they need.
  for (int first = 0; first < trials;) {
    const int left = trials - first;
    const int kept = left <= 8    ? pass.template operator()<8>(first)
                     : left <= 16 ? pass.template operator()<16>(first)
                                  : pass.template operator()<24>(first);
    if (kept < 0 && left <= 24) break;
    first += kept < 0 ? 24 : kept + 1;
  }
  *neg_min = -min;
  return scale;
}

// Q4_K / Q5_K by ggml's reference: each 32-element sub-block weighted by sqrt(mean x^2) + |x|
// through RefAffineScale (Q4_K: nmax 15, rmin -1, 20 steps; Q5_K: nmax 31, rmin -0.5, 15
// steps; rdelta 0.1), the scales and mins as 6 bits against d = max scale / 63 and dmin =
// max min / 63, codes re-rounded to them (a sub-block whose d is 0 keeps its search codes).
void EncodeQ45KReference(const float* x, uint8_t* b, bool five) {
  const int nmax = five ? 31 : 15, nstep = five ? 15 : 20;
  const float rmin = five ? -0.5f : -1.f;
  uint8_t L[256];
  float scales[8], mins[8], weights[32];
  float max_scale = 0, max_min = 0;
  for (int j = 0; j < 8; ++j) {
    const float* xj = x + 32 * j;
    float sum_x2 = 0;
    for (int l = 0; l < 32; ++l) sum_x2 += xj[l] * xj[l];
    const float av_x = std::sqrt(sum_x2 / 32);
    for (int l = 0; l < 32; ++l) weights[l] = av_x + std::fabs(xj[l]);
    scales[j] = RefAffineScale<32, false>(xj, weights, nmax, rmin, 0.1f, nstep, L + 32 * j, &mins[j]);
    if (scales[j] > max_scale) max_scale = scales[j];
    if (mins[j] > max_min) max_min = mins[j];
  }
  const float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f;
  const float inv_min = max_min > 0 ? 63.f / max_min : 0.f;
  int sc[8], mn[8];
  for (int j = 0; j < 8; ++j) {  // ggml stores the rounded value in a uint8_t before the cap
    sc[j] = std::min(63, static_cast<int>(static_cast<uint8_t>(NearestIntRef(inv_scale * scales[j]))));
    mn[j] = std::min(63, static_cast<int>(static_cast<uint8_t>(NearestIntRef(inv_min * mins[j]))));
  }
  std::memset(b, 0, five ? 176 : 144);
  PutF16(b, max_scale / 63.f);
  PutF16(b + 2, max_min / 63.f);
  PutScaleMin(sc, mn, b + 4);
  for (int j = 0; j < 8; ++j) {
    const float d = GetF16(b) * static_cast<float>(sc[j]);
    if (d == 0) continue;
    const float dm = GetF16(b + 2) * static_cast<float>(mn[j]);
    for (int i = 0; i < 32; ++i)
      L[32 * j + i] = static_cast<uint8_t>(std::max(0, std::min(nmax, NearestIntRef((x[32 * j + i] + dm) / d))));
  }
  uint8_t* ql = b + (five ? 48 : 16);
  for (int i = 0; i < 256; ++i) {
    const int s = i / 32, l = i % 32, v = L[i];
    ql[(s / 2) * 32 + l] |= static_cast<uint8_t>((v & 0xF) << (4 * (s % 2)));
    if (five) b[16 + l] |= static_cast<uint8_t>((v >> 4) << s);
  }
}

// Q2_K by ggml's reference: each 16-element sub-block weighted by |x| through RefAffineScale
// (nmax 3, rmin -0.5, 15 steps, absolute error), scales and mins as 4 bits against
// d = max scale / 15 and dmin = max min / 15, codes re-rounded to them.
void EncodeQ2KReference(const float* x, uint8_t* b) {
  uint8_t L[256];
  float scales[16], mins[16], weights[16];
  float max_scale = 0, max_min = 0;
  for (int j = 0; j < 16; ++j) {
    for (int l = 0; l < 16; ++l) weights[l] = std::fabs(x[16 * j + l]);
    scales[j] = RefAffineScale<16, true>(x + 16 * j, weights, 3, -0.5f, 0.1f, 15, L + 16 * j, &mins[j]);
    if (scales[j] > max_scale) max_scale = scales[j];
    if (mins[j] > max_min) max_min = mins[j];
  }
  std::memset(b, 0, 84);
  uint8_t* sc = b;
  if (max_scale > 0) {
    const float iscale = 15.f / max_scale;
    for (int j = 0; j < 16; ++j) sc[j] = static_cast<uint8_t>(NearestIntRef(iscale * scales[j]));
    PutF16(b + 80, max_scale / 15.f);
  } else {
    PutF16(b + 80, 0.f);
  }
  if (max_min > 0) {
    const float iscale = 15.f / max_min;
    for (int j = 0; j < 16; ++j) sc[j] = static_cast<uint8_t>(sc[j] | (NearestIntRef(iscale * mins[j]) << 4));
    PutF16(b + 82, max_min / 15.f);
  } else {
    PutF16(b + 82, 0.f);
  }
  for (int j = 0; j < 16; ++j) {
    const float d = GetF16(b + 80) * static_cast<float>(sc[j] & 0xF);
    if (d == 0) continue;
    const float dm = GetF16(b + 82) * static_cast<float>(sc[j] >> 4);
    for (int i = 0; i < 16; ++i)
      L[16 * j + i] = static_cast<uint8_t>(std::max(0, std::min(3, NearestIntRef((x[16 * j + i] + dm) / d))));
  }
  uint8_t* qs = b + 16;
  for (int j = 0; j < 256; j += 128) {
    for (int l = 0; l < 32; ++l) {
      qs[j / 4 + l] = static_cast<uint8_t>(L[j + l] | (L[j + l + 32] << 2) | (L[j + l + 64] << 4) | (L[j + l + 96] << 6));
    }
  }
}

// One 16-element sub-block's symmetric scale by ggml's reference for Q3_K: codes in [-4, 3]
// from the signed extreme, then up to 5 rounds of moving single codes while the x^2-weighted
// least-squares fit improves. L gets code + 4.
float RefQ3Scale(const float* x, int8_t* L) {
  constexpr int n = 16, nmax = 4;
  float max = 0, amax = 0;
  for (int i = 0; i < n; ++i) {
    const float ax = std::fabs(x[i]);
    if (ax > amax) {
      amax = ax;
      max = x[i];
    }
  }
  if (amax < 1e-15f) {
    std::memset(L, 0, n);
    return 0.f;
  }
  const float iscale = -static_cast<float>(nmax) / max;
  float sumlx = 0, suml2 = 0;
  for (int i = 0; i < n; ++i) {
    const int l = std::max(-nmax, std::min(nmax - 1, NearestIntRef(iscale * x[i])));
    L[i] = static_cast<int8_t>(l);
    const float w = x[i] * x[i];
    sumlx += w * x[i] * static_cast<float>(l);
    suml2 += w * static_cast<float>(l) * static_cast<float>(l);
  }
  for (int itry = 0; itry < 5; ++itry) {
    int changed = 0;
    for (int i = 0; i < n; ++i) {
      const float w = x[i] * x[i];
      float slx = sumlx - w * x[i] * static_cast<float>(L[i]);
      if (!(slx > 0)) continue;
      float sl2 = suml2 - w * static_cast<float>(L[i]) * static_cast<float>(L[i]);
      const int nl = std::max(-nmax, std::min(nmax - 1, NearestIntRef(x[i] * sl2 / slx)));
      if (nl == L[i]) continue;
      slx += w * x[i] * static_cast<float>(nl);
      sl2 += w * static_cast<float>(nl) * static_cast<float>(nl);
      if (sl2 > 0 && slx * slx * suml2 > sumlx * sumlx * sl2) {
        L[i] = static_cast<int8_t>(nl);
        sumlx = slx;
        suml2 = sl2;
        ++changed;
      }
    }
    if (!changed) break;
  }
  for (int i = 0; i < n; ++i) L[i] = static_cast<int8_t>(L[i] + nmax);
  return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
}

// Q3_K by ggml's reference: RefQ3Scale per 16 elements, the sub-block scales as 6 bits against
// d = -(signed largest scale) / 32, codes re-rounded to d x sc.
void EncodeQ3KReference(const float* x, uint8_t* b) {
  int8_t L[256];
  float scales[16];
  float max_scale = 0, amax = 0;
  for (int j = 0; j < 16; ++j) {
    scales[j] = RefQ3Scale(x + 16 * j, L + 16 * j);
    const float a = std::fabs(scales[j]);
    if (a > amax) {
      amax = a;
      max_scale = scales[j];
    }
  }
  std::memset(b, 0, 110);
  uint8_t* sc = b + 96;
  if (max_scale != 0) {
    const float iscale = -32.f / max_scale;
    for (int j = 0; j < 16; ++j) {
      int8_t l = static_cast<int8_t>(NearestIntRef(iscale * scales[j]));
      l = static_cast<int8_t>(std::max<int>(-32, std::min<int>(31, l)) + 32);
      if (j < 8) {
        sc[j] = static_cast<uint8_t>(l & 0xF);
      } else {
        sc[j - 8] = static_cast<uint8_t>(sc[j - 8] | ((l & 0xF) << 4));
      }
      l = static_cast<int8_t>(l >> 4);
      sc[j % 4 + 8] = static_cast<uint8_t>(sc[j % 4 + 8] | (l << (2 * (j / 4))));
    }
    PutF16(b + 108, 1 / iscale);
  } else {
    PutF16(b + 108, 0.f);
  }
  for (int j = 0; j < 16; ++j) {
    const float d = GetF16(b + 108) * static_cast<float>(GetQ3Scale(j, sc));
    if (d == 0) continue;
    for (int i = 0; i < 16; ++i)
      L[16 * j + i] = static_cast<int8_t>(std::max(-4, std::min(3, NearestIntRef(x[16 * j + i] / d))) + 4);
  }
  uint8_t* hmask = b;
  for (int j = 0; j < 256; ++j) {  // the high bit of element j: bit j / 32 of hmask[j % 32]
    if (L[j] > 3) {
      hmask[j % 32] = static_cast<uint8_t>(hmask[j % 32] | (1 << (j / 32)));
      L[j] = static_cast<int8_t>(L[j] - 4);
    }
  }
  uint8_t* qs = b + 32;
  for (int j = 0; j < 256; j += 128) {
    for (int l = 0; l < 32; ++l) {
      qs[j / 4 + l] = static_cast<uint8_t>(L[j + l] | (L[j + l + 32] << 2) | (L[j + l + 64] << 4) | (L[j + l + 96] << 6));
    }
  }
}

// ggml's index of the IQ4 level nearest x: the largest level <= x, or the next one when x is
// at least as close to it (ties go up); 0 and 15 outside the levels. Written as a sum of
// predicates with the same float operations, so it vectorizes.
inline int Iq4Index(float x) {
  int k = 0;
#pragma GCC unroll 15
  for (int j = 1; j < 16; ++j) {
    const float lo = kIq4Levels[j - 1], hi = kIq4Levels[j];
    k += (x >= hi) | ((x >= lo) & (x - lo >= hi - x));
  }
  return k;
}

// IQ4_NL (one 32-block) / IQ4_XS (a 256 super-block of 8) by ggml's rounding without an
// importance matrix: per 32 elements weighted by x^2, the signed extreme's scale refit by least
// squares, then 15 trial scales (level 0 + itry over the extreme, itry = -7..7) kept when the
// fit improves; IQ4_XS rounds the sub-block scales to 6 bits against d = -max scale / 32 and
// re-codes each sub-block to d x l, IQ4_NL stores its scale as the f16 d and re-codes to it.
void EncodeIq4Reference(const float* x, uint8_t* b, bool xs) {
  const int nsub = xs ? 8 : 1;
  constexpr int kLanes = 16, kTrials = 15;
  const float v0 = kIq4Levels[0];
  uint8_t L[256];
  float scales[8];
  float max_scale = 0, amax_scale = 0;
  std::memset(b, 0, xs ? 136 : 18);
  for (int ib = 0; ib < nsub; ++ib) {
    const float* xb = x + 32 * ib;
    float amax = 0, max = 0;
    for (int j = 0; j < 32; ++j) {
      const float ax = std::fabs(xb[j]);
      if (ax > amax) {
        amax = ax;
        max = xb[j];
      }
    }
    if (amax < 1e-15f) {
      scales[ib] = 0;
      continue;
    }
    float d = -max / v0;
    const float id0 = 1 / d;
    float sumqx = 0, sumq2 = 0;
    for (int j = 0; j < 32; ++j) {
      const float q = kIq4Levels[Iq4Index(id0 * xb[j])], w = xb[j] * xb[j];
      sumqx += w * q * xb[j];
      sumq2 += w * q * q;
    }
    d = sumq2 > 0 ? sumqx / sumq2 : 0.f;
    float best = d * sumqx;
    // The trials side by side, one lane each (each adds its terms in element order).
    float id[kLanes], sx[kLanes] = {}, s2[kLanes] = {}, lv[16];
    for (int k = 0; k < 16; ++k) lv[k] = kIq4Levels[k];
    for (int t = 0; t < kLanes; ++t) id[t] = static_cast<float>((t < kTrials ? t - 7 : 0) + kIq4Levels[0]) / max;
    for (int j = 0; j < 32; ++j) {
      const float xj = xb[j], w = xj * xj;
#pragma omp simd
      for (int t = 0; t < kLanes; ++t) {
        const float q = lv[Iq4Index(id[t] * xj)];
        sx[t] += w * q * xj;
        s2[t] += w * q * q;
      }
    }
    for (int t = 0; t < kTrials; ++t) {
      if (s2[t] > 0 && sx[t] * sx[t] > best * s2[t]) {
        d = sx[t] / s2[t];
        best = d * sx[t];
      }
    }
    scales[ib] = d;
    if (std::fabs(d) > amax_scale) {
      amax_scale = std::fabs(d);
      max_scale = d;
    }
  }
  if (xs) {
    const float d = -max_scale / 32;
    PutF16(b, d);
    const float id = d != 0 ? 1 / d : 0.f;
    uint16_t sh = 0;
    for (int ib = 0; ib < 8; ++ib) {
      int l = std::max(-32, std::min(31, NearestIntRef(id * scales[ib])));
      const float dl = d * static_cast<float>(l);
      const float idl = dl != 0 ? 1 / dl : 0.f;
      for (int j = 0; j < 32; ++j) L[32 * ib + j] = static_cast<uint8_t>(Iq4Index(idl * x[32 * ib + j]));
      l += 32;
      b[4 + ib / 2] = static_cast<uint8_t>(b[4 + ib / 2] | ((l & 0xF) << (4 * (ib % 2))));
      sh = static_cast<uint16_t>(sh | ((l >> 4) << (2 * ib)));
    }
    std::memcpy(b + 2, &sh, 2);
  } else {
    PutF16(b, scales[0]);
    const float id = scales[0] != 0 ? 1 / scales[0] : 0.f;
    for (int j = 0; j < 32; ++j) L[j] = static_cast<uint8_t>(Iq4Index(id * x[j]));
  }
  uint8_t* q4 = b + (xs ? 8 : 2);
  for (int i = 0; i < nsub; ++i)
    for (int j = 0; j < 16; ++j) q4[16 * i + j] = static_cast<uint8_t>(L[32 * i + j] | (L[32 * i + 16 + j] << 4));
}

// ggml's reference rounding of one Q4_0 / Q5_0 / Q8_0 block into b, and the values the block
// decodes to (DecodeBlock's) into y, taken from the codes just made.
void EncodeSymBlockReference(DType t, const float* x, uint8_t* b, float* y) {
  int q[32];
  if (t == DType::kQ8_0) {
    const float d = AbsMax(x, 32) / 127.0f, id = d != 0 ? 1.0f / d : 0.0f;
    PutF16(b, d);
    const float dd = GetF16(b);
#pragma omp simd
    for (int j = 0; j < 32; ++j) {
      const int8_t c = static_cast<int8_t>(RoundHalfAwaySmall(x[j] * id));  // |x id| <= 127 (+ rounding)
      b[2 + j] = static_cast<uint8_t>(c);
      y[j] = static_cast<float>(c) * dd;
    }
    return;
  }
  const int half = t == DType::kQ4_0 ? 8 : 16, top = 2 * half - 1;
  const RefScale s = SymRefScale(x, half);
  PutF16(b, s.d);
  const float dd = GetF16(b), off = static_cast<float>(half) + 0.5f;
#pragma omp simd
  for (int j = 0; j < 32; ++j) {
    const int v = static_cast<int32_t>(x[j] * s.id + off);  // in [0, 2 half]: truncation as ggml's int8 cast
    q[j] = v < top ? v : top;
    y[j] = static_cast<float>((q[j] & top) - half) * dd;  // the stored code
  }
  if (t == DType::kQ4_0) return PackNibbles(q, b + 2);
  PackFifthBits(q, b + 2);
  PackNibbles(q, b + 6);
}

void EncodeBlockReference(DType t, const float* x, uint8_t* b) {
  int q[32];
  switch (t) {
    case DType::kQ8_0:
    case DType::kQ4_0:
    case DType::kQ5_0: {
      float y[32];
      return EncodeSymBlockReference(t, x, b, y);
    }
    case DType::kQ4_1:
    case DType::kQ5_1: {
      const int levels = t == DType::kQ4_1 ? 15 : 31;
      const RefScale s = AffineRefScale(x, levels);
      PutF16(b, s.d);
      PutF16(b + 2, s.min);
#pragma omp simd
      for (int j = 0; j < 32; ++j) {
        const int v = static_cast<int32_t>((x[j] - s.min) * s.id + 0.5f);
        q[j] = v < levels ? v : levels;
      }
      if (t == DType::kQ4_1) return PackNibbles(q, b + 4);
      PackFifthBits(q, b + 4);
      return PackNibbles(q, b + 8);
    }
    default:
      return;
  }
}

}  // namespace

void EncodeBlocksReference(DType t, const float* x, int64_t n, uint8_t* dst) {
  const int64_t bb = BlockBytes(t), be = BlockElements(t);
  for (int64_t k = 0; k < n / be; ++k) {
    if (t == DType::kQ6_K) {
      EncodeQ6KReference(x + k * be, dst + k * bb);
    } else if (t == DType::kQ4_K || t == DType::kQ5_K) {
      EncodeQ45KReference(x + k * be, dst + k * bb, t == DType::kQ5_K);
    } else if (t == DType::kIQ4_NL || t == DType::kIQ4_XS) {
      EncodeIq4Reference(x + k * be, dst + k * bb, t == DType::kIQ4_XS);
    } else if (t == DType::kQ2_K) {
      EncodeQ2KReference(x + k * be, dst + k * bb);
    } else if (t == DType::kQ3_K) {
      EncodeQ3KReference(x + k * be, dst + k * bb);
    } else {
      EncodeBlockReference(t, x + k * be, dst + k * bb);
    }
  }
}

bool EncodeDecodeReference(DType t, const float* x, int64_t n, uint8_t* dst, float* back) {
  if (t != DType::kQ4_0 && t != DType::kQ5_0 && t != DType::kQ8_0) return false;
  const int64_t bb = BlockBytes(t);
  for (int64_t k = 0; k < n / 32; ++k) EncodeSymBlockReference(t, x + k * 32, dst + k * bb, back + k * 32);
  return true;
}

double EncodeBlocks(DType t, const float* x, int64_t n, const float* importance, uint8_t* dst) {
  const int64_t be = BlockElements(t), bb = BlockBytes(t), blocks = n / be;
  std::vector<float> ones;
  if (!importance) {
    ones.assign(static_cast<size_t>(n), 1.0f);
    importance = ones.data();
  }
  double err = 0;
  std::array<float, 256> y{};
  for (int64_t k = 0; k < blocks; ++k) {
    // A block whose importance is all zero (inputs never seen in calibration) is fitted
    // unweighted rather than arbitrarily.
    const float* h = importance + k * be;
    std::array<float, 256> hb{};
    double hsum = 0;
    for (int64_t i = 0; i < be; ++i) hsum += h[i];
    if (!(hsum > 0)) {
      std::fill(hb.begin(), hb.begin() + be, 1.0f);
      h = hb.data();
    }
    EncodeBlock(t, x + k * be, h, dst + k * bb);
    DecodeBlock(t, dst + k * bb, y.data());
    for (int64_t i = 0; i < be; ++i) {
      const double e = x[k * be + i] - y[i];
      err += importance[k * be + i] * e * e;
    }
  }
  return err;
}

}  // namespace compress
