// factorize-svd{rank=0 | ratio=0 | energy=0, activation-aware=false, damp=0.01,
//               method=auto|exact|randomized, oversample=10, power-iterations=2}
//
// Low-rank factorization of linear weights: W [out, in] ~ A [out, r] B [r, in] from the
// truncated SVD W = U S V^T, A = U_r sqrt(S_r), B = sqrt(S_r) V_r^T. The rank per layer is
// `rank`, or the largest whose factors hold at most `ratio` of the layer's parameters, or
// the smallest keeping `energy` of sum S_i^2. A layer is factorized only when r (out + in) <
// out x in, i.e. when it saves bytes; others are left alone with a note.
// activation-aware=true (needs calibration data): SVD of W L with L = chol(X^T X + damp)
// and B = sqrt(S_r) V_r^T L^-1, which minimises ||(W - W') X^T|| instead of ||W - W'||
// (the whitening of SVD-LLM; ASVD's diagonal scaling is the special case of a diagonal L).
// method=randomized computes only the leading r + oversample triplets (Halko et al.) and
// needs rank or ratio; auto uses it when r < min(out, in) / 4 and the matrix has more than
// 2^20 entries.
// Factors are stored in the weight's dtype; the report gives per layer the rank, the
// relative Frobenius error (after rounding), the discarded energy and, with calibration data,
// the relative output error. Invalidates all analyses.
#pragma once

#include "core/pass.h"

namespace compress {

PassInfo FactorizeSvdPassInfo();

}  // namespace compress
