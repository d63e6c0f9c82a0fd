// prune-structured{target=neurons|heads|channels, ratio, score}: removes whole FFN neurons (below) or
// attention heads (passes/prune/prune_heads.h) from every block of a Llama-family checkpoint, with
// real shape changes.
//
// Neuron j of a block owns row j of gate_proj and up_proj and column j of down_proj. Its
// score is l2: sqrt(|gate_j|^2 + |up_j|^2 + |down_:,j|^2), l1: the sum of absolute values, or
// wanda: |down_:,j|_2 * |a_j|_2 with a = silu(gate x) * up x over the calibration tokens.
// Every block keeps the same number of neurons, round((1 - ratio) * intermediate_size), the
// highest-scoring ones in their original order, because config.json has one
// intermediate_size; config.json is updated, so the output loads with the new shapes.
// Before: gate/up [I, D], down [D, I]. After: [I', D] and [D, I']. In mixtures of experts
// every routed expert keeps round((1 - ratio) * its width) of its own neurons (scored within
// the expert), and so does the shared expert: moe_intermediate_size (intermediate_size for
// Mixtral) and shared_expert_intermediate_size follow. GPT-2's MLP (c_fc [D, I] Conv1D with
// bias, c_proj [I, D]) loses columns of c_fc and its bias and rows of c_proj; n_inner follows. Structure edits go through the run's
// CheckpointEditor (core/checkpoint_edit.h).
// target=channels prunes ONNX graphs (passes/prune/prune_channels.h); neurons and heads also prune
// ONNX decoder graphs (passes/prune/prune_structured_onnx.cc). Invalidates all analyses.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "core/pass.h"
#include "passes/layer_walk.h"

namespace compress {

PassInfo PruneStructuredPassInfo();

// Per weight: each input's sum of squares over the calibration tokens (the wanda scores of the
// structured passes); fails with a clear error without calibration data.
absl::StatusOr<std::map<std::string, std::vector<double>>> InputSquareSums(Model& model, PassContext& ctx);

// Replaces tensor `name` by `values` of `shape` in its dtype and records the change (`method`,
// `metrics`) in the report: the one step every structured cut ends with.
absl::Status SetCut(Model& model, PassReport& report, const std::string& name, const std::vector<float>& values,
                    const Shape& shape, std::string method, std::map<std::string, double> metrics);
// Element-wise square roots of `v` (the norms wanda multiplies).
// SetCut for a projection's weight: [rows, cols] values computed on the [out, in] view
// `like` of `name`, stored back in its layout ([in, out] for ONNX MatMuls) and dtype.
absl::Status SetOutIn(Model& model, PassReport& report, const std::string& name, OutInWeight like,
                      std::vector<float> out_in, int64_t rows, int64_t cols, std::string method,
                      std::map<std::string, double> metrics);
std::vector<double> Sqrt(std::vector<double> v);

// The neurons a block keeps (ascending), from gate/up [I, D] and down [D, I] f32 values;
// act_norm: per-neuron |a_j|_2 over the calibration tokens (wanda).
std::vector<int64_t> ChooseNeurons(const std::vector<float>& gate, const std::vector<float>& up,
                                   const std::vector<float>& down, int64_t inter, int64_t hidden, int64_t keep,
                                   const std::string& score, const std::vector<double>* act_norm);

// ONNX decoder graphs (passes/prune/prune_structured_onnx.cc): the same choice per FFN sublayer
// (gate/up output columns and down input rows sliced, per-neuron constants of the
// elementwise nodes between them too). Uniform per block.

}  // namespace compress
