// Activation / KV-cache quantization specs and their quantize-dequantize simulation.
#include "core/act_quant.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "core/codebook.h"
#include "core/codebook_avx2.h"
#include "core/dtype.h"
#include "core/json_util.h"
#include "core/status.h"

namespace compress {

float ActQmax(ActFormat f, int bits) {
  if (f == ActFormat::kFp4) return 6.f;  // e2m1's; ActivationQuant::Qmax knows the table
  return f == ActFormat::kFp8E4M3 ? kE4M3.max_finite : static_cast<float>((1 << (bits - 1)) - 1);
}

float ActivationQuant::Qmax() const {
  if (format == ActFormat::kFp4) {
    auto book = FindCodebook(fp4_format);
    return book.ok() ? (*book)->max_abs : 6.f;
  }
  return ActQmax(format, bits);
}

namespace {
// MiniFloatDecode(MiniFloatEncode(x, kE4M3, true), kE4M3) without the library calls: round to
// nearest even on 3 mantissa bits from 2^-6 up (a carry into the exponent is the next binade),
// to multiples of 2^-9 below (adding and removing 1.5 x 2^14, whose ulp is 2^-9), magnitudes
// from 448 up (infinity too) to 448; the sign kept (zeros too), NaN as it is.
inline float E4M3Round(float x) {
  const uint32_t b = detail::FloatBits(x), sign = b & 0x80000000u, a = b & 0x7FFFFFFFu;
  if (a > 0x7F800000u) return x;
  uint32_t r;
  if (a >= 0x43E00000u) {  // 448
    r = 0x43E00000u;
  } else if (a >= 0x3C800000u) {  // 2^-6: normal
    r = (a + 0x7FFFFu + ((a >> 20) & 1u)) & 0xFFF00000u;
  } else {
    constexpr float kMagic = 24576.0f;  // 1.5 x 2^14
    r = detail::FloatBits((detail::BitsFloat(a) + kMagic) - kMagic);
  }
  return detail::BitsFloat(sign | r);
}
}  // namespace

float FakeQuantValue(ActFormat f, int bits, float x, float s) {
  if (f == ActFormat::kFp8E4M3) return E4M3Round(x / s) * s;
  // Integer codes saturate to the two's complement range [-qmax - 1, qmax], as ONNX
  // QuantizeLinear, vLLM's static int8 kernels and compressed-tensors do; scales from max |x|
  // never reach the extra negative code, clipped static scales can.
  const float qmax = ActQmax(f, bits);
  const float q = std::nearbyint(x / s);  // the default rounding mode: half to even
  return std::clamp(q, -qmax - 1, qmax) * s;
}

float ActScale(ActFormat f, int bits, float amax) {
  if (!(amax > 0) || !std::isfinite(amax)) return 1.f;
  return amax / ActQmax(f, bits);
}

float EntropyThreshold(std::span<const float> values, int levels, int bins) {
  float amax = 0;
  for (float v : values)
    if (std::isfinite(v)) amax = std::max(amax, std::fabs(v));
  if (!(amax > 0) || bins <= levels || levels < 1) return amax;
  const double width = static_cast<double>(amax) / bins;
  std::vector<double> hist(bins, 0.0);
  for (float v : values) {
    if (!std::isfinite(v)) continue;
    const int b = std::min(bins - 1, static_cast<int>(std::fabs(v) / width));
    hist[b] += 1;
  }
  std::vector<double> beyond(bins + 1, 0.0);  // beyond[i] = sum of hist[i..]
  for (int i = bins - 1; i >= 0; --i) beyond[i] = beyond[i + 1] + hist[i];
  double best_kl = std::numeric_limits<double>::infinity();
  int best = bins;
  std::vector<double> q;
  for (int i = levels; i <= bins; ++i) {
    // Q: hist[0, i) merged into `levels` groups (the last takes the remainder), each group's
    // count spread evenly over the bins where P is non-zero (P: the tail folded into bin i-1).
    auto p_at = [&](int k) { return k == i - 1 ? hist[k] + beyond[i] : hist[k]; };
    q.assign(i, 0.0);
    const int per = i / levels;
    for (int g = 0; g < levels; ++g) {
      const int lo = g * per, hi = g == levels - 1 ? i : lo + per;
      double total = 0;
      int nonzero = 0;
      for (int k = lo; k < hi; ++k) {
        total += hist[k];
        nonzero += p_at(k) > 0;
      }
      if (nonzero == 0) continue;
      for (int k = lo; k < hi; ++k)
        if (p_at(k) > 0) q[k] = total / nonzero;
    }
    // P: hist[0, i) with the tail folded into its last bin; both sum to the same total
    // except for that tail, so normalise each.
    const double p_total = beyond[0], q_total = beyond[0] - beyond[i];
    if (q_total <= 0) continue;
    double kl = 0;
    for (int k = 0; k < i; ++k) {
      const double pk = p_at(k) / p_total;
      if (pk <= 0) continue;
      // A P mass where Q has none (a group whose only mass is the folded tail): a tiny Q, as
      // the peers smooth it, so such edges lose rather than divide by zero.
      const double qk = std::max(q[k] / q_total, 1e-12);
      kl += pk * std::log(pk / qk);
    }
    if (kl < best_kl) {
      best_kl = kl;
      best = i;
    }
  }
  return static_cast<float>(std::min(static_cast<double>(amax), (best + 0.5) * width));
}

std::string_view ActFormatName(ActFormat f, int bits) {
  if (f == ActFormat::kFp8E4M3) return "fp8-e4m3";
  if (f == ActFormat::kFp4) return "fp4";
  static const char* names[] = {"int0", "int1", "int2", "int3", "int4", "int5", "int6", "int7", "int8"};
  return bits >= 0 && bits <= 8 ? names[bits] : "int?";
}

std::string_view KvGranularityName(KvCacheQuant::Granularity g) {
  switch (g) {
    case KvCacheQuant::Granularity::kTensor:
      return "per-tensor";
    case KvCacheQuant::Granularity::kChannel:
      return "per-channel";
    case KvCacheQuant::Granularity::kHead:
      return "per-token-head";
    case KvCacheQuant::Granularity::kChannelGroup:
      return "per-channel-token-group";
  }
  return "?";
}

std::string ActivationQuant::Describe() const {
  std::string g = granularity == Granularity::kTensor  ? "per-tensor"
                  : granularity == Granularity::kToken ? "per-token"
                                                       : fmt::format("per-group-{}", group_size);
  std::string s = fmt::format("{} {} {}", format == ActFormat::kFp4 ? fp4_format : std::string(ActFormatName(format, bits)),
                              dynamic ? "dynamic" : "static", g);
  if (zero_point) s = "uint8 dynamic per-tensor with zero point";
  if (!dynamic) s += fmt::format(" (s={:.6g})", scale);
  if (!channel_exp.empty()) {
    s += fmt::format(" with {} channels shifted by 2^e",
                     std::count_if(channel_exp.begin(), channel_exp.end(), [](int8_t e) { return e != 0; }));
  }
  if (f16_outliers) s += " + f16 outlier features";
  return s;
}

absl::Status ActivationQuant::Validate(int64_t in_features) const {
  if (format == ActFormat::kFp4) {
    if (bits != 4 || !FindCodebook(fp4_format).ok() || fp4_format == "nf4")
      return InvalidArgument("fp4 activations need bits 4 and an fp4 table, not '{}'", fp4_format);
  } else if (format == ActFormat::kFp8E4M3 ? bits != 8 : (bits < 2 || bits > 8)) {
    return InvalidArgument("activation format {} with {} bits", ActFormatName(format, bits), bits);
  }
  if (!channel_exp.empty()) {
    if (dynamic || static_cast<int64_t>(channel_exp.size()) != in_features)
      return InvalidArgument("channel exponents need static scales and one entry per input ({} for {})",
                             channel_exp.size(), in_features);
    for (int8_t e : channel_exp)
      if (e < -32 || e > 32) return InvalidArgument("channel exponent {} outside [-32, 32]", e);
  }
  if (granularity == Granularity::kGroup && (group_size <= 0 || in_features % group_size != 0))
    return InvalidArgument("activation group size {} does not divide {} input features", group_size, in_features);
  if (zero_point && (format != ActFormat::kInt || bits != 8 || !dynamic || granularity != Granularity::kTensor ||
                     f16_outliers || !channel_exp.empty()))
    return InvalidArgument("activation zero points are for 8-bit int dynamic per-tensor inputs only");
  if (!dynamic) {
    if (granularity != Granularity::kTensor) return InvalidArgument("static activation scales are per tensor");
    if (!(scale > 0) || !std::isfinite(scale)) return InvalidArgument("static activation scale {} is not > 0", scale);
  }
  return absl::OkStatus();
}

namespace {

// Dynamic per-tensor inputs: one scale (and zero point) over all `n` values, `kept` features
// (of rows of `cols`) rounded to f16 instead. Returns the scale and the zero point.
std::pair<float, float> FakeQuantizeTensor(const ActivationQuant& q, const std::vector<uint8_t>& kept, float* x,
                                           int64_t n, int64_t cols) {
  auto is_kept = [&](int64_t i) { return !kept.empty() && kept[i % cols]; };
  float lo = 0, hi = 0, amax = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (is_kept(i)) continue;
    lo = std::min(lo, x[i]), hi = std::max(hi, x[i]), amax = std::max(amax, std::fabs(x[i]));
  }
  const float s = q.zero_point ? (hi - lo) / 255.0f : ActScale(q.format, q.bits, amax);
  const float zp = q.zero_point && s != 0 ? std::clamp(std::nearbyint(0.0f - lo / s), 0.0f, 255.0f) : 0.0f;
#pragma omp parallel for schedule(static) if (n > (1 << 15))
  for (int64_t i = 0; i < n; ++i) {
    if (is_kept(i)) {
      x[i] = F16ToF32(F32ToF16(x[i]));
    } else if (q.zero_point) {
      x[i] = s == 0 ? 0.0f : (std::clamp(std::nearbyint(x[i] / s) + zp, 0.0f, 255.0f) - zp) * s;
    } else {
      x[i] = FakeQuantValue(q.format, q.bits, x[i], s);
    }
  }
  return {s, zp};
}

int Fp4Multiplier(const ActivationQuant& q) {
  auto book = FindCodebook(q.fp4_format);
  return book.ok() ? IntegerLevelMultiplier((*book)->levels) : 0;
}

// The smallest channel exponent (0 without them): the step's power of two.
int ChannelExpBase(const ActivationQuant& q) {
  return q.channel_exp.empty() ? 0 : *std::min_element(q.channel_exp.begin(), q.channel_exp.end());
}

}  // namespace

int64_t CodedActGroup(const ActivationQuant& q, int64_t cols) {
  // 8-bit codes with a zero point (q - zp, q in [0, 255]): q - 128 is the int8 code, 128 - zp the offset.
  if (q.zero_point) return q.format == ActFormat::kInt && q.bits == 8 && q.dynamic &&
                                   q.granularity == ActivationQuant::Granularity::kTensor && !q.f16_outliers
                               ? cols
                               : 0;
  // Channel exponents are static per-tensor scales (Validate): one step per tensor.
  if (!q.channel_exp.empty() && (q.dynamic || q.granularity != ActivationQuant::Granularity::kTensor)) return 0;
  // FP4 inputs: one scale per row (dynamic) or per tensor, levels x m integers (code), s / m the step.
  if (q.format == ActFormat::kFp4) return Fp4Multiplier(q) > 0 ? cols : 0;
  if (q.format != ActFormat::kInt || q.bits > 8) return 0;
  return q.granularity == ActivationQuant::Granularity::kGroup ? q.group_size : cols;
}

std::vector<int64_t> CodedActApart(const ActivationQuant& q) {
  std::vector<int64_t> apart;
  if (q.channel_exp.empty()) return apart;
  // The largest code magnitude at exponent e0 (int: codes saturate at -qmax - 1; FP4: levels x m).
  double lo = 0, hi = 0;
  if (q.format == ActFormat::kFp4) {
    hi = static_cast<double>(q.Qmax()) * Fp4Multiplier(q), lo = -hi;
  } else {
    hi = q.Qmax(), lo = -hi - 1;
  }
  const int base = ChannelExpBase(q);
  for (size_t j = 0; j < q.channel_exp.size(); ++j) {
    const double f = std::ldexp(1.0, q.channel_exp[j] - base);
    if (hi * f > 127 || lo * f < -128) apart.push_back(static_cast<int64_t>(j));
  }
  return apart;
}

namespace {

// row[c] = levels[Encode(row[c] / s_c)] x s_c for c < n, with s_c = scales[c] (when given) or
// `scale`: 16 (AVX-512) or 8 (AVX2) values at a time in vector registers (the same division,
// the same codes as Encode, NaN as 0 and +-inf as +-max, the same product), the rest one by one.
void Fp4Row(const Codebook& cb, float* row, int64_t n, const float* scales, float scale) {
  int64_t c = 0;
#if defined(__AVX512F__)
  const CodebookCoder16 coder(cb);
  const __m512 levels = _mm512_loadu_ps(cb.levels.data());
  for (; c + 16 <= n; c += 16) {
    const __m512 s = scales ? _mm512_loadu_ps(scales + c) : _mm512_set1_ps(scale);
    __m512 v = _mm512_div_ps(_mm512_loadu_ps(row + c), s);
    v = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(v, v, _CMP_ORD_Q), v);  // NaN -> 0
    _mm512_storeu_ps(row + c, _mm512_mul_ps(_mm512_permutexvar_ps(coder.Code(v), levels), s));
  }
#elif defined(__AVX2__)
  const CodebookCoder8 coder(cb);
  const __m256i lo = _mm256_castps_si256(_mm256_loadu_ps(cb.levels.data()));
  const __m256i hi = _mm256_castps_si256(_mm256_loadu_ps(cb.levels.data() + 8));
  for (; c + 8 <= n; c += 8) {
    const __m256 s = scales ? _mm256_loadu_ps(scales + c) : _mm256_set1_ps(scale);
    __m256 v = _mm256_div_ps(_mm256_loadu_ps(row + c), s);
    v = _mm256_and_ps(_mm256_cmp_ps(v, v, _CMP_ORD_Q), v);  // NaN -> 0
    const __m256 level = _mm256_castsi256_ps(CodebookCoder8::Lookup(lo, hi, coder.Code(v)));
    _mm256_storeu_ps(row + c, _mm256_mul_ps(level, s));
  }
#endif
  for (; c < n; ++c) {
    const float sc = scales ? scales[c] : scale;
    row[c] = cb.levels[cb.Encode(row[c] / sc)] * sc;
  }
}

}  // namespace

void FakeQuantize(const ActivationQuant& q, std::span<const int64_t> keep, float* x, int64_t rows, int64_t cols,
                  std::vector<float>* steps, float* offset) {
  const int64_t step_group = steps ? CodedActGroup(q, cols) : 0;
  if (step_group > 0) steps->assign(rows * (cols / step_group), 0.f);
  if (!step_group) steps = nullptr;
  if (offset) *offset = 0;
  const int exp_base = ChannelExpBase(q);  // steps: the smallest channel exponent's power of two
  if (q.format == ActFormat::kFp4) {
    auto book = FindCodebook(q.fp4_format);
    if (!book.ok()) return;  // Validate refuses this before any run
    const Codebook& cb = **book;
    const float mult = steps ? static_cast<float>(IntegerLevelMultiplier(cb.levels)) : 1.f;  // steps: s / m per row
    std::vector<float> s(cols, q.scale);
    for (int64_t c = 0; c < cols && !q.channel_exp.empty(); ++c) s[c] = std::ldexp(q.scale, q.channel_exp[c]);
#pragma omp parallel for schedule(static) if (rows * cols > (1 << 15))
    for (int64_t r = 0; r < rows; ++r) {
      float* row = x + r * cols;
      if (q.dynamic) {  // per token (or per tensor of one row): s = max|x| / max level
        float amax = 0;
        for (int64_t c = 0; c < cols; ++c) amax = std::max(amax, std::fabs(row[c]));
        const float sd = amax > 0 && std::isfinite(amax) ? amax / cb.max_abs : 1.f;
        if (steps) (*steps)[r] = sd / mult;
        Fp4Row(cb, row, cols, nullptr, sd);
      } else {
        if (steps) (*steps)[r] = std::ldexp(q.scale, exp_base) / mult;
        Fp4Row(cb, row, cols, s.data(), 0.f);
      }
    }
    return;
  }
  if (!q.f16_outliers) keep = {};
  const int64_t group = q.granularity == ActivationQuant::Granularity::kGroup ? q.group_size : cols;
  std::vector<uint8_t> kept(keep.empty() ? 0 : cols, 0);
  for (int64_t k : keep)
    if (k >= 0 && k < cols) kept[k] = 1;
  if (q.dynamic && q.granularity == ActivationQuant::Granularity::kTensor) {
    const auto [s, zp] = FakeQuantizeTensor(q, kept, x, rows * cols, cols);
    // s = 0 (zero-point inputs, all 0): every x' is 0, code 0 at any step.
    if (steps) std::fill(steps->begin(), steps->end(), s > 0 ? s : 1.f);
    if (steps && offset && q.zero_point && s > 0) *offset = 128.f - zp;
    return;
  }
#pragma omp parallel for schedule(static) if (rows * cols > (1 << 15))
  for (int64_t r = 0; r < rows; ++r) {
    float* row = x + r * cols;
    for (int64_t g0 = 0; g0 < cols; g0 += group) {
      float s = q.scale;
      if (q.dynamic) {
        float amax = 0;
        for (int64_t c = g0; c < g0 + group; ++c)
          if (kept.empty() || !kept[c]) amax = std::max(amax, std::fabs(row[c]));
        s = ActScale(q.format, q.bits, amax);
      }
      if (steps) (*steps)[r * (cols / group) + g0 / group] = std::ldexp(s, exp_base);
      for (int64_t c = g0; c < g0 + group; ++c) {
        const float sc = q.channel_exp.empty() ? s : std::ldexp(s, q.channel_exp[c]);
        row[c] = !kept.empty() && kept[c] ? F16ToF32(F32ToF16(row[c])) : FakeQuantValue(q.format, q.bits, row[c], sc);
      }
    }
  }
}

std::string KvCacheQuant::Describe() const {
  auto name = [&](Granularity g) {
    return g == Granularity::kChannelGroup ? fmt::format("per-channel over groups of {} tokens", token_group)
                                           : std::string(KvGranularityName(g));
  };
  return fmt::format("{} K {}, V {}", ActFormatName(format, bits), name(k), name(v));
}

absl::Status KvCacheQuant::Validate(int blocks, int64_t kv_dim) const {
  if (format == ActFormat::kFp4) return InvalidArgument("fp4 KV caches are not supported");
  if (format == ActFormat::kFp8E4M3 ? bits != 8 : (bits < 2 || bits > 8))
    return InvalidArgument("KV-cache format {} with {} bits", ActFormatName(format, bits), bits);
  if ((k == Granularity::kChannelGroup || v == Granularity::kChannelGroup) && (token_group < 1 || token_group > (1 << 20)))
    return InvalidArgument("KV-cache token group {} (1..2^20)", token_group);
  for (int b = 0; b < blocks; ++b) {
    for (bool key : {true, false}) {
      const Granularity g = key ? k : v;
      if (g == Granularity::kHead || g == Granularity::kChannelGroup) continue;
      const auto it = scales.find(b);
      const std::vector<float>* s = it == scales.end() ? nullptr : key ? &it->second.k : &it->second.v;
      const size_t want = g == Granularity::kChannel ? static_cast<size_t>(kv_dim) : 1;
      if (!s || s->size() != want)
        return InvalidArgument("block {} needs {} static {} scale(s) for its {} cache, has {}", b, want,
                               KvGranularityName(g), key ? "K" : "V", s ? s->size() : 0);
      for (float x : *s)
        if (!(x > 0) || !std::isfinite(x))
          return InvalidArgument("block {}: {} cache scale {} is not > 0", b, key ? "K" : "V", x);
      const std::vector<int8_t>& cb = key ? it->second.k_bits : it->second.v_bits;
      if (!cb.empty()) {
        if (format != ActFormat::kInt || g != Granularity::kChannel || cb.size() != s->size())
          return InvalidArgument("block {}: per-channel {} cache bits need int per-channel scales", b, key ? "K" : "V");
        for (int8_t x : cb)
          if (x < 2 || x > 8) return InvalidArgument("block {}: {} cache channel bits {} outside 2..8", b, key ? "K" : "V", x);
      }
    }
  }
  return absl::OkStatus();
}

void FakeQuantizeKv(const KvCacheQuant& q, bool key, int block, int64_t head_dim, float* x, int64_t rows,
                    int64_t cols) {
  const KvCacheQuant::Granularity g = key ? q.k : q.v;
  if (g == KvCacheQuant::Granularity::kChannelGroup) {
    const int64_t G = q.token_group;
#pragma omp parallel for schedule(static) if (rows * cols > (1 << 15))
    for (int64_t c = 0; c < cols; ++c) {
      for (int64_t r0 = 0; r0 + G <= rows; r0 += G) {
        float amax = 0;
        for (int64_t r = r0; r < r0 + G; ++r) amax = std::max(amax, std::fabs(x[r * cols + c]));
        const float sc = ActScale(q.format, q.bits, amax);
        for (int64_t r = r0; r < r0 + G; ++r) x[r * cols + c] = FakeQuantValue(q.format, q.bits, x[r * cols + c], sc);
      }
    }
    return;
  }
  if (g == KvCacheQuant::Granularity::kHead) {  // dynamic groups of head_dim features per token
    ActivationQuant per_head;
    per_head.format = q.format;
    per_head.bits = q.bits;
    per_head.granularity = ActivationQuant::Granularity::kGroup;
    per_head.group_size = head_dim;
    FakeQuantize(per_head, {}, x, rows, cols);
    return;
  }
  const auto it = q.scales.find(block);
  if (it == q.scales.end()) return;  // Validate refuses this before any run
  const std::vector<float>& s = key ? it->second.k : it->second.v;
  const std::vector<int8_t>& channel_bits = key ? it->second.k_bits : it->second.v_bits;
#pragma omp parallel for schedule(static) if (rows * cols > (1 << 15))
  for (int64_t r = 0; r < rows; ++r) {
    float* row = x + r * cols;
    for (int64_t c = 0; c < cols; ++c) {
      const float sc = g == KvCacheQuant::Granularity::kChannel ? s[c] : s[0];
      row[c] = FakeQuantValue(q.format, channel_bits.empty() ? q.bits : channel_bits[c], row[c], sc);
    }
  }
}

namespace {

nlohmann::json BaseArgs(ActFormat f, int bits) {
  return {{"num_bits", bits},
          {"type", f == ActFormat::kInt ? "int" : "float"},
          {"symmetric", true},
          {"group_size", nullptr}};
}

absl::StatusOr<std::pair<ActFormat, int>> FormatFromArgs(const nlohmann::json& j, const std::string& where) {
  const JsonFields f(j, where);
  ASSIGN_OR_RETURN(auto bits, f.Int("num_bits", 2, 8));
  ASSIGN_OR_RETURN(auto type, f.String("type"));
  ASSIGN_OR_RETURN(auto symmetric, f.Bool("symmetric"));
  if (!symmetric.value_or(true)) return Unimplemented("{}: asymmetric activation quantization", where);
  const std::string t = type.value_or("int");
  if (t == "float") {
    if (bits.value_or(8) == 4) return std::pair{ActFormat::kFp4, 4};
    if (bits.value_or(8) != 8) return Unimplemented("{}: {}-bit float activations (fp8 e4m3, fp4)", where, *bits);
    return std::pair{ActFormat::kFp8E4M3, 8};
  }
  if (t != "int") return Unimplemented("{}: activation type '{}'", where, t);
  return std::pair{ActFormat::kInt, static_cast<int>(bits.value_or(8))};
}

}  // namespace

nlohmann::json ActivationArgsJson(const ActivationQuant& q) {
  nlohmann::json j = BaseArgs(q.format, q.bits);
  j["strategy"] = q.granularity == ActivationQuant::Granularity::kTensor  ? "tensor"
                  : q.granularity == ActivationQuant::Granularity::kToken ? "token"
                                                                          : "group";
  if (q.granularity == ActivationQuant::Granularity::kGroup) j["group_size"] = q.group_size;
  j["dynamic"] = q.dynamic;
  if (q.zero_point) j["symmetric"] = false;  // compressed-tensors' asymmetric int8: the same values
  j["observer"] = q.dynamic ? nlohmann::json(nullptr) : nlohmann::json("minmax");
  if (q.f16_outliers) j["f16_outliers"] = true;
  if (q.format == ActFormat::kFp4) j["fp4_format"] = q.fp4_format;  // compress's extension
  return j;
}

absl::StatusOr<ActivationQuant> ActivationArgsFromJson(const nlohmann::json& j, const std::string& where) {
  if (!j.is_object()) return DataLoss("{} is not an object", where);
  ActivationQuant q;
  // Asymmetric: only 8-bit int dynamic per tensor (ActivationQuant::zero_point), checked below.
  nlohmann::json sym = j;
  if (j.contains("symmetric") && j["symmetric"].is_boolean() && !j["symmetric"].get<bool>()) {
    q.zero_point = true;
    sym["symmetric"] = true;
  }
  ASSIGN_OR_RETURN(auto fmt_bits, FormatFromArgs(sym, where));
  q.format = fmt_bits.first;
  q.bits = fmt_bits.second;
  const JsonFields f(j, where);
  ASSIGN_OR_RETURN(auto strategy, f.String("strategy"));
  ASSIGN_OR_RETURN(auto group, f.Int("group_size", 1, INT64_C(1) << 32));
  ASSIGN_OR_RETURN(auto outliers, f.Bool("f16_outliers"));
  if (j.contains("dynamic") && !j["dynamic"].is_boolean())
    return Unimplemented("{}: dynamic = {} (only true or false)", where, j["dynamic"].dump());
  q.dynamic = j.value("dynamic", false);
  const std::string s = strategy.value_or("tensor");
  if (s == "tensor") {
    q.granularity = ActivationQuant::Granularity::kTensor;
  } else if (s == "token") {
    q.granularity = ActivationQuant::Granularity::kToken;
  } else if (s == "group") {
    q.granularity = ActivationQuant::Granularity::kGroup;
    if (!group) return DataLoss("{}: strategy group without group_size", where);
    q.group_size = *group;
  } else {
    return Unimplemented("{}: activation strategy '{}' (tensor, token and group are supported)", where, s);
  }
  if (!q.dynamic && q.granularity != ActivationQuant::Granularity::kTensor)
    return Unimplemented("{}: static {} activation scales (only per tensor)", where, s);
  if (q.zero_point && (q.format != ActFormat::kInt || q.bits != 8 || !q.dynamic ||
                       q.granularity != ActivationQuant::Granularity::kTensor))
    return Unimplemented("{}: asymmetric activation quantization other than 8-bit int dynamic per tensor", where);
  q.f16_outliers = outliers.value_or(false);
  if (q.format == ActFormat::kFp4) {
    ASSIGN_OR_RETURN(auto f4, f.String("fp4_format"));
    q.fp4_format = f4.value_or("fp4-e2m1");
    if (!FindCodebook(q.fp4_format).ok() || q.fp4_format == "nf4")
      return Unimplemented("{}: fp4_format '{}' (fp4-e2m1, fp4-e3m0, fp4-e1m2)", where, q.fp4_format);
  }
  return q;
}

nlohmann::json KvArgsJson(const KvCacheQuant& q, bool key, int64_t head_dim) {
  nlohmann::json j = BaseArgs(q.format, q.bits);
  const KvCacheQuant::Granularity g = key ? q.k : q.v;
  j["strategy"] = g == KvCacheQuant::Granularity::kTensor                                                 ? "tensor"
                  : g == KvCacheQuant::Granularity::kChannel || g == KvCacheQuant::Granularity::kChannelGroup ? "channel"
                                                                                                          : "group";
  if (g == KvCacheQuant::Granularity::kHead) j["group_size"] = head_dim;
  j["dynamic"] = g == KvCacheQuant::Granularity::kHead || g == KvCacheQuant::Granularity::kChannelGroup;
  if (g == KvCacheQuant::Granularity::kChannelGroup) j["token_group"] = q.token_group;  // compress's extension
  return j;
}

absl::Status KvArgsFromJson(const nlohmann::json& j, bool key, int64_t head_dim, KvCacheQuant& q,
                            const std::string& where) {
  if (!j.is_object()) return DataLoss("{} is not an object", where);
  ASSIGN_OR_RETURN(auto fmt_bits, FormatFromArgs(j, where));
  if (fmt_bits.first == ActFormat::kFp4) return Unimplemented("{}: fp4 KV caches", where);
  q.format = fmt_bits.first;
  q.bits = fmt_bits.second;
  ASSIGN_OR_RETURN(auto strategy, JsonFields(j, where).String("strategy"));
  ASSIGN_OR_RETURN(auto group, JsonFields(j, where).Int("group_size", 1, INT64_C(1) << 32));
  const std::string s = strategy.value_or("tensor");
  const bool dynamic = j.contains("dynamic") && j["dynamic"] == true;
  KvCacheQuant::Granularity g;
  if (s == "tensor") {
    g = KvCacheQuant::Granularity::kTensor;
  } else if (s == "channel" && !dynamic) {
    g = KvCacheQuant::Granularity::kChannel;
  } else if (s == "channel" && j.contains("token_group")) {
    ASSIGN_OR_RETURN(auto tg, JsonFields(j, where).Int("token_group", 1, 1 << 20));
    g = KvCacheQuant::Granularity::kChannelGroup;
    q.token_group = *tg;
  } else if (s == "group" && group == head_dim && dynamic) {
    g = KvCacheQuant::Granularity::kHead;
  } else {
    return Unimplemented(
        "{}: KV-cache strategy '{}'{} (static tensor or channel, or dynamic group of head_dim {} are supported)",
        where, s, dynamic ? " dynamic" : "", head_dim);
  }
  if (dynamic != (g == KvCacheQuant::Granularity::kHead || g == KvCacheQuant::Granularity::kChannelGroup))
    return Unimplemented("{}: {} KV-cache scales with strategy '{}'", where, dynamic ? "dynamic" : "static", s);
  (key ? q.k : q.v) = g;
  return absl::OkStatus();
}

}  // namespace compress
