// Structural edits of LLM checkpoints expressed on the architecture view: passes decide what
// to remove and slice the projections' weights and biases; the format behind this interface
// keeps the stored form consistent with it and rebuilds the view. formats/hf_edit.h edits
// safetensors checkpoints with config.json (config keys, per-layer configs, tensor
// renumbering, fused storage), formats/onnx_edit.h ONNX decoder graphs (shape constants that
// count heads, per-neuron constants, residual bypasses). Passes get the editor of the
// model's format in PassContext::checkpoint (formats/model_io.h's ModelCheckpointEditor) and
// have one code path for every format.
#pragma once

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "core/model.h"

namespace compress {

// The structural edits a pass may ask for (CheckpointEditor::CheckEditable).
enum class StructuralEdit { kAttentionHeads, kFfnWidth, kExpertCount, kSublayers };

class CheckpointEditor {
 public:
  virtual ~CheckpointEditor() = default;

  // OK when `edit` can be made on `model`; otherwise the error saying why (which part of the
  // stored form the format cannot rewrite). Passes ask before they change anything.
  virtual absl::Status CheckEditable(const Model& model, StructuralEdit edit) const = 0;

  // Logical projections over fused storage (Phi-3's qkv_proj / gate_up_proj): SplitFused
  // stores them as separate q/k/v and gate/up tensors (true when it split anything), Fuse
  // stores them fused again.
  virtual absl::StatusOr<bool> SplitFused(Model& model) const = 0;
  virtual absl::Status Fuse(Model& model) const = 0;
  // Every block now has `heads` query heads, `kv_heads` key/value heads of size `head_dim`.
  virtual absl::Status SetAttentionHeads(Model& model, int64_t heads, int64_t kv_heads,
                                         int64_t head_dim) const = 0;
  // FFN widths (neurons) after pruning: of every dense FFN, of every routed expert and of
  // every shared expert; 0 leaves that kind as it is.
  virtual absl::Status SetFfnWidth(Model& model, int64_t dense, int64_t expert, int64_t shared) const = 0;
  // Each FFN whose down projection's weight is a key of `kept` keeps only the neurons listed
  // (ascending): the pass sliced its projections and their biases; the format slices
  // whatever else it stores per neuron (an ONNX graph's constants between the projections).
  // Once, before SetFfnWidth.
  virtual absl::Status KeepFfnNeurons(Model& model,
                                      const std::map<std::string, std::vector<int64_t>>& kept) const = 0;
  // Every MoE block now has `experts` routed experts (tensors already renumbered 0..experts-1).
  virtual absl::Status SetExpertCount(Model& model, int64_t experts) const = 0;
  // Removes the attention (attention[b]) and FFN (mlp[b]) sublayers of blocks b, in the form
  // the family's loaders accept; blocks left with neither are dropped and the rest
  // renumbered. Sublayers a previous removal took out stay removed: the returned pair is
  // every removed (attention, FFN) per original block.
  virtual absl::StatusOr<std::pair<std::vector<bool>, std::vector<bool>>> RemoveSublayers(
      Model& model, std::vector<bool> attention, std::vector<bool> mlp) const = 0;
  // Records the checkpoint's floating-point storage type after a cast (config torch_dtype).
  virtual absl::Status SetStorageType(Model& model, DType type) const = 0;
};

}  // namespace compress
