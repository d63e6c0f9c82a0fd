// AlignedKV's per-channel cache precision.
#include "passes/precision/aligned_kv.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/status.h"

namespace compress {

void KvMoments::Add(const RowMatrix& q, const RowMatrix& k, const RowMatrix& v) {
  const Eigen::VectorXd qs = q.cast<double>().array().square().colwise().sum().transpose();
  const Eigen::VectorXd ks = k.cast<double>().array().square().colwise().sum().transpose();
  const Eigen::VectorXf ka = k.cwiseAbs().colwise().maxCoeff().transpose();
  const Eigen::VectorXf va = v.cwiseAbs().colwise().maxCoeff().transpose();
  if (rows == 0) {
    q_sq = qs, k_sq = ks, k_amax = ka, v_amax = va;
  } else {
    q_sq += qs, k_sq += ks;
    k_amax = k_amax.cwiseMax(ka), v_amax = v_amax.cwiseMax(va);
  }
  rows += q.rows();
}

namespace {

// Last kept bit of a sum whose largest addend is t, with p significant bits.
double LastBit(double t, double p) {
  return std::ldexp(1.0, static_cast<int>(std::floor(std::log2(t))) - static_cast<int>(p) + 1);
}

// Int bits (before clamping to 2..8) for a channel of max |x| = amax that must round within d.
double BitsFor(double amax, double d) {
  if (!(amax > 0) || !(d > 0) || !std::isfinite(d)) return 2;
  return std::ceil(1 + std::log2(1 + amax / (2 * d)));
}

// Clamps needs to 2..8 bits, counting the channels that needed more.
std::vector<int8_t> Clamp(const std::vector<double>& need, int* capped) {
  std::vector<int8_t> out;
  for (double b : need) {
    if (b > 8) ++*capped;
    out.push_back(static_cast<int8_t>(std::clamp(b, 2.0, 8.0)));
  }
  return out;
}

}  // namespace

HeadScorePrecision ScorePrecision(const Eigen::VectorXd& q_rms, const Eigen::VectorXd& k_rms, int64_t h, int64_t g,
                                  int64_t hd, double p) {
  HeadScorePrecision out;
  out.aq.resize(hd);
  out.ak.resize(hd);
  double t = 0;
  for (int64_t i = 0; i < hd; ++i) {
    const int64_t pi = i < hd / 2 ? i + hd / 2 : i - hd / 2;
    out.aq[i] = std::hypot(q_rms(h * hd + i), q_rms(h * hd + pi));
    out.ak[i] = std::hypot(k_rms(g * hd + i), k_rms(g * hd + pi));
    t = std::max(t, out.aq[i] * out.ak[i]);
  }
  if (t > 0) out.u = LastBit(t, p);
  return out;
}

absl::StatusOr<AlignedKvBits> ComputeAlignedKvBits(const Model& m, const Block& b, const KvMoments& mom,
                                                   const LinearStats& o_input, double p) {
  const int64_t H = m.arch.num_heads, KV = m.arch.num_kv_heads, hd = m.arch.head_dim, G = H / KV;
  if (mom.rows == 0 || mom.q_sq.size() != H * hd || mom.k_sq.size() != KV * hd)
    return Internal("aligned KV: block {} was not observed with {} query and {} key channels", b.index, H * hd, KV * hd);
  AlignedKvBits out;
  std::vector<double> kneed(KV * hd, 2), vneed(KV * hd, 2);
  const Eigen::VectorXd qr = (mom.q_sq / static_cast<double>(mom.rows)).cwiseSqrt();
  const Eigen::VectorXd kr = (mom.k_sq / static_cast<double>(mom.rows)).cwiseSqrt();
  for (int64_t h = 0; h < H; ++h) {
    const int64_t g = h / G;
    const HeadScorePrecision sp = ScorePrecision(qr, kr, h, g, hd, p);
    if (sp.u <= 0) continue;
    for (int64_t i = 0; i < hd; ++i) {
      if (sp.aq[i] <= 0) continue;
      const int64_t c = g * hd + i;
      kneed[c] = std::max(kneed[c], BitsFor(mom.k_amax(c), sp.u / (2 * sp.aq[i])));
    }
  }
  // V through o_proj ([hidden, H x hd], or GPT-2's Conv1D c_proj [H x hd, hidden]).
  const LinearLayer* o = nullptr;
  for (const LinearLayer& l : b.attention)
    if (l.kind == "o_proj" || l.kind == "c_proj") o = &l;
  if (!o || o->in_features != H * hd || o_input.rows == 0 || static_cast<int64_t>(o_input.sum_sq.size()) != H * hd)
    return Internal("aligned KV: block {} has no o_proj reading {} features with statistics", b.index, H * hd);
  ASSIGN_OR_RETURN(std::vector<float> w, m.tensors.at(o->weight).ToF32());
  const int64_t out_f = o->out_features, in_f = H * hd;
  auto W = [&](int64_t j, int64_t k) { return o->out_axis == 0 ? w[j * in_f + k] : w[k * out_f + j]; };
  std::vector<double> a(in_f), d(in_f, std::numeric_limits<double>::infinity());
  for (int64_t k = 0; k < in_f; ++k) a[k] = std::sqrt(o_input.sum_sq[k] / static_cast<double>(o_input.rows));
  for (int64_t j = 0; j < out_f; ++j) {
    double t = 0;
    for (int64_t k = 0; k < in_f; ++k) t = std::max(t, std::fabs(W(j, k)) * a[k]);
    if (t <= 0) continue;
    const double u = LastBit(t, p);
    for (int64_t k = 0; k < in_f; ++k) {
      const double wk = std::fabs(W(j, k));
      if (wk > 0) d[k] = std::min(d[k], u / (2 * wk));
    }
  }
  for (int64_t h = 0; h < H; ++h)
    for (int64_t i = 0; i < hd; ++i) {
      const int64_t c = (h / G) * hd + i;
      vneed[c] = std::max(vneed[c], BitsFor(mom.v_amax(c), d[h * hd + i]));
    }
  out.k = Clamp(kneed, &out.capped);
  out.v = Clamp(vneed, &out.capped);
  return out;
}

}  // namespace compress
