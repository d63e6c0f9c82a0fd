// Llama-family forward pass: RMSNorm, RoPE (default and llama3 scaling), grouped-query
// causal attention, SwiGLU MLP.
#include "runtime/llama.h"

#include <cmath>
#include <mutex>
#include <numbers>
#include <numeric>

#include "core/parallel_gemm.h"
#include "core/vector_math.h"
#include "core/status.h"
#include "formats/hf_config.h"
#include "runtime/llama_internal.h"

namespace compress {
namespace llama_detail {

RowMatrix Linear::Apply(const RowMatrix& x) const {
  RowMatrix xq;
  std::vector<float> steps;  // packed: the integer product takes the activation codes themselves
  float offset = 0;          // zero-point inputs: x' = (code + offset) x step
  const bool coded = packed && act && !packed->TakesF32Acts();
  if (act) {
    xq = x;
    FakeQuantize(*act, act_keep, xq.data(), xq.rows(), xq.cols(), coded ? &steps : nullptr, coded ? &offset : nullptr);
  }
  // Zero-point inputs: the product on the int8 codes (x' - offset x step), then offset x step x
  // each row's weight sum.
  if (offset != 0)
    for (Eigen::Index r = 0; r < xq.rows(); ++r) xq.row(r).array() -= offset * steps[r];
  const RowMatrix& in = act ? xq : x;
  RowMatrix y = coded       ? packed->ApplyCodedActs(in, steps, CodedActGroup(*act, in.cols()))
                : packed      ? packed->Apply(in)
                : fa.size()   ? RowMatrix(MulABt(MulABt(in, fb), fa))
                              : RowMatrix(MulABt(in, w));
  if (offset != 0)
    for (Eigen::Index r = 0; r < y.rows(); ++r) y.row(r) += (offset * steps[r]) * act_row_sums;
  if (b.size()) y.rowwise() += b.transpose();
  return y;
}

RowMatrix Linear::Back(const RowMatrix& dy) const {
  if (packed) return MulAB(dy, packed->ToF32());
  return fa.size() ? RowMatrix(MulAB(MulAB(dy, fa), fb)) : RowMatrix(MulAB(dy, w));
}

bool Linear::IsZero() const {
  if (packed) return packed->IsZero();
  if (fa.size()) return (fa.array() == 0.f).all() || (fb.array() == 0.f).all();
  return w.size() > 0 && (w.array() == 0.f).all();
}

void RmsNorm(RowMatrix& x, const Eigen::VectorXf& g, float eps, Eigen::VectorXf* inv_rms) {
  if (inv_rms) inv_rms->resize(x.rows());
  for (Eigen::Index t = 0; t < x.rows(); ++t) {
    float ms = x.row(t).squaredNorm() / static_cast<float>(x.cols());
    const float r = 1.0f / std::sqrt(ms + eps);
    if (inv_rms) (*inv_rms)(t) = r;
    x.row(t) *= r;
    x.row(t).array() *= g.transpose().array();
  }
}

RopeTable MakeRopeTable(int64_t T, const RopeFrequencies& f) {
  const std::vector<float>& inv_freq = !f.inv_long.empty() && T > f.long_after ? f.inv_long : f.inv;
  const int64_t half = static_cast<int64_t>(inv_freq.size());
  RopeTable r{RowMatrix(T, half), RowMatrix(T, half)};
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t i = 0; i < half; ++i) {
      const float ang = static_cast<float>(t) * inv_freq[i];
      r.cos(t, i) = std::cos(ang) * f.scale;
      r.sin(t, i) = std::sin(ang) * f.scale;
    }
  }
  return r;
}

void ApplyRope(RowMatrix& m, int64_t heads, int64_t hd, const RopeTable& rope, bool inverse) {
  const int64_t half = rope.cos.cols();
  const float sign = inverse ? -1.f : 1.f;
  for (int64_t t = 0; t < m.rows(); ++t) {
    for (int64_t h = 0; h < heads; ++h) {
      float* p = m.data() + t * heads * hd + h * hd;
      for (int64_t i = 0; i < half; ++i) {
        const float a = p[i], b = p[i + half], c = rope.cos(t, i), s = sign * rope.sin(t, i);
        p[i] = a * c - b * s;
        p[i + half] = b * c + a * s;
      }
    }
  }
}

void CausalSoftmax(RowMatrix& s, int64_t first_row) {
  for (int64_t r = 0; r < s.rows(); ++r) {
    const int64_t t = first_row + r;
    float* p = s.data() + r * s.cols();
    float mx = -INFINITY;
#pragma omp simd reduction(max : mx)
    for (int64_t u = 0; u <= t; ++u) mx = std::max(mx, p[u]);
    float sum = 0;
#pragma omp simd reduction(+ : sum)
    for (int64_t u = 0; u <= t; ++u) {
      p[u] = ExpNonPositive(p[u] - mx);
      sum += p[u];
    }
    for (int64_t u = t + 1; u < s.cols(); ++u) p[u] = 0.f;
    for (int64_t u = 0; u <= t; ++u) p[u] /= sum;
  }
}

RowMatrix CausalAttention(const RowMatrix& q, const RowMatrix& k, const RowMatrix& v, int64_t H, int64_t KV,
                          int64_t hd, const AttentionOptions& opt) {
  const int64_t T = q.rows(), group = H / KV;
  const float scale = opt.scale > 0 ? opt.scale : 1.0f / std::sqrt(static_cast<float>(hd));
  // Queries go in blocks of kQueryBlock rows: block [t0, t1) reads keys [0, t1) only, so the
  // products skip the masked upper triangle (whose terms were exact zeros). The shorter
  // products are blocked differently by Eigen, so sums may round differently in the last bit.
  constexpr int64_t kQueryBlock = 64;
  RowMatrix attn(T, H * hd);
#pragma omp parallel for schedule(static)
  for (int64_t head = 0; head < H; ++head) {
    const int64_t kvh = head / group;
    RowMatrix qh = q.middleCols(head * hd, hd), kh = k.middleCols(kvh * hd, hd),
              vh = v.middleCols(kvh * hd, hd);
    for (int64_t t0 = 0; t0 < T; t0 += kQueryBlock) {
      const int64_t rows = std::min(kQueryBlock, T - t0), t1 = t0 + rows;
      RowMatrix s = (qh.middleRows(t0, rows) * kh.topRows(t1).transpose()) * scale;
      if (opt.softcap > 0) s = ((s.array() / opt.softcap).tanh() * opt.softcap).matrix();
      if (opt.window > 0) {
        for (int64_t r = 0; r < rows; ++r)
          for (int64_t u = 0; u <= t0 + r - opt.window; ++u) s(r, u) = -INFINITY;
      }
      CausalSoftmax(s, t0);
      attn.block(t0, head * hd, rows, hd) = s * vh.topRows(t1);
    }
  }
  return attn;
}

}  // namespace llama_detail

namespace {

using llama_detail::Expert;
using llama_detail::Gpt2Layer;
using llama_detail::Layer;
using llama_detail::Linear;
using llama_detail::RmsNorm;

// The output head ([vocab, hidden]: the untied head or the token embedding) packed for the
// native products when its form has one.
std::shared_ptr<const PackedWeight> PackHead(const Model& m, const RuntimeOptions& opts) {
  if (opts.matmul == MatmulMode::kF32 || !opts.logits) return nullptr;
  const std::string& head = m.arch.lm_head.empty() ? m.arch.embedding : m.arch.lm_head;
  if (const Tensor* t = m.tensors.find(head); t && t->shape().size() == 2) {
    if (auto p = PackedWeight::Pack(*t, 0, t->shape()[0], nullptr, opts.matmul == MatmulMode::kBf16)) {
      return std::make_shared<const PackedWeight>(std::move(*p));
    }
  }
  return nullptr;
}

bool IsZeroProjection(const Linear& l) {
  return (l.b.size() == 0 || (l.b.array() == 0.f).all()) && l.IsZero();
}

const Block* FindBlock(const Architecture& a, int index) {
  for (const Block& b : a.blocks) {
    if (b.index == index) return &b;
  }
  return nullptr;
}

absl::StatusOr<RowMatrix> LoadMatrix(const Model& m, const std::string& name) {
  const Tensor* t = m.tensors.find(name);
  if (!t) return NotFound("tensor '{}' is missing", name);
  if (t->shape().size() != 2) return DataLoss("tensor '{}' must be 2-D", name);
  ASSIGN_OR_RETURN(std::vector<float> v, t->ToF32());
  t->ReleasePages();  // decoded: the file's pages can go (a later reload faults them in again)
  return RowMatrix(Eigen::Map<RowMatrix>(v.data(), t->shape()[0], t->shape()[1]));
}

// The embedding, the output head (its tensor, when the model has one: packed heads too) and
// the final norm hold hidden_size columns / values; the products later read them as such.
absl::Status CheckEndShapes(const Model& m, int64_t hidden, const RowMatrix& embed, const Eigen::VectorXf& final_norm) {
  const Architecture& a = m.arch;
  if (embed.cols() != hidden)
    return DataLoss("{}: '{}' is [{}, {}], not [vocab, hidden_size {}]", m.source, a.embedding, embed.rows(),
                    embed.cols(), hidden);
  if (const Tensor* head = a.lm_head.empty() ? nullptr : m.tensors.find(a.lm_head);
      head && (head->shape().size() != 2 || head->shape()[1] != hidden))
    return DataLoss("{}: '{}' has shape {}, not [vocab, hidden_size {}]", m.source, a.lm_head, ShapeString(head->shape()),
                    hidden);
  if (final_norm.size() != hidden)
    return DataLoss("{}: '{}' holds {} values for hidden_size {}", m.source, a.final_norm, final_norm.size(), hidden);
  return absl::OkStatus();
}

absl::StatusOr<Eigen::VectorXf> LoadVector(const Model& m, const std::string& name) {
  const Tensor* t = m.tensors.find(name);
  if (!t) return NotFound("tensor '{}' is missing", name);
  ASSIGN_OR_RETURN(std::vector<float> v, t->ToF32());
  return Eigen::VectorXf(Eigen::Map<Eigen::VectorXf>(v.data(), v.size()));
}

void LayerNorm(RowMatrix& x, const Eigen::VectorXf& g, const Eigen::VectorXf& b, float eps) {
  for (Eigen::Index t = 0; t < x.rows(); ++t) {
    const float mean = x.row(t).mean();
    x.row(t).array() -= mean;
    const float var = x.row(t).squaredNorm() / static_cast<float>(x.cols());
    x.row(t) *= 1.0f / std::sqrt(var + eps);
    x.row(t).array() = x.row(t).array() * g.transpose().array() + b.transpose().array();
  }
}

// Sets out.act from the model's activation spec for `weight` (checked against the weight's
// input width), with LLM.int8()'s outlier features from the weight's quantization.
absl::Status AttachActivationQuant(const Model& m, const std::string& weight, Linear& out) {
  out.act.reset();
  out.act_keep.clear();
  const auto it = m.input_quant.find(weight);
  if (it == m.input_quant.end()) return absl::OkStatus();
  const Tensor* t = m.tensors.find(weight);
  if (!t || t->shape().size() != 2) return DataLoss("{}: activation quantization names no 2-D weight '{}'", m.source, weight);
  const LinearLayer* ll = m.arch.LayerOfWeight(weight);
  const int64_t in = ll ? ll->in_features : t->shape()[1];
  if (absl::Status s = it->second.Validate(in); !s.ok())
    return DataLoss("{}: input of '{}': {}", m.source, weight, s.message());
  out.act = it->second;
  if (it->second.f16_outliers && t->quant()) out.act_keep = t->quant()->outlier_inputs;
  return absl::OkStatus();
}

// Whether a layer whose inputs `act` quantizes (if any) may run packed: the integer kinds take
// integer activation codes as they are, the forms taking f32 activations (TakesF32Acts) the
// quantized values themselves; any other pairing keeps the f32 product.
bool MayPack(const Linear& out, const Tensor& t, int out_axis) {
  const int64_t in = t.shape()[out_axis == 0 ? 1 : 0];
  return !out.act || CodedActGroup(*out.act, in) > 0 || NativeFormTakesF32Acts(t, out_axis);
}
// Whether packed weight `p` runs the layer's products; inputs whose codes would leave int8
// (LLM-FP4's channels shifted far above the rest) are kept apart in f32 first.
bool FitPacked(Linear& out, PackedWeight& p) {
  out.act_row_sums = Eigen::RowVectorXf();
  if (!out.act || p.TakesF32Acts()) return true;
  if (!p.TakesCodedActs(CodedActGroup(*out.act, p.in())) || !p.KeepInputsApart(CodedActApart(*out.act))) return false;
  if (out.act->zero_point) {
    const std::vector<double> sums = p.CodedRowSums();
    out.act_row_sums.resize(static_cast<Eigen::Index>(sums.size()));
    for (size_t n = 0; n < sums.size(); ++n) out.act_row_sums[static_cast<Eigen::Index>(n)] = static_cast<float>(sums[n]);
  }
  return true;
}

// Decodes `ll` into `out` (its name only when !decode), keeping rows [row0, row0 + rows) of a
// fused weight (all rows when rows < 0). Low-rank weights stay as their two factors.
absl::Status LoadLinear(const Model& m, const LinearLayer& ll, Linear& out, bool decode, MatmulMode matmul,
                        int64_t row0 = 0, int64_t rows = -1) {
  out.name = ll.weight;
  RETURN_IF_ERROR(AttachActivationQuant(m, ll.weight, out));
  if (!decode) return absl::OkStatus();
  const Tensor* t = m.tensors.find(ll.weight);
  if (!t) return NotFound("tensor '{}' is missing", ll.weight);
  if (t->shape().size() != 2) return DataLoss("tensor '{}' must be 2-D", ll.weight);
  const int64_t n = t->shape()[0];
  if (rows < 0) rows = n - row0;
  if (row0 < 0 || row0 + rows > n) return DataLoss("tensor '{}' has {} rows, fewer than {}", ll.weight, n, row0 + rows);
  const LowRankFactors* f = t->factors();
  out.packed.reset();
  std::optional<PackedWeight> packed;
  if (matmul != MatmulMode::kF32 && ll.out_axis == 0 && MayPack(out, *t, 0)) {
    packed = PackedWeight::Pack(*t, row0, rows, nullptr, matmul == MatmulMode::kBf16);
  }
  if (packed && !FitPacked(out, *packed)) packed.reset();
  if (packed) {
    out.w = out.fa = out.fb = RowMatrix();
    out.packed = std::make_shared<const PackedWeight>(std::move(*packed));
    t->ReleasePages();
  } else if (f && ll.out_axis == 0 && f->rank > 0 && f->a.size() == static_cast<size_t>(n * f->rank) &&
      f->b.size() == static_cast<size_t>(f->rank * t->shape()[1])) {
    out.w = RowMatrix();
    out.fa = Eigen::Map<const RowMatrix>(f->a.data(), n, f->rank).middleRows(row0, rows);
    out.fb = Eigen::Map<const RowMatrix>(f->b.data(), f->rank, t->shape()[1]);
  } else {
    out.fa = out.fb = RowMatrix();
    ASSIGN_OR_RETURN(RowMatrix w, LoadMatrix(m, ll.weight));
    out.w = rows == n ? std::move(w) : RowMatrix(w.middleRows(row0, rows));
  }
  out.b = Eigen::VectorXf();
  if (!ll.bias.empty()) {
    ASSIGN_OR_RETURN(Eigen::VectorXf b, LoadVector(m, ll.bias));
    if (b.size() != n) return DataLoss("bias '{}' has {} entries for {} rows", ll.bias, b.size(), n);
    out.b = b.segment(row0, rows);
  }
  return absl::OkStatus();
}

// Reads the projections of block `b` into `l` (only their names when !decode): q/k/v/o, the
// dense FFN or the experts with their router (and a shared expert with its gate).
absl::Status LoadProjections(const Model& m, const HfConfig& cfg, const Block& b, Layer& l, bool decode,
                             MatmulMode matmul) {
  const int64_t qd = cfg.num_heads * cfg.head_dim, kvd = cfg.num_kv_heads * cfg.head_dim;
  for (const LinearLayer& ll : b.attention) {
    if (ll.kind == "q_proj") RETURN_IF_ERROR(LoadLinear(m, ll, l.q, decode, matmul));
    if (ll.kind == "k_proj") RETURN_IF_ERROR(LoadLinear(m, ll, l.k, decode, matmul));
    if (ll.kind == "v_proj") RETURN_IF_ERROR(LoadLinear(m, ll, l.v, decode, matmul));
    if (ll.kind == "o_proj") RETURN_IF_ERROR(LoadLinear(m, ll, l.o, decode, matmul));
    if (ll.kind == "qkv_proj") {
      l.fused_qkv = true;
      RETURN_IF_ERROR(LoadLinear(m, ll, l.q, decode, matmul, 0, qd));
      RETURN_IF_ERROR(LoadLinear(m, ll, l.k, decode, matmul, qd, kvd));
      RETURN_IF_ERROR(LoadLinear(m, ll, l.v, decode, matmul, qd + kvd, kvd));
    }
  }
  l.experts.assign(b.num_experts, Expert{});
  for (const LinearLayer& ll : b.mlp) {
    if (ll.expert >= b.num_experts) return DataLoss("{}: block {} has no expert {}", m.source, b.index, ll.expert);
    Linear* gate = ll.expert >= 0 ? &l.experts[ll.expert].gate : &l.gate;
    Linear* up = ll.expert >= 0 ? &l.experts[ll.expert].up : &l.up;
    Linear* down = ll.expert >= 0 ? &l.experts[ll.expert].down : &l.down;
    if (ll.kind == "gate_proj") RETURN_IF_ERROR(LoadLinear(m, ll, *gate, decode, matmul));
    if (ll.kind == "up_proj") RETURN_IF_ERROR(LoadLinear(m, ll, *up, decode, matmul));
    if (ll.kind == "down_proj") RETURN_IF_ERROR(LoadLinear(m, ll, *down, decode, matmul));
    if (ll.kind == "gate_up_proj") {
      l.fused_gate_up = true;
      const int64_t half = ll.out_features / 2;
      RETURN_IF_ERROR(LoadLinear(m, ll, *gate, decode, matmul, 0, half));
      RETURN_IF_ERROR(LoadLinear(m, ll, *up, decode, matmul, half, half));
    }
  }
  if (b.moe()) {
    RETURN_IF_ERROR(LoadLinear(m, LinearLayer{.name = b.router, .kind = "router", .weight = b.router}, l.router, decode, matmul));
    if (!b.shared_expert_gate.empty()) {
      RETURN_IF_ERROR(LoadLinear(
          m, LinearLayer{.name = b.shared_expert_gate, .kind = "gate", .weight = b.shared_expert_gate},
          l.shared_gate, decode, matmul));
    }
  }
  auto missing = [&](const Linear& x, const char* what) -> absl::Status {
    if (!x.name.empty()) return absl::OkStatus();
    return DataLoss("{}: block {} lacks its {} projection, which the runtime needs", m.source, b.index, what);
  };
  // A FinerCut student's no-op sublayers (block_configs) have no weights and are skipped.
  const bool no_attention = cfg.AttentionRemoved(b.index), no_mlp = cfg.MlpRemoved(b.index);
  if (!no_attention) {
    RETURN_IF_ERROR(missing(l.q, "q"));
    RETURN_IF_ERROR(missing(l.k, "k"));
    RETURN_IF_ERROR(missing(l.v, "v"));
    RETURN_IF_ERROR(missing(l.o, "o"));
  }
  const bool has_shared = !l.gate.name.empty() || !l.up.name.empty() || !l.down.name.empty();
  if (!no_mlp && (!b.moe() || has_shared)) {
    RETURN_IF_ERROR(missing(l.gate, "gate"));
    RETURN_IF_ERROR(missing(l.up, "up"));
    RETURN_IF_ERROR(missing(l.down, "down"));
  }
  for (const Expert& e : l.experts) {
    RETURN_IF_ERROR(missing(e.gate, "expert gate"));
    RETURN_IF_ERROR(missing(e.up, "expert up"));
    RETURN_IF_ERROR(missing(e.down, "expert down"));
  }
  if (no_attention || no_mlp) {
    l.skip_attention = no_attention;
    l.skip_mlp = no_mlp;
  }
  if (decode) {
    l.skip_attention = no_attention || IsZeroProjection(l.o);
    if (no_mlp) {
      l.skip_mlp = true;
    } else if (l.experts.empty()) {
      l.skip_mlp = IsZeroProjection(l.down);
    } else {
      bool all_zero = !has_shared || IsZeroProjection(l.down);
      for (const Expert& e : l.experts) all_zero = all_zero && IsZeroProjection(e.down);
      l.skip_mlp = all_zero;
    }
  }
  return absl::OkStatus();
}

// Frees the f32 matrices of a block's projections, keeping names and skip flags.
void ReleaseProjections(Layer& l) {
  auto release = [](Linear& p) {
    p.w = p.fa = p.fb = RowMatrix();
    p.packed.reset();
    p.b = Eigen::VectorXf();
  };
  for (Linear* p : {&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down, &l.router, &l.shared_gate}) release(*p);
  for (Expert& e : l.experts) {
    release(e.gate);
    release(e.up);
    release(e.down);
  }
}

// Rotary frequencies of the first `rot` dims of a head under one rope parameter set
// (default, linear, llama3, yarn or longrope), following transformers' definitions.
absl::StatusOr<llama_detail::RopeFrequencies> InverseFrequencies(const HfConfig& cfg, const HfConfig::RopeScaling& r,
                                                                  int64_t rot, const std::string& source) {
  llama_detail::RopeFrequencies out;
  std::vector<double> base(rot / 2);  // theta^(2i / rot)
  for (int64_t i = 0; i < rot / 2; ++i) {
    base[i] = std::pow(r.theta, static_cast<double>(static_cast<float>(2 * i) / static_cast<float>(rot)));
  }
  auto plain = [&](double divisor) {
    std::vector<float> f;
    for (double b : base) f.push_back(static_cast<float>(1.0 / (divisor * b)));
    return f;
  };
  out.inv = plain(1.0);
  if (r.type == "default") return out;
  if (r.type == "linear") {
    out.inv = plain(r.factor);
    return out;
  }
  if (r.type == "llama3") {
    for (auto& x : out.inv) x = static_cast<float>(x * Llama3FrequencyScale(r, 2 * std::numbers::pi / x));
    return out;
  }
  if (r.type == "yarn") {
    const HfConfig::RopeExtension ext = cfg.YarnExtension(r);
    const double orig = ext.original, factor = ext.factor, attention = ext.attention;
    const double d = static_cast<double>(rot);
    auto correction_dim = [&](double rotations) {
      return d * std::log(orig / (rotations * 2 * std::numbers::pi)) / (2 * std::log(r.theta));
    };
    double low = correction_dim(r.beta_fast), high = correction_dim(r.beta_slow);
    if (r.truncate) low = std::floor(low), high = std::ceil(high);
    low = std::max(low, 0.0), high = std::min(high, d - 1);
    if (low == high) high += 0.001;
    for (int64_t i = 0; i < rot / 2; ++i) {
      const float ramp = std::clamp(static_cast<float>((static_cast<double>(i) - low) / (high - low)), 0.f, 1.f);
      const float extrapolation = 1.f - ramp;
      const float inter = static_cast<float>(1.0 / (factor * base[i])), extra = static_cast<float>(1.0 / base[i]);
      out.inv[i] = inter * (1.f - extrapolation) + extra * extrapolation;
    }
    out.scale = static_cast<float>(attention);
    return out;
  }
  if (r.type == "longrope") {
    const size_t half = static_cast<size_t>(rot / 2);
    if (r.short_factor.size() != half || r.long_factor.size() != half) {
      return DataLoss("{}: longrope short_factor/long_factor need {} entries each (got {} and {})", source, half,
                      r.short_factor.size(), r.long_factor.size());
    }
    const HfConfig::RopeExtension ext = cfg.LongropeExtension(r);
    for (size_t i = 0; i < half; ++i) {
      out.inv[i] = static_cast<float>(1.0 / (r.short_factor[i] * base[i]));
      out.inv_long.push_back(static_cast<float>(1.0 / (r.long_factor[i] * base[i])));
    }
    out.long_after = static_cast<int64_t>(ext.original);
    out.scale = static_cast<float>(ext.attention);
    return out;
  }
  return Unimplemented("{}: rope scaling '{}' is not supported (default, linear, llama3, yarn, longrope)", source,
                       r.type);
}

// The block's norm weights by the family's names (sandwich families: post_attention_layernorm
// is the attention output's norm and pre_feedforward_layernorm the FFN's input norm).
absl::Status LoadNorms(const Model& m, const HfConfig& cfg, const FamilySpec& fam, const Block& b, Layer& l) {
  const bool attn = !cfg.AttentionRemoved(b.index), mlp = !cfg.MlpRemoved(b.index);
  auto find = [&](std::string_view suffix) -> std::string {
    for (const auto& n : b.norms) {
      if (n.ends_with(suffix)) return n;
    }
    return "";
  };
  auto load = [&](std::string_view suffix, Eigen::VectorXf& out, bool required) -> absl::Status {
    const std::string n = find(suffix);
    if (n.empty()) {
      if (required) return DataLoss("{}: block {} lacks its norm '*{}'", m.source, b.index, suffix);
      return absl::OkStatus();
    }
    ASSIGN_OR_RETURN(out, LoadVector(m, n));
    if (fam.norm == NormKind::kRmsOffset) out.array() += 1.f;
    return absl::OkStatus();
  };
  // A no-op sublayer of a FinerCut student (block_configs) has no norms either.
  RETURN_IF_ERROR(load(".input_layernorm.weight", l.n1, attn));
  if (fam.sandwich_norms) {
    RETURN_IF_ERROR(load(".post_attention_layernorm.weight", l.post_attn, attn));
    RETURN_IF_ERROR(load(".pre_feedforward_layernorm.weight", l.n2, mlp));
    RETURN_IF_ERROR(load(".post_feedforward_layernorm.weight", l.post_ffn, mlp));
  } else {
    RETURN_IF_ERROR(load(".post_attention_layernorm.weight", l.n2, mlp));
  }
  if (fam.qk_norm) {
    RETURN_IF_ERROR(load(".q_norm.weight", l.q_norm, attn));
    RETURN_IF_ERROR(load(".k_norm.weight", l.k_norm, attn));
  }
  return absl::OkStatus();
}

// RMSNorm of every head_dim-wide slice of m [T, heads * hd] with the same weight g [hd].
void HeadRmsNorm(RowMatrix& m, int64_t heads, int64_t hd, const Eigen::VectorXf& g, float eps) {
  for (int64_t t = 0; t < m.rows(); ++t) {
    for (int64_t h = 0; h < heads; ++h) {
      auto x = m.row(t).segment(h * hd, hd);
      const float r = 1.0f / std::sqrt(x.squaredNorm() / static_cast<float>(hd) + eps);
      x = (x.array() * r * g.transpose().array()).matrix();
    }
  }
}

void Activate(RowMatrix& g, Activation act) {
  constexpr float kC = 0.7978845608028654f;  // sqrt(2 / pi)
  switch (act) {
    case Activation::kSilu:
      g = (g.array() / (1.0f + (-g.array()).exp())).matrix();
      return;
    case Activation::kGeluTanh:
      g = (0.5f * g.array() * (1.0f + (kC * (g.array() + 0.044715f * g.array().cube())).tanh())).matrix();
      return;
    case Activation::kGeluErf:
      g = g.unaryExpr([](float x) { return 0.5f * x * (1.0f + std::erf(x * 0.7071067811865476f)); });
      return;
  }
}

}  // namespace

using llama_detail::ApplyRope;
using llama_detail::CausalAttention;
using llama_detail::MakeRopeTable;
using llama_detail::RopeTable;

LlamaRuntime::~LlamaRuntime() = default;

absl::StatusOr<std::unique_ptr<LlamaRuntime>> LlamaRuntime::Create(const Model& m, RuntimeOptions opts) {
  if (m.format != ModelFormat::kSafetensors || !m.config.is_object()) {
    return FailedPrecondition("{}: the LLM runtime needs a safetensors checkpoint with config.json",
                              m.source);
  }
  ASSIGN_OR_RETURN(HfConfig cfg, ParseHfConfig(m.config, m.source));
  const FamilySpec* fam = FindFamily(cfg.model_type);
  if (!fam) {
    return Unimplemented("{}: model_type '{}' is not supported by the runtime yet (supported: {})", m.source,
                         cfg.model_type, FamilyNames());
  }
  for (const std::string& t : cfg.layer_types) {  // the view reads any; the runtime runs these two
    if (t != "sliding_attention" && t != "full_attention") {
      return Unimplemented("{}: layer type '{}' is not supported by the runtime (sliding_attention, full_attention)",
                           m.source, t);
    }
  }
  auto w = std::make_unique<Weights>();
  w->cfg = cfg;
  const std::string act = cfg.hidden_act.empty() ? std::string(fam->default_act) : cfg.hidden_act;
  if (!ParseActivation(act, w->act)) {
    return Unimplemented("{}: activation '{}' is not supported (silu, gelu, gelu_pytorch_tanh, gelu_new)",
                         m.source, act);
  }
  w->matmul = opts.matmul;
  w->lm_packed = PackHead(m, opts);
  if (fam->layout == ProjectionLayout::kConv1dGpt2) {
    auto rt = std::unique_ptr<LlamaRuntime>(new LlamaRuntime());
    rt->w_ = std::move(w);
    RETURN_IF_ERROR(LoadGpt2(m, *rt->w_));
    if (absl::Status st = rt->SetKvCache(m.kv_cache); !st.ok()) return DataLoss("{}: KV cache: {}", m.source, st.message());
    return rt;
  }
  auto rt = std::unique_ptr<LlamaRuntime>(new LlamaRuntime());
  w->fam = fam;
  const Architecture& a = m.arch;
  if (a.embedding.empty()) return DataLoss("{}: no embedding tensor", m.source);
  ASSIGN_OR_RETURN(w->embed, LoadMatrix(m, a.embedding));
  if (!a.lm_head.empty() && opts.logits && !w->lm_packed) {
    ASSIGN_OR_RETURN(w->lm_head, LoadMatrix(m, a.lm_head));
  }
  w->logits = opts.logits;
  if (a.final_norm.empty()) return DataLoss("{}: no final norm", m.source);
  ASSIGN_OR_RETURN(w->final_norm, LoadVector(m, a.final_norm));
  RETURN_IF_ERROR(CheckEndShapes(m, cfg.hidden_size, w->embed, w->final_norm));
  if (fam->norm == NormKind::kRmsOffset) w->final_norm.array() += 1.f;
  if (fam->embed_scale) w->embed_scale = static_cast<float>(std::sqrt(static_cast<double>(cfg.hidden_size)));
  if (fam->query_pre_attn_scalar && cfg.query_pre_attn_scalar > 0)
    w->attn.scale = static_cast<float>(1.0 / std::sqrt(cfg.query_pre_attn_scalar));
  w->attn.softcap = static_cast<float>(cfg.attn_softcap);
  w->norm_topk = cfg.norm_topk_prob.value_or(fam->norm_topk_default);
  for (const Block& b : a.blocks) {
    Layer l;
    RETURN_IF_ERROR(LoadProjections(m, cfg, b, l, /*decode=*/!opts.lazy_blocks && !opts.stream_blocks, w->matmul));
    RETURN_IF_ERROR(LoadNorms(m, cfg, *fam, b, l));
    if (b.moe() && (cfg.experts_per_token < 1 || cfg.experts_per_token > b.num_experts)) {
      return DataLoss("{}: block {} has {} experts but num_experts_per_tok is {}", m.source, b.index,
                      b.num_experts, cfg.experts_per_token);
    }
    l.sliding = cfg.SlidingLayer(b.index);
    l.local_rope = l.sliding;
    w->layers.push_back(std::move(l));
  }
  if (opts.stream_blocks) w->stream_model = &m;
  // RoPE inverse frequencies of the rotated dims (all of head_dim unless partial rotary).
  int64_t rot = static_cast<int64_t>(static_cast<double>(cfg.head_dim) * cfg.partial_rotary_factor);
  rot -= rot % 2;
  if (rot < 2) return DataLoss("{}: partial_rotary_factor {} rotates no dims", m.source, cfg.partial_rotary_factor);
  ASSIGN_OR_RETURN(w->rope, InverseFrequencies(cfg, cfg.rope, rot, m.source));
  ASSIGN_OR_RETURN(w->rope_local, InverseFrequencies(cfg, cfg.rope_local, rot, m.source));
  bool any_sliding = false, any_moe = false;
  for (const Layer& l : w->layers) {
    any_sliding = any_sliding || l.sliding;
    any_moe = any_moe || !l.experts.empty();
  }
  w->gradients_supported = !fam->sandwich_norms && !fam->qk_norm && !fam->embed_scale &&
                           fam->layout == ProjectionLayout::kSeparate && !any_moe && !any_sliding &&
                           w->act == Activation::kSilu && cfg.attn_softcap == 0 && cfg.final_softcap == 0 &&
                           rot == cfg.head_dim && w->attn.scale == 0 && w->rope.scale == 1.f &&
                           w->rope.inv_long.empty();
  w->params = m.ParameterCount();
  rt->w_ = std::move(w);
  if (absl::Status st = rt->SetKvCache(m.kv_cache); !st.ok()) return DataLoss("{}: KV cache: {}", m.source, st.message());
  return rt;
}

int64_t LlamaRuntime::vocab_size() const { return w_->embed.rows() ? w_->embed.rows() : w_->released_vocab; }
int64_t LlamaRuntime::num_parameters() const { return w_->params; }

LlamaRuntime::LinearForms LlamaRuntime::ResidentLinearForms() const {
  LinearForms f;
  auto add = [&](const Linear& l) {
    if (!l.packed && l.w.size() == 0 && l.fa.size() == 0) return;  // not loaded, or no such layer
    ++f.resident;
    if (l.packed) ++f.packed;
  };
  for (const Gpt2Layer& g : w_->g2)
    for (const Linear* l : {&g.attn, &g.proj, &g.fc, &g.mproj}) add(*l);
  for (const Layer& b : w_->layers) {
    for (const Linear* l : {&b.q, &b.k, &b.v, &b.o, &b.gate, &b.up, &b.down}) add(*l);
    for (const Expert& e : b.experts)
      for (const Linear* l : {&e.gate, &e.up, &e.down}) add(*l);
  }
  return f;
}

int LlamaRuntime::num_blocks() const {
  return static_cast<int>(w_->gpt2 ? w_->g2.size() : w_->layers.size());
}

namespace {

// One GPT-2 block: Conv1D [in, out] weights (GGUF block types: [out, in]) held as [out, in]
// (packed when `matmul` is not kF32 and the form has a native product), LayerNorms.
absl::Status LoadGpt2Block(const Model& m, const Block& b, Gpt2Layer& g, MatmulMode matmul, int64_t hidden) {
  int64_t ffn = 0;  // c_fc's width, c_proj's (MLP) input
  // `in` / `out`: the widths the block's products take (0: any, recorded in `ffn`).
  auto conv1d = [&](const LinearLayer& l, Linear& out, int64_t in_want, int64_t out_want) -> absl::Status {
    const Tensor* shape_of = m.tensors.find(l.weight);
    if (!shape_of || shape_of->shape().size() != 2) return DataLoss("{}: '{}' must be a 2-D tensor", m.source, l.weight);
    const int64_t rows = shape_of->shape()[l.out_axis == 0 ? 0 : 1], cols = shape_of->shape()[l.out_axis == 0 ? 1 : 0];
    if (cols != in_want || (out_want > 0 && rows != out_want) || rows <= 0)
      return DataLoss("{}: '{}' has shape {}: block {} needs {} inputs and {} outputs", m.source, l.weight,
                      ShapeString(shape_of->shape()), b.index, in_want, out_want > 0 ? std::to_string(out_want) : "some");
    if (out_want == 0) ffn = rows;
    out.name = l.weight;
    RETURN_IF_ERROR(AttachActivationQuant(m, l.weight, out));
    out.packed.reset();
    out.w = RowMatrix();
    const Tensor* t = m.tensors.find(l.weight);
    if (matmul != MatmulMode::kF32 && t && t->shape().size() == 2 && MayPack(out, *t, l.out_axis)) {
      std::optional<PackedWeight> p =
          l.out_axis == 0 ? PackedWeight::Pack(*t, 0, t->shape()[0], nullptr, matmul == MatmulMode::kBf16)
                          : PackedWeight::PackTransposed(*t, nullptr, matmul == MatmulMode::kBf16);
      if (p && FitPacked(out, *p)) out.packed = std::make_shared<const PackedWeight>(std::move(*p));
    }
    if (!out.packed) {
      ASSIGN_OR_RETURN(RowMatrix w, LoadMatrix(m, l.weight));
      out.w = l.out_axis == 0 ? std::move(w) : RowMatrix(w.transpose());  // Conv1D stores [in, out]
    }
    if (l.bias.empty()) return DataLoss("{}: '{}' has no bias", m.source, l.name);
    ASSIGN_OR_RETURN(out.b, LoadVector(m, l.bias));
    if (out.b.size() != rows) return DataLoss("{}: '{}' holds {} values for {} outputs", m.source, l.bias, out.b.size(), rows);
    return absl::OkStatus();
  };
  for (const LinearLayer& l : b.attention) {
    if (l.kind == "c_attn") RETURN_IF_ERROR(conv1d(l, g.attn, hidden, 3 * hidden));
    if (l.kind == "c_proj") RETURN_IF_ERROR(conv1d(l, g.proj, hidden, hidden));
  }
  for (const LinearLayer& l : b.mlp) {
    if (l.kind == "c_fc") RETURN_IF_ERROR(conv1d(l, g.fc, hidden, 0));
  }
  for (const LinearLayer& l : b.mlp) {
    if (l.kind == "c_proj") RETURN_IF_ERROR(conv1d(l, g.mproj, ffn, hidden));
  }
  auto missing = [](const Linear& l) { return !l.w.size() && !l.packed; };
  if (missing(g.attn) || missing(g.proj) || missing(g.fc) || missing(g.mproj)) {
    return DataLoss("{}: GPT-2 block {} lacks c_attn/c_proj/c_fc", m.source, b.index);
  }
  std::string ln1, ln2;
  for (const auto& n : b.norms) {
    if (n.find("ln_1") != std::string::npos) ln1 = n;
    if (n.find("ln_2") != std::string::npos) ln2 = n;
  }
  if (ln1.empty() || ln2.empty()) return DataLoss("{}: GPT-2 block {} lacks ln_1/ln_2", m.source, b.index);
  auto bias_of = [](std::string n) { return n.substr(0, n.size() - 6) + "bias"; };
  ASSIGN_OR_RETURN(g.ln1w, LoadVector(m, ln1));
  ASSIGN_OR_RETURN(g.ln1b, LoadVector(m, bias_of(ln1)));
  ASSIGN_OR_RETURN(g.ln2w, LoadVector(m, ln2));
  ASSIGN_OR_RETURN(g.ln2b, LoadVector(m, bias_of(ln2)));
  for (const Eigen::VectorXf* v : {&g.ln1w, &g.ln1b, &g.ln2w, &g.ln2b}) {
    if (v->size() != hidden)
      return DataLoss("{}: GPT-2 block {}'s layer norms hold {} values for hidden_size {}", m.source, b.index, v->size(),
                      hidden);
  }
  g.skip_attention = IsZeroProjection(g.proj);
  g.skip_mlp = IsZeroProjection(g.mproj);
  return absl::OkStatus();
}

}  // namespace

absl::Status LlamaRuntime::LoadGpt2(const Model& m, Weights& w) {
  const Architecture& a = m.arch;
  w.gpt2 = true;
  auto find = [&](std::initializer_list<const char*> names) -> std::string {
    for (const char* n : names) {
      if (m.tensors.contains(n)) return n;
    }
    return "";
  };
  const std::string wpe = find({"transformer.wpe.weight", "wpe.weight"});
  const std::string lnf_b = find({"transformer.ln_f.bias", "ln_f.bias"});
  if (a.embedding.empty() || wpe.empty() || a.final_norm.empty() || lnf_b.empty()) {
    return DataLoss("{}: GPT-2 checkpoint lacks wte, wpe or ln_f", m.source);
  }
  ASSIGN_OR_RETURN(w.embed, LoadMatrix(m, a.embedding));
  ASSIGN_OR_RETURN(w.wpe, LoadMatrix(m, wpe));
  ASSIGN_OR_RETURN(w.final_norm, LoadVector(m, a.final_norm));
  ASSIGN_OR_RETURN(w.final_norm_bias, LoadVector(m, lnf_b));
  RETURN_IF_ERROR(CheckEndShapes(m, w.cfg.hidden_size, w.embed, w.final_norm));
  if (w.wpe.cols() != w.cfg.hidden_size || w.final_norm_bias.size() != w.cfg.hidden_size)
    return DataLoss("{}: '{}' or '{}' does not match hidden_size {}", m.source, wpe, lnf_b, w.cfg.hidden_size);
  if (!a.lm_head.empty() && !w.lm_packed) {
    ASSIGN_OR_RETURN(w.lm_head, LoadMatrix(m, a.lm_head));
  }
  for (const Block& b : a.blocks) {
    Gpt2Layer g;
    RETURN_IF_ERROR(LoadGpt2Block(m, b, g, w.matmul, w.cfg.hidden_size));
    w.g2.push_back(std::move(g));
  }
  w.params = m.ParameterCount();
  return absl::OkStatus();
}

void LlamaRuntime::RunGpt2Block(int block, RowMatrix& x, LinearObserver* observer) const {
  const Weights& w = *w_;
  const Gpt2Layer& l = w.g2[block];
  const int64_t D = w.cfg.hidden_size, H = w.cfg.num_heads;
  const float eps = static_cast<float>(w.cfg.norm_eps);
  auto observe = [&](const Linear& li, const RowMatrix& in) {
    if (observer) observer->Observe(block, std::vector<std::string>{li.name}, in);
  };
  RowMatrix h;
  if (!l.skip_attention) {
    h = x;
    LayerNorm(h, l.ln1w, l.ln1b, eps);
    observe(l.attn, h);
    RowMatrix qkv = l.attn.Apply(h);
    RowMatrix q = qkv.leftCols(D), k = qkv.middleCols(D, D), v = qkv.rightCols(D);
    QuantizeCache(block, q, k, v, D / H, observer);
    RowMatrix attn = CausalAttention(q, k, v, H, H, D / H);
    observe(l.proj, attn);
    x += l.proj.Apply(attn);
  }
  if (l.skip_mlp) return;
  h = x;
  LayerNorm(h, l.ln2w, l.ln2b, eps);
  observe(l.fc, h);
  RowMatrix a = l.fc.Apply(h);
  Activate(a, w.act);
  observe(l.mproj, a);
  x += l.mproj.Apply(a);
}

void LlamaRuntime::ReleaseEmbeddings() {
  w_->released_vocab = w_->embed.rows();
  w_->embed = RowMatrix();
}

absl::StatusOr<RowMatrix> LlamaRuntime::Embed(std::span<const int32_t> ids) const {
  const Weights& w = *w_;
  if (w.embed.size() == 0) return FailedPrecondition("the token embedding was released (ReleaseEmbeddings)");
  RowMatrix x(static_cast<int64_t>(ids.size()), w.cfg.hidden_size);
  for (size_t t = 0; t < ids.size(); ++t) {
    if (ids[t] < 0 || ids[t] >= w.embed.rows()) {
      return InvalidArgument("token id {} at position {} is outside the vocabulary ({})", ids[t], t,
                             w.embed.rows());
    }
    x.row(t) = w.embed.row(ids[t]);
    if (w.embed_scale != 1.f) x.row(t) *= w.embed_scale;
    if (w.gpt2) {
      if (static_cast<int64_t>(t) >= w.wpe.rows()) {
        return InvalidArgument("sequence of {} tokens is longer than the model's {} positions", ids.size(),
                               w.wpe.rows());
      }
      x.row(t) += w.wpe.row(t);
    }
  }
  return x;
}

void LlamaRuntime::QuantizeCache(int block, const RowMatrix& q, RowMatrix& k, RowMatrix& v, int64_t hd,
                                 LinearObserver* observer) const {
  if (observer) observer->ObserveKv(block, q, k, v);
  if (!w_->kv) return;
  FakeQuantizeKv(*w_->kv, true, block, hd, k.data(), k.rows(), k.cols());
  FakeQuantizeKv(*w_->kv, false, block, hd, v.data(), v.rows(), v.cols());
}

int64_t LlamaRuntime::kv_dim() const {
  return w_->gpt2 ? w_->cfg.hidden_size : w_->cfg.num_kv_heads * w_->cfg.head_dim;
}

absl::Status LlamaRuntime::SetKvCache(std::optional<KvCacheQuant> kv) {
  if (kv) RETURN_IF_ERROR(kv->Validate(num_blocks(), kv_dim()));
  w_->kv = std::move(kv);
  return absl::OkStatus();
}

void LlamaRuntime::RunBlock(int block, RowMatrix& x, LinearObserver* observer) const {
  if (w_->gpt2) return RunGpt2Block(block, x, observer);
  RunLlamaBlock(block, x, observer, nullptr);
}

namespace {

// Shows `in` to the observer as the input of the distinct layers `ls` (nothing for no rows:
// an expert no token was routed to).
void ObserveInput(LinearObserver* observer, int block, std::initializer_list<const Linear*> ls, const RowMatrix& in) {
  if (!observer || in.rows() == 0) return;
  std::vector<std::string> names;
  for (const Linear* li : ls) {
    if (std::find(names.begin(), names.end(), li->name) == names.end()) names.push_back(li->name);
  }
  observer->Observe(block, names, in);
}

// y = act(gate x) * (up x) then down, with the observer seeing each product's input.
RowMatrix GatedMlp(const Linear& gate, const Linear& up, const Linear& down, const RowMatrix& h, Activation act,
                   const std::function<void(std::initializer_list<const Linear*>, const RowMatrix&)>& observe,
                   RowMatrix* g_out = nullptr, RowMatrix* u_out = nullptr, RowMatrix* act_out = nullptr) {
  observe({&gate, &up}, h);
  RowMatrix g = gate.Apply(h), u = up.Apply(h);
  RowMatrix a = g;
  Activate(a, act);
  a.array() *= u.array();
  observe({&down}, a);
  RowMatrix y = down.Apply(a);
  if (g_out) *g_out = std::move(g);
  if (u_out) *u_out = std::move(u);
  if (act_out) *act_out = std::move(a);
  return y;
}

}  // namespace

RowMatrix LlamaRuntime::RunMoe(int block, const RowMatrix& h, LinearObserver* observer) const {
  const Weights& w = *w_;
  const Layer& l = w.layers[block];
  const int64_t T = h.rows(), E = static_cast<int64_t>(l.experts.size());
  const int64_t K = w.cfg.experts_per_token;
  auto observe = [&](std::initializer_list<const Linear*> ls, const RowMatrix& in) {
    ObserveInput(observer, block, ls, in);
  };
  // Routing: softmax over the experts' logits, the top k, optionally renormalised.
  observe({&l.router}, h);
  const RowMatrix logits = l.router.Apply(h);
  std::vector<std::vector<int64_t>> rows(E);
  std::vector<std::vector<float>> weights(E);
  std::vector<int64_t> order(E);
  for (int64_t t = 0; t < T; ++t) {
    Eigen::VectorXf p = logits.row(t).transpose();
    p = (p.array() - p.maxCoeff()).exp();
    p /= p.sum();
    std::iota(order.begin(), order.end(), 0);
    std::partial_sort(order.begin(), order.begin() + K, order.end(),
                      [&](int64_t x, int64_t y) { return p(x) > p(y) || (p(x) == p(y) && x < y); });
    float sum = 0;
    for (int64_t k = 0; k < K; ++k) sum += p(order[k]);
    for (int64_t k = 0; k < K; ++k) {
      rows[order[k]].push_back(t);
      weights[order[k]].push_back(w.norm_topk ? p(order[k]) / sum : p(order[k]));
    }
  }
  RowMatrix out = RowMatrix::Zero(T, h.cols());
  for (int64_t e = 0; e < E; ++e) {
    if (rows[e].empty()) continue;
    RowMatrix xe(static_cast<int64_t>(rows[e].size()), h.cols());
    for (size_t i = 0; i < rows[e].size(); ++i) xe.row(static_cast<int64_t>(i)) = h.row(rows[e][i]);
    const Expert& ex = l.experts[e];
    const RowMatrix ye = GatedMlp(ex.gate, ex.up, ex.down, xe, w.act, observe);
    for (size_t i = 0; i < rows[e].size(); ++i) out.row(rows[e][i]) += weights[e][i] * ye.row(static_cast<int64_t>(i));
  }
  if (!l.down.name.empty()) {  // shared expert, scaled by sigmoid(shared_gate x) when gated
    RowMatrix ys = GatedMlp(l.gate, l.up, l.down, h, w.act, observe);
    if (!l.shared_gate.name.empty()) {
      observe({&l.shared_gate}, h);
      const RowMatrix g = l.shared_gate.Apply(h);
      for (int64_t t = 0; t < T; ++t) ys.row(t) *= 1.0f / (1.0f + std::exp(-g(t, 0)));
    }
    out += ys;
  }
  return out;
}

void LlamaRuntime::RunLlamaBlock(int block, RowMatrix& x, LinearObserver* observer,
                                 llama_detail::BlockTape* tape) const {
  const Weights& w = *w_;
  const HfConfig& c = w.cfg;
  const Layer& l = w.layers[block];
  const int64_t T = x.rows(), hd = c.head_dim;
  const int64_t H = c.num_heads, KV = c.num_kv_heads;
  const float eps = static_cast<float>(c.norm_eps);
  const RopeTable rope = MakeRopeTable(T, l.local_rope ? w.rope_local : w.rope);
  auto observe = [&](std::initializer_list<const Linear*> ls, const RowMatrix& in) {
    ObserveInput(observer, block, ls, in);
  };
  if (tape) tape->x0 = x;
  RowMatrix h;
  if (!l.skip_attention) {
    h = x;
    RmsNorm(h, l.n1, eps, tape ? &tape->r1 : nullptr);
    observe({&l.q, &l.k, &l.v}, h);
    RowMatrix q = l.q.Apply(h), k = l.k.Apply(h), v = l.v.Apply(h);
    if (l.q_norm.size()) HeadRmsNorm(q, H, hd, l.q_norm, eps);
    if (l.k_norm.size()) HeadRmsNorm(k, KV, hd, l.k_norm, eps);
    ApplyRope(q, H, hd, rope);
    ApplyRope(k, KV, hd, rope);
    QuantizeCache(block, q, k, v, hd, observer);
    llama_detail::AttentionOptions ao = w.attn;
    ao.window = l.sliding ? c.sliding_window : 0;
    RowMatrix attn = CausalAttention(q, k, v, H, KV, hd, ao);
    observe({&l.o}, attn);
    RowMatrix y = l.o.Apply(attn);
    if (l.post_attn.size()) RmsNorm(y, l.post_attn, eps);
    x += y;
    if (tape) {
      tape->h1 = std::move(h);
      tape->q = std::move(q), tape->k = std::move(k), tape->v = std::move(v);
      tape->attn = std::move(attn);
    }
  }
  if (l.skip_mlp) return;
  if (tape) tape->x1 = x;
  h = x;
  RmsNorm(h, l.n2, eps, tape ? &tape->r2 : nullptr);
  RowMatrix y;
  if (!l.experts.empty()) {
    y = RunMoe(block, h, observer);
  } else if (tape) {
    y = GatedMlp(l.gate, l.up, l.down, h, w.act, observe, &tape->gate, &tape->up, &tape->act);
  } else {
    y = GatedMlp(l.gate, l.up, l.down, h, w.act, observe);
  }
  if (l.post_ffn.size()) RmsNorm(y, l.post_ffn, eps);
  x += y;
  if (tape) tape->h2 = std::move(h);
}

int64_t DecodedBlockBytes(const Model& model) {
  int64_t n = 0;
  for (const Block& b : model.arch.blocks)
    for (const auto* list : {&b.attention, &b.mlp})
      for (const auto& l : *list)
        if (model.tensors.contains(l.weight)) n += model.tensors.at(l.weight).numel();
  return 4 * n;
}

namespace {
// Bytes the blocks' projections take packed for the native products (f32 4 per weight, bf16 /
// f16 2, codes about 1), or decoded to f32 where they have no native form.
int64_t PackedBlockBytes(const Model& model) {
  int64_t n = 0;
  for (const Block& b : model.arch.blocks)
    for (const auto* list : {&b.attention, &b.mlp})
      for (const auto& l : *list) {
        const Tensor* t = model.tensors.find(l.weight);
        if (!t) continue;
        const DType dt = t->dtype();
        const int64_t per = !HasNativeForm(*t, l.out_axis) || (!t->quant() && dt == DType::kF32) ? 4
                            : !t->quant() && (dt == DType::kF16 || dt == DType::kBF16)       ? 2
                                                                                               : 1;
        n += per * t->numel();
      }
  return n;
}
}  // namespace

RuntimeOptions EvalRuntimeOptions(const Model& model, int64_t limit, MatmulMode matmul) {
  RuntimeOptions o;
  o.matmul = matmul;
  o.stream_blocks = (matmul != MatmulMode::kF32 ? PackedBlockBytes(model) : DecodedBlockBytes(model)) > limit;
  return o;
}

absl::Status LlamaRuntime::ReloadBlock(int block, const Model& model) {
  if (block < 0 || block >= num_blocks()) return Internal("ReloadBlock: no block {}", block);
  const Block* b = FindBlock(model.arch, block);
  if (!b) return Internal("ReloadBlock: model has no block {}", block);
  if (w_->gpt2) return LoadGpt2Block(model, *b, w_->g2[block], w_->matmul, w_->cfg.hidden_size);
  return LoadProjections(model, w_->cfg, *b, w_->layers[block], /*decode=*/true, w_->matmul);
}

void LlamaRuntime::ReleaseBlock(int block) {
  if (!w_->gpt2 && block >= 0 && block < num_blocks()) ReleaseProjections(w_->layers[block]);
}

absl::Status LlamaRuntime::WithBlock(int block, const std::function<void()>& fn) const {
  if (!w_->stream_model) {
    fn();
    return absl::OkStatus();
  }
  const Block* blk = FindBlock(w_->stream_model->arch, block);
  if (!blk) return Internal("model has no block {}", block);
  RETURN_IF_ERROR(LoadProjections(*w_->stream_model, w_->cfg, *blk, w_->layers[block], /*decode=*/true, w_->matmul));
  fn();
  ReleaseProjections(w_->layers[block]);
  return absl::OkStatus();
}

absl::StatusOr<RowMatrix> LlamaRuntime::Forward(std::span<const int32_t> ids) const {
  if (!w_->logits)
    return FailedPrecondition("this runtime was created without logits (RuntimeOptions::logits)");
  ASSIGN_OR_RETURN(RowMatrix x, Embed(ids));
  std::unique_lock<std::mutex> lock(w_->stream_mu, std::defer_lock);
  if (w_->stream_model) lock.lock();  // one streaming Forward at a time
  for (int b = 0; b < num_blocks(); ++b) RETURN_IF_ERROR(WithBlock(b, [&] { RunBlock(b, x); }));
  FinalNorm(x);
  return Logits(x);
}

void LlamaRuntime::FinalNorm(RowMatrix& x) const {
  if (w_->gpt2) {
    LayerNorm(x, w_->final_norm, w_->final_norm_bias, static_cast<float>(w_->cfg.norm_eps));
  } else {
    RmsNorm(x, w_->final_norm, static_cast<float>(w_->cfg.norm_eps));
  }
}

RowMatrix LlamaRuntime::Logits(const RowMatrix& normed) const {
  RowMatrix logits = w_->lm_packed       ? w_->lm_packed->Apply(normed)
                     : w_->lm_head.size() ? MulABt(normed, w_->lm_head)
                                          : MulABt(normed, w_->embed);
  const float cap = static_cast<float>(w_->cfg.final_softcap);
  if (cap > 0) logits = ((logits.array() / cap).tanh() * cap).matrix();
  return logits;
}

absl::Status LlamaRuntime::SetSkipped(int block, bool attention, bool mlp) {
  if (block < 0 || block >= num_blocks()) return Internal("SetSkipped: no block {}", block);
  if (w_->gpt2) {
    w_->g2[block].skip_attention = attention;
    w_->g2[block].skip_mlp = mlp;
    return absl::OkStatus();
  }
  // A student's no-op sublayers (block_configs) have no weights: they stay skipped.
  w_->layers[block].skip_attention = attention || w_->cfg.AttentionRemoved(block);
  w_->layers[block].skip_mlp = mlp || w_->cfg.MlpRemoved(block);
  return absl::OkStatus();
}

std::pair<bool, bool> LlamaRuntime::Skipped(int block) const {
  if (w_->gpt2) return {w_->g2[block].skip_attention, w_->g2[block].skip_mlp};
  return {w_->layers[block].skip_attention, w_->layers[block].skip_mlp};
}

absl::StatusOr<std::vector<double>> LlamaRuntime::TokenNlls(std::span<const int32_t> ids) const {
  ASSIGN_OR_RETURN(RowMatrix logits, Forward(ids));
  std::vector<double> nll(ids.size() > 0 ? ids.size() - 1 : 0);
#pragma omp parallel for schedule(static)
  for (size_t t = 0; t < nll.size(); ++t) {
    const auto row = logits.row(t);
    const float mx = row.maxCoeff();
    const float* p = row.data();
    double sum = 0;
#pragma omp simd reduction(+ : sum)
    for (Eigen::Index j = 0; j < row.size(); ++j) sum += ExpNonPositive(static_cast<double>(p[j] - mx));
    nll[t] = std::log(sum) + mx - row(ids[t + 1]);
  }
  return nll;
}

}  // namespace compress
