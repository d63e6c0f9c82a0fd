// CPU forward pass for the decoder-only families of core/family.h (Llama incl. rope
// scaling, Mistral, Qwen2/3, Gemma 1/2/3, Phi-3, GPT-2, and the mixtures of experts Mixtral,
// Qwen2-MoE, Qwen3-MoE); f32 compute with Eigen GEMMs and OpenMP.
//
// Per block:  h = x + Wo·Attn(RoPE(Wq·n1(x)), RoPE(Wk·n1(x)), Wv·n1(x))   (causal, GQA)
//             x' = h + Wdown·(silu(Wgate·n2(h)) * Wup·n2(h)),  n(x) = x / sqrt(mean(x²) + eps) * g
// and the family's variants: sandwich norms, q/k norms, sliding windows, soft-capping, GeGLU,
// partial rotary, fused projections, routed experts.
// then logits = Wlm·n(x). RoPE pairs element i with i + head_dim/2 (the HF rotate_half layout).
// Weights are decoded to f32 once (dequantized when quantized), so every compressed form
// that Tensor::ToF32 understands runs unchanged; low-rank weights stay as their two factors
// and run as two thin products. RuntimeOptions::matmul = kNative instead keeps bf16, int
// 4/8-bit g32 and GGUF block weights packed (runtime/native_matmul.h: llama.cpp's CPU numerics).
#pragma once

#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "Eigen/Core"
#include "absl/status/statusor.h"
#include "core/model.h"
#include "runtime/native_matmul.h"

namespace compress {
namespace llama_detail {
struct BlockTape;
}

using RowMatrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// Sees the input of every linear layer during a forward pass (for calibration statistics).
// `weights` names the layers that read the same input (q/k/v; gate/up; o; down).
class LinearObserver {
 public:
  virtual ~LinearObserver() = default;
  virtual void Observe(int block, std::span<const std::string> weights, const RowMatrix& x) = 0;
  // The attention cache of one block as computed, before any KV-cache quantization: K after
  // its norm and RoPE, V as projected, [T, kv_heads x head_dim] each, and the queries that
  // read it (after norm and RoPE, [T, heads x head_dim]).
  virtual void ObserveKv(int block, const RowMatrix& q, const RowMatrix& k, const RowMatrix& v) {}
};

struct RuntimeOptions {
  // Decode no block's projections up front: LoadBlock(b) before RunBlock(b), ReleaseBlock(b)
  // after, so a block-by-block caller (calibration) holds one block of f32 weights at a time.
  bool lazy_blocks = false;
  // Forward decodes each block's projections just before running it and frees them after:
  // evaluation holds one block of f32 weights besides the (memory-mapped) checkpoint. The
  // model must outlive the runtime. Llama family; ignored for GPT-2.
  bool stream_blocks = false;
  // false: the lm_head is not decoded (calibration drivers never compute logits); Forward
  // and TokenNlls then fail.
  bool logits = true;
  // kNative: bf16, int 4/8-bit g32 and GGUF block linear weights (and the lm_head) stay packed
  // and run llama.cpp's CPU numerics (runtime/native_matmul.h); other weights decode to f32.
  // Llama family; GPT-2 always decodes.
  MatmulMode matmul = MatmulMode::kF32;
};

// Bytes the decoded f32 projections of all blocks take (what stream_blocks saves).
int64_t DecodedBlockBytes(const Model& model);
// Runtime options for evaluating `model` with products `matmul`: blocks are streamed when their
// decoded f32 projections (kNative: their packed form, at most 4 bytes a weight) would take
// more than `limit` bytes (`compress eval` gives the result memory budget, at least 2 GiB).
RuntimeOptions EvalRuntimeOptions(const Model& model, int64_t limit = int64_t{2} << 30,
                                  MatmulMode matmul = MatmulMode::kF32);

class LlamaRuntime {
 public:
  static absl::StatusOr<std::unique_ptr<LlamaRuntime>> Create(const Model& model, RuntimeOptions opts = {});
  ~LlamaRuntime();

  // Logits [T, vocab] for one sequence of token ids (positions 0..T-1).
  absl::StatusOr<RowMatrix> Forward(std::span<const int32_t> ids) const;
  // -log p(ids[t+1] | ids[..t]) for t = 0..T-2, computed in f64 from f32 logits.
  absl::StatusOr<std::vector<double>> TokenNlls(std::span<const int32_t> ids) const;

  // Block-by-block execution for calibration drivers: embeddings, one block (observed), and
  // re-reading one block's weights after a pass changed them in `model`.
  absl::StatusOr<RowMatrix> Embed(std::span<const int32_t> ids) const;
  void RunBlock(int block, RowMatrix& x, LinearObserver* observer = nullptr) const;
  absl::Status ReloadBlock(int block, const Model& model);
  absl::Status LoadBlock(int block, const Model& model) { return ReloadBlock(block, model); }
  void ReleaseBlock(int block);  // frees the block's f32 projections (Llama family)
  // Frees the f32 token embedding once every sequence is embedded (Embed fails after).
  void ReleaseEmbeddings();
  int num_blocks() const;

  // The last steps of Forward: final norm (in place), then logits of normed states.
  void FinalNorm(RowMatrix& x) const;
  RowMatrix Logits(const RowMatrix& normed) const;

  // Gradients of one sequence's mean next-token cross-entropy (the mean of TokenNlls) with
  // respect to the projection weights of every block (Llama family; GPT-2 is refused).
  // `sink(weight, dy, x)` receives, block by block and last block first, each layer's
  // dy = dL/d(output) [T, out] and its input x [T, in]: dL/dW = dy^T x, a sum of one term per
  // position. Only weights `wanted` accepts are given (all when it is null; the others are
  // only backpropagated through). Returns the loss. Memory: the input of every block
  // (T x hidden floats each) and one block's activations, recomputed during the backward pass.
  using GradientSink =
      std::function<absl::Status(const std::string& weight, const RowMatrix& dy, const RowMatrix& x)>;
  absl::StatusOr<double> Gradients(std::span<const int32_t> ids, const GradientSink& sink,
                                   const std::function<bool(const std::string&)>& wanted = nullptr) const;

  // Sublayer removal (FinerCut): a skipped attention or MLP adds nothing to the residual
  // stream. Blocks whose o_proj / down_proj are exactly zero (no bias) are skipped from load.
  absl::Status SetSkipped(int block, bool attention, bool mlp);
  std::pair<bool, bool> Skipped(int block) const;  // {attention, mlp}

  // Replaces the KV-cache quantization the model carried (nullopt: none); validated
  // against the model's blocks and KV width.
  absl::Status SetKvCache(std::optional<KvCacheQuant> kv);
  int64_t kv_dim() const;

  int64_t vocab_size() const;
  int64_t num_parameters() const;

  // The blocks' projections held in memory now (every one after Create unless blocks are
  // streamed or lazy) and how many of them run a packed product (MatmulMode::kNative).
  struct LinearForms {
    int64_t resident = 0, packed = 0;
  };
  LinearForms ResidentLinearForms() const;

 private:
  LlamaRuntime() = default;
  struct Weights;
  void RunGpt2Block(int block, RowMatrix& x, LinearObserver* observer) const;
  // One Llama-family block; `tape` (when given) keeps what Gradients needs.
  void RunLlamaBlock(int block, RowMatrix& x, LinearObserver* observer, llama_detail::BlockTape* tape) const;
  // A mixture-of-experts FFN on normed states h: route, run each expert on its tokens, add
  // the shared expert.
  RowMatrix RunMoe(int block, const RowMatrix& h, LinearObserver* observer) const;
  absl::Status WithBlock(int block, const std::function<void()>& fn) const;
  // Shows one block's K and V to the observer, then applies the KV-cache quantization.
  void QuantizeCache(int block, const RowMatrix& q, RowMatrix& k, RowMatrix& v, int64_t hd,
                     LinearObserver* observer) const;
  static absl::Status LoadGpt2(const Model& m, Weights& w);
  std::unique_ptr<Weights> w_;
};

}  // namespace compress
