// prune-structured{target=heads}: removes whole attention heads from every block of a
// Llama-family checkpoint, with real shape changes (the `target=heads` half of
// prune-structured; see passes/prune/prune_structured.h for the pass and its options).
//
// With grouped-query attention (num_key_value_heads = KV < num_attention_heads = H) the unit
// removed is a KV group: key/value head g and the H/KV query heads that read it, so the
// group structure stays uniform; with KV = H it is one head. A unit owns q_proj rows
// [h*d, (h+1)*d) of its query heads, k_proj/v_proj rows [g*d, (g+1)*d) (and those bias
// entries) and o_proj columns of its query heads. Score: l2 / l1 of all those weights, or
// wanda: ||o_proj columns||_2 x ||o_proj inputs of the unit||_2 over the calibration tokens.
// Every block keeps round((1 - ratio) x units) units (config.json has one head count). The
// pass works on the architecture view's blocks; the model's checkpoint editor records the new
// head counts in the stored form: config.json for checkpoints, the Reshape constants and
// head-repeat indices of ONNX decoder graphs (formats/onnx_edit.h).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "core/pass.h"

namespace compress {

std::unique_ptr<Pass> MakePruneHeadsPass(double ratio, std::string score);

// The block-level choice both forms share, on [out, in] f32 matrices.
struct HeadWeights {
  const std::vector<float>&q, &k, &v, &o;
};
struct HeadShape {
  int64_t heads, kv_heads, head_dim, hidden, out;  // o_proj: [out, heads * head_dim]
};
struct HeadCut {
  std::vector<int64_t> kept;            // KV groups kept, ascending
  std::vector<int64_t> q_rows, kv_rows;  // first row of each kept head's block of head_dim rows
  std::string removed;                  // removed groups, for reports
};
// Keeps the `keep` KV groups with the highest score: l2 / l1 of all the unit's weights, or
// wanda (||o_proj columns|| x sqrt(o_in_sq summed over them)).
HeadCut ChooseHeads(const HeadWeights& w, const HeadShape& s, int64_t keep, const std::string& score,
                    const std::vector<double>* o_in_sq);
std::vector<float> TakeRows(const std::vector<float>& w, int64_t cols, const std::vector<int64_t>& starts, int64_t n);
std::vector<float> TakeCols(const std::vector<float>& w, int64_t rows, int64_t cols,
                            const std::vector<int64_t>& starts, int64_t n);

// ONNX decoder graphs (passes/prune_heads_onnx.cc): the same choice per attention sublayer,
// the q/k/v columns and o_proj rows sliced, and the Reshape shape constants and GQA
// head-repeat Gather indices that count heads rewritten. Uniform per block.

}  // namespace compress
