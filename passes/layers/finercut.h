// remove-layers-finercut{ratio=0.25, param-ratio=0, metric=js|angular,
//                        candidates=sublayers|attn|ffn|blocks, search=greedy|last, samples=16}
//
// FinerCut (Zhang et al., 2024): every self-attention and every FFN sublayer of a decoder is
// a removal candidate. Greedily, one at a time, remove the candidate whose removal changes the
// model's output on calibration data least, re-scoring the remaining candidates after each
// removal. The change is measured against the original (teacher) model on the first
// `samples` calibration windows:
//   js:      mean over tokens of the Jensen-Shannon divergence (nats) between the teacher's and
//            the candidate's next-token distributions;
//   angular: mean over tokens of arccos(cos(h, h')) / pi between final normed hidden states.
// Stops after round(ratio x candidates) removals, or, with param-ratio > 0, once the removed
// sublayers hold at least that fraction of the blocks' parameters. candidates=blocks removes
// whole blocks with the same criterion; search=last removes from the top of the network down
// (the layer-dropping baseline) instead of searching.
//
// Written form (Hugging Face loadable): a removed attention keeps its tensors with o_proj
// exactly zero, a removed FFN a zero down_proj (biases zeroed too), so the block adds
// nothing; blocks with both removed are dropped, later blocks renumbered and
// num_hidden_layers updated. Our runtime skips zero sublayers (the compact form it runs).
// Distillation metadata (`compress.finercut` in the safetensors metadata and the report):
// the teacher block each student block came from, which sublayers each kept, the removal
// order with scores; the report gets an SVG layer map.
//
// The pass works on the architecture view's blocks for every format; the model's checkpoint
// editor writes the removal. ONNX decoder graphs (formats/onnx_structure.h finds their blocks
// from the residual Adds y = r + f(r)): candidates are scored by re-running the graph in the
// ONNX interpreter with the removed sublayers' Adds bypassed (metric=js only: the graph gives
// logits), and the written graph has those Adds bypassed and their branches' nodes and
// weights deleted (the metadata goes to metadata_props).
// Needs calibration data; Llama-family safetensors checkpoints or ONNX decoder graphs.
// Invalidates all analyses.
#pragma once

#include "core/pass.h"

namespace compress {

PassInfo FinerCutPassInfo();

}  // namespace compress
