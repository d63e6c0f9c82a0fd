// Llama-family forward pass: RMSNorm, RoPE (default and llama3 scaling), grouped-query
// causal attention, SwiGLU MLP.
#include "runtime/llama.h"

#include <cmath>
#include <mutex>
#include <numbers>

#include "core/parallel_gemm.h"
#include "core/status.h"
#include "formats/hf_config.h"
#include "runtime/llama_internal.h"

namespace compress {
namespace llama_detail {

RowMatrix Linear::Apply(const RowMatrix& x) const {
  RowMatrix y = fa.size() ? RowMatrix(MulABt(MulABt(x, fb), fa)) : RowMatrix(MulABt(x, w));
  if (b.size()) y.rowwise() += b.transpose();
  return y;
}

RowMatrix Linear::Back(const RowMatrix& dy) const {
  return fa.size() ? RowMatrix(MulAB(MulAB(dy, fa), fb)) : RowMatrix(MulAB(dy, w));
}

bool Linear::IsZero() const {
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

RopeTable MakeRopeTable(int64_t T, const std::vector<float>& inv_freq) {
  const int64_t half = static_cast<int64_t>(inv_freq.size());
  RopeTable r{RowMatrix(T, half), RowMatrix(T, half)};
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t i = 0; i < half; ++i) {
      const float ang = static_cast<float>(t) * inv_freq[i];
      r.cos(t, i) = std::cos(ang);
      r.sin(t, i) = std::sin(ang);
    }
  }
  return r;
}

void ApplyRope(RowMatrix& m, int64_t heads, int64_t hd, const RopeTable& rope, bool inverse) {
  const int64_t half = hd / 2;
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

void CausalSoftmax(RowMatrix& s) {
  for (int64_t t = 0; t < s.rows(); ++t) {
    float mx = -INFINITY;
    for (int64_t u = 0; u <= t; ++u) mx = std::max(mx, s(t, u));
    float sum = 0;
    for (int64_t u = 0; u < s.cols(); ++u) {
      s(t, u) = u <= t ? std::exp(s(t, u) - mx) : 0.f;
      sum += s(t, u);
    }
    s.row(t) /= sum;
  }
}

RowMatrix CausalAttention(const RowMatrix& q, const RowMatrix& k, const RowMatrix& v, int64_t H, int64_t KV,
                          int64_t hd) {
  const int64_t T = q.rows(), group = H / KV;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  RowMatrix attn(T, H * hd);
#pragma omp parallel for schedule(static)
  for (int64_t head = 0; head < H; ++head) {
    const int64_t kvh = head / group;
    RowMatrix qh = q.middleCols(head * hd, hd), kh = k.middleCols(kvh * hd, hd),
              vh = v.middleCols(kvh * hd, hd);
    RowMatrix s = (qh * kh.transpose()) * scale;
    CausalSoftmax(s);
    attn.middleCols(head * hd, hd) = s * vh;
  }
  return attn;
}

}  // namespace llama_detail

namespace {

using llama_detail::Gpt2Layer;
using llama_detail::Layer;
using llama_detail::Linear;
using llama_detail::RmsNorm;

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
  return RowMatrix(Eigen::Map<RowMatrix>(v.data(), t->shape()[0], t->shape()[1]));
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

// Reads the seven projections of block `b` into `l` (only their names when !decode).
absl::Status LoadProjections(const Model& m, const Block& b, Layer& l, bool decode = true) {
  std::map<std::string, Linear*> slots = {{"q_proj", &l.q},      {"k_proj", &l.k},       {"v_proj", &l.v},
                                          {"o_proj", &l.o},      {"gate_proj", &l.gate}, {"up_proj", &l.up},
                                          {"down_proj", &l.down}};
  int found = 0;
  for (const auto* list : {&b.attention, &b.mlp}) {
    for (const LinearLayer& ll : *list) {
      auto it = slots.find(ll.kind);
      if (it == slots.end()) continue;
      it->second->name = ll.weight;
      ++found;
      if (!decode) continue;
      const Tensor* t = m.tensors.find(ll.weight);
      const LowRankFactors* f = t ? t->factors() : nullptr;
      if (f && ll.out_axis == 0 && t->shape().size() == 2 && f->rank > 0 &&
          f->a.size() == static_cast<size_t>(t->shape()[0] * f->rank) &&
          f->b.size() == static_cast<size_t>(f->rank * t->shape()[1])) {
        it->second->w = RowMatrix();
        it->second->fa = Eigen::Map<const RowMatrix>(f->a.data(), t->shape()[0], f->rank);
        it->second->fb = Eigen::Map<const RowMatrix>(f->b.data(), f->rank, t->shape()[1]);
      } else {
        it->second->fa = it->second->fb = RowMatrix();
        ASSIGN_OR_RETURN(it->second->w, LoadMatrix(m, ll.weight));
      }
      if (!ll.bias.empty()) {
        ASSIGN_OR_RETURN(it->second->b, LoadVector(m, ll.bias));
      }
    }
  }
  if (found != 7) {
    return DataLoss("{}: block {} has {} of the 7 projections the runtime needs", m.source, b.index, found);
  }
  if (decode) {
    l.skip_attention = IsZeroProjection(l.o);
    l.skip_mlp = IsZeroProjection(l.down);
  }
  return absl::OkStatus();
}

// Frees the f32 matrices of a block's projections, keeping names and skip flags.
void ReleaseProjections(Layer& l) {
  for (Linear* p : {&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down}) {
    p->w = p->fa = p->fb = RowMatrix();
    p->b = Eigen::VectorXf();
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
  if (cfg.model_type == "gpt2") {
    auto rt = std::unique_ptr<LlamaRuntime>(new LlamaRuntime());
    rt->w_ = std::make_unique<Weights>();
    rt->w_->cfg = cfg;
    RETURN_IF_ERROR(LoadGpt2(m, *rt->w_));
    return rt;
  }
  static const char* kFamilies[] = {"llama", "mistral", "qwen2"};
  if (std::find(std::begin(kFamilies), std::end(kFamilies), cfg.model_type) == std::end(kFamilies)) {
    return Unimplemented(
        "{}: model_type '{}' is not supported by the runtime yet (llama, mistral, qwen2, gpt2)", m.source,
        cfg.model_type);
  }
  if (!cfg.hidden_act.empty() && cfg.hidden_act != "silu") {
    return Unimplemented("{}: hidden_act '{}' is not supported (silu only)", m.source, cfg.hidden_act);
  }
  auto rt = std::unique_ptr<LlamaRuntime>(new LlamaRuntime());
  auto w = std::make_unique<Weights>();
  w->cfg = cfg;
  const Architecture& a = m.arch;
  if (a.embedding.empty()) return DataLoss("{}: no embedding tensor", m.source);
  ASSIGN_OR_RETURN(w->embed, LoadMatrix(m, a.embedding));
  if (!a.lm_head.empty() && opts.logits) {
    ASSIGN_OR_RETURN(w->lm_head, LoadMatrix(m, a.lm_head));
  }
  w->logits = opts.logits;
  if (a.final_norm.empty()) return DataLoss("{}: no final norm", m.source);
  ASSIGN_OR_RETURN(w->final_norm, LoadVector(m, a.final_norm));
  for (const Block& b : a.blocks) {
    Layer l;
    RETURN_IF_ERROR(LoadProjections(m, b, l, /*decode=*/!opts.lazy_blocks && !opts.stream_blocks));
    std::string n1, n2;
    for (const auto& n : b.norms) {
      if (n.find("input_layernorm") != std::string::npos) n1 = n;
      if (n.find("post_attention_layernorm") != std::string::npos) n2 = n;
    }
    if (n1.empty() || n2.empty())
      return DataLoss("{}: block {} lacks its two RMSNorm weights", m.source, b.index);
    ASSIGN_OR_RETURN(l.n1, LoadVector(m, n1));
    ASSIGN_OR_RETURN(l.n2, LoadVector(m, n2));
    w->layers.push_back(std::move(l));
  }
  if (opts.stream_blocks) w->stream_model = &m;
  // RoPE inverse frequencies, with Llama-3 scaling when configured.
  const int64_t half = cfg.head_dim / 2;
  for (int64_t i = 0; i < half; ++i) {
    w->inv_freq.push_back(static_cast<float>(1.0 / std::pow(cfg.rope_theta, 2.0 * i / cfg.head_dim)));
  }
  if (cfg.rope_scaling) {
    const std::string& type = cfg.rope.type;
    if (type != "llama3")
      return Unimplemented("{}: rope scaling '{}' is not supported (llama3 only)", m.source, type);
    const double factor = cfg.rope.factor, lo = cfg.rope.low_freq_factor, hi = cfg.rope.high_freq_factor,
                 orig = cfg.rope.original_max_positions;
    const double lo_wavelen = orig / lo, hi_wavelen = orig / hi;
    for (auto& f : w->inv_freq) {
      const double wavelen = 2 * std::numbers::pi / f;
      if (wavelen < hi_wavelen) continue;
      if (wavelen > lo_wavelen) {
        f = static_cast<float>(f / factor);
      } else {
        const double smooth = (orig / wavelen - lo) / (hi - lo);
        f = static_cast<float>((1 - smooth) * f / factor + smooth * f);
      }
    }
  }
  w->params = m.ParameterCount();
  rt->w_ = std::move(w);
  return rt;
}

int64_t LlamaRuntime::vocab_size() const { return w_->embed.rows() ? w_->embed.rows() : w_->released_vocab; }
int64_t LlamaRuntime::num_parameters() const { return w_->params; }

int LlamaRuntime::num_blocks() const {
  return static_cast<int>(w_->gpt2 ? w_->g2.size() : w_->layers.size());
}

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
  if (!a.lm_head.empty()) {
    ASSIGN_OR_RETURN(w.lm_head, LoadMatrix(m, a.lm_head));
  }
  auto conv1d = [&](const LinearLayer& l, Linear& out) -> absl::Status {
    out.name = l.weight;
    ASSIGN_OR_RETURN(RowMatrix in_out, LoadMatrix(m, l.weight));
    out.w = in_out.transpose();  // Conv1D stores [in, out]
    if (l.bias.empty()) return DataLoss("{}: '{}' has no bias", m.source, l.name);
    ASSIGN_OR_RETURN(out.b, LoadVector(m, l.bias));
    return absl::OkStatus();
  };
  for (const Block& b : a.blocks) {
    Gpt2Layer g;
    for (const LinearLayer& l : b.attention) {
      if (l.kind == "c_attn") RETURN_IF_ERROR(conv1d(l, g.attn));
      if (l.kind == "c_proj") RETURN_IF_ERROR(conv1d(l, g.proj));
    }
    for (const LinearLayer& l : b.mlp) {
      if (l.kind == "c_fc") RETURN_IF_ERROR(conv1d(l, g.fc));
      if (l.kind == "c_proj") RETURN_IF_ERROR(conv1d(l, g.mproj));
    }
    if (!g.attn.w.size() || !g.proj.w.size() || !g.fc.w.size() || !g.mproj.w.size()) {
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
  RowMatrix h = x;
  LayerNorm(h, l.ln1w, l.ln1b, eps);
  observe(l.attn, h);
  RowMatrix qkv = l.attn.Apply(h);
  RowMatrix q = qkv.leftCols(D), k = qkv.middleCols(D, D), v = qkv.rightCols(D);
  RowMatrix attn = CausalAttention(q, k, v, H, H, D / H);
  observe(l.proj, attn);
  x += l.proj.Apply(attn);
  h = x;
  LayerNorm(h, l.ln2w, l.ln2b, eps);
  observe(l.fc, h);
  RowMatrix a = l.fc.Apply(h);
  constexpr float kC = 0.7978845608028654f;  // sqrt(2 / pi)
  a = (0.5f * a.array() * (1.0f + (kC * (a.array() + 0.044715f * a.array().cube())).tanh())).matrix();
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

void LlamaRuntime::RunBlock(int block, RowMatrix& x, LinearObserver* observer) const {
  if (w_->gpt2) return RunGpt2Block(block, x, observer);
  RunLlamaBlock(block, x, observer, nullptr);
}

void LlamaRuntime::RunLlamaBlock(int block, RowMatrix& x, LinearObserver* observer,
                                 llama_detail::BlockTape* tape) const {
  const Weights& w = *w_;
  const HfConfig& c = w.cfg;
  const Layer& l = w.layers[block];
  const int64_t T = x.rows(), hd = c.head_dim;
  const int64_t H = c.num_heads, KV = c.num_kv_heads;
  const float eps = static_cast<float>(c.norm_eps);
  const RopeTable rope = MakeRopeTable(T, w.inv_freq);
  auto observe = [&](std::initializer_list<const Linear*> ls, const RowMatrix& in) {
    if (!observer) return;
    std::vector<std::string> names;
    for (const Linear* li : ls) names.push_back(li->name);
    observer->Observe(block, names, in);
  };
  if (tape) tape->x0 = x;
  RowMatrix h;
  if (!l.skip_attention) {
    h = x;
    RmsNorm(h, l.n1, eps, tape ? &tape->r1 : nullptr);
    observe({&l.q, &l.k, &l.v}, h);
    RowMatrix q = l.q.Apply(h), k = l.k.Apply(h), v = l.v.Apply(h);
    ApplyRope(q, H, hd, rope);
    ApplyRope(k, KV, hd, rope);
    RowMatrix attn = CausalAttention(q, k, v, H, KV, hd);
    observe({&l.o}, attn);
    x += l.o.Apply(attn);
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
  observe({&l.gate, &l.up}, h);
  RowMatrix g = l.gate.Apply(h), u = l.up.Apply(h);
  RowMatrix act = (g.array() / (1.0f + (-g.array()).exp()) * u.array()).matrix();
  observe({&l.down}, act);
  x += l.down.Apply(act);
  if (tape) {
    tape->h2 = std::move(h);
    tape->gate = std::move(g), tape->up = std::move(u);
    tape->act = std::move(act);
  }
}

int64_t DecodedBlockBytes(const Model& model) {
  int64_t n = 0;
  for (const Block& b : model.arch.blocks)
    for (const auto* list : {&b.attention, &b.mlp})
      for (const auto& l : *list)
        if (model.tensors.contains(l.weight)) n += model.tensors.at(l.weight).numel();
  return 4 * n;
}

RuntimeOptions EvalRuntimeOptions(const Model& model, int64_t limit) {
  RuntimeOptions o;
  o.stream_blocks = DecodedBlockBytes(model) > limit;
  return o;
}

absl::Status LlamaRuntime::ReloadBlock(int block, const Model& model) {
  if (w_->gpt2) return Unimplemented("calibrated passes do not support GPT-2 checkpoints yet");
  if (block < 0 || block >= num_blocks()) return Internal("ReloadBlock: no block {}", block);
  const Block* b = FindBlock(model.arch, block);
  if (!b) return Internal("ReloadBlock: model has no block {}", block);
  return LoadProjections(model, *b, w_->layers[block]);
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
  RETURN_IF_ERROR(LoadProjections(*w_->stream_model, *blk, w_->layers[block]));
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
  return MulABt(normed, w_->lm_head.size() ? w_->lm_head : w_->embed);
}

absl::Status LlamaRuntime::SetSkipped(int block, bool attention, bool mlp) {
  if (w_->gpt2) return Unimplemented("skipping sublayers is not supported for GPT-2 checkpoints yet");
  if (block < 0 || block >= num_blocks()) return Internal("SetSkipped: no block {}", block);
  w_->layers[block].skip_attention = attention;
  w_->layers[block].skip_mlp = mlp;
  return absl::OkStatus();
}

std::pair<bool, bool> LlamaRuntime::Skipped(int block) const {
  if (w_->gpt2) return {false, false};
  return {w_->layers[block].skip_attention, w_->layers[block].skip_mlp};
}

absl::StatusOr<std::vector<double>> LlamaRuntime::TokenNlls(std::span<const int32_t> ids) const {
  ASSIGN_OR_RETURN(RowMatrix logits, Forward(ids));
  std::vector<double> nll(ids.size() > 0 ? ids.size() - 1 : 0);
#pragma omp parallel for schedule(static)
  for (size_t t = 0; t < nll.size(); ++t) {
    const auto row = logits.row(t);
    const float mx = row.maxCoeff();
    double sum = 0;
    for (Eigen::Index j = 0; j < row.size(); ++j) sum += std::exp(static_cast<double>(row(j) - mx));
    nll[t] = std::log(sum) + mx - row(ids[t + 1]);
  }
  return nll;
}

}  // namespace compress
