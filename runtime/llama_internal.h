// Internals of the LLM runtime shared by its forward pass (llama.cc) and its backward pass
// (llama_grad.cc): decoded weights and the per-block building blocks. Not a public header.
#pragma once

#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <optional>

#include "core/act_quant.h"
#include "formats/hf_config.h"
#include "core/family.h"
#include "runtime/llama.h"

namespace compress::llama_detail {

struct Linear {
  std::string name;   // weight tensor
  RowMatrix w;        // [out, in]
  RowMatrix fa, fb;   // low-rank weights: W = fa [out, r] x fb [r, in] (w stays empty)
  std::shared_ptr<const PackedWeight> packed;  // MatmulMode::kNative's packed weight (w stays empty)
  Eigen::VectorXf b;  // empty when no bias
  // The target runtime's quantization of this layer's input (Model::input_quant), applied
  // to x before the product; `act_keep`: the f16 outlier features of LLM.int8().
  std::optional<ActivationQuant> act;
  std::vector<int64_t> act_keep;
  // Packed layers whose inputs have a zero point: each output row's weight sum (CodedRowSums),
  // to add back the offset the codes were shifted by.
  Eigen::RowVectorXf act_row_sums;
  // y = x W^T + b (x quantize-dequantized first when `act`). A factorized layer runs as two
  // thin products: r (out + in) instead of out x in MACs.
  RowMatrix Apply(const RowMatrix& x) const;
  // dL/dx = dL/dy W for y = Apply(x).
  RowMatrix Back(const RowMatrix& dy) const;
  bool IsZero() const;
};

// One routed expert of a mixture-of-experts FFN.
struct Expert {
  Linear gate, up, down;
};

// One decoder block of the Llama-style families, as the family table (core/family.h)
// and config.json describe it. Norm weights are stored ready to multiply (Gemma's (1 + w)
// already added).
struct Layer {
  Eigen::VectorXf n1, n2;               // attention input norm; FFN input norm
  Eigen::VectorXf post_attn, post_ffn;  // Gemma 2/3 sandwich norms of the sublayer outputs (else empty)
  Eigen::VectorXf q_norm, k_norm;       // per-head norms before RoPE (Qwen3, Gemma 3; else empty)
  Linear q, k, v, o;
  Linear gate, up, down;  // the dense FFN, or a MoE block's shared expert (empty names when none)
  // q/k/v (gate/up) are row slices of one stored weight (Phi-3's qkv_proj / gate_up_proj).
  bool fused_qkv = false, fused_gate_up = false;
  // Mixture of experts: router [experts, hidden], Qwen2-MoE's shared-expert gate [1, hidden].
  Linear router, shared_gate;
  std::vector<Expert> experts;  // empty for a dense FFN
  bool sliding = false;         // attends through the sliding window
  bool local_rope = false;      // uses the sliding layers' rope parameters
  // A removed sublayer adds nothing to the residual stream: skipped when asked to, or when
  // its output projection and bias are exactly zero (FinerCut's written form).
  bool skip_attention = false, skip_mlp = false;
};

// GPT-2 block: pre-LayerNorm, fused q/k/v (Conv1D, stored here transposed to [out, in]),
// learned positions, tanh-approximated GELU.
struct Gpt2Layer {
  Eigen::VectorXf ln1w, ln1b, ln2w, ln2b;
  Linear attn, proj, fc, mproj;
  bool skip_attention = false, skip_mlp = false;  // as Layer's
};

// x <- x / sqrt(mean(x²) + eps) * g, row by row; `inv_rms` (when given) receives each row's
// 1 / sqrt(mean(x²) + eps).
void RmsNorm(RowMatrix& x, const Eigen::VectorXf& g, float eps, Eigen::VectorXf* inv_rms = nullptr);

// cos/sin of position t x inv_freq[i], [T, head_dim / 2].
struct RopeTable {
  RowMatrix cos, sin;
};
// Inverse frequencies of the rotated dims and the attention factor that multiplies cos and
// sin (yarn, longrope); longrope's long-sequence frequencies apply past `long_after` tokens.
struct RopeFrequencies {
  std::vector<float> inv, inv_long;
  float scale = 1.f;
  int64_t long_after = 0;
};
RopeTable MakeRopeTable(int64_t T, const RopeFrequencies& f);
// Rotates each head's pairs (i, i + r/2) of m [T, heads * hd] by +angle, or by -angle when
// `inverse` (the transpose, which is what the backward pass applies to gradients); r =
// 2 x rope.cos.cols() is the rotated part of the head (all of it unless partial rotary).
void ApplyRope(RowMatrix& m, int64_t heads, int64_t hd, const RopeTable& rope, bool inverse = false);

// Row r of the scores s (query position first_row + r) becomes the softmax over columns
// 0..first_row + r (later columns 0).
void CausalSoftmax(RowMatrix& s, int64_t first_row = 0);

// Scores' variants: scale (0: head_dim^-1/2), tanh soft-capping (0: none) and a sliding
// window (0: none; key u is seen from query t when t - u < window).
struct AttentionOptions {
  float scale = 0, softcap = 0;
  int64_t window = 0;
};
// Causal softmax attention; query head h reads key/value head h / (H / KV).
RowMatrix CausalAttention(const RowMatrix& q, const RowMatrix& k, const RowMatrix& v, int64_t H, int64_t KV,
                          int64_t hd, const AttentionOptions& opt = {});

// What the backward pass needs of one Llama block's forward: its input, the normed inputs
// of both sublayers with their 1 / rms, q and k after RoPE, v, the attention output, the
// residual stream between the sublayers, and the MLP's gate / up / silu(gate) * up. Fields of
// a skipped sublayer stay empty.
struct BlockTape {
  RowMatrix x0, h1, q, k, v, attn, x1, h2, gate, up, act;
  Eigen::VectorXf r1, r2;
};

}  // namespace compress::llama_detail

namespace compress {

struct LlamaRuntime::Weights {
  HfConfig cfg;
  const FamilySpec* fam = nullptr;  // null for GPT-2
  Activation act = Activation::kSilu;
  float embed_scale = 1.f;                // Gemma: sqrt(hidden_size)
  llama_detail::AttentionOptions attn;    // window set per layer
  bool norm_topk = false;                 // MoE: renormalise the top-k routing weights
  // True when the block computes exactly what the backward pass (llama_grad.cc) differentiates:
  // Llama/Mistral/Qwen2 blocks without sliding windows.
  bool gradients_supported = true;
  bool logits = true;                   // RuntimeOptions::logits
  int64_t released_vocab = 0;           // vocabulary size after ReleaseEmbeddings
  const Model* stream_model = nullptr;  // stream_blocks: where Forward decodes blocks from
  std::mutex stream_mu;                 // one streaming Forward at a time
  RowMatrix embed, lm_head;             // lm_head empty when tied
  MatmulMode matmul = MatmulMode::kF32;  // RuntimeOptions::matmul
  std::shared_ptr<const PackedWeight> lm_packed;  // kNative: the packed lm_head (or tied embedding)
  Eigen::VectorXf final_norm;
  std::vector<llama_detail::Layer> layers;
  llama_detail::RopeFrequencies rope;        // full-attention layers
  llama_detail::RopeFrequencies rope_local;  // sliding-window layers
  int64_t params = 0;
  // GPT-2 only.
  bool gpt2 = false;
  RowMatrix wpe;
  Eigen::VectorXf final_norm_bias;
  std::vector<llama_detail::Gpt2Layer> g2;
  // Model::kv_cache: K (after norm and RoPE) and V are quantize-dequantized before attention.
  std::optional<KvCacheQuant> kv;
};

}  // namespace compress
