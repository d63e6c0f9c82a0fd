// Round-to-nearest integer quantization (symmetric/asymmetric, per channel or per group).
#include "core/quant.h"

#include <algorithm>
#include <cmath>

#include "core/status.h"

namespace compress {

void GroupScale(float lo, float hi, float amax, int bits, bool symmetric, float* s, int* z) {
  const CodeRange r = CodeRangeOf(bits, symmetric);
  if (symmetric) {
    *s = amax > 0 ? amax / static_cast<float>(r.hi) : 1.f;
    *z = 0;
  } else {
    *s = hi > lo ? (hi - lo) / static_cast<float>(r.hi - r.lo) : 1.f;
    *z = std::clamp(static_cast<int>(std::nearbyint(r.lo - lo / *s)), r.lo, r.hi);
  }
}

absl::StatusOr<std::pair<std::vector<int8_t>, QuantInfo>> QuantizeRtn(std::span<const float> w, int64_t rows,
                                                                      int64_t cols, int bits, bool symmetric,
                                                                      int channel_axis, int64_t group_size) {
  if (bits < 2 || bits > 8) return InvalidArgument("bits must be in [2, 8], got {}", bits);
  if (channel_axis != 0 && channel_axis != 1) return Internal("channel_axis {}", channel_axis);
  if (static_cast<int64_t>(w.size()) != rows * cols) return Internal("QuantizeRtn: size mismatch");
  const int64_t channels = channel_axis == 0 ? rows : cols;
  const int64_t in = channel_axis == 0 ? cols : rows;
  if (group_size == 0) group_size = in;
  if (group_size < 0 || in % group_size != 0) {
    return InvalidArgument("group size {} does not divide the input dimension {}", group_size, in);
  }
  QuantInfo q;
  q.bits = bits;
  q.symmetric = symmetric;
  q.channel_axis = channel_axis;
  q.group_size = group_size;
  q.channels = channels;
  q.groups = in / group_size;
  q.scales.assign(channels * q.groups, 0.f);
  if (!symmetric) q.zero_points.assign(channels * q.groups, 0);
  const auto [qmin, qmax] = CodeRangeOf(bits, symmetric);
  // Element (channel ch, input k) lives at w[ch * in + k] or w[k * channels + ch].
  auto at = [&](int64_t ch, int64_t k) -> int64_t {
    return channel_axis == 0 ? ch * cols + k : k * cols + ch;
  };
  std::vector<int8_t> codes(w.size());
#pragma omp parallel for schedule(static) if (channels * in > (1 << 16))
  for (int64_t ch = 0; ch < channels; ++ch) {
    for (int64_t g = 0; g < q.groups; ++g) {
      float lo = 0.f, hi = 0.f, amax = 0.f;
      for (int64_t k = g * group_size; k < (g + 1) * group_size; ++k) {
        float v = w[at(ch, k)];
        if (!std::isfinite(v)) v = 0.f;
        lo = std::min(lo, v);
        hi = std::max(hi, v);
        amax = std::max(amax, std::fabs(v));
      }
      float s;
      int z;
      GroupScale(lo, hi, amax, bits, symmetric, &s, &z);
      if (!symmetric) q.zero_points[ch * q.groups + g] = static_cast<int8_t>(z);
      q.scales[ch * q.groups + g] = s;
      for (int64_t k = g * group_size; k < (g + 1) * group_size; ++k) {
        float v = w[at(ch, k)];
        if (!std::isfinite(v)) v = 0.f;
        int c = static_cast<int>(std::nearbyint(v / s)) + z;
        codes[at(ch, k)] = static_cast<int8_t>(std::clamp(c, qmin, qmax));
      }
    }
  }
  return std::make_pair(std::move(codes), std::move(q));
}

void Dequantize(std::span<const int8_t> codes, int64_t rows, int64_t cols, const QuantInfo& q, float* out) {
#pragma omp parallel for schedule(static) if (rows * cols > (1 << 16))
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) {
      const int64_t si = q.ScaleIndex(r, c);
      const int z = q.symmetric ? 0 : q.zero_points[si];
      out[r * cols + c] = static_cast<float>(codes[r * cols + c] - z) * q.scales[si];
    }
  }
}

}  // namespace compress
