// Round-to-nearest integer quantization (symmetric/asymmetric, per channel or per group).
#include "core/quant.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <optional>

#if defined(__F16C__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#include "core/codebook_avx2.h"
#include "core/status.h"
#include "core/tensor.h"
#include "core/vector_math.h"
#include "core/weight_error_simd.h"

namespace compress {
namespace {

// Non-finite values count as 0.
inline float Finite(float v) { return IsFiniteValue(v) ? v : 0.f; }

// std::nearbyint under the default rounding mode for |x| < 2^22, without a libm call or a
// branch: adding and removing 1.5 * 2^23 rounds to the nearest integer, ties to even.
inline float RoundSmall(float x) {
  constexpr float kMagic = 12582912.0f;
  return (x + kMagic) - kMagic;
}

}  // namespace

QuantInfo DeferredQuant::MakeDeferred(QuantInfo meta, Produce produce, CodesFor codes_for, std::string context) {
  meta.scales_.clear();
  meta.zero_points_.clear();
  meta.deferred_.reset();
  auto d = std::make_shared<DeferredQuant>();
  d->meta_ = meta;
  d->produce_ = std::move(produce);
  d->codes_for_ = std::move(codes_for);
  d->context_ = std::move(context);
  meta.deferred_ = std::move(d);
  return meta;
}

namespace {
std::atomic<int64_t> deferred_produced{0}, deferred_coded_again{0};
}  // namespace

DeferredQuant::Counts DeferredQuant::counts() { return {deferred_produced.load(), deferred_coded_again.load()}; }

absl::StatusOr<std::shared_ptr<const Buffer>> DeferredQuant::Run(bool want_codes) {
  // Called with mu_ held.
  done_ = true;
  ++deferred_produced;
  auto r = produce_(want_codes);
  if (r.ok() && (r->info.deferred() || r->info.scales_.size() != static_cast<size_t>(meta_.channels * meta_.groups) ||
                 (want_codes && !r->codes))) {
    r = Internal("deferred quantization produced {} scales for {} x {} groups", r->info.scales_.size(),
                 meta_.channels, meta_.groups);
  } else if (r.ok() && meta_.format_later_ &&
             (r->info.levels_.empty() || r->info.bits != meta_.bits || r->info.e8m0_scales() || r->info.fp8())) {
    r = Internal("deferred quantization chose format {} ({} bits) where a {}-bit codebook with plain scales was promised",
                 r->info.format_, r->info.bits, meta_.bits);
  }
  if (!r.ok()) {
    status_ = context_.empty() ? r.status() : Annotate(r.status(), context_);
    values_ = meta_;  // NaN values of the right size: a reader of them fails at Codes()
    values_.format_later_ = false;  // the meta's own format
    values_.scales_.assign(static_cast<size_t>(meta_.channels * meta_.groups), std::nanf(""));
    if (!meta_.symmetric) values_.zero_points_.assign(values_.scales_.size(), 0);
    ready_.store(true, std::memory_order_release);
    return status_;
  }
  values_ = std::move(r->info);
  ready_.store(true, std::memory_order_release);
  produce_ = nullptr;  // releases what it held (the source tensor)
  return std::move(r->codes);
}

absl::StatusOr<std::shared_ptr<const Buffer>> DeferredQuant::Codes(const QuantInfo& info) {
  if (!info.deferred_) return Internal("DeferredQuant::Codes of a quantization that is not deferred");
  DeferredQuant& d = *info.deferred_;
  std::lock_guard<std::mutex> lock(d.mu_);
  if (!d.done_) return d.Run(true);
  RETURN_IF_ERROR(d.status_);
  ++deferred_coded_again;
  return d.codes_for_(d.values_);
}

const QuantInfo& QuantInfo::DeferredValues() const {
  DeferredQuant& d = *deferred_;
  if (d.ready_.load(std::memory_order_acquire)) return d.values_;
  std::lock_guard<std::mutex> lock(d.mu_);
  if (!d.done_) d.Run(false).IgnoreError();  // kept in status_: Codes() and Resolve() return it
  return d.values_;
}

absl::Status QuantInfo::Resolve() const {
  if (!deferred_) return absl::OkStatus();
  DeferredValues();
  std::lock_guard<std::mutex> lock(deferred_->mu_);
  return deferred_->status_;
}

absl::Status QuantInfo::DeferredFailure() const {
  if (!deferred_) return absl::OkStatus();
  std::lock_guard<std::mutex> lock(deferred_->mu_);
  return deferred_->done_ ? deferred_->status_ : absl::OkStatus();
}

void QuantInfo::Materialize() {
  const QuantInfo& v = DeferredValues();
  scales_ = v.scales_;
  zero_points_ = v.zero_points_;
  if (format_later_) {
    format_ = v.format_;
    levels_ = v.levels_;
    format_later_ = false;
  }
  deferred_.reset();
}

bool QuantInfo::format_pending() const { return format_later_ && deferred_ && !deferred_->ready(); }

absl::Status CheckScaleDType(DType t) {
  if (t == DType::kF32 || t == DType::kF16 || t == DType::kBF16) return absl::OkStatus();
  return InvalidArgument("scale type must be f32, f16 or bf16, got {}", DTypeName(t));
}

namespace {
// RoundScaleUp for a type CheckScaleDType accepts (anything else leaves s as it is).
float RoundUpTo(float s, DType t) {
  if (!(s > 0.f)) return s;
  if (t == DType::kF16) {
#if defined(__F16C__)
    return _cvtsh_ss(_cvtss_sh(s, _MM_FROUND_TO_POS_INF));  // the conversion rounding up
#else
    uint16_t h = F32ToF16(s);
    if (F16ToF32(h) < s) ++h;  // positive finite: the next encoding is the next larger value
    return F16ToF32(h);
#endif
  }
  if (t == DType::kBF16) {  // s's top 16 bits, one step up when any bit below them is set
    uint32_t b;
    std::memcpy(&b, &s, 4);
    return BF16ToF32(static_cast<uint16_t>((b >> 16) + ((b & 0xFFFFu) != 0)));
  }
  return s;
}
}  // namespace

absl::StatusOr<float> RoundScaleUp(float s, DType scale_dtype) {
  RETURN_IF_ERROR(CheckScaleDType(scale_dtype));
  return RoundUpTo(s, scale_dtype);
}

void GroupScale(float lo, float hi, float amax, int bits, bool symmetric, float* s, int* z,
                DType scale_dtype) {
  const CodeRange r = CodeRangeOf(bits, symmetric);
  if (symmetric) {
    *s = RoundUpTo(amax > 0 ? amax / static_cast<float>(r.hi) : 1.f, scale_dtype);
    *z = 0;
  } else {
    *s = RoundUpTo(hi > lo ? (hi - lo) / static_cast<float>(r.hi - r.lo) : 1.f, scale_dtype);
    *z = std::clamp(static_cast<int>(std::nearbyint(r.lo - lo / *s)), r.lo, r.hi);
  }
}

namespace {

// One group's codes: w -> clamp(round(w / s) + z) and back, (q - z) * s (Dequantize's formula).
struct GroupCoder {
  float s = 1.f, fz = 0.f, fmin = 0.f, fmax = 0.f;
  int z = 0;
  GroupCoder(float scale, int zero, CodeRange r)
      : s(scale), fz(static_cast<float>(zero)), fmin(static_cast<float>(r.lo)), fmax(static_cast<float>(r.hi)),
        z(zero) {}
  // From the group's minimum, maximum and max |w| (finite values only).
  static GroupCoder Of(float lo, float hi, float amax, int bits, bool symmetric, DType scale_dtype) {
    float s;
    int z;
    GroupScale(lo, hi, amax, bits, symmetric, &s, &z, scale_dtype);
    if (!(s > 0.f)) s = 1.f;  // a group of denormals whose scale underflowed: codes 0
    return GroupCoder(s, z, CodeRangeOf(bits, symmetric));
  }
  // |w / s| <= 2^bits here (s > 0 is the group's range over the code range), well inside
  // RoundSmall's |x| < 2^22.
  int8_t Code(float v) const {
    const float c = std::min(std::max(RoundSmall(Finite(v) / s) + fz, fmin), fmax);
    return static_cast<int8_t>(static_cast<int>(c));
  }
  float Value(int8_t q) const { return static_cast<float>(q - z) * s; }
};

// A group's minimum (<= 0), maximum (>= 0) and max |w| over its finite values.
struct GroupRange {
  float lo = 0.f, hi = 0.f, amax = 0.f;
  void Add(float v) {
    v = Finite(v);
    lo = std::min(lo, v);
    hi = std::max(hi, v);
    amax = std::max(amax, std::fabs(v));
  }
  static GroupRange Of(const float* v, int64_t n) {
    float lo = 0.f, hi = 0.f, amax = 0.f;
#pragma omp simd reduction(min : lo) reduction(max : hi, amax)
    for (int64_t k = 0; k < n; ++k) {
      const float x = Finite(v[k]);
      lo = std::min(lo, x);
      hi = std::max(hi, x);
      amax = std::max(amax, std::fabs(x));
    }
    return {lo, hi, amax};
  }
  GroupCoder Coder(int bits, bool symmetric, DType scale_dtype) const {
    return GroupCoder::Of(lo, hi, amax, bits, symmetric, scale_dtype);
  }
};

}  // namespace

absl::StatusOr<QuantInfo> RtnInfo(int64_t rows, int64_t cols, int bits, bool symmetric, int channel_axis,
                                  int64_t group_size, DType scale_dtype) {
  RETURN_IF_ERROR(CheckScaleDType(scale_dtype));
  if (bits < 2 || bits > 8) return InvalidArgument("bits must be in [2, 8], got {}", bits);
  if (channel_axis != 0 && channel_axis != 1) return Internal("channel_axis {}", channel_axis);
  const int64_t channels = channel_axis == 0 ? rows : cols;
  const int64_t in = channel_axis == 0 ? cols : rows;
  if (group_size == 0) group_size = in;
  if (group_size <= 0 || in % group_size != 0) {
    return InvalidArgument("group size {} does not divide the input dimension {}", group_size, in);
  }
  QuantInfo q;
  q.bits = bits;
  q.symmetric = symmetric;
  q.channel_axis = channel_axis;
  q.group_size = group_size;
  q.channels = channels;
  q.scale_dtype = scale_dtype;
  q.groups = in / group_size;
  q.mutable_scales().assign(channels * q.groups, 0.f);
  if (!symmetric) q.mutable_zero_points().assign(channels * q.groups, 0);
  return q;
}


absl::StatusOr<std::pair<std::vector<int8_t>, QuantInfo>> QuantizeRtn(std::span<const float> w, int64_t rows,
                                                                      int64_t cols, int bits, bool symmetric,
                                                                      int channel_axis, int64_t group_size,
                                                                      DType scale_dtype) {
  if (static_cast<int64_t>(w.size()) != rows * cols) return Internal("QuantizeRtn: size mismatch");
  ASSIGN_OR_RETURN(QuantInfo q, RtnInfo(rows, cols, bits, symmetric, channel_axis, group_size, scale_dtype));
  group_size = q.group_size;
  const int64_t channels = q.channels, in = q.groups * q.group_size;
  // Element (channel ch, input k) lives at w[base + k * stride]: contiguous rows for [out, in].
  const int64_t stride = channel_axis == 0 ? 1 : cols;
  std::vector<int8_t> codes(w.size());
#pragma omp parallel for schedule(static) if (channels * in > (1 << 16))
  for (int64_t ch = 0; ch < channels; ++ch) {
    const int64_t base = channel_axis == 0 ? ch * cols : ch;
    for (int64_t g = 0; g < q.groups; ++g) {
      const float* src = w.data() + base + g * group_size * stride;
      int8_t* dst = codes.data() + base + g * group_size * stride;
      GroupRange range;
      if (stride == 1) {
        range = GroupRange::Of(src, group_size);
      } else {
        for (int64_t k = 0; k < group_size; ++k) range.Add(src[k * stride]);
      }
      const GroupCoder coder = range.Coder(bits, symmetric, scale_dtype);
      if (!symmetric) q.mutable_zero_points()[ch * q.groups + g] = static_cast<int8_t>(coder.z);
      q.mutable_scales()[ch * q.groups + g] = coder.s;
      if (stride == 1) {
#pragma omp simd
        for (int64_t k = 0; k < group_size; ++k) dst[k] = coder.Code(src[k]);
      } else {
        for (int64_t k = 0; k < group_size; ++k) dst[k * stride] = coder.Code(src[k * stride]);
      }
    }
  }
  return std::make_pair(std::move(codes), std::move(q));
}

namespace {

// Element i of a dense f32 / f16 / bf16 weight as f32.
template <DType T>
inline float LoadAs(const uint8_t* src, int64_t i) {
  if constexpr (T == DType::kF32) {
    float v;
    std::memcpy(&v, src + 4 * i, 4);
    return v;
  } else {
    uint16_t h;
    std::memcpy(&h, src + 2 * i, 2);
    return T == DType::kBF16 ? BF16ToF32(h) : F16ToF32(h);
  }
}

// FiniteWeights' error for element i of a stored f32 / f16 / bf16 weight.
absl::Status NonFiniteAt(DType dtype, const uint8_t* src, int64_t i, int64_t cols, std::string_view name) {
  const float v = dtype == DType::kF32   ? LoadAs<DType::kF32>(src, i)
                  : dtype == DType::kF16 ? LoadAs<DType::kF16>(src, i)
                                         : LoadAs<DType::kBF16>(src, i);
  return NonFiniteWeightError(name, v, i, cols);
}

// One fixed chunk's measurements (core/weight_error.h's chunking).
struct ChunkMeasure {
  WeightErrorChunk error;
  double worst_ratio = 0;         // max |w - w'| / (s / 2)
  int64_t first_bad = INT64_MAX;  // flat index of the first NaN / infinity in the chunk
};

// Codes (into out[k0, k1)) and measurements of elements [k0, k1) of one group, whose decoded
// values are `v` (the group's element 0 at flat index `base`).
inline void CodeSpan(const float* v, int64_t k0, int64_t k1, int64_t base, const GroupCoder& coder, int8_t* out,
                     float* back, ChunkMeasure& m) {
  int bad = 0;
#pragma omp simd reduction(+ : bad)
  for (int64_t k = k0; k < k1; ++k) bad += IsFiniteValue(v[k]) ? 0 : 1;
#pragma omp simd
  for (int64_t k = k0; k < k1; ++k) {
    const int8_t q = coder.Code(v[k]);
    out[k] = q;
    back[k] = coder.Value(q);
  }
  if (bad > 0) {
    for (int64_t k = k0; k < k1; ++k) {
      if (!IsFiniteValue(v[k])) {
        m.first_bad = std::min(m.first_bad, base + k);
        break;
      }
    }
  }
  m.error.AddSpan(base + k0, v + k0, back + k0, k1 - k0);
  double worst = 0;
#pragma omp simd reduction(max : worst)
  for (int64_t k = k0; k < k1; ++k) worst = std::max(worst, std::fabs(static_cast<double>(back[k]) - v[k]));
  m.worst_ratio = std::max(m.worst_ratio, worst / (0.5 * coder.s));
}

#if defined(__AVX2__)
// A group's coder from its smallest and largest value (GroupRange::Of's values: lo <= 0 <= hi,
// a -0 minimum leaving lo = +0 as std::min(0, -0) does; max |x| = max(hi, -lo) exactly), with
// its scale (and zero point) stored at index gi.
inline GroupCoder StoreGroupCoder(float min, float max, int64_t gi, QuantInfo& q, DType scale_dtype) {
  const float lo = std::min(0.f, min);
  const float hi = std::max(0.f, max);
  const GroupCoder coder = GroupCoder::Of(lo, hi, std::max(hi, -lo), q.bits, q.symmetric, scale_dtype);
  q.mutable_scales()[gi] = coder.s;
  if (!q.symmetric) q.mutable_zero_points()[gi] = static_cast<int8_t>(coder.z);
  return coder;
}

// f.template operator()<symmetric>(): the symmetric and asymmetric forms of
// GroupSteps16 / GroupSteps8.
template <class F>
inline void WithSymmetry(bool symmetric, F&& f) {
  if (symmetric) {
    f.template operator()<true>();
  } else {
    f.template operator()<false>();
  }
}

#endif

#if defined(__AVX512F__)

// GroupCoder for 16 values at a time: Code gives GroupCoder::Code's codes as int32 lanes
// (clamp(round_half_even(x / s) + z): RoundSmall's result for |x / s| < 2^22; x finite).
struct GroupCoder16 {
  __m512 s, fz, fmin, fmax;
  explicit GroupCoder16(const GroupCoder& c)
      : s(_mm512_set1_ps(c.s)), fz(_mm512_set1_ps(c.fz)), fmin(_mm512_set1_ps(c.fmin)), fmax(_mm512_set1_ps(c.fmax)) {}
  __m512i Code(__m512 x) const {
    const __m512 r = _mm512_roundscale_ps(_mm512_div_ps(x, s), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    return _mm512_cvttps_epi32(_mm512_min_ps(_mm512_max_ps(_mm512_add_ps(r, fz), fmin), fmax));
  }
};

// GCC 12 reports the undefined pass-through operand of the AVX-512 intrinsics (_mm512_roundscale_ps,
// _mm512_reduce_min_ps) as uninitialized once they are inlined into these helpers.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
// A group's codes and CodeSpan's measurements, 16 finite values a step. Symmetric codes: y - x
// is exact in f32 (Sterbenz): y = 0, or y = k s with |k| >= 1 of x's sign and x within
// [y / 2, 2 y] (x / s rounds to k: |x / s| > 1/2 for k = 1, since the tie at 1/2 rounds to 0;
// |x / s| in [|k| - 1/2, |k| + 1/2] otherwise; no clamping, as |x| / s <= the largest code), so
// the f32 difference is the f64 one and Add16Exact gives Add16's sums. Asymmetric codes may be
// clamped a step past x: the f64 steps. Finish folds the group's max |w - w'| / (s / 2) into
// `ratio` (a division by the positive s / 2 keeps the lanes' order, so the max over lanes of the
// quotients is CodeSpan's quotient of the max; the caller folds `ratio` into m.worst_ratio once
// per chunk, keeping the division out of each group's dependency chain).
template <bool kSymmetric>
struct GroupSteps16 {
  GroupCoder16 vc;
  __m512i z;
  // The chunk's sums, a copy in registers while the group's steps run: the caller's, reached
  // through a reference, would be stored and loaded again around every code store (a char
  // store may alias anything). The caller takes them back (Finish, or `chunk = err`).
  ErrorLanes8 err;
  __m512 w32 = _mm512_setzero_ps();     // symmetric: max |d| per lane
  __m512d worst = _mm512_setzero_pd();  // asymmetric: the same in f64
  GroupSteps16(const GroupCoder& c, const ErrorLanes8& chunk) : vc(c), z(_mm512_set1_epi32(c.z)), err(chunk) {}
  void Step(__m512 x, int8_t* out) {
    const __m512i c = vc.Code(x);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out), _mm512_cvtepi32_epi8(c));
    const __m512 y = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(c, z)), vc.s);  // Value: (q - z) * s
    if constexpr (kSymmetric) {
      const __m512 d = _mm512_sub_ps(y, x);
      err.Add16Exact(x, d);
      w32 = _mm512_max_ps(w32, _mm512_abs_ps(d));
    } else {
      err.Add16(x, y);
      worst = _mm512_max_pd(worst, _mm512_abs_pd(_mm512_sub_pd(LowPd(y), LowPd(x))));
      worst = _mm512_max_pd(worst, _mm512_abs_pd(_mm512_sub_pd(HighPd(y), HighPd(x))));
    }
  }
  void Finish(float s, __m512d& ratio, ErrorLanes8& chunk) const {
    const __m512d w = _mm512_max_pd(worst, _mm512_max_pd(LowPd(w32), HighPd(w32)));
    ratio = _mm512_max_pd(ratio, _mm512_div_pd(w, _mm512_set1_pd(0.5 * s)));
    chunk = err;
  }
};

// Lane g of the result: op over the 16 lanes of v[kReduce16Slot[g]] (16 horizontal reductions
// as 15 steps of two shuffles and one op, the transpose folded in).
inline constexpr int kReduce16Slot[16] = {0, 2, 1, 3, 8, 10, 9, 11, 4, 6, 5, 7, 12, 14, 13, 15};
template <class Op>
inline __m512 Reduce16(const __m512* v, Op op) {
  __m512 t[8], u[4], w[2];
  for (int i = 0; i < 8; ++i) {
    t[i] = op(_mm512_shuffle_f32x4(v[i], v[i + 8], 0x44), _mm512_shuffle_f32x4(v[i], v[i + 8], 0xEE));
  }
  for (int i = 0; i < 4; ++i) {
    u[i] = op(_mm512_shuffle_f32x4(t[i], t[i + 4], 0x88), _mm512_shuffle_f32x4(t[i], t[i + 4], 0xDD));
  }
  for (int i = 0; i < 2; ++i) w[i] = op(_mm512_shuffle_ps(u[i], u[i + 2], 0x44), _mm512_shuffle_ps(u[i], u[i + 2], 0xEE));
  return op(_mm512_shuffle_ps(w[0], w[1], 0x88), _mm512_shuffle_ps(w[0], w[1], 0xDD));
}
inline __m512 Min16(__m512 a, __m512 b) { return _mm512_min_ps(a, b); }
inline __m512 Max16(__m512 a, __m512 b) { return _mm512_max_ps(a, b); }

// RoundUpTo for 16 scales >= 0.
inline __m512 RoundUpTo16(__m512 s, DType t) {
  if (t == DType::kF16) return _mm512_cvtph_ps(_mm512_cvt_roundps_ph(s, _MM_FROUND_TO_POS_INF | _MM_FROUND_NO_EXC));
  if (t == DType::kBF16) {  // the top 16 bits, one step up when any bit below them is set
    const __m512i b = _mm512_castps_si512(s);
    const __mmask16 below = _mm512_test_epi32_mask(b, _mm512_set1_epi32(0xFFFF));
    const __m512i top = _mm512_andnot_si512(_mm512_set1_epi32(0xFFFF), b);
    return _mm512_castsi512_ps(_mm512_mask_add_epi32(top, below, top, _mm512_set1_epi32(0x10000)));
  }
  return s;
}

// MeasureRowGroups's work on one whole group of kGs (16 x NV) finite elements at g0, in vector
// registers (the same values: the range, GroupCoder's codes and values, CodeSpan's
// measurements); false, with nothing done, when the group holds a NaN or an infinity (the
// general loop reports it).
template <DType T, int64_t kGs>
inline bool MeasureGroupV(const uint8_t* src, int64_t g0, QuantInfo& q, DType scale_dtype, int8_t* out,
                          ErrorLanes8& err, __m512d& ratio) {
  static_assert(kGs % 16 == 0 && kGs <= 128);
  constexpr int kNv = static_cast<int>(kGs / 16);
  __m512 x[kNv];
  const __m512 big = _mm512_set1_ps(std::numeric_limits<float>::max());
  __mmask16 finite = 0xFFFF;
  __m512 mn = _mm512_setzero_ps(), mx = _mm512_setzero_ps();
  for (int j = 0; j < kNv; ++j) {
    x[j] = Load16As<T>(src, g0 + 16 * j);
    finite &= _mm512_cmp_ps_mask(_mm512_abs_ps(x[j]), big, _CMP_LE_OQ);
    mn = j ? _mm512_min_ps(mn, x[j]) : x[j];
    mx = j ? _mm512_max_ps(mx, x[j]) : x[j];
  }
  if (finite != 0xFFFF) return false;
  const GroupCoder coder =
      StoreGroupCoder(_mm512_reduce_min_ps(mn), _mm512_reduce_max_ps(mx), g0 / kGs, q, scale_dtype);
  auto run = [&]<bool kSymmetric>() {
    GroupSteps16<kSymmetric> steps(coder, err);
    for (int j = 0; j < kNv; ++j) steps.Step(x[j], out + 16 * j);
    steps.Finish(coder.s, ratio, err);
  };
  WithSymmetry(q.symmetric, run);
  return true;
}

// MeasureGroupV for 16 whole groups from g0 (16 kGs finite elements): the ranges of all 16
// first, their scales (and zero points) as vectors (GroupScale's and GroupCoder::Of's values,
// stored at once), then each group's codes and measurements as MeasureGroupV makes them (the
// same sums in the same order), and the 16 groups' max |w - w'| / (s / 2) in two divisions
// (the quotient of each group's max, as Finish's max of the quotients: a division by a positive
// value keeps the order). False, with nothing done, when the 16 groups hold a NaN or an infinity.
template <DType T, int64_t kGs, bool kSymmetric>
inline bool MeasureGroups16V(const uint8_t* src, int64_t g0, QuantInfo& q, DType scale_dtype, int8_t* out,
                             ErrorLanes8& err, __m512d& ratio) {
  constexpr int kNv = static_cast<int>(kGs / 16);
  const __m512 big = _mm512_set1_ps(std::numeric_limits<float>::max());
  __mmask16 finite = 0xFFFF;
  __m512 mn[16], mx[16];
  for (int g = 0; g < 16; ++g) {
    __m512 lo = Load16As<T>(src, g0 + g * kGs), hi = lo;
    finite &= _mm512_cmp_ps_mask(_mm512_abs_ps(lo), big, _CMP_LE_OQ);
    for (int j = 1; j < kNv; ++j) {
      const __m512 x = Load16As<T>(src, g0 + g * kGs + 16 * j);
      finite &= _mm512_cmp_ps_mask(_mm512_abs_ps(x), big, _CMP_LE_OQ);
      lo = _mm512_min_ps(lo, x);
      hi = _mm512_max_ps(hi, x);
    }
    mn[kReduce16Slot[g]] = lo;
    mx[kReduce16Slot[g]] = hi;
  }
  if (finite != 0xFFFF) return false;
  // StoreGroupCoder's lo = min(0, min), hi = max(0, max) (the operand order of each min / max
  // as std::min / std::max's), then GroupScale's scale: symmetric from amax = max(hi, -lo),
  // asymmetric from hi - lo with the zero point clamp(nearbyint(r.lo - lo / s)) (x86's integer
  // of a NaN or an infinity, INT_MIN, in both), s before GroupCoder::Of's underflow fix.
  const __m512 zero = _mm512_setzero_ps(), one = _mm512_set1_ps(1.f);
  const __m512 lo = _mm512_min_ps(Reduce16(mn, Min16), zero);
  const __m512 hi = _mm512_max_ps(Reduce16(mx, Max16), zero);
  const CodeRange r = CodeRangeOf(q.bits, kSymmetric);
  const size_t gi0 = static_cast<size_t>(g0 / kGs);
  __m512 s;
  if constexpr (kSymmetric) {
    const __m512 amax = _mm512_max_ps(_mm512_sub_ps(zero, lo), hi);
    s = _mm512_div_ps(amax, _mm512_set1_ps(static_cast<float>(r.hi)));
    s = RoundUpTo16(_mm512_mask_blend_ps(_mm512_cmp_ps_mask(amax, zero, _CMP_GT_OQ), one, s), scale_dtype);
  } else {
    s = _mm512_div_ps(_mm512_sub_ps(hi, lo), _mm512_set1_ps(static_cast<float>(r.hi - r.lo)));
    s = RoundUpTo16(_mm512_mask_blend_ps(_mm512_cmp_ps_mask(hi, lo, _CMP_GT_OQ), one, s), scale_dtype);
    const __m512 t = _mm512_sub_ps(_mm512_set1_ps(static_cast<float>(r.lo)), _mm512_div_ps(lo, s));
    __m512i z = _mm512_cvtps_epi32(_mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    z = _mm512_min_epi32(_mm512_max_epi32(z, _mm512_set1_epi32(r.lo)), _mm512_set1_epi32(r.hi));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(q.mutable_zero_points().data() + gi0), _mm512_cvtepi32_epi8(z));
  }
  s = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(s, zero, _CMP_GT_OQ), one, s);  // underflowed: 1
  float* scales = q.mutable_scales().data() + gi0;
  _mm512_storeu_ps(scales, s);
  const int8_t* zps = kSymmetric ? nullptr : q.zero_points().data() + gi0;
  __m512 worst[16];
  alignas(64) double worst64[16];
  for (int g = 0; g < 16; ++g) {
    GroupSteps16<kSymmetric> steps(GroupCoder(scales[g], kSymmetric ? 0 : zps[g], r), err);
    for (int j = 0; j < kNv; ++j) steps.Step(Load16As<T>(src, g0 + g * kGs + 16 * j), out + g * kGs + 16 * j);
    if constexpr (kSymmetric) {
      worst[kReduce16Slot[g]] = steps.w32;
    } else {
      worst64[g] = _mm512_reduce_max_pd(steps.worst);
    }
    err = steps.err;
  }
  const __m512d half = _mm512_set1_pd(0.5);
  __m512d wl, wh;
  if constexpr (kSymmetric) {
    const __m512 w = Reduce16(worst, Max16);
    wl = LowPd(w), wh = HighPd(w);
  } else {
    wl = _mm512_load_pd(worst64), wh = _mm512_load_pd(worst64 + 8);
  }
  ratio = _mm512_max_pd(ratio, _mm512_div_pd(wl, _mm512_mul_pd(half, LowPd(s))));
  ratio = _mm512_max_pd(ratio, _mm512_div_pd(wh, _mm512_mul_pd(half, HighPd(s))));
  return true;
}

// MeasureGroupV for a group of any length gs (a multiple of 16; a per-channel row): the range
// in a first pass over the group, then the codes and measurements in a second (the row stays
// in the core's cache between them).
template <DType T>
inline bool MeasureLongGroupV(const uint8_t* src, int64_t g0, int64_t gs, QuantInfo& q, DType scale_dtype,
                              int8_t* out, ErrorLanes8& err, __m512d& ratio) {
  const __m512 big = _mm512_set1_ps(std::numeric_limits<float>::max());
  __mmask16 finite = 0xFFFF;
  __m512 mn = Load16As<T>(src, g0), mx = mn;
  for (int64_t k = 0; k < gs; k += 16) {
    const __m512 x = Load16As<T>(src, g0 + k);
    finite &= _mm512_cmp_ps_mask(_mm512_abs_ps(x), big, _CMP_LE_OQ);
    mn = _mm512_min_ps(mn, x);
    mx = _mm512_max_ps(mx, x);
  }
  if (finite != 0xFFFF) return false;
  const GroupCoder coder =
      StoreGroupCoder(_mm512_reduce_min_ps(mn), _mm512_reduce_max_ps(mx), g0 / gs, q, scale_dtype);
  auto run = [&]<bool kSymmetric>() {
    GroupSteps16<kSymmetric> steps(coder, err);
    for (int64_t k = 0; k < gs; k += 16) steps.Step(Load16As<T>(src, g0 + k), out + k);
    steps.Finish(coder.s, ratio, err);
  };
  WithSymmetry(q.symmetric, run);
  return true;
}
#pragma GCC diagnostic pop
#endif

#if defined(__AVX2__) && !defined(__AVX512F__)
// The AVX2 forms of MeasureGroupV and MeasureLongGroupV (8 values a vector, the same values).

// GroupCoder16 for 8 values.
struct GroupCoder8 {
  __m256 s, fz, fmin, fmax;
  explicit GroupCoder8(const GroupCoder& c)
      : s(_mm256_set1_ps(c.s)),
        fz(_mm256_set1_ps(c.fz)),
        fmin(_mm256_set1_ps(c.fmin)),
        fmax(_mm256_set1_ps(c.fmax)) {}
  __m256i Code(__m256 x) const {
    const __m256 r = _mm256_round_ps(_mm256_div_ps(x, s), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    return _mm256_cvttps_epi32(_mm256_min_ps(_mm256_max_ps(_mm256_add_ps(r, fz), fmin), fmax));
  }
};

// The smallest / largest of 8 lanes (no NaN; which zero a tie of -0 and +0 gives does not
// matter to StoreGroupCoder).
inline float ReduceMin8(__m256 v) {
  __m128 m = _mm_min_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_min_ps(m, _mm_movehl_ps(m, m));
  return _mm_cvtss_f32(_mm_min_ss(m, _mm_shuffle_ps(m, m, 1)));
}
inline float ReduceMax8(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  return _mm_cvtss_f32(_mm_max_ss(m, _mm_shuffle_ps(m, m, 1)));
}
inline double ReduceMaxPd4(__m256d v) {
  __m128d m = _mm_max_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
  return _mm_cvtsd_f64(_mm_max_sd(m, _mm_unpackhi_pd(m, m)));
}
// 8 int32 lanes holding int8 values, stored as 8 bytes.
inline void StoreCodes8(__m256i c, int8_t* out) {
  const __m128i w = _mm_packs_epi32(_mm256_castsi256_si128(c), _mm256_extracti128_si256(c, 1));
  _mm_storel_epi64(reinterpret_cast<__m128i*>(out), _mm_packs_epi16(w, w));
}

// GroupSteps16 for 8 values a step (its exactness argument unchanged).
template <bool kSymmetric>
struct GroupSteps8 {
  GroupCoder8 vc;
  __m256i z;
  ErrorLanesAvx2 err;
  __m256 w32 = _mm256_setzero_ps();     // symmetric: max |d| per lane
  __m256d worst = _mm256_setzero_pd();  // asymmetric: the same in f64
  GroupSteps8(const GroupCoder& c, const ErrorLanesAvx2& chunk)
      : vc(c), z(_mm256_set1_epi32(c.z)), err(chunk) {}
  void Step(__m256 x, int8_t* out) {
    const __m256i c = vc.Code(x);
    StoreCodes8(c, out);
    const __m256 y = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(c, z)), vc.s);  // Value: (q - z) * s
    if constexpr (kSymmetric) {
      const __m256 d = _mm256_sub_ps(y, x);
      err.Add8Exact(x, d);
      w32 = _mm256_max_ps(w32, AbsPs8(d));
    } else {
      err.Add8(x, y);
      worst = _mm256_max_pd(worst, AbsPd4(_mm256_sub_pd(LowPd4(y), LowPd4(x))));
      worst = _mm256_max_pd(worst, AbsPd4(_mm256_sub_pd(HighPd4(y), HighPd4(x))));
    }
  }
  void Finish(float s, __m256d& ratio, ErrorLanesAvx2& chunk) const {
    const __m256d w = _mm256_max_pd(worst, _mm256_max_pd(LowPd4(w32), HighPd4(w32)));
    ratio = _mm256_max_pd(ratio, _mm256_div_pd(w, _mm256_set1_pd(0.5 * s)));
    chunk = err;
  }
};

// MeasureGroupV with 8-value vectors.
template <DType T, int64_t kGs>
inline bool MeasureGroupV8(const uint8_t* src, int64_t g0, QuantInfo& q, DType scale_dtype, int8_t* out,
                           ErrorLanesAvx2& err, __m256d& ratio) {
  static_assert(kGs % 8 == 0 && kGs <= 128);
  constexpr int kNv = static_cast<int>(kGs / 8);
  __m256 x[kNv];
  __m256 finite = FiniteLanes8(x[0] = Load8As<T>(src, g0));
  __m256 mn = x[0], mx = x[0];
  for (int j = 1; j < kNv; ++j) {
    x[j] = Load8As<T>(src, g0 + 8 * j);
    finite = _mm256_and_ps(finite, FiniteLanes8(x[j]));
    mn = _mm256_min_ps(mn, x[j]);
    mx = _mm256_max_ps(mx, x[j]);
  }
  if (_mm256_movemask_ps(finite) != 0xFF) return false;
  const GroupCoder coder = StoreGroupCoder(ReduceMin8(mn), ReduceMax8(mx), g0 / kGs, q, scale_dtype);
  auto run = [&]<bool kSymmetric>() {
    GroupSteps8<kSymmetric> steps(coder, err);
    for (int j = 0; j < kNv; ++j) steps.Step(x[j], out + 8 * j);
    steps.Finish(coder.s, ratio, err);
  };
  WithSymmetry(q.symmetric, run);
  return true;
}

// MeasureLongGroupV with 8-value vectors (gs a multiple of 8).
template <DType T>
inline bool MeasureLongGroupV8(const uint8_t* src, int64_t g0, int64_t gs, QuantInfo& q, DType scale_dtype,
                               int8_t* out, ErrorLanesAvx2& err, __m256d& ratio) {
  __m256 mn = Load8As<T>(src, g0), mx = mn;
  __m256 finite = FiniteLanes8(mn);
  for (int64_t k = 8; k < gs; k += 8) {
    const __m256 x = Load8As<T>(src, g0 + k);
    finite = _mm256_and_ps(finite, FiniteLanes8(x));
    mn = _mm256_min_ps(mn, x);
    mx = _mm256_max_ps(mx, x);
  }
  if (_mm256_movemask_ps(finite) != 0xFF) return false;
  const GroupCoder coder = StoreGroupCoder(ReduceMin8(mn), ReduceMax8(mx), g0 / gs, q, scale_dtype);
  auto run = [&]<bool kSymmetric>() {
    GroupSteps8<kSymmetric> steps(coder, err);
    for (int64_t k = 0; k < gs; k += 8) steps.Step(Load8As<T>(src, g0 + k), out + k);
    steps.Finish(coder.s, ratio, err);
  };
  WithSymmetry(q.symmetric, run);
  return true;
}
#endif

// [out, in] weights with groups no longer than a chunk: each chunk computes the scales of
// the groups it touches from the whole group (a group cut by a chunk boundary is computed
// twice, the same way; the chunk holding its first element stores it) and codes its own
// elements, so the weight is read once. `codes` null: the codes go to a scratch group.
// kGs: the group size when fixed at compile time (32: GGUF's blocks and int4 g32; 64, 128: the
// common int4 groups), so that each group is whole vectors; 0: q.group_size.
template <DType T, int64_t kGs = 0>
void MeasureRowGroups(const uint8_t* src, int64_t n, QuantInfo& q, DType scale_dtype, int8_t* codes,
                      std::vector<ChunkMeasure>& chunks) {
  if constexpr (kGs == 0) {
#if defined(__AVX2__)
    if (q.group_size == 32) return MeasureRowGroups<T, 32>(src, n, q, scale_dtype, codes, chunks);
    if (q.group_size == 64) return MeasureRowGroups<T, 64>(src, n, q, scale_dtype, codes, chunks);
    if (q.group_size == 128) return MeasureRowGroups<T, 128>(src, n, q, scale_dtype, codes, chunks);
#endif
  }
  const int64_t gs = kGs ? kGs : q.group_size;
  const int64_t nchunks = static_cast<int64_t>(chunks.size());
#pragma omp parallel if (nchunks > 1)
  {
    std::vector<float> v(gs), back(gs);
    std::vector<int8_t> scratch(codes ? 0 : 16 * gs);  // MeasureGroups16V's 16 groups
#pragma omp for schedule(static)
    for (int64_t c = 0; c < nchunks; ++c) {
      ChunkMeasure m;
      const int64_t i0 = c * kWeightErrorChunk, i1 = std::min(n, i0 + kWeightErrorChunk);
#if defined(__AVX512F__)
      __m512d ratio = _mm512_setzero_pd();
      ErrorLanes8 err(m.error);  // m.error's sums while the vector steps run (stored before the general loop's)
#elif defined(__AVX2__)
      __m256d ratio = _mm256_setzero_pd();
      ErrorLanesAvx2 err(m.error);
#endif
      for (int64_t i = i0; i < i1;) {
        const int64_t gi = i / gs, g0 = gi * gs;  // [out, in] rows: flat group index = scale index
#if defined(__AVX512F__)
        int8_t* out = codes ? codes + g0 : scratch.data();
        if constexpr (kGs > 0) {
          if (g0 == i && g0 + 16 * kGs <= i1 &&
              (q.symmetric ? MeasureGroups16V<T, kGs, true>(src, g0, q, scale_dtype, out, err, ratio)
                           : MeasureGroups16V<T, kGs, false>(src, g0, q, scale_dtype, out, err, ratio))) {
            i = g0 + 16 * kGs;
            continue;
          }
          if (g0 == i && g0 + kGs <= i1 && MeasureGroupV<T, kGs>(src, g0, q, scale_dtype, out, err, ratio)) {
            i = g0 + kGs;
            continue;
          }
        } else {
          if (gs % 16 == 0 && g0 == i && g0 + gs <= i1 &&
              MeasureLongGroupV<T>(src, g0, gs, q, scale_dtype, out, err, ratio)) {
            i = g0 + gs;
            continue;
          }
        }
        err.Store(m.error);
#elif defined(__AVX2__)
        int8_t* out = codes ? codes + g0 : scratch.data();
        if constexpr (kGs > 0) {
          if (g0 == i && g0 + kGs <= i1 && MeasureGroupV8<T, kGs>(src, g0, q, scale_dtype, out, err, ratio)) {
            i = g0 + kGs;
            continue;
          }
        } else {
          if (gs % 8 == 0 && g0 == i && g0 + gs <= i1 &&
              MeasureLongGroupV8<T>(src, g0, gs, q, scale_dtype, out, err, ratio)) {
            i = g0 + gs;
            continue;
          }
        }
        err.Store(m.error);
#endif
        for (int64_t k = 0; k < gs; ++k) v[k] = LoadAs<T>(src, g0 + k);
        const GroupCoder coder = GroupRange::Of(v.data(), gs).Coder(q.bits, q.symmetric, scale_dtype);
        if (g0 >= i0) {
          q.mutable_scales()[gi] = coder.s;
          if (!q.symmetric) q.mutable_zero_points()[gi] = static_cast<int8_t>(coder.z);
        }
        const int64_t end = std::min(i1, g0 + gs);
        CodeSpan(v.data(), i - g0, end - g0, g0, coder, codes ? codes + g0 : scratch.data(), back.data(), m);
        i = end;
#if defined(__AVX512F__)
        err = ErrorLanes8(m.error);
#elif defined(__AVX2__)
        err = ErrorLanesAvx2(m.error);
#endif
      }
#if defined(__AVX512F__)
      err.Store(m.error);
      m.worst_ratio = std::max(m.worst_ratio, _mm512_reduce_max_pd(ratio));
#elif defined(__AVX2__)
      err.Store(m.error);
      m.worst_ratio = std::max(m.worst_ratio, ReduceMaxPd4(ratio));
#endif
      chunks[c] = m;
    }
  }
}

// Any layout: the scales first (one pass over the weight), then each chunk codes its
// elements one at a time.
template <DType T>
void MeasureAnyGroups(const uint8_t* src, int64_t rows, int64_t cols, QuantInfo& q, DType scale_dtype,
                      int8_t* codes, std::vector<ChunkMeasure>& chunks) {
  const int64_t gs = q.group_size, n = rows * cols;
  const int64_t stride = q.channel_axis == 0 ? 1 : cols;
#pragma omp parallel for schedule(static) if (n > kWeightErrorChunk)
  for (int64_t si = 0; si < q.channels * q.groups; ++si) {
    const int64_t ch = si / q.groups, g = si % q.groups;
    const int64_t base = (q.channel_axis == 0 ? ch * cols : ch) + g * gs * stride;
    GroupRange range;
    for (int64_t k = 0; k < gs; ++k) range.Add(LoadAs<T>(src, base + k * stride));
    const GroupCoder coder = range.Coder(q.bits, q.symmetric, scale_dtype);
    q.mutable_scales()[si] = coder.s;
    if (!q.symmetric) q.mutable_zero_points()[si] = static_cast<int8_t>(coder.z);
  }
  const int64_t nchunks = static_cast<int64_t>(chunks.size());
#pragma omp parallel for schedule(static) if (nchunks > 1)
  for (int64_t c = 0; c < nchunks; ++c) {
    ChunkMeasure m;
    const int64_t i0 = c * kWeightErrorChunk, i1 = std::min(n, i0 + kWeightErrorChunk);
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t si = q.ScaleIndex(i / cols, i % cols);
      const GroupCoder coder(q.scales()[si], q.symmetric ? 0 : q.zero_points()[si], CodeRangeOf(q.bits, q.symmetric));
      const float v = LoadAs<T>(src, i);
      float back;
      int8_t scratch;
      CodeSpan(&v, 0, 1, i, coder, codes ? codes + i : &scratch, &back, m);
    }
    chunks[c] = m;
  }
}

}  // namespace

absl::Status ScalesInRange(const QuantInfo& q, DType scale_dtype, std::string_view name) {
  for (size_t i = 0; i < q.scales().size(); ++i) {
    if (std::isfinite(q.scales()[i])) continue;
    const int64_t ch = static_cast<int64_t>(i) / q.groups, g = static_cast<int64_t>(i) % q.groups;
    return InvalidArgument(
        "tensor '{}': the group of {} inputs at channel {}, input {} needs a scale past {}'s largest value; use "
        "scale-dtype=f32",
        name, q.group_size, ch, g * q.group_size, DTypeName(scale_dtype));
  }
  return absl::OkStatus();
}

absl::StatusOr<MeasuredRtn> QuantizeRtnMeasured(DType dtype, std::span<const uint8_t> src, int64_t rows,
                                                int64_t cols, int bits, bool symmetric, int channel_axis,
                                                int64_t group_size, DType scale_dtype, std::string_view name,
                                                bool keep_codes) {
  if (dtype != DType::kF32 && dtype != DType::kF16 && dtype != DType::kBF16) {
    return Internal("QuantizeRtnMeasured reads f32, f16 or bf16, not {}", DTypeName(dtype));
  }
  const int64_t n = rows * cols;
  if (static_cast<int64_t>(src.size()) != DTypeBytes(dtype, n)) return Internal("QuantizeRtnMeasured: size mismatch");
  MeasuredRtn r;
  ASSIGN_OR_RETURN(r.info, RtnInfo(rows, cols, bits, symmetric, channel_axis, group_size, scale_dtype));
  int8_t* codes = nullptr;
  if (keep_codes) {
    r.codes = std::make_shared<UninitBuffer>(static_cast<size_t>(n));
    codes = reinterpret_cast<int8_t*>(r.codes->mutable_data());
  }
  std::vector<ChunkMeasure> chunks((n + kWeightErrorChunk - 1) / kWeightErrorChunk);
  const bool rows_of_groups = channel_axis == 0 && r.info.group_size <= kWeightErrorChunk;
  auto run = [&]<DType T>() {
    if (rows_of_groups) {
      MeasureRowGroups<T>(src.data(), n, r.info, scale_dtype, codes, chunks);
    } else {
      MeasureAnyGroups<T>(src.data(), rows, cols, r.info, scale_dtype, codes, chunks);
    }
  };
  if (dtype == DType::kF32) run.template operator()<DType::kF32>();
  if (dtype == DType::kF16) run.template operator()<DType::kF16>();
  if (dtype == DType::kBF16) run.template operator()<DType::kBF16>();
  std::vector<WeightErrorChunk> errors(chunks.size());
  for (size_t c = 0; c < chunks.size(); ++c) {
    if (chunks[c].first_bad != INT64_MAX) {  // the first one in element order, as FiniteWeights reports it
      return NonFiniteAt(dtype, src.data(), chunks[c].first_bad, cols, name);
    }
    errors[c] = chunks[c].error;
    r.max_error_over_half_scale = std::max(r.max_error_over_half_scale, chunks[c].worst_ratio);
  }
  RETURN_IF_ERROR(ScalesInRange(r.info, scale_dtype, name));
  r.error = CombineWeightErrorChunks(errors);
  return r;
}

namespace {

// RtnCodes' loop for one stored element type: each group's coder from its stored scale and
// zero point (GroupCoder(s, z, range), as MeasureAnyGroups codes), rows of groups in
// parallel.
template <DType T>
void CodesFromScales(const uint8_t* src, int64_t rows, int64_t cols, const QuantInfo& q, int8_t* codes) {
  const CodeRange range = CodeRangeOf(q.bits, q.symmetric);
  const int64_t n = rows * cols;
  if (q.channel_axis == 0) {
    const int64_t gs = q.group_size, ngroups = n / gs;
    const int64_t per = std::max<int64_t>(1, kWeightErrorChunk / gs);  // groups per parallel step
#pragma omp parallel if (n > kWeightErrorChunk)
    {
      std::vector<float> v(gs);
#pragma omp for schedule(static)
      for (int64_t g0 = 0; g0 < ngroups; g0 += per) {
        for (int64_t g = g0; g < std::min(ngroups, g0 + per); ++g) {
          const GroupCoder coder(q.scales()[g], q.symmetric ? 0 : q.zero_points()[g], range);
          const int64_t base = g * gs;
#if defined(__AVX512F__)
          if (gs % 16 == 0) {  // GroupCoder::Code on 16 elements at a time (non-finite values as 0)
            const GroupCoder16 vc(coder);
            const __m512 big = _mm512_set1_ps(std::numeric_limits<float>::max());
            for (int64_t k = 0; k < gs; k += 16) {
              const __m512 x0 = Load16As<T>(src, base + k);
              const __m512 x = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(_mm512_abs_ps(x0), big, _CMP_LE_OQ), x0);
              _mm_storeu_si128(reinterpret_cast<__m128i*>(codes + base + k), _mm512_cvtepi32_epi8(vc.Code(x)));
            }
            continue;
          }
#endif
#pragma omp simd
          for (int64_t k = 0; k < gs; ++k) v[k] = LoadAs<T>(src, base + k);
          int8_t* out = codes + base;
#pragma omp simd
          for (int64_t k = 0; k < gs; ++k) out[k] = coder.Code(v[k]);
        }
      }
    }
    return;
  }
#pragma omp parallel for schedule(static) if (n > kWeightErrorChunk)
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) {
      const int64_t si = q.ScaleIndex(r, c);
      const GroupCoder coder(q.scales()[si], q.symmetric ? 0 : q.zero_points()[si], range);
      codes[r * cols + c] = coder.Code(LoadAs<T>(src, r * cols + c));
    }
  }
}

}  // namespace

absl::StatusOr<std::shared_ptr<UninitBuffer>> RtnCodes(DType dtype, std::span<const uint8_t> src, int64_t rows,
                                                       int64_t cols, const QuantInfo& q) {
  if (dtype != DType::kF32 && dtype != DType::kF16 && dtype != DType::kBF16) {
    return Internal("RtnCodes reads f32, f16 or bf16, not {}", DTypeName(dtype));
  }
  const int64_t n = rows * cols;
  if (static_cast<int64_t>(src.size()) != DTypeBytes(dtype, n) || q.codebook() || q.fp8() ||
      static_cast<int64_t>(q.scales().size()) != q.channels * q.groups || q.group_size <= 0 ||
      (q.channel_axis == 0 ? cols : rows) % q.group_size != 0) {
    return Internal("RtnCodes: the weight and its quantization parameters do not match");
  }
  auto out = std::make_shared<UninitBuffer>(static_cast<size_t>(n));
  auto* codes = reinterpret_cast<int8_t*>(out->mutable_data());
  if (dtype == DType::kF32) CodesFromScales<DType::kF32>(src.data(), rows, cols, q, codes);
  if (dtype == DType::kF16) CodesFromScales<DType::kF16>(src.data(), rows, cols, q, codes);
  if (dtype == DType::kBF16) CodesFromScales<DType::kBF16>(src.data(), rows, cols, q, codes);
  return out;
}

namespace {

// A group's sum of term(i) over its elements in 8 lanes (element i in lane i % 8, each lane
// adding in order, the lanes then added in order): vectorizable, and fixed bits. `term` reads
// contiguous arrays (a gather inside it keeps the lanes scalar).
constexpr int kSumLanes = 8;
template <typename Term>
inline void AddToLanes(double* lane, int64_t i0, int64_t n, Term term) {  // elements i0 .. i0 + n - 1
  int64_t i = i0;
  for (; i < i0 + n && i % kSumLanes != 0; ++i) lane[i % kSumLanes] += term(i);
  for (; i + kSumLanes <= i0 + n; i += kSumLanes) {
#pragma omp simd
    for (int l = 0; l < kSumLanes; ++l) lane[l] += term(i + l);
  }
  for (; i < i0 + n; ++i) lane[i % kSumLanes] += term(i);
}
inline double SumLanes(const double* lane) {
  double e = 0;
  for (int l = 0; l < kSumLanes; ++l) e += lane[l];
  return e;
}

// Calls f with the element loader of a strided group (a plain pointer walk when stride is 1, so
// the loops vectorize).
template <typename F>
inline auto WithStride(const float* v, int64_t stride, F f) {
  if (stride == 1) return f([v](int64_t i) { return v[i]; });
  return f([v, stride](int64_t i) { return v[i * stride]; });
}

// sum_i h_i (levels[codes_i] s - v_i)^2 over one group (element i at v[i * stride], a
// non-finite v as 0, h null: all 1), in kSumLanes lanes; tiles of 64 gather the levels and
// values into arrays first.
inline double GroupSse(const Codebook& book, const float* v, int64_t gs, int64_t stride, float s, const double* h,
                const uint8_t* codes) {
  const float* levels = book.levels.data();
  double lane[kSumLanes] = {};
  constexpr int64_t kTile = 64;
  float lv[kTile], x[kTile];
  WithStride(v, stride, [&](auto at) {
    for (int64_t t0 = 0; t0 < gs; t0 += kTile) {
      const int64_t m = std::min(kTile, gs - t0);
      for (int64_t k = 0; k < m; ++k) lv[k] = levels[codes[t0 + k]];
      for (int64_t k = 0; k < m; ++k) x[k] = Finite(at(t0 + k));
      const float* lt = lv - t0;
      const float* xt = x - t0;
      auto d = [&](int64_t i) { return static_cast<double>(lt[i]) * s - xt[i]; };
      if (!h) {
        AddToLanes(lane, t0, m, [&](int64_t i) { return d(i) * d(i); });
      } else {
        AddToLanes(lane, t0, m, [&](int64_t i) { return h[i] * d(i) * d(i); });
      }
    }
    return 0;
  });
  return SumLanes(lane);
}

// sum_i h_i v_i^2 over one group, the same way.
inline double GroupNorm(const float* v, int64_t gs, int64_t stride, const double* h) {
  double lane[kSumLanes] = {};
  WithStride(v, stride, [&](auto at) {
    auto x = [&](int64_t i) { return static_cast<double>(Finite(at(i))); };
    if (!h) {
      AddToLanes(lane, 0, gs, [&](int64_t i) { return x(i) * x(i); });
    } else {
      AddToLanes(lane, 0, gs, [&](int64_t i) { return h[i] * x(i) * x(i); });
    }
    return 0;
  });
  return SumLanes(lane);
}

// One group's scale by o.scale's rule (absmax, E8M0, or the clipping search minimising
// GroupSse); `tmp` is scratch for gs codes.
// A group's scale from its largest |w| without a search: 1 for a group of zeros, the E8M0 rule,
// or amax / the largest level.
inline float PlainCodebookScale(const Codebook& book, float amax, const CodebookOptions& o) {
  if (!(amax > 0)) return 1.f;
  if (o.scale == CodebookOptions::Scale::kE8M0) return MxSharedScale(amax, FloorLog2(book.max_abs));
  return amax / book.max_abs;
}

float CodebookGroupScale(const Codebook& book, const float* v, int64_t gs, int64_t stride, const CodebookOptions& o,
                         const double* h, uint8_t* tmp) {
  const float amax = WithStride(v, stride, [&](auto at) {
    float m = 0.f;
#pragma omp simd reduction(max : m)
    for (int64_t i = 0; i < gs; ++i) m = std::max(m, std::fabs(Finite(at(i))));
    return m;
  });
  float s = PlainCodebookScale(book, amax, o);
  if (amax > 0 && o.scale == CodebookOptions::Scale::kSearch && o.search_steps > 0) {
    auto sse = [&](float cand) {
      book.EncodeScaled(v, gs, stride, cand, tmp, 1);
      return GroupSse(book, v, gs, stride, cand, h, tmp);
    };
    double best = sse(s);
    float best_s = s;
    for (int i = 1; i <= o.search_steps; ++i) {
      const float ratio = 1.f - (1.f - o.min_clip) * static_cast<float>(i) / o.search_steps;
      const float cand = ratio * amax / book.max_abs;
      const double e = sse(cand);
      if (e < best) best = e, best_s = cand;
    }
    s = best_s;
  }
  return s;
}

// QuantInfo of a codebook quantization, scales all 1 (none when !with_scales: the caller
// moves its own in).
QuantInfo CodebookInfo(const Codebook& book, const std::string& format, int channel_axis, int64_t gs,
                       int64_t channels, int64_t groups, bool with_scales = true) {
  QuantInfo q;
  q.bits = 4;
  q.symmetric = true;
  q.channel_axis = channel_axis;
  q.group_size = gs;
  q.channels = channels;
  q.groups = groups;
  q.set_format(format, {book.levels.begin(), book.levels.end()});
  if (with_scales) q.mutable_scales().assign(channels * groups, 1.f);
  return q;
}

// Per-group sums added per channel in order, then the channels in order.
double SumByChannel(const std::vector<double>& group_sums, int64_t channels, int64_t groups) {
  double total = 0;
  for (int64_t ch = 0; ch < channels; ++ch) {
    double c = 0;
    for (int64_t g = 0; g < groups; ++g) c += group_sums[ch * groups + g];
    total += c;
  }
  return total;
}

}  // namespace

absl::StatusOr<CodebookResult> QuantizeCodebook(std::span<const float> w, int64_t rows, int64_t cols,
                                                const CodebookOptions& o) {
  ASSIGN_OR_RETURN(const Codebook* book, FindCodebook(o.format));
  if (o.channel_axis != 0 && o.channel_axis != 1) return Internal("channel_axis {}", o.channel_axis);
  if (static_cast<int64_t>(w.size()) != rows * cols) return Internal("QuantizeCodebook: size mismatch");
  const int64_t channels = o.channel_axis == 0 ? rows : cols;
  const int64_t in = o.channel_axis == 0 ? cols : rows;
  const int64_t gs = o.group_size == 0 ? in : o.group_size;
  if (gs <= 0 || in % gs != 0) {
    return InvalidArgument("group size {} does not divide the input dimension {}", gs, in);
  }
  if (!o.input_weight.empty() && static_cast<int64_t>(o.input_weight.size()) != in) {
    return Internal("input weights have {} entries for {} inputs", o.input_weight.size(), in);
  }
  CodebookResult r;
  QuantInfo& q = r.info;
  q = CodebookInfo(*book, o.format, o.channel_axis, gs, channels, in / gs);
  r.codes.assign(w.size(), 0);
  auto at = [&](int64_t ch, int64_t k) -> int64_t {
    return o.channel_axis == 0 ? ch * cols + k : k * cols + ch;
  };
  const int64_t stride = o.channel_axis == 0 ? 1 : cols;
  std::vector<double> group_sse(channels * q.groups), group_norm(channels * q.groups);
#pragma omp parallel for schedule(dynamic, 16) if (channels * in > (1 << 16))
  for (int64_t ch = 0; ch < channels; ++ch) {
    std::vector<uint8_t> tmp(gs);
    for (int64_t g = 0; g < q.groups; ++g) {
      const int64_t k0 = g * gs;
      const float* src = w.data() + at(ch, k0);
      const double* h = o.input_weight.empty() ? nullptr : o.input_weight.data() + k0;
      const float s = CodebookGroupScale(*book, src, gs, stride, o, h, tmp.data());
      q.mutable_scales()[ch * q.groups + g] = s;
      book->EncodeScaled(src, gs, stride, s, tmp.data(), 1);
      for (int64_t i = 0; i < gs; ++i) r.codes[at(ch, k0 + i)] = static_cast<int8_t>(tmp[i]);
      group_sse[ch * q.groups + g] = GroupSse(*book, src, gs, stride, s, h, tmp.data());
      group_norm[ch * q.groups + g] = GroupNorm(src, gs, stride, h);
    }
  }
  r.weighted_sse = SumByChannel(group_sse, channels, q.groups);
  r.weighted_norm = SumByChannel(group_norm, channels, q.groups);
  return r;
}

bool CodebookMeasuredLayout(int64_t cols, const CodebookOptions& o) {
  const int64_t gs = o.group_size == 0 ? cols : o.group_size;
  return o.channel_axis == 0 && gs > 0 && gs <= kWeightErrorChunk && cols % gs == 0;
}

namespace {

// One format's results in QuantizeCodebookMeasured.
struct FormatPass {
  const Codebook* book = nullptr;
  std::shared_ptr<UninitBuffer> codes;
  std::vector<float> group_scales;
  std::vector<double> group_sse;
  std::vector<WeightErrorChunk> errors;
};

// Scales and sums of every group for every format, the groups spread over the threads (the
// clipping search's share of the work is large and uneven: finer than chunks).
template <DType T>
void CodebookScales(const uint8_t* src, int64_t n, int64_t cols, int64_t gs, const CodebookOptions& o,
                    std::vector<FormatPass>& fp, std::vector<double>& group_norm) {
  const int64_t ngroups = n / gs;
#pragma omp parallel if (n > kWeightErrorChunk)
  {
    std::vector<float> v(gs);
    std::vector<uint8_t> tmp(gs);
#pragma omp for schedule(dynamic, 64)
    for (int64_t gi = 0; gi < ngroups; ++gi) {
      const int64_t g0 = gi * gs;
      for (int64_t k = 0; k < gs; ++k) v[k] = LoadAs<T>(src, g0 + k);
      const double* h = o.input_weight.empty() ? nullptr : o.input_weight.data() + g0 % cols;
      group_norm[gi] = GroupNorm(v.data(), gs, 1, h);
      for (FormatPass& f : fp) {
        const float s = CodebookGroupScale(*f.book, v.data(), gs, 1, o, h, tmp.data());
        f.book->EncodeScaled(v.data(), gs, 1, s, tmp.data(), 1);
        f.group_scales[gi] = s;
        f.group_sse[gi] = GroupSse(*f.book, v.data(), gs, 1, s, h, tmp.data());
      }
    }
  }
}

// The largest difference between neighbouring values of `levels`.
inline float WidestStep(std::array<float, 16> levels) {
  std::sort(levels.begin(), levels.end());
  float w = 0.f;
  for (size_t i = 1; i < levels.size(); ++i) w = std::max(w, levels[i] - levels[i - 1]);
  return w;
}

// CodebookV::bounded_steps (CodebookV8::bounded_steps) for `levels`.
inline bool BoundedSteps(std::array<float, 16> levels) {
  std::sort(levels.begin(), levels.end());
  if (!std::binary_search(levels.begin(), levels.end(), 0.f)) return false;
  for (size_t i = 1; i < levels.size(); ++i) {
    const float a = levels[i - 1], b = levels[i];
    if (a > 0 && b > 2.5f * a) return false;  // positive neighbours
    if (b < 0 && a < 2.5f * b) return false;  // negative neighbours
  }
  return true;
}

// Whether s is a normal power of two (MXFP4's E8M0 scales): x / s is then x * (1 / s), 1 / s
// exact, so both round the same real number: the same bits, without a division.
inline bool NormalPowerOfTwo(float s) {
  const uint32_t b = detail::FloatBits(s), e = (b >> 23) & 0xFF;
  return (b & 0x007FFFFFu) == 0 && e != 0 && e != 0xFF;
}

// How a codebook's vector forms (CodebookV, CodebookV8) code: the FP4 tables (fp4-e2m1 and
// mxfp4, fp4-e3m0, fp4-e1m2) by arithmetic rounding (core/codebook.h E2m1Code16 ...), others
// (nf4) by the table search.
enum class CodebookKind { kTable, kE2m1, kE3m0, kE1m2 };
inline CodebookKind CodebookKindOf(const Codebook& b) {
  return b.name == "fp4-e2m1"   ? CodebookKind::kE2m1
         : b.name == "fp4-e3m0" ? CodebookKind::kE3m0
         : b.name == "fp4-e1m2" ? CodebookKind::kE1m2
                                : CodebookKind::kTable;
}

// f.template operator()<K>() for the kind K (the format's coder fixed at compile time).
template <class F>
inline void WithKind(CodebookKind kind, F&& f) {
  switch (kind) {
    case CodebookKind::kE2m1:
      return f.template operator()<CodebookKind::kE2m1>();
    case CodebookKind::kE3m0:
      return f.template operator()<CodebookKind::kE3m0>();
    case CodebookKind::kE1m2:
      return f.template operator()<CodebookKind::kE1m2>();
    case CodebookKind::kTable:
      return f.template operator()<CodebookKind::kTable>();
  }
}

#if defined(__AVX512F__)
// An FP4 grid (MinifloatCode16's values) as vector constants: magnitudes below `normal` round to
// the nearest even multiple of 2^-step_bits, from there to `mantissa` bits (nearest even on the
// bits), at most `max_level`.
struct MinifloatGridV {
  __m128i drop;               // 23 - mantissa, the f32 bits rounded away
  __m512i bias, keep;         // 2^(drop - 1) - 1 and ~(2^drop - 1)
  __m512 magic, normal, max;  // 1.5 x 2^(23 - step_bits): a + magic - magic rounds a to its step
  MinifloatGridV(int mantissa, int step_bits, float normal_from, float max_level)
      : drop(_mm_cvtsi32_si128(23 - mantissa)),
        bias(_mm512_set1_epi32((1 << (22 - mantissa)) - 1)),
        keep(_mm512_set1_epi32(~((1 << (23 - mantissa)) - 1))),
        magic(_mm512_set1_ps(std::ldexp(1.5f, 23 - step_bits))),
        normal(_mm512_set1_ps(normal_from)),
        max(_mm512_set1_ps(max_level)) {}
  // The grid value of MinifloatCode16's code for finite magnitudes a >= 0, without
  // forming the code: the same rounding steps, so levels[code] exactly. Below `normal` the sum
  // a + magic lies in [2^(23 - step_bits), 2^(24 - step_bits)), whose spacing is the step, so its
  // rounding (to nearest even) is the step's and subtracting magic is exact.
  __m512 Level(__m512 a) const {
    const __m512i b = _mm512_castps_si512(a);
    const __m512i lsb = _mm512_and_si512(_mm512_srl_epi32(b, drop), _mm512_set1_epi32(1));
    const __m512 r = _mm512_castsi512_ps(_mm512_and_si512(_mm512_add_epi32(_mm512_add_epi32(b, bias), lsb), keep));
    const __mmask16 small = _mm512_cmp_ps_mask(a, normal, _CMP_LT_OQ);
    return _mm512_min_ps(_mm512_mask_sub_ps(r, small, _mm512_add_ps(a, magic), magic), max);
  }
};

// The E3M0 level nearest a >= 0 (finite): a rounded to a power of two (its exponent, one up from
// a mantissa of 1.5: the midpoint between 2^e and 2^(e + 1) is 1.5 x 2^e), at least 1/4 from
// 1/8 on (the midpoint between the levels 0 and 1/4), 0 below, at most 16. At a midpoint it goes
// up where the grid rounds to the even code (EstimateCodebookSse says why that is the same there).
inline __m512 E3m0Level(__m512 a) {
  const __m512i up = _mm512_add_epi32(_mm512_castps_si512(a), _mm512_set1_epi32(0x00400000));
  const __m512 p2 = _mm512_castsi512_ps(_mm512_and_si512(up, _mm512_set1_epi32(static_cast<int>(0xFF800000u))));
  const __mmask16 some = _mm512_cmp_ps_mask(a, _mm512_set1_ps(0.125f), _CMP_GE_OQ);
  return _mm512_min_ps(_mm512_maskz_max_ps(some, p2, _mm512_set1_ps(0.25f)), _mm512_set1_ps(16.f));
}

// One format's vector tables for CodebookGroupV.
struct CodebookV {
  const Codebook* book;
  CodebookCoder16 coder;
  __m512 levels;
  using Kind = CodebookKind;
  Kind kind;
  float widest_step;  // the largest difference between neighbouring levels
  // Every nonzero level at most 2.5x its neighbour towards 0 of the same sign (0 a level), and
  // the largest |level| the scale's reference: a value coded to level L (the nearest, scaled by
  // max|w| / max|level|) then lies within 1.75 |L| s, inside 2 |L| s with room for roundings.
  bool bounded_steps;
  explicit CodebookV(const Codebook& b)
      : book(&b),
        coder(b),
        levels(_mm512_loadu_ps(b.levels.data())),
        kind(CodebookKindOf(b)),
        widest_step(WidestStep(b.levels)),
        bounded_steps(BoundedSteps(b.levels)) {
    BuildQuarterTable();
  }
  __m512i Code(__m512 val) const {
    switch (kind) {
      case Kind::kE2m1: return E2m1Code16(val);
      case Kind::kE3m0: return E3m0Code16(val);
      case Kind::kE1m2: return E1m2Code16(val);
      case Kind::kTable: break;
    }
    return coder.Code(val);
  }
  // The FP4 tables' grid (kind != kTable).
  MinifloatGridV Grid() const {
    switch (kind) {
      case Kind::kE3m0: return MinifloatGridV(0, 2, 0.25f, 16.f);
      case Kind::kE1m2: return MinifloatGridV(2, 1, 2.f, 3.5f);
      default: return MinifloatGridV(1, 1, 2.f, 6.f);  // e2m1
    }
  }
  // E2M1's and E1M2's midpoints between neighbouring levels are multiples of 1/4, so the level
  // nearest a magnitude a >= 0 is a table entry by floor(4 a): entry i the level nearest the
  // interval [i/4, (i+1)/4) (no midpoint inside it; from 31/4 on the largest level), entries
  // 0-15 in quarter_lo, 16-31 in quarter_hi. At a midpoint itself it gives the upper level where
  // Grid().Level rounds to the even code: the other nearest level, with the same |level s - x|
  // when x / s is the midpoint (see EstimateCodebookSse). None for E3M0 (midpoints 1/8 apart near
  // 0, levels up to 16) and tables. Built once here, not per use.
  bool quarter = false;
  __m512 quarter_lo = _mm512_setzero_ps(), quarter_hi = _mm512_setzero_ps();
  void BuildQuarterTable() {
    if (kind != Kind::kE2m1 && kind != Kind::kE1m2) return;
    alignas(64) float t[32];
    for (int i = 0; i < 32; ++i) {
      const float c = (static_cast<float>(i) + 0.5f) / 4.f;
      float best = 0.f;
      for (float l : book->levels) {
        if (l >= 0.f && std::fabs(l - c) < std::fabs(best - c)) best = l;
      }
      t[i] = best;
    }
    quarter_lo = _mm512_load_ps(t);
    quarter_hi = _mm512_load_ps(t + 16);
    quarter = true;
  }
};

// Adds x * x (x = a - b when b is given, in f64) of 16 values to 8 lanes in element order (the
// low 8 values, then the high 8: AddToLanes's order for a group from a multiple of 16).
inline void AddSquares16(__m512d& lanes, __m512d lo, __m512d hi) {
  lanes = _mm512_add_pd(lanes, _mm512_mul_pd(lo, lo));
  lanes = _mm512_add_pd(lanes, _mm512_mul_pd(hi, hi));
}
// SumLanes of 8 f64 lanes in a register.
inline double SumLanes8(__m512d lanes) {
  alignas(64) double l[8];
  _mm512_store_pd(l, lanes);
  return SumLanes(l);
}

// CodebookV::Code for a kind known at compile time.
template <CodebookV::Kind K>
inline __m512i CodeAs(const CodebookV& fv, __m512 val) {
  if constexpr (K == CodebookV::Kind::kE2m1) return E2m1Code16(val);
  if constexpr (K == CodebookV::Kind::kE3m0) return E3m0Code16(val);
  if constexpr (K == CodebookV::Kind::kE1m2) return E1m2Code16(val);
  if constexpr (K == CodebookV::Kind::kTable) return fv.coder.Code(val);
}

// One format's work on one group of kNv x 16 finite values x at scale s (CodebookGroupV's, for
// each format): EncodeScaled's codes into `codes`, the values levels[code] x s, the error sums
// into err, and with `sse` GroupSse (no input weights) into *sse, all the same bits.
template <CodebookV::Kind K, int kNv>
inline void CodeGroupV(const __m512* x, float s, const CodebookV& fv, uint8_t* codes, ErrorLanes8& err, double* sse) {
  const __m512 sv = _mm512_set1_ps(s);
  const __m512d sd = _mm512_set1_pd(s);
  const bool pow2 = NormalPowerOfTwo(s);
  const __m512 rv = _mm512_set1_ps(1.f / s);
  // On the FP4 grids levels[c] s - x is exact in f32 (Sterbenz): 0 is coded for |x / s| up to
  // half the smallest level, a power of two (the tie takes the even code, 0), so a nonzero
  // level L has |x| > L s / 2 (the smallest level times s is exact, a power of two), and
  // |x| <= 2 L s (neighbouring levels at most 2x apart, the largest code clamps at most 4/3
  // past it: room for the rounding of L s). NF4's smallest levels are not powers of two and
  // its ties take either code: there the difference is exact where |y| <= 2 |x| (the other
  // side holds as on the grids: fv.bounded_steps), checked per step of 16, else the f64
  // steps (Add16).
  constexpr bool kExact = K != CodebookV::Kind::kTable;
  const bool checked = !kExact && fv.bounded_steps;
  __m512d sum = _mm512_setzero_pd();
  for (int j = 0; j < kNv; ++j) {
    const __m512i c = CodeAs<K>(fv, pow2 ? _mm512_mul_ps(x[j], rv) : _mm512_div_ps(x[j], sv));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(codes + 16 * j), _mm512_cvtepi32_epi8(c));
    const __m512 level = _mm512_permutexvar_ps(c, fv.levels);
    const __m512 y = _mm512_mul_ps(level, sv);
    const __m512 ax = _mm512_abs_ps(x[j]);
    if (kExact || (checked && _mm512_cmp_ps_mask(_mm512_abs_ps(y), _mm512_add_ps(ax, ax), _CMP_LE_OQ) == 0xFFFF)) {
      err.Add16Exact(x[j], _mm512_sub_ps(y, x[j]));
    } else {
      err.Add16(x[j], y);
    }
    if (sse) {  // GroupSse: level x s in f64, minus the value
      AddSquares16(sum, _mm512_sub_pd(_mm512_mul_pd(LowPd(level), sd), LowPd(x[j])),
                   _mm512_sub_pd(_mm512_mul_pd(HighPd(level), sd), HighPd(x[j])));
    }
  }
  if (sse) *sse = SumLanes8(sum);
}

// CodebookChunks' work on one whole group gi of kGs (16 x NV) finite elements with scales by
// absmax / max level or the E8M0 rule (no search) for each format of `fv` (as many as fp), in
// vector registers: CodebookGroupScale's scales, then CodeGroupV (codes stored for a single
// format that keeps them), and with `group_sums` GroupNorm and each format's GroupSse; false,
// with nothing done, when the group holds a NaN or an infinity (the general loop reports it).
template <DType T, int64_t kGs>
inline bool CodebookGroupV(const uint8_t* src, int64_t gi, std::span<const CodebookV> fv, const CodebookOptions& o,
                           bool group_sums, std::vector<FormatPass>& fp, std::vector<double>& group_norm,
                           uint8_t* scratch, ErrorLanes8* err) {
  static_assert(kGs % 16 == 0 && kGs <= 128);
  constexpr int kNv = static_cast<int>(kGs / 16);
  const int64_t g0 = gi * kGs;
  __m512 x[kNv];
  const __m512 big = _mm512_set1_ps(std::numeric_limits<float>::max());
  __mmask16 finite = 0xFFFF;
  __m512 mx = _mm512_setzero_ps();
  for (int j = 0; j < kNv; ++j) {
    x[j] = Load16As<T>(src, g0 + 16 * j);
    const __m512 a = _mm512_abs_ps(x[j]);
    finite &= _mm512_cmp_ps_mask(a, big, _CMP_LE_OQ);
    mx = _mm512_max_ps(mx, a);
  }
  if (finite != 0xFFFF) return false;
  const float amax = _mm512_reduce_max_ps(mx);
  if (group_sums) {
    __m512d norm = _mm512_setzero_pd();
    for (int j = 0; j < kNv; ++j) AddSquares16(norm, LowPd(x[j]), HighPd(x[j]));
    group_norm[gi] = SumLanes8(norm);
  }
  for (size_t f = 0; f < fv.size(); ++f) {
    const float s = PlainCodebookScale(*fv[f].book, amax, o);
    fp[f].group_scales[gi] = s;
    uint8_t* codes = fp[f].codes ? fp[f].codes->mutable_data() + g0 : scratch;
    double* sse = group_sums ? &fp[f].group_sse[gi] : nullptr;
    WithKind(fv[f].kind, [&]<CodebookV::Kind K>() { CodeGroupV<K, kNv>(x, s, fv[f], codes, err[f], sse); });
  }
  return true;
}

// PlainCodebookScale of 16 groups' largest |w| (finite, >= 0): the same values (E8M0: the
// exponent of amax by VGETEXPPS, floor(log2 amax) for normal values; a subnormal amax, below
// 2^-126, clamps to -127 either way, and 2^-127 by VSCALEFPS is std::ldexp's subnormal).
inline __m512 PlainCodebookScale16(const Codebook& book, __m512 amax, const CodebookOptions& o) {
  const __m512 one = _mm512_set1_ps(1.f);
  __m512 s;
  if (o.scale == CodebookOptions::Scale::kE8M0) {
    const __m512 e = _mm512_sub_ps(_mm512_getexp_ps(amax), _mm512_set1_ps(static_cast<float>(FloorLog2(book.max_abs))));
    s = _mm512_scalef_ps(one, _mm512_min_ps(_mm512_max_ps(e, _mm512_set1_ps(-127.f)), _mm512_set1_ps(127.f)));
  } else {
    s = _mm512_div_ps(amax, _mm512_set1_ps(book.max_abs));
  }
  return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(amax, _mm512_setzero_ps(), _CMP_GT_OQ), one, s);
}

// CodebookGroupV for 16 whole groups from gi0 (16 kGs finite elements) without group sums: the
// 16 groups' max |w| first (one transpose-reduction), their scales as one vector (stored at
// once), then each group's codes and sums by CodeGroupV in group order (the same sums in the
// same order). False, with nothing done, when the 16 groups hold a NaN or an infinity.
template <DType T, int64_t kGs>
inline bool CodebookGroups16V(const uint8_t* src, int64_t gi0, std::span<const CodebookV> fv, const CodebookOptions& o,
                              std::vector<FormatPass>& fp, uint8_t* scratch, ErrorLanes8* err) {
  constexpr int kNv = static_cast<int>(kGs / 16);
  const int64_t g0 = gi0 * kGs;
  const __m512 big = _mm512_set1_ps(std::numeric_limits<float>::max());
  __mmask16 finite = 0xFFFF;
  __m512 mx[16];
  for (int g = 0; g < 16; ++g) {
    __m512 m = _mm512_setzero_ps();
    for (int j = 0; j < kNv; ++j) {
      const __m512 a = _mm512_abs_ps(Load16As<T>(src, g0 + g * kGs + 16 * j));
      finite &= _mm512_cmp_ps_mask(a, big, _CMP_LE_OQ);
      m = _mm512_max_ps(m, a);
    }
    mx[kReduce16Slot[g]] = m;
  }
  if (finite != 0xFFFF) return false;
  const __m512 amax = Reduce16(mx, Max16);
  for (size_t f = 0; f < fv.size(); ++f) {
    float* scales = fp[f].group_scales.data() + gi0;
    _mm512_storeu_ps(scales, PlainCodebookScale16(*fv[f].book, amax, o));
    uint8_t* codes = fp[f].codes ? fp[f].codes->mutable_data() + g0 : scratch;
    WithKind(fv[f].kind, [&]<CodebookV::Kind K>() {
      ErrorLanes8 lanes = err[f];  // in registers across the 16 groups (see GroupSteps16)
      for (int g = 0; g < 16; ++g) {
        __m512 x[kNv];
        for (int j = 0; j < kNv; ++j) x[j] = Load16As<T>(src, g0 + g * kGs + 16 * j);
        CodeGroupV<K, kNv>(x, scales[g], fv[f], codes + g * kGs, lanes, nullptr);
      }
      err[f] = lanes;
    });
  }
  return true;
}
#endif

#if defined(__AVX2__) && !defined(__AVX512F__)
// The AVX2 forms of CodebookV, CodeGroupV and CodebookGroupV (8 values a vector, the same
// codes, scales and sums; their exactness arguments unchanged).

// One format's vector tables.
struct CodebookV8 {
  using Kind = CodebookKind;
  const Codebook* book;
  CodebookCoder8 coder;
  __m256i levels_lo, levels_hi;  // the 16 levels' bits, for CodebookCoder8::Lookup
  Kind kind;
  float widest_step;   // the largest difference between neighbouring levels
  bool bounded_steps;  // CodebookV::bounded_steps
  explicit CodebookV8(const Codebook& b)
      : book(&b),
        coder(b),
        levels_lo(_mm256_castps_si256(_mm256_loadu_ps(b.levels.data()))),
        levels_hi(_mm256_castps_si256(_mm256_loadu_ps(b.levels.data() + 8))),
        kind(CodebookKindOf(b)),
        widest_step(WidestStep(b.levels)),
        bounded_steps(BoundedSteps(b.levels)) {}
  __m256 Level(__m256i code) const {
    return _mm256_castsi256_ps(CodebookCoder8::Lookup(levels_lo, levels_hi, code));
  }
};

// CodebookV8's codes of 8 values x / s for the kind k (a constant where the caller's is).
inline __m256i Code8(CodebookKind k, const CodebookV8& fv, __m256 val) {
  switch (k) {
    case CodebookKind::kE2m1:
      return E2m1Code8(val);
    case CodebookKind::kE3m0:
      return E3m0Code8(val);
    case CodebookKind::kE1m2:
      return E1m2Code8(val);
    case CodebookKind::kTable:
      break;
  }
  return fv.coder.Code(val);
}

// CodebookV8's levels of 8 values q >= 0 for the kind k: the FP4 grids' without the code
// (MinifloatLevel8), a table's by its code. Always inlined: called per 8 values, it must fold
// to the caller's fixed kind (out of line it took 12% of a format=auto run).
[[gnu::always_inline]] inline __m256 Level8(CodebookKind k, const CodebookV8& fv, __m256 q) {
  switch (k) {
    case CodebookKind::kE2m1:
      return E2m1Level8(q);
    case CodebookKind::kE3m0:
      return E3m0Level8(q);
    case CodebookKind::kE1m2:
      return E1m2Level8(q);
    case CodebookKind::kTable:
      break;
  }
  return fv.Level(fv.coder.Code(q));
}

// The sum of 8 f64 lanes held as two registers (lanes 0-3, 4-7), in SumLanes's order.
inline double SumLanes8(__m256d lo, __m256d hi) {
  alignas(32) double l[8];
  _mm256_store_pd(l, lo);
  _mm256_store_pd(l + 4, hi);
  return SumLanes(l);
}

// CodeGroupV for kNv x 8 finite values.
template <CodebookKind K, int kNv>
inline void CodeGroupV8(const __m256* x, float s, const CodebookV8& fv, uint8_t* codes, ErrorLanesAvx2& err,
                        double* sse) {
  const __m256 sv = _mm256_set1_ps(s);
  const __m256d sd = _mm256_set1_pd(s);
  const bool pow2 = NormalPowerOfTwo(s);
  const __m256 rv = _mm256_set1_ps(1.f / s);
  constexpr bool kExact = K != CodebookKind::kTable;
  const bool checked = !kExact && fv.bounded_steps;
  __m256d sum_lo = _mm256_setzero_pd(), sum_hi = _mm256_setzero_pd();
  for (int j = 0; j < kNv; ++j) {
    const __m256 val = pow2 ? _mm256_mul_ps(x[j], rv) : _mm256_div_ps(x[j], sv);
    const __m256i c = Code8(K, fv, val);
    StoreCodes8(c, reinterpret_cast<int8_t*>(codes + 8 * j));
    const __m256 level = fv.Level(c);
    const __m256 y = _mm256_mul_ps(level, sv);
    const __m256 ax = AbsPs8(x[j]);
    if (kExact || (checked &&
                   _mm256_movemask_ps(_mm256_cmp_ps(AbsPs8(y), _mm256_add_ps(ax, ax), _CMP_LE_OQ)) == 0xFF)) {
      err.Add8Exact(x[j], _mm256_sub_ps(y, x[j]));
    } else {
      err.Add8(x[j], y);
    }
    if (sse) {  // GroupSse: level x s in f64, minus the value, squared and added unfused
      const __m256d dl = _mm256_sub_pd(_mm256_mul_pd(LowPd4(level), sd), LowPd4(x[j]));
      const __m256d dh = _mm256_sub_pd(_mm256_mul_pd(HighPd4(level), sd), HighPd4(x[j]));
      sum_lo = _mm256_add_pd(sum_lo, _mm256_mul_pd(dl, dl));
      sum_hi = _mm256_add_pd(sum_hi, _mm256_mul_pd(dh, dh));
    }
  }
  if (sse) *sse = SumLanes8(sum_lo, sum_hi);
}

// CodebookGroupV for a whole group of kGs (8 x NV) finite elements.
template <DType T, int64_t kGs>
inline bool CodebookGroupV8(const uint8_t* src, int64_t gi, std::span<const CodebookV8> fv,
                            const CodebookOptions& o, bool group_sums, std::vector<FormatPass>& fp,
                            std::vector<double>& group_norm, uint8_t* scratch, ErrorLanesAvx2* err) {
  static_assert(kGs % 8 == 0 && kGs <= 128);
  constexpr int kNv = static_cast<int>(kGs / 8);
  const int64_t g0 = gi * kGs;
  __m256 x[kNv];
  __m256 finite = FiniteLanes8(x[0] = Load8As<T>(src, g0));
  __m256 mx = AbsPs8(x[0]);
  for (int j = 1; j < kNv; ++j) {
    x[j] = Load8As<T>(src, g0 + 8 * j);
    finite = _mm256_and_ps(finite, FiniteLanes8(x[j]));
    mx = _mm256_max_ps(mx, AbsPs8(x[j]));
  }
  if (_mm256_movemask_ps(finite) != 0xFF) return false;
  const float amax = ReduceMax8(mx);
  if (group_sums) {
    __m256d lo = _mm256_setzero_pd(), hi = _mm256_setzero_pd();
    for (int j = 0; j < kNv; ++j) {
      const __m256d a = LowPd4(x[j]), b = HighPd4(x[j]);
      lo = _mm256_add_pd(lo, _mm256_mul_pd(a, a));
      hi = _mm256_add_pd(hi, _mm256_mul_pd(b, b));
    }
    group_norm[gi] = SumLanes8(lo, hi);
  }
  for (size_t f = 0; f < fv.size(); ++f) {
    const float s = PlainCodebookScale(*fv[f].book, amax, o);
    fp[f].group_scales[gi] = s;
    uint8_t* codes = fp[f].codes ? fp[f].codes->mutable_data() + g0 : scratch;
    double* sse = group_sums ? &fp[f].group_sse[gi] : nullptr;
    WithKind(fv[f].kind, [&]<CodebookKind K>() { CodeGroupV8<K, kNv>(x, s, fv[f], codes, err[f], sse); });
  }
  return true;
}
#endif

// Each chunk of kWeightErrorChunk elements decodes the groups it touches whole (a group cut by
// a chunk boundary is decoded twice, the same way), codes its own elements for every format and
// measures them. With `scales_known` (CodebookScales ran) it codes with those scales; else it
// chooses them itself, and the chunk holding a group's first element stores its scale and, with
// `group_sums`, the group's sums (GroupNorm, GroupSse: what the format choice and the input
// weights need; without them the tensor's error sums serve).
// kGs: the group size when fixed at compile time (32, 64, 128) for up to three formats whose
// scales no search chooses and no input weights weigh (nf4, mxfp4, fp4 with search=false):
// whole groups then run CodebookGroupV.
template <DType T, int64_t kGs = 0>
void CodebookChunks(const uint8_t* src, int64_t n, int64_t cols, int64_t gs, const CodebookOptions& o,
                    bool scales_known, bool group_sums, std::vector<FormatPass>& fp,
                    std::vector<double>& group_norm, std::vector<int64_t>& first_bad) {
  if constexpr (kGs == 0) {
#if defined(__AVX2__)
    if (fp.size() <= 3 && !scales_known && o.input_weight.empty()) {
      auto args = [&]<int64_t G>() {
        CodebookChunks<T, G>(src, n, cols, gs, o, scales_known, group_sums, fp, group_norm, first_bad);
      };
      if (gs == 32) return args.template operator()<32>();
      if (gs == 64) return args.template operator()<64>();
      if (gs == 128) return args.template operator()<128>();
    }
#endif
  }
  const int64_t nchunks = static_cast<int64_t>(first_bad.size());
#pragma omp parallel if (nchunks > 1)
  {
    std::vector<float> v(gs), back(gs);
    std::vector<uint8_t> tmp(16 * gs);  // CodebookGroups16V's 16 groups of codes without a buffer
#if defined(__AVX512F__)
    std::vector<CodebookV> fv;
    if constexpr (kGs > 0) {
      for (const FormatPass& f : fp) fv.emplace_back(*f.book);
    }
#elif defined(__AVX2__)
    std::vector<CodebookV8> fv;
    if constexpr (kGs > 0) {
      for (const FormatPass& f : fp) fv.emplace_back(*f.book);
    }
#endif
    // Each chunk's error sums are kept here and stored once: adjacent chunks' sums share cache
    // lines, and the threads updating them in place per group made the sums a quarter of an
    // nf4 run.
    std::vector<WeightErrorChunk> err(fp.size());
#pragma omp for schedule(dynamic, 1)
    for (int64_t c = 0; c < nchunks; ++c) {
      const int64_t i0 = c * kWeightErrorChunk, i1 = std::min(n, i0 + kWeightErrorChunk);
      for (size_t f = 0; f < fp.size(); ++f) err[f] = fp[f].errors[c];
      for (int64_t i = i0; i < i1;) {
        const int64_t gi = i / gs, g0 = gi * gs, end = std::min(i1, g0 + gs);
#if defined(__AVX512F__)
        if constexpr (kGs > 0) {
          // Whole finite groups in registers, their error sums kept in registers between them.
          if (g0 == i && end == g0 + kGs) {
            ErrorLanes8 lanes[3] = {ErrorLanes8(err[0]), ErrorLanes8(err[std::min<size_t>(1, fp.size() - 1)]),
                                    ErrorLanes8(err[std::min<size_t>(2, fp.size() - 1)])};
            int64_t g = g0;
            if (!group_sums) {
              for (; g + 16 * kGs <= i1; g += 16 * kGs) {
                if (!CodebookGroups16V<T, kGs>(src, g / kGs, fv, o, fp, tmp.data(), lanes)) break;
              }
            }
            for (; g + kGs <= i1; g += kGs) {
              if (!CodebookGroupV<T, kGs>(src, g / kGs, fv, o, group_sums, fp, group_norm, tmp.data(), lanes)) break;
            }
            for (size_t f = 0; f < fp.size(); ++f) lanes[f].Store(err[f]);
            if (g > i) {
              i = g;
              continue;
            }
          }
        }
#elif defined(__AVX2__)
        if constexpr (kGs > 0) {
          if (g0 == i && end == g0 + kGs) {  // whole finite groups, their sums in registers between them
            ErrorLanesAvx2 lanes[3] = {ErrorLanesAvx2(err[0]),
                                       ErrorLanesAvx2(err[std::min<size_t>(1, fp.size() - 1)]),
                                       ErrorLanesAvx2(err[std::min<size_t>(2, fp.size() - 1)])};
            int64_t g = g0;
            for (; g + kGs <= i1; g += kGs) {
              if (!CodebookGroupV8<T, kGs>(src, g / kGs, fv, o, group_sums, fp, group_norm, tmp.data(),
                                           lanes))
                break;
            }
            for (size_t f = 0; f < fp.size(); ++f) lanes[f].Store(err[f]);
            if (g > i) {
              i = g;
              continue;
            }
          }
        }
#endif
        const int64_t k0 = i - g0, k1 = end - g0;
        for (int64_t k = 0; k < gs; ++k) v[k] = LoadAs<T>(src, g0 + k);
        int bad = 0;
#pragma omp simd reduction(+ : bad)
        for (int64_t k = k0; k < k1; ++k) bad += IsFiniteValue(v[k]) ? 0 : 1;
        if (bad > 0 && first_bad[c] == INT64_MAX) {
          for (int64_t k = k0; k < k1; ++k) {
            if (!IsFiniteValue(v[k])) {
              first_bad[c] = g0 + k;
              break;
            }
          }
        }
        const bool owner = !scales_known && g0 >= i0;
        const double* h = o.input_weight.empty() ? nullptr : o.input_weight.data() + g0 % cols;
        if (owner && group_sums) group_norm[gi] = GroupNorm(v.data(), gs, 1, h);
        for (size_t fi = 0; fi < fp.size(); ++fi) {
          FormatPass& f = fp[fi];
          const float s = scales_known ? f.group_scales[gi] : CodebookGroupScale(*f.book, v.data(), gs, 1, o, h, tmp.data());
          f.book->EncodeScaled(v.data(), gs, 1, s, tmp.data(), 1);
          const float* levels = f.book->levels.data();
#pragma omp simd
          for (int64_t k = k0; k < k1; ++k) back[k] = levels[tmp[k]] * s;
          if (f.codes) std::memcpy(f.codes->mutable_data() + g0 + k0, tmp.data() + k0, k1 - k0);
          err[fi].AddSpan(g0 + k0, v.data() + k0, back.data() + k0, k1 - k0);
          if (owner) {
            f.group_scales[gi] = s;
            if (group_sums) f.group_sse[gi] = GroupSse(*f.book, v.data(), gs, 1, s, h, tmp.data());
          }
        }
        i = end;
      }
      for (size_t f = 0; f < fp.size(); ++f) fp[f].errors[c] = err[f];
    }
  }
}

}  // namespace

bool PlainCodebookScales(const CodebookOptions& opts) {
  const bool search = opts.scale == CodebookOptions::Scale::kSearch && opts.search_steps > 0;
  return opts.input_weight.empty() && !search;
}

absl::StatusOr<QuantInfo> CodebookParameters(int64_t rows, int64_t cols, const std::string& format,
                                             const CodebookOptions& o) {
  if (!CodebookMeasuredLayout(cols, o)) return Internal("CodebookParameters: unsupported layout");
  ASSIGN_OR_RETURN(const Codebook* book, FindCodebook(format));
  const int64_t gs = o.group_size == 0 ? cols : o.group_size;
  return CodebookInfo(*book, format, 0, gs, rows, cols / gs, /*with_scales=*/false);
}

absl::StatusOr<MeasuredCodebook> QuantizeCodebookMeasured(DType dtype, std::span<const uint8_t> src, int64_t rows,
                                                          int64_t cols, const std::vector<std::string>& formats,
                                                          CodebookOptions o, std::string_view name, bool keep_codes) {
  if (dtype != DType::kF32 && dtype != DType::kF16 && dtype != DType::kBF16) {
    return Internal("QuantizeCodebookMeasured reads f32, f16 or bf16, not {}", DTypeName(dtype));
  }
  if (formats.empty()) return InvalidArgument("no codebook format to try");
  const int64_t n = rows * cols;
  if (static_cast<int64_t>(src.size()) != DTypeBytes(dtype, n)) {
    return Internal("QuantizeCodebookMeasured: size mismatch");
  }
  if (!CodebookMeasuredLayout(cols, o)) return Internal("QuantizeCodebookMeasured: unsupported layout");
  const int64_t gs = o.group_size == 0 ? cols : o.group_size, groups = cols / gs;
  if (!o.input_weight.empty() && static_cast<int64_t>(o.input_weight.size()) != cols) {
    return Internal("input weights have {} entries for {} inputs", o.input_weight.size(), cols);
  }
  const int64_t nchunks = (n + kWeightErrorChunk - 1) / kWeightErrorChunk;
  // The clipping search first, over groups; the other rules choose scales as they code.
  const bool search = o.scale == CodebookOptions::Scale::kSearch && o.search_steps > 0;
  const bool plain = PlainCodebookScales(o);
  // Per-group sums only where something chooses by them (several formats) or they are the
  // weighted error (fresh pages cost a fault each here).
  const bool group_sums = !plain || formats.size() > 1;
  const int64_t sums = group_sums ? rows * groups : 0;
  std::vector<FormatPass> fp(formats.size());
  for (size_t f = 0; f < formats.size(); ++f) {
    ASSIGN_OR_RETURN(fp[f].book, FindCodebook(formats[f]));
    if (keep_codes && formats.size() == 1) fp[f].codes = std::make_shared<UninitBuffer>(static_cast<size_t>(n));
    fp[f].group_scales.assign(rows * groups, 1.f);
    fp[f].group_sse.assign(sums, 0.0);
    fp[f].errors.resize(nchunks);
  }
  std::vector<double> group_norm(sums, 0.0);
  std::vector<int64_t> first_bad(nchunks, INT64_MAX);
  auto run = [&]<DType T>() {
    if (search) CodebookScales<T>(src.data(), n, cols, gs, o, fp, group_norm);
    CodebookChunks<T>(src.data(), n, cols, gs, o, search, group_sums, fp, group_norm, first_bad);
  };
  if (dtype == DType::kF32) run.template operator()<DType::kF32>();
  if (dtype == DType::kF16) run.template operator()<DType::kF16>();
  if (dtype == DType::kBF16) run.template operator()<DType::kBF16>();
  for (int64_t i : first_bad) {
    if (i == INT64_MAX) continue;  // the first one in element order, as FiniteWeights reports it
    return NonFiniteAt(dtype, src.data(), i, cols, name);
  }
  size_t best = 0;
  double best_sse = 0;
  for (size_t f = 0; f < fp.size() && group_sums; ++f) {
    const double sse = SumByChannel(fp[f].group_sse, rows, groups);
    if (f == 0 || sse < best_sse) best = f, best_sse = sse;
  }
  MeasuredCodebook r;
  r.info = CodebookInfo(*fp[best].book, formats[best], 0, gs, rows, groups, /*with_scales=*/false);
  r.info.mutable_scales() = std::move(fp[best].group_scales);
  if (keep_codes) {
    if (fp[best].codes) {
      r.codes = std::move(fp[best].codes);
    } else {
      ASSIGN_OR_RETURN(r.codes, CodebookCodes(dtype, src, rows, cols, r.info));
    }
  }
  r.error = CombineWeightErrorChunks(fp[best].errors);
  r.weighted_sse = plain ? r.error.err2 : best_sse;
  r.weighted_norm = plain ? r.error.ref2 : SumByChannel(group_norm, rows, groups);
  return r;
}

namespace {

#if defined(__AVX512F__)
// ChooseCodebookFormat's estimates over groups [g_begin, g_end) of gs (a multiple of 16), up to
// three formats: each group's scale as CodebookGroupV chooses it, its codes, d = levels[c] s - x
// rounded once to f32 (fused), d * d added by fused steps into 16 f32 lanes per group, each
// group's lanes added in f64 into 16 lanes per format and those into sums[f]; false at a group
// holding a NaN or an infinity.
// The codes come from x * (1 / s) where the coder divides (s not a power of two, 2^-100 <= s <=
// 2^100): both quotients lie within |x / s| 2^-23 of x / s, so where their codes differ x / s is
// that close to the midpoint m between two neighbouring levels L1 < L2, and the two squared
// errors differ by (L2 - L1) s |L1 + L2 - 2 x / s| s <= gap |x| s 2^-22 (gap the widest step
// between neighbouring levels). slack[f] adds s sum |x| over each such group (the |x| summed in
// f32 lanes, then f64): the caller multiplies it by gap 2^-22 (with margin) and widens the
// bounds by it. E2M1's and E1M2's levels come from a table by floor(4 x / s)
// (CodebookV::quarter) and E3M0's from rounding to a power of two (E3m0Level), which at an
// exact midpoint of x * (1 / s) may take the other nearest level than the coder's even one: with
// a power-of-two s that is a tie of x / s itself (both levels' |L s - x| equal, the same square),
// otherwise a case the slack above already covers.
// kAutoOrder: the formats are format=auto's (e2m1, e3m0, e1m2; the caller checks the kinds),
// each one's level steps fixed at compile time; otherwise chosen per format at run time.
template <DType T, int NF, bool kAutoOrder = false>
bool EstimateCodebookSse(const uint8_t* src, int64_t g_begin, int64_t g_end, int64_t gs, const CodebookV* fv,
                         const CodebookOptions& o, double* sums, double* slack) {
  constexpr int nf = NF;  // the format loops unrolled: their vectors stay in registers
  const __m512 big = _mm512_set1_ps(std::numeric_limits<float>::max());
  bool grids = true;  // every format an FP4 grid: the branch-free loop below
  MinifloatGridV grid[3] = {fv[0].Grid(), fv[0].Grid(), fv[0].Grid()};
  // How each format's level is found: 0 its grid's steps, 1 the quarter table
  // (CodebookV::quarter), 2 E3M0's power of two (E3m0Level).
  int mode[3] = {0, 0, 0};
  for (int f = 0; f < nf; ++f) {
    grids = grids && fv[f].kind != CodebookV::Kind::kTable;
    grid[f] = fv[f].Grid();
    mode[f] = fv[f].quarter ? 1 : fv[f].kind == CodebookV::Kind::kE3m0 ? 2 : 0;
  }
  const __m512 last = _mm512_set1_ps(31.f);
  // Each format's group sums (and slack terms) added in f64 lanes, reduced once at the end.
  __m512d tot[3][2], slk[3][2];
  for (int f = 0; f < 3; ++f) tot[f][0] = tot[f][1] = slk[f][0] = slk[f][1] = _mm512_setzero_pd();
  for (int64_t gi = g_begin; gi < g_end; ++gi) {
    const int64_t g0 = gi * gs;
    __mmask16 finite = 0xFFFF;
    __m512 mx = _mm512_setzero_ps(), sum_abs = _mm512_setzero_ps();
    for (int64_t k = g0; k < g0 + gs; k += 16) {
      const __m512 a = _mm512_abs_ps(Load16As<T>(src, k));
      finite &= _mm512_cmp_ps_mask(a, big, _CMP_LE_OQ);
      mx = _mm512_max_ps(mx, a);
      sum_abs = _mm512_add_ps(sum_abs, a);
    }
    if (finite != 0xFFFF) return false;
    const float amax = _mm512_reduce_max_ps(mx);
    __m512 sv[3], rv[3], rv4[3], acc[3];
    bool mul[3], all_mul = true;
#pragma GCC unroll 3
    for (int f = 0; f < nf; ++f) {
      const float s = PlainCodebookScale(*fv[f].book, amax, o);
      sv[f] = _mm512_set1_ps(s);
      rv[f] = _mm512_set1_ps(1.f / s);
      rv4[f] = _mm512_set1_ps(4.f * (1.f / s));
      const bool pow2 = NormalPowerOfTwo(s);
      mul[f] = pow2 || (s >= 0x1p-100f && s <= 0x1p100f);
      all_mul = all_mul && mul[f];
      if (!pow2 && mul[f]) {
        const __m512d sd = _mm512_set1_pd(s);
        slk[f][0] = _mm512_fmadd_pd(LowPd(sum_abs), sd, slk[f][0]);
        slk[f][1] = _mm512_fmadd_pd(HighPd(sum_abs), sd, slk[f][1]);
      }
      acc[f] = _mm512_setzero_ps();
    }
    if (grids && all_mul) {
      // The FP4 grids are symmetric: |x| gives the same squared error (fl(|x| r) = |fl(x r)|,
      // the level's and the difference's signs flip together).
      // With the quarter table, a (4 r) = 4 (a r) exactly (scaling by 4 rounds nothing; a
      // product below f32's normal range is far below 1/4 either way: entry 0).
      for (int64_t k = g0; k < g0 + gs; k += 16) {
        const __m512 ax = _mm512_abs_ps(Load16As<T>(src, k));
#pragma GCC unroll 3
        for (int f = 0; f < nf; ++f) {
          const int m = kAutoOrder ? (f == 1 ? 2 : 1) : mode[f];
          const __m512 q = _mm512_mul_ps(ax, m == 1 ? rv4[f] : rv[f]);
          const __m512 level = m == 1   ? _mm512_permutex2var_ps(fv[f].quarter_lo, _mm512_cvttps_epi32(_mm512_min_ps(q, last)),
                                                                 fv[f].quarter_hi)
                               : m == 2 ? E3m0Level(q)
                                        : grid[f].Level(q);
          const __m512 d = _mm512_fmsub_ps(level, sv[f], ax);
          acc[f] = _mm512_fmadd_ps(d, d, acc[f]);
        }
      }
    } else {  // NF4's table (not symmetric: signed values), or a quotient that needs the division
      for (int64_t k = g0; k < g0 + gs; k += 16) {
        const __m512 x = Load16As<T>(src, k);
        const __m512 ax = _mm512_abs_ps(x);
        for (int f = 0; f < nf; ++f) {
          const bool table = fv[f].kind == CodebookV::Kind::kTable;
          const __m512 v = table ? x : ax;
          const __m512 q = mul[f] ? _mm512_mul_ps(v, rv[f]) : _mm512_div_ps(v, sv[f]);
          const __m512 level = table ? _mm512_permutexvar_ps(fv[f].coder.Code(q), fv[f].levels) : grid[f].Level(q);
          const __m512 d = _mm512_fmsub_ps(level, sv[f], v);
          acc[f] = _mm512_fmadd_ps(d, d, acc[f]);
        }
      }
    }
#pragma GCC unroll 3
    for (int f = 0; f < nf; ++f) {
      tot[f][0] = _mm512_add_pd(tot[f][0], LowPd(acc[f]));
      tot[f][1] = _mm512_add_pd(tot[f][1], HighPd(acc[f]));
    }
  }
  for (int f = 0; f < nf; ++f) {
    sums[f] += _mm512_reduce_add_pd(_mm512_add_pd(tot[f][0], tot[f][1]));
    slack[f] += _mm512_reduce_add_pd(_mm512_add_pd(slk[f][0], slk[f][1]));
  }
  return true;
}
#endif

#if defined(__AVX2__) && !defined(__AVX512F__)
// EstimateCodebookSse with 8-value vectors for the FP4 grids (false for a table such as NF4: the
// caller then takes the exact path): each format's codes of |x| * (1 / s) (|x| / s where s is neither a
// normal power of two nor within [2^-100, 2^100]) at the level its arithmetic coder chooses (MinifloatLevel8:
// MinifloatCode8's level without the code, so only the slack's case differs from x / s), d = level s - |x|
// rounded once (fused), d * d
// added by fused steps into 8 f32 lanes per group (gs / 8 additions a lane: the caller's bound), then in f64
// into 8 lanes per format; false at a group holding a NaN or an infinity. kAutoOrder: the formats are
// format=auto's (e2m1, e3m0, e1m2), their coders fixed at compile time.
template <DType T, int NF, bool kAutoOrder = false>
bool EstimateCodebookSse8(const uint8_t* src, int64_t g_begin, int64_t g_end, int64_t gs,
                          const CodebookV8* fv, const CodebookOptions& o, double* sums, double* slack) {
  using Kind = CodebookV8::Kind;
  for (int f = 0; f < NF; ++f) {
    if (fv[f].kind == Kind::kTable) return false;
  }
  auto level = [&](int f, __m256 q) {
    return Level8(kAutoOrder ? (f == 0   ? Kind::kE2m1
                                : f == 1 ? Kind::kE3m0
                                         : Kind::kE1m2)
                             : fv[f].kind,
                  fv[f], q);
  };
  __m256d tot[3][2], slk[3][2];
  for (int f = 0; f < 3; ++f) tot[f][0] = tot[f][1] = slk[f][0] = slk[f][1] = _mm256_setzero_pd();
  for (int64_t gi = g_begin; gi < g_end; ++gi) {
    const int64_t g0 = gi * gs;
    __m256 finite = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
    __m256 mx = _mm256_setzero_ps(), sum_abs = _mm256_setzero_ps();
    for (int64_t k = g0; k < g0 + gs; k += 8) {
      const __m256 x = Load8As<T>(src, k);
      finite = _mm256_and_ps(finite, FiniteLanes8(x));
      const __m256 a = AbsPs8(x);
      mx = _mm256_max_ps(mx, a);
      sum_abs = _mm256_add_ps(sum_abs, a);
    }
    if (_mm256_movemask_ps(finite) != 0xFF) return false;
    const float amax = ReduceMax8(mx);
    __m256 sv[3], rv[3], acc[3];
    bool mul[3];
#pragma GCC unroll 3
    for (int f = 0; f < NF; ++f) {
      const float s = PlainCodebookScale(*fv[f].book, amax, o);
      const bool pow2 = NormalPowerOfTwo(s);
      mul[f] = pow2 || (s >= 0x1p-100f && s <= 0x1p100f);
      sv[f] = _mm256_set1_ps(s);
      rv[f] = _mm256_set1_ps(1.f / s);
      if (!pow2 && mul[f]) {
        const __m256d sd = _mm256_set1_pd(s);
        slk[f][0] = _mm256_fmadd_pd(LowPd4(sum_abs), sd, slk[f][0]);
        slk[f][1] = _mm256_fmadd_pd(HighPd4(sum_abs), sd, slk[f][1]);
      }
      acc[f] = _mm256_setzero_ps();
    }
    // The grids are symmetric: |x| gives the same squared error.
    for (int64_t k = g0; k < g0 + gs; k += 8) {
      const __m256 ax = AbsPs8(Load8As<T>(src, k));
#pragma GCC unroll 3
      for (int f = 0; f < NF; ++f) {
        const __m256 q = mul[f] ? _mm256_mul_ps(ax, rv[f]) : _mm256_div_ps(ax, sv[f]);
        const __m256 d = _mm256_fmsub_ps(level(f, q), sv[f], ax);
        acc[f] = _mm256_fmadd_ps(d, d, acc[f]);
      }
    }
#pragma GCC unroll 3
    for (int f = 0; f < NF; ++f) {
      tot[f][0] = _mm256_add_pd(tot[f][0], LowPd4(acc[f]));
      tot[f][1] = _mm256_add_pd(tot[f][1], HighPd4(acc[f]));
    }
  }
  for (int f = 0; f < NF; ++f) {
    sums[f] += SumLanes8(tot[f][0], tot[f][1]);
    slack[f] += SumLanes8(slk[f][0], slk[f][1]);
  }
  return true;
}
#endif

}  // namespace

std::optional<CodebookEstimates> EstimateCodebookErrors(DType dtype, std::span<const uint8_t> src, int64_t rows,
                                                        int64_t cols, const std::vector<std::string>& formats,
                                                        const CodebookOptions& o) {
  const int64_t gs = o.group_size == 0 ? cols : o.group_size;
  const int64_t n = rows * cols;
  if (formats.empty() || formats.size() > 3 || !PlainCodebookScales(o) || !CodebookMeasuredLayout(cols, o) ||
      gs % 16 != 0 || (dtype != DType::kF32 && dtype != DType::kF16 && dtype != DType::kBF16) ||
      static_cast<int64_t>(src.size()) != DTypeBytes(dtype, n)) {
    return std::nullopt;
  }
#if defined(__AVX2__)
#if defined(__AVX512F__)
  using FormatV = CodebookV;
  constexpr double kLanes = 16;  // f32 lanes of a group's sums
#else
  using FormatV = CodebookV8;
  constexpr double kLanes = 8;
#endif
  const int nf = static_cast<int>(formats.size());
  std::vector<FormatV> fv;
  for (const std::string& f : formats) {
    auto book = FindCodebook(f);
    if (!book.ok()) return std::nullopt;
    fv.emplace_back(**book);
  }
  const int64_t groups = n / gs;
  // format=auto's order: its loop with the quarter tables fixed at compile time.
  const bool auto_order = nf == 3 && fv[0].kind == FormatV::Kind::kE2m1 &&
                          fv[1].kind == FormatV::Kind::kE3m0 && fv[2].kind == FormatV::Kind::kE1m2;
  double sums[3] = {0, 0, 0}, slack[3] = {0, 0, 0};
  bool finite = true;
#pragma omp parallel if (n > kWeightErrorChunk)
  {
    double mine[3] = {0, 0, 0}, mine_slack[3] = {0, 0, 0};
    bool ok = true;
#pragma omp for schedule(static)
    for (int64_t g = 0; g < groups; g += 64) {
      if (!ok) continue;
      const int64_t end = std::min(groups, g + 64);
      auto run = [&]<DType T>() {
#if defined(__AVX512F__)
        ok = nf == 1   ? EstimateCodebookSse<T, 1>(src.data(), g, end, gs, fv.data(), o, mine, mine_slack)
             : nf == 2 ? EstimateCodebookSse<T, 2>(src.data(), g, end, gs, fv.data(), o, mine, mine_slack)
             : auto_order ? EstimateCodebookSse<T, 3, true>(src.data(), g, end, gs, fv.data(), o, mine, mine_slack)
                          : EstimateCodebookSse<T, 3>(src.data(), g, end, gs, fv.data(), o, mine, mine_slack);
#else
        ok = nf == 1   ? EstimateCodebookSse8<T, 1>(src.data(), g, end, gs, fv.data(), o, mine, mine_slack)
             : nf == 2 ? EstimateCodebookSse8<T, 2>(src.data(), g, end, gs, fv.data(), o, mine, mine_slack)
             : auto_order
                 ? EstimateCodebookSse8<T, 3, true>(src.data(), g, end, gs, fv.data(), o, mine, mine_slack)
                 : EstimateCodebookSse8<T, 3>(src.data(), g, end, gs, fv.data(), o, mine, mine_slack);
#endif
      };
      if (dtype == DType::kF32) run.template operator()<DType::kF32>();
      if (dtype == DType::kF16) run.template operator()<DType::kF16>();
      if (dtype == DType::kBF16) run.template operator()<DType::kBF16>();
    }
#pragma omp critical
    {
      finite = finite && ok;
      for (int f = 0; f < nf; ++f) sums[f] += mine[f], slack[f] += mine_slack[f];
    }
  }
  if (!finite) return std::nullopt;
  // Relative bounds: the estimate (each difference and each of a lane's gs / kLanes fused additions
  // rounded at 2^-24, the f64 additions over the groups at 2^-53) and QuantizeCodebookMeasured's
  // f64 sums (a group's lanes, then groups, channels); an absolute 2^-149 per element for
  // results below f32's normal range; and each format's slack for codes made from x * (1 / s)
  // (EstimateCodebookSse): gap |x| s 2^-22 per element, taken at 2^-19 (8x margin, and past the
  // rounding of the slack's own sums). Both relative errors are counted on each side.
  const double e32 =
      (static_cast<double>(gs) / kLanes + 4) * 0x1p-24 + static_cast<double>(groups + 64) * 0x1p-52;
  const double e64 = static_cast<double>(gs + groups + rows + 64) * 0x1p-52;
  const double rel = 3 * (e32 + e64), abs_err = 2 * static_cast<double>(n) * 0x1p-149;
  CodebookEstimates e;
  for (int f = 0; f < nf; ++f) {
    const double widen = abs_err + fv[f].widest_step * slack[f] * 0x1p-19;
    if (!std::isfinite(sums[f]) || !std::isfinite(widen)) return std::nullopt;
    e.sums.push_back(sums[f]);
    e.lower.push_back((sums[f] - widen) * (1 - rel));
    e.upper.push_back((sums[f] + widen) * (1 + rel));
  }
  return e;
#else
  return std::nullopt;
#endif
}

absl::StatusOr<CodebookChoice> ChooseCodebookFormat(DType dtype, std::span<const uint8_t> src, int64_t rows,
                                                    int64_t cols, const std::vector<std::string>& formats,
                                                    const CodebookOptions& o, std::string_view name) {
  auto exact = [&]() -> absl::StatusOr<CodebookChoice> {
    ASSIGN_OR_RETURN(MeasuredCodebook m,
                     QuantizeCodebookMeasured(dtype, src, rows, cols, formats, o, name, /*keep_codes=*/false));
    for (size_t f = 0; f < formats.size(); ++f) {
      if (formats[f] == m.info.format()) return CodebookChoice{f, true};
    }
    return Internal("ChooseCodebookFormat: format '{}' not among the candidates", m.info.format());
  };
  if (formats.size() < 2) return exact();
  // A format wins when its upper bound lies below every other's lower bound; else the f64 sums
  // decide (and report a NaN or an infinity, which stops the estimate).
  const std::optional<CodebookEstimates> e = EstimateCodebookErrors(dtype, src, rows, cols, formats, o);
  if (!e) return exact();
  size_t best = 0;
  for (size_t f = 1; f < formats.size(); ++f) {
    if (e->sums[f] < e->sums[best]) best = f;
  }
  for (size_t f = 0; f < formats.size(); ++f) {
    if (f != best && !(e->upper[best] < e->lower[f])) return exact();
  }
  return CodebookChoice{best, false};
}

absl::StatusOr<std::shared_ptr<UninitBuffer>> CodebookCodes(DType dtype, std::span<const uint8_t> src, int64_t rows,
                                                            int64_t cols, const QuantInfo& q) {
  const int64_t n = rows * cols, gs = q.group_size;
  if ((dtype != DType::kF32 && dtype != DType::kF16 && dtype != DType::kBF16) ||
      static_cast<int64_t>(src.size()) != DTypeBytes(dtype, n)) {
    return Internal("CodebookCodes reads f32, f16 or bf16 bytes of the weight's size");
  }
  if (!q.codebook() || q.channel_axis != 0 || gs <= 0 || cols % gs != 0 ||
      static_cast<int64_t>(q.scales().size()) != n / gs) {
    return Internal("CodebookCodes: the weight and its quantization parameters do not match");
  }
  ASSIGN_OR_RETURN(const Codebook* book, FindCodebook(q.format()));
  auto out = std::make_shared<UninitBuffer>(static_cast<size_t>(n));
  uint8_t* codes = out->mutable_data();
  const int64_t ngroups = n / gs;
  auto run = [&]<DType T>() {
#pragma omp parallel if (n > kWeightErrorChunk)
    {
      std::vector<float> v(gs);
#if defined(__AVX512F__)
      // EncodeScaled's vector steps straight from the stored values (CodebookGroupV's coder).
      const CodebookV coder(*book);
#endif
#pragma omp for schedule(static)
      for (int64_t gi = 0; gi < ngroups; ++gi) {
        const int64_t g0 = gi * gs;
#if defined(__AVX512F__)
        if (gs % 16 == 0) {
          const float s = q.scales()[gi];
          const __m512 sv = _mm512_set1_ps(s), rv = _mm512_set1_ps(1.f / s);
          const bool pow2 = NormalPowerOfTwo(s);
          const __m512 inf = _mm512_set1_ps(std::numeric_limits<float>::infinity());
          for (int64_t k = g0; k < g0 + gs; k += 16) {
            const __m512 x = Load16As<T>(src.data(), k);
            const __mmask16 finite = _mm512_cmp_ps_mask(_mm512_abs_ps(x), inf, _CMP_LT_OQ);
            const __m512i c =
                coder.Code(_mm512_maskz_mov_ps(finite, pow2 ? _mm512_mul_ps(x, rv) : _mm512_div_ps(x, sv)));
            _mm_storeu_si128(reinterpret_cast<__m128i*>(codes + k), _mm512_cvtepi32_epi8(c));
          }
          continue;
        }
#endif
        for (int64_t k = 0; k < gs; ++k) v[k] = LoadAs<T>(src.data(), g0 + k);
        book->EncodeScaled(v.data(), gs, 1, q.scales()[gi], codes + g0, 1);
      }
    }
  };
  if (dtype == DType::kF32) run.template operator()<DType::kF32>();
  if (dtype == DType::kF16) run.template operator()<DType::kF16>();
  if (dtype == DType::kBF16) run.template operator()<DType::kBF16>();
  return out;
}

std::pair<std::vector<int8_t>, QuantInfo> QuantizeFp8(std::span<const float> w, int64_t rows, int64_t cols,
                                                      int channel_axis) {
  QuantInfo q;
  q.bits = 8;
  q.set_format("fp8-e4m3");
  q.channel_axis = channel_axis;
  q.channels = channel_axis == 0 ? rows : cols;
  const int64_t in = channel_axis == 0 ? cols : rows;
  q.group_size = in;
  q.groups = 1;
  q.mutable_scales().assign(q.channels, 0.f);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) {
      float& s = q.mutable_scales()[channel_axis == 0 ? r : c];
      s = std::max(s, std::fabs(w[r * cols + c]));
    }
  for (float& s : q.mutable_scales()) s = s > 0 && std::isfinite(s) ? s / kE4M3.max_finite : 1.f;
  std::vector<int8_t> codes(rows * cols);
#pragma omp parallel for schedule(static) if (rows * cols > (1 << 16))
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) {
      const float s = q.scales()[channel_axis == 0 ? r : c];
      codes[r * cols + c] = static_cast<int8_t>(MiniFloatEncode(w[r * cols + c] / s, kE4M3, true));
    }
  return {std::move(codes), std::move(q)};
}

void Dequantize(std::span<const int8_t> codes, int64_t rows, int64_t cols, const QuantInfo& q, float* out) {
  if (q.channel_axis == 0 && !q.codebook() && !q.fp8() && q.group_size > 0 && cols % q.group_size == 0) {
    // Integer codes of [out, in] rows: one scale (and zero point) per run of group_size inputs.
#pragma omp parallel for schedule(static) if (rows * cols > (1 << 16))
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t g = 0; g < cols / q.group_size; ++g) {
        const int64_t si = r * q.groups + g, at = r * cols + g * q.group_size;
        const float s = q.scales()[si];
        const int z = q.symmetric ? 0 : q.zero_points()[si];
#pragma omp simd
        for (int64_t k = 0; k < q.group_size; ++k) out[at + k] = static_cast<float>(codes[at + k] - z) * s;
      }
    }
  } else if (q.channel_axis == 0 && q.codebook() && q.levels().size() >= 16 && q.group_size > 0 &&
             cols % q.group_size == 0) {
    // Codebook codes of [out, in] rows: a 16-entry table lookup times the group's scale.
    float levels[16];
    std::copy(q.levels().begin(), q.levels().begin() + 16, levels);
#pragma omp parallel for schedule(static) if (rows * cols > (1 << 16))
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t g = 0; g < cols / q.group_size; ++g) {
        const int64_t at = r * cols + g * q.group_size;
        const float s = q.scales()[r * q.groups + g];
#pragma omp simd
        for (int64_t k = 0; k < q.group_size; ++k) out[at + k] = levels[codes[at + k] & 0xF] * s;
      }
    }
  } else {
#pragma omp parallel for schedule(static) if (rows * cols > (1 << 16))
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t c = 0; c < cols; ++c) {
        const int64_t si = q.ScaleIndex(r, c);
        const int8_t code = codes[r * cols + c];
        if (q.codebook()) {
          out[r * cols + c] = q.levels()[code & 0xF] * q.scales()[si];
        } else if (q.fp8()) {
          out[r * cols + c] = MiniFloatDecode(static_cast<uint8_t>(code), kE4M3) * q.scales()[si];
        } else {
          const int z = q.symmetric ? 0 : q.zero_points()[si];
          out[r * cols + c] = static_cast<float>(code - z) * q.scales()[si];
        }
      }
    }
  }
  const int64_t n = static_cast<int64_t>(q.outlier_inputs.size());
  for (int64_t ch = 0; ch < q.channels && n > 0; ++ch) {
    for (int64_t j = 0; j < n; ++j) {
      const int64_t k = q.outlier_inputs[j];
      out[q.channel_axis == 0 ? ch * cols + k : k * cols + ch] = q.outlier_values[ch * n + j];
    }
  }
}

absl::StatusOr<CodebookResult> QuantizeCodebookBest(std::span<const float> w, int64_t rows, int64_t cols,
                                                    const std::vector<std::string>& formats,
                                                    CodebookOptions opts) {
  if (formats.empty()) return InvalidArgument("no codebook format to try");
  std::optional<CodebookResult> best;
  for (const auto& f : formats) {
    opts.format = f;
    ASSIGN_OR_RETURN(CodebookResult r, QuantizeCodebook(w, rows, cols, opts));
    if (!best || r.weighted_sse < best->weighted_sse) best = std::move(r);
  }
  return std::move(*best);
}

}  // namespace compress
