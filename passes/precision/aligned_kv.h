// AlignedKV applied to the cache: int bits per K and V channel from the precision-alignment
// criterion (docs/precision_align.md, "KV-cache plan"), for quantize-kv{type=aligned}.
//  K: scores are sum_d q_d k_d per head; with a_q, a_k the channels' calibration RMS (RoPE
//    pairs i and i + head_dim/2 taken jointly), the largest addend T fixes the last kept bit
//    u = 2^(floor(log2 T) - p + 1) and channel d needs resolution D = u / (2 a_q,d) (the
//    finest over the query heads sharing the KV head).
//  V: the attention output (a convex mix of V rows) feeds o_proj: V channel c needs the
//    finest u_j / (2 |W_jk|) over o_proj's rows j and the inputs k = (head reading c, d).
// A channel with calibration max M stored as int-b with static scale M / (2^(b-1) - 1)
// rounds within D when b >= 1 + log2(1 + M / (2 D)); needs are clamped to 2..8 bits.
#pragma once

#include <vector>

#include "Eigen/Core"
#include "absl/status/status.h"
#include "calibrate/calibration.h"
#include "core/model.h"

namespace compress {

// What calibration saw of one block's attention.
struct KvMoments {
  Eigen::VectorXd q_sq, k_sq;     // sums of squares per query / key channel
  Eigen::VectorXf k_amax, v_amax;  // max |k|, |v| per channel
  int64_t rows = 0;
  void Add(const RowMatrix& q, const RowMatrix& k, const RowMatrix& v);
};

struct AlignedKvBits {
  std::vector<int8_t> k, v;
  int capped = 0;  // K and V channels that needed more than 8 bits (stored at 8)
};

// One query head against its KV head: the channels' joint magnitudes (RoPE rotates channel i
// with i + head_dim/2, so each pair's RMS is taken together) and the last bit the score keeps,
// u = 2^(floor(log2 max_i aq_i ak_i) - trunc(p) + 1) (u = 0 when every product is 0).
struct HeadScorePrecision {
  std::vector<double> aq, ak;
  double u = 0;
};
HeadScorePrecision ScorePrecision(const Eigen::VectorXd& q_rms, const Eigen::VectorXd& k_rms, int64_t head,
                                  int64_t kv_head, int64_t head_dim, double p);

// `o_input`: calibration statistics of the block's o_proj input (its RMS per feature).
absl::StatusOr<AlignedKvBits> ComputeAlignedKvBits(const Model& m, const Block& b, const KvMoments& mom,
                                                   const LinearStats& o_input, double output_bits);

}  // namespace compress
