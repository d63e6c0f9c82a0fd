// Model: an ordered tensor store, the HF config, and an architecture view that passes query.
#pragma once

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/act_quant.h"
#include "core/tensor.h"
#include "nlohmann/json.hpp"

namespace compress {

// Ordered map name -> Tensor; keeps file order so outputs are deterministic.
class TensorStore {
 public:
  bool contains(const std::string& name) const { return index_.count(name) > 0; }
  const Tensor* find(const std::string& name) const;
  const Tensor& at(const std::string& name) const;
  // Inserts at the end, or replaces in place when the name exists.
  void Set(const std::string& name, Tensor t);
  // Puts `name` -> t where `old_name` stood (dropping old_name, and `name`'s old slot);
  // Set() when old_name is absent.
  void Replace(const std::string& old_name, const std::string& name, Tensor t);
  // Inserts `name` right after `anchor` in file order (at the end when anchor is absent);
  // replaces in place when `name` exists.
  void InsertAfter(const std::string& anchor, const std::string& name, Tensor t);
  bool Erase(const std::string& name);
  const std::vector<std::string>& names() const { return order_; }
  size_t size() const { return order_.size(); }
  int64_t TotalBytes() const;
  int64_t TotalElements() const;

 private:
  std::vector<std::string> order_;
  std::map<std::string, Tensor> index_;
};

// What a tensor is for; drives default tensor selection (embeddings, lm_head, norms,
// biases and MoE routers are left alone unless a pass's include patterns name them).
enum class TensorRole { kLinearWeight, kConvWeight, kEmbedding, kLmHead, kNorm, kBias, kRouter, kOther };
std::string_view TensorRoleName(TensorRole r);

// One weight-bearing layer: y = x W^T (+ b) for safetensors, MatMul/Gemm/Conv for ONNX.
struct LinearLayer {
  std::string name;  // e.g. "model.layers.0.self_attn.q_proj" or ONNX node name
  std::string kind;  // q_proj/k_proj/v_proj/o_proj/gate_proj/up_proj/down_proj/c_attn/..., MatMul, Gemm, Conv
  std::string weight;  // tensor name
  std::string bias;    // tensor name or empty
  int64_t out_features = 0;
  int64_t in_features = 0;
  int out_axis = 0;  // axis of the weight holding output channels: 0 for [out, in], 1 for [in, out]
  // Mixture-of-experts FFNs: the routed expert this projection belongs to (-1: none), or
  // the shared expert (Qwen2-MoE) that every token goes through.
  int expert = -1;
  bool shared_expert = false;
  bool dense() const { return expert < 0 && !shared_expert; }
};

struct Block {
  int index = 0;
  std::vector<LinearLayer> attention;
  std::vector<LinearLayer> mlp;  // a MoE block: every expert's projections (and the shared expert's)
  std::vector<std::string> norms;
  // Mixture of experts: the router [experts, hidden] and Qwen2-MoE's shared-expert gate
  // [1, hidden] (empty for dense blocks); role kRouter, kept in 16 bits by default.
  std::string router, shared_expert_gate;
  int num_experts = 0;
  bool moe() const { return !router.empty(); }
};

struct Architecture {
  std::string family;  // config.json model_type (core/family.h lists the known ones), or "onnx-graph"
  // A multimodal container's model_type (gemma3, mistral3, llava...; empty for a text model): the
  // view covers its text decoder; the vision tower and projector have role kOther and no pass
  // selects them by default.
  std::string container;
  int64_t hidden_size = 0, num_heads = 0, num_kv_heads = 0, head_dim = 0;
  int64_t intermediate_size = 0, vocab_size = 0;
  // Mixture of experts (0 when dense): experts per MoE block, experts each token uses, and
  // the FFN widths of one routed expert and of the shared expert.
  int64_t num_experts = 0, experts_per_token = 0, expert_intermediate_size = 0, shared_expert_intermediate_size = 0;
  bool tied_embeddings = false;
  std::string embedding, lm_head, final_norm;
  std::vector<Block> blocks;
  std::vector<LinearLayer> other_linears;   // weight layers outside blocks (ONNX graphs)
  std::map<std::string, TensorRole> roles;  // every tensor's role
  std::vector<const LinearLayer*> AllLinears() const;
  const LinearLayer* LayerOfWeight(const std::string& tensor) const;  // null if none
};

enum class ModelFormat { kSafetensors, kOnnx };
std::string_view ModelFormatName(ModelFormat f);

// State a format keeps beside the tensors (the ONNX graph); opaque to core/ and passes.
class FormatPayload {
 public:
  virtual ~FormatPayload() = default;
  virtual std::unique_ptr<FormatPayload> Clone() const = 0;
};

struct Model {
  ModelFormat format = ModelFormat::kSafetensors;
  std::string source;  // path the model was read from
  TensorStore tensors;
  nlohmann::json config;                        // HF config.json (safetensors), or {} for ONNX
  std::map<std::string, std::string> metadata;  // safetensors __metadata__ / ONNX metadata_props
  std::vector<std::string> side_files;          // files copied beside the output (tokenizer...)
  // Every file and folder the model was read from (a checkpoint folder stands for all it
  // holds); no output or report path may be, contain or sit inside one of them.
  std::vector<std::string> inputs;
  Architecture arch;
  std::shared_ptr<FormatPayload> payload;
  // Activation quantization of linear layers' inputs, keyed by weight tensor name, and of
  // the attention cache (core/act_quant.h); the runtime simulates both, writers store them.
  std::map<std::string, ActivationQuant> input_quant;
  std::optional<KvCacheQuant> kv_cache;
  // Weights read from a compressed sparse storage form (N:M, compressed-tensors
  // sparse-24-bitmask), now dense in memory: their stored bytes (`compress decompress`
  // reports them as restored).
  std::map<std::string, int64_t> sparse_stored;

  TensorRole RoleOf(const std::string& tensor) const;
  int64_t ParameterCount() const { return tensors.TotalElements(); }
};

}  // namespace compress
