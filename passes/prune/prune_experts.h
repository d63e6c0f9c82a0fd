// prune-structured{target=experts}: drops whole experts of every mixture-of-experts block by
// routing frequency, with real shape changes (see passes/prune/prune_structured.h for the pass and
// its options).
//
// The calibration tokens are routed as the model routes them (calibrate/calibration.h records
// each expert's count); every MoE block keeps its round((1 - ratio) x experts) most used
// experts (never fewer than num_experts_per_tok; config.json has one expert count), ties
// keeping the lower index. Dropped experts' tensors are removed, the kept ones renumbered
// 0..keep-1 in their old order, the router's rows of dropped experts removed, and
// num_experts / num_local_experts written to config.json. The report names every dropped
// expert with its token count.
#pragma once

#include <memory>

#include "core/pass.h"

namespace compress {

std::unique_ptr<Pass> MakePruneExpertsPass(double ratio);

}  // namespace compress
