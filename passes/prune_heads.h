// prune-structured{target=heads}: removes whole attention heads from every block of a
// Llama-family checkpoint, with real shape changes (the `target=heads` half of
// prune-structured; see passes/prune_structured.h for the pass and its options).
//
// With grouped-query attention (num_key_value_heads = KV < num_attention_heads = H) the unit
// removed is a KV group: key/value head g and the H/KV query heads that read it, so the
// group structure stays uniform; with KV = H it is one head. A unit owns q_proj rows
// [h*d, (h+1)*d) of its query heads, k_proj/v_proj rows [g*d, (g+1)*d) (and those bias
// entries) and o_proj columns of its query heads. Score: l2 / l1 of all those weights, or
// wanda: ||o_proj columns||_2 x ||o_proj inputs of the unit||_2 over the calibration tokens.
// Every block keeps round((1 - ratio) x units) units (config.json has one head count);
// num_attention_heads, num_key_value_heads and head_dim are written to config.json.
#pragma once

#include <memory>
#include <string>

#include "core/pass.h"

namespace compress {

std::unique_ptr<Pass> MakePruneHeadsPass(double ratio, std::string score);

}  // namespace compress
