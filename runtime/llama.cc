// Llama-family forward pass: RMSNorm, RoPE (default and llama3 scaling), grouped-query
// causal attention, SwiGLU MLP.
#include "runtime/llama.h"

#include <cmath>
#include <numbers>

#include "core/status.h"
#include "formats/hf_config.h"

namespace compress {
namespace {

struct Linear {
  std::string name;   // weight tensor
  RowMatrix w;        // [out, in]
  Eigen::VectorXf b;  // empty when no bias
  RowMatrix Apply(const RowMatrix& x) const {
    RowMatrix y = x * w.transpose();
    if (b.size()) y.rowwise() += b.transpose();
    return y;
  }
};

struct Layer {
  Eigen::VectorXf n1, n2;
  Linear q, k, v, o, gate, up, down;
};

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

void RmsNorm(RowMatrix& x, const Eigen::VectorXf& g, float eps) {
  for (Eigen::Index t = 0; t < x.rows(); ++t) {
    float ms = x.row(t).squaredNorm() / static_cast<float>(x.cols());
    x.row(t) *= 1.0f / std::sqrt(ms + eps);
    x.row(t).array() *= g.transpose().array();
  }
}

// Reads the seven projections of block `b` into `l`.
absl::Status LoadProjections(const Model& m, const Block& b, Layer& l) {
  std::map<std::string, Linear*> slots = {{"q_proj", &l.q},      {"k_proj", &l.k},       {"v_proj", &l.v},
                                          {"o_proj", &l.o},      {"gate_proj", &l.gate}, {"up_proj", &l.up},
                                          {"down_proj", &l.down}};
  int found = 0;
  for (const auto* list : {&b.attention, &b.mlp}) {
    for (const LinearLayer& ll : *list) {
      auto it = slots.find(ll.kind);
      if (it == slots.end()) continue;
      it->second->name = ll.weight;
      ASSIGN_OR_RETURN(it->second->w, LoadMatrix(m, ll.weight));
      if (!ll.bias.empty()) {
        ASSIGN_OR_RETURN(it->second->b, LoadVector(m, ll.bias));
      }
      ++found;
    }
  }
  if (found != 7) {
    return DataLoss("{}: block {} has {} of the 7 projections the runtime needs", m.source, b.index, found);
  }
  return absl::OkStatus();
}

}  // namespace

struct LlamaRuntime::Weights {
  HfConfig cfg;
  RowMatrix embed, lm_head;  // lm_head empty when tied
  Eigen::VectorXf final_norm;
  std::vector<Layer> layers;
  std::vector<float> inv_freq;  // head_dim / 2
  int64_t params = 0;
};

LlamaRuntime::~LlamaRuntime() = default;

absl::StatusOr<std::unique_ptr<LlamaRuntime>> LlamaRuntime::Create(const Model& m) {
  if (m.format != ModelFormat::kSafetensors || !m.config.is_object()) {
    return FailedPrecondition("{}: the LLM runtime needs a safetensors checkpoint with config.json",
                              m.source);
  }
  ASSIGN_OR_RETURN(HfConfig cfg, ParseHfConfig(m.config, m.source));
  static const char* kFamilies[] = {"llama", "mistral", "qwen2"};
  if (std::find(std::begin(kFamilies), std::end(kFamilies), cfg.model_type) == std::end(kFamilies)) {
    return Unimplemented("{}: model_type '{}' is not supported by the runtime yet (llama, mistral, qwen2)",
                         m.source, cfg.model_type);
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
  if (!a.lm_head.empty()) {
    ASSIGN_OR_RETURN(w->lm_head, LoadMatrix(m, a.lm_head));
  }
  if (a.final_norm.empty()) return DataLoss("{}: no final norm", m.source);
  ASSIGN_OR_RETURN(w->final_norm, LoadVector(m, a.final_norm));
  for (const Block& b : a.blocks) {
    Layer l;
    RETURN_IF_ERROR(LoadProjections(m, b, l));
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
  // RoPE inverse frequencies, with Llama-3 scaling when configured.
  const int64_t half = cfg.head_dim / 2;
  for (int64_t i = 0; i < half; ++i) {
    w->inv_freq.push_back(static_cast<float>(1.0 / std::pow(cfg.rope_theta, 2.0 * i / cfg.head_dim)));
  }
  if (cfg.rope_scaling) {
    const auto& rs = *cfg.rope_scaling;
    std::string type = rs.value("rope_type", rs.value("type", "default"));
    if (type != "llama3")
      return Unimplemented("{}: rope scaling '{}' is not supported (llama3 only)", m.source, type);
    const double factor = rs.value("factor", 8.0), lo = rs.value("low_freq_factor", 1.0),
                 hi = rs.value("high_freq_factor", 4.0),
                 orig = rs.value("original_max_position_embeddings", 8192.0);
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

int64_t LlamaRuntime::vocab_size() const { return w_->embed.rows(); }
int64_t LlamaRuntime::num_parameters() const { return w_->params; }

int LlamaRuntime::num_blocks() const { return static_cast<int>(w_->layers.size()); }

absl::StatusOr<RowMatrix> LlamaRuntime::Embed(std::span<const int32_t> ids) const {
  const Weights& w = *w_;
  RowMatrix x(static_cast<int64_t>(ids.size()), w.cfg.hidden_size);
  for (size_t t = 0; t < ids.size(); ++t) {
    if (ids[t] < 0 || ids[t] >= w.embed.rows()) {
      return InvalidArgument("token id {} at position {} is outside the vocabulary ({})", ids[t], t,
                             w.embed.rows());
    }
    x.row(t) = w.embed.row(ids[t]);
  }
  return x;
}

void LlamaRuntime::RunBlock(int block, RowMatrix& x, LinearObserver* observer) const {
  const Weights& w = *w_;
  const HfConfig& c = w.cfg;
  const Layer& l = w.layers[block];
  const int64_t T = x.rows(), hd = c.head_dim;
  const int64_t H = c.num_heads, KV = c.num_kv_heads, group = H / KV, half = hd / 2;
  const float eps = static_cast<float>(c.norm_eps);
  // cos/sin per position and frequency.
  RowMatrix cosv(T, half), sinv(T, half);
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t i = 0; i < half; ++i) {
      const float ang = static_cast<float>(t) * w.inv_freq[i];
      cosv(t, i) = std::cos(ang);
      sinv(t, i) = std::sin(ang);
    }
  }
  auto rope = [&](RowMatrix& m, int64_t heads) {
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t h = 0; h < heads; ++h) {
        float* p = m.data() + t * heads * hd + h * hd;
        for (int64_t i = 0; i < half; ++i) {
          const float a = p[i], b = p[i + half];
          p[i] = a * cosv(t, i) - b * sinv(t, i);
          p[i + half] = b * cosv(t, i) + a * sinv(t, i);
        }
      }
    }
  };
  auto observe = [&](std::initializer_list<const Linear*> ls, const RowMatrix& in) {
    if (!observer) return;
    std::vector<std::string> names;
    for (const Linear* li : ls) names.push_back(li->name);
    observer->Observe(block, names, in);
  };
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  RowMatrix h = x;
  RmsNorm(h, l.n1, eps);
  observe({&l.q, &l.k, &l.v}, h);
  RowMatrix q = l.q.Apply(h), k = l.k.Apply(h), v = l.v.Apply(h);
  rope(q, H);
  rope(k, KV);
  RowMatrix attn(T, H * hd);
#pragma omp parallel for schedule(static)
  for (int64_t head = 0; head < H; ++head) {
    const int64_t kvh = head / group;
    RowMatrix qh = q.middleCols(head * hd, hd), kh = k.middleCols(kvh * hd, hd),
              vh = v.middleCols(kvh * hd, hd);
    RowMatrix s = (qh * kh.transpose()) * scale;
    for (int64_t t = 0; t < T; ++t) {
      float mx = -INFINITY;
      for (int64_t u = 0; u <= t; ++u) mx = std::max(mx, s(t, u));
      float sum = 0;
      for (int64_t u = 0; u < T; ++u) {
        s(t, u) = u <= t ? std::exp(s(t, u) - mx) : 0.f;
        sum += s(t, u);
      }
      s.row(t) /= sum;
    }
    attn.middleCols(head * hd, hd) = s * vh;
  }
  observe({&l.o}, attn);
  x += l.o.Apply(attn);
  h = x;
  RmsNorm(h, l.n2, eps);
  observe({&l.gate, &l.up}, h);
  RowMatrix g = l.gate.Apply(h), u = l.up.Apply(h);
  g = (g.array() / (1.0f + (-g.array()).exp()) * u.array()).matrix();
  observe({&l.down}, g);
  x += l.down.Apply(g);
}

absl::Status LlamaRuntime::ReloadBlock(int block, const Model& model) {
  if (block < 0 || block >= num_blocks()) return Internal("ReloadBlock: no block {}", block);
  const Block* b = FindBlock(model.arch, block);
  if (!b) return Internal("ReloadBlock: model has no block {}", block);
  return LoadProjections(model, *b, w_->layers[block]);
}

absl::StatusOr<RowMatrix> LlamaRuntime::Forward(std::span<const int32_t> ids) const {
  ASSIGN_OR_RETURN(RowMatrix x, Embed(ids));
  for (int b = 0; b < num_blocks(); ++b) RunBlock(b, x);
  RmsNorm(x, w_->final_norm, static_cast<float>(w_->cfg.norm_eps));
  return RowMatrix(x * (w_->lm_head.size() ? w_->lm_head : w_->embed).transpose());
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
