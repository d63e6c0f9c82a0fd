// A Llama checkpoint of given shapes with random bf16 weights N(0, 0.02) (norms 1), written
// by compress's safetensors writer one tensor at a time (a model larger than memory is fine):
// the models of prefill_bench (TinyLlama-1.1B's shapes) and of the larger-than-RAM runs
// (Llama-2-13B's shapes, 26 GB), bench/README.md.
#pragma once

#include <fmt/format.h>

#include <cstring>
#include <random>
#include <string>

#include "absl/status/status.h"
#include "core/dtype.h"
#include "formats/model_io.h"

namespace compress::bench {

struct LlamaShape {
  int64_t hidden, layers, heads, kv, ffn, vocab;
};
inline constexpr LlamaShape kLlama1B{2048, 22, 32, 4, 5632, 32000};
// 2.4B parameters, 4.8 GB in bf16: the >= 4 GiB checkpoint of the data-free figures (issue #22).
inline constexpr LlamaShape kLlama3B{2560, 32, 32, 8, 6912, 32000};
inline constexpr LlamaShape kLlama13B{5120, 40, 40, 40, 13824, 32000};

inline absl::Status GenerateLlama(const std::string& dir, const LlamaShape& s) {
  compress::Model m;
  m.format = compress::ModelFormat::kSafetensors;
  m.config = {{"architectures", {"LlamaForCausalLM"}}, {"model_type", "llama"}, {"hidden_size", s.hidden},
              {"intermediate_size", s.ffn}, {"num_hidden_layers", s.layers}, {"num_attention_heads", s.heads},
              {"num_key_value_heads", s.kv}, {"vocab_size", s.vocab}, {"max_position_embeddings", 2048},
              {"rms_norm_eps", 1e-5}, {"rope_theta", 10000.0}, {"tie_word_embeddings", false},
              {"hidden_act", "silu"}, {"torch_dtype", "bfloat16"}};
  uint32_t seed = 1;
  auto add = [&](const std::string& name, compress::Shape shape, bool ones) {
    const uint32_t my_seed = seed++;
    m.tensors.Set(name, compress::Tensor::Lazy(
                            compress::DType::kBF16, shape,
                            [shape, ones, my_seed]() -> absl::StatusOr<std::shared_ptr<const compress::Buffer>> {
                              const int64_t n = compress::NumElements(shape);
                              std::vector<uint8_t> bytes(n * 2);
                              std::mt19937 rng(my_seed);
                              std::normal_distribution<float> nd(0.f, 0.02f);
                              for (int64_t i = 0; i < n; ++i) {
                                const uint16_t v = compress::F32ToBF16(ones ? 1.f : nd(rng));
                                std::memcpy(bytes.data() + 2 * i, &v, 2);
                              }
                              return std::make_shared<compress::OwnedBuffer>(std::move(bytes));
                            }));
  };
  const int64_t hd = s.hidden / s.heads;
  add("model.embed_tokens.weight", {s.vocab, s.hidden}, false);
  for (int64_t l = 0; l < s.layers; ++l) {
    const std::string p = fmt::format("model.layers.{}.", l);
    add(p + "input_layernorm.weight", {s.hidden}, true);
    add(p + "self_attn.q_proj.weight", {s.heads * hd, s.hidden}, false);
    add(p + "self_attn.k_proj.weight", {s.kv * hd, s.hidden}, false);
    add(p + "self_attn.v_proj.weight", {s.kv * hd, s.hidden}, false);
    add(p + "self_attn.o_proj.weight", {s.hidden, s.heads * hd}, false);
    add(p + "post_attention_layernorm.weight", {s.hidden}, true);
    add(p + "mlp.gate_proj.weight", {s.ffn, s.hidden}, false);
    add(p + "mlp.up_proj.weight", {s.ffn, s.hidden}, false);
    add(p + "mlp.down_proj.weight", {s.hidden, s.ffn}, false);
  }
  add("model.norm.weight", {s.hidden}, true);
  add("lm_head.weight", {s.vocab, s.hidden}, false);
  auto r = compress::SaveModel(m, dir, {});
  return r.ok() ? absl::OkStatus() : r.status();
}

}  // namespace compress::bench
