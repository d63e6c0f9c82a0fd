// Backward pass of the Llama-family runtime: gradients of the mean next-token cross-entropy
// with respect to every projection weight (what the empirical Fisher of prune-obs is made of).
//
// The forward pass keeps only each block's input; the backward pass walks the blocks from
// the last, re-running one block with a tape (its activations) and backpropagating through
//   MLP:        x2 = x1 + Wdown (silu(Wgate n2(x1)) * Wup n2(x1))
//   attention:  x1 = x0 + Wo Attn(RoPE(Wq n1(x0)), RoPE(Wk n1(x0)), Wv n1(x0))
// with dL/dW = dL/dy^T x for every projection y = x W^T.
#include <cmath>
#include <mutex>

#include "core/status.h"
#include "runtime/llama.h"
#include "runtime/llama_internal.h"

namespace compress {
namespace {

using llama_detail::ApplyRope;
using llama_detail::BlockTape;
using llama_detail::CausalSoftmax;
using llama_detail::Layer;
using llama_detail::Linear;
using llama_detail::MakeRopeTable;
using llama_detail::RmsNorm;
using llama_detail::RopeTable;

// y = x r g (r = 1 / rms per row): dL/dx = r (dy g) - x r^3 <dy g, x> / D.
RowMatrix RmsNormBack(const RowMatrix& dy, const RowMatrix& x, const Eigen::VectorXf& r,
                      const Eigen::VectorXf& g) {
  RowMatrix dx(x.rows(), x.cols());
  const float inv_d = 1.0f / static_cast<float>(x.cols());
  for (Eigen::Index t = 0; t < x.rows(); ++t) {
    const Eigen::RowVectorXf dyg = dy.row(t).cwiseProduct(g.transpose());
    const float dot = dyg.dot(x.row(t));
    dx.row(t) = r(t) * dyg - (r(t) * r(t) * r(t) * dot * inv_d) * x.row(t);
  }
  return dx;
}

// Backward of causal GQA attention (probabilities recomputed from q and k): fills dq
// [T, H hd], dk and dv [T, KV hd] from d(attention output) [T, H hd].
void AttentionBack(const RowMatrix& q, const RowMatrix& k, const RowMatrix& v, const RowMatrix& dout,
                   int64_t H, int64_t KV, int64_t hd, RowMatrix& dq, RowMatrix& dk, RowMatrix& dv) {
  const int64_t T = q.rows(), group = H / KV;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  dq.setZero(T, H * hd);
  // Per query head, then summed over each key/value head's group (no shared writes).
  std::vector<RowMatrix> dkh(H), dvh(H);
#pragma omp parallel for schedule(static)
  for (int64_t head = 0; head < H; ++head) {
    const int64_t kvh = head / group;
    const RowMatrix qh = q.middleCols(head * hd, hd), kh = k.middleCols(kvh * hd, hd),
                    vh = v.middleCols(kvh * hd, hd), doh = dout.middleCols(head * hd, hd);
    RowMatrix p = (qh * kh.transpose()) * scale;
    CausalSoftmax(p);
    const RowMatrix dp = doh * vh.transpose();
    dvh[head] = p.transpose() * doh;
    // Softmax backward: ds = p * (dp - <dp, p>_row).
    const Eigen::VectorXf rowdot = (dp.cwiseProduct(p)).rowwise().sum();
    const RowMatrix ds = (p.array() * (dp.colwise() - rowdot).array()).matrix() * scale;
    dq.middleCols(head * hd, hd) = ds * kh;
    dkh[head] = ds.transpose() * qh;
  }
  dk.setZero(T, KV * hd);
  dv.setZero(T, KV * hd);
  for (int64_t head = 0; head < H; ++head) {
    dk.middleCols((head / group) * hd, hd) += dkh[head];
    dv.middleCols((head / group) * hd, hd) += dvh[head];
  }
}

}  // namespace

absl::StatusOr<double> LlamaRuntime::Gradients(std::span<const int32_t> ids, const GradientSink& sink,
                                               const std::function<bool(const std::string&)>& wanted) const {
  const Weights& w = *w_;
  if (w.gpt2) return Unimplemented("gradients are not implemented for GPT-2 checkpoints (Llama family only)");
  if (!w.gradients_supported) {
    return Unimplemented(
        "gradients are not implemented for {} checkpoints yet (plain Llama/Mistral/Qwen2 blocks only)",
        w.cfg.model_type);
  }
  if (!w.logits)
    return FailedPrecondition("this runtime was created without logits (RuntimeOptions::logits)");
  if (ids.size() < 2)
    return InvalidArgument("gradients need a sequence of at least 2 tokens, got {}", ids.size());
  const HfConfig& c = w.cfg;
  const int64_t T = static_cast<int64_t>(ids.size()), hd = c.head_dim, H = c.num_heads, KV = c.num_kv_heads;
  const float eps = static_cast<float>(c.norm_eps);
  std::unique_lock<std::mutex> lock(w_->stream_mu, std::defer_lock);
  if (w.stream_model) lock.lock();

  // Forward, keeping every block's input.
  ASSIGN_OR_RETURN(RowMatrix x, Embed(ids));
  std::vector<RowMatrix> inputs(num_blocks());
  for (int b = 0; b < num_blocks(); ++b) {
    inputs[b] = x;
    RETURN_IF_ERROR(WithBlock(b, [&] { RunBlock(b, x); }));
  }

  // Loss and dL/dlogits = (softmax - onehot) / (T - 1) on the T - 1 predicting rows.
  RowMatrix xn = x;
  Eigen::VectorXf rf;
  RmsNorm(xn, w.final_norm, eps, &rf);
  const RowMatrix& head = w.lm_head.size() ? w.lm_head : w.embed;
  RowMatrix dlogits = xn * head.transpose();
  const float inv_n = 1.0f / static_cast<float>(T - 1);
  std::vector<double> nll(T - 1);
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < T - 1; ++t) {
    auto row = dlogits.row(t);
    const float mx = row.maxCoeff();
    double sum = 0;
    for (Eigen::Index j = 0; j < row.size(); ++j) sum += std::exp(static_cast<double>(row(j) - mx));
    nll[t] = std::log(sum) + mx - row(ids[t + 1]);
    for (Eigen::Index j = 0; j < row.size(); ++j)
      row(j) = static_cast<float>(std::exp(static_cast<double>(row(j) - mx)) / sum) * inv_n;
    row(ids[t + 1]) -= inv_n;
  }
  dlogits.row(T - 1).setZero();
  double loss = 0;
  for (double v : nll) loss += v;
  loss /= static_cast<double>(T - 1);
  RowMatrix dx = RmsNormBack(dlogits * head, x, rf, w.final_norm);
  dlogits = RowMatrix();

  const RopeTable rope = MakeRopeTable(T, w.rope);
  absl::Status sink_status;
  auto emit = [&](const Linear& l, const RowMatrix& dy, const RowMatrix& in) {
    if (!sink_status.ok() || (wanted && !wanted(l.name))) return;
    sink_status = sink(l.name, dy, in);
  };
  for (int b = num_blocks() - 1; b >= 0; --b) {
    RETURN_IF_ERROR(WithBlock(b, [&] {
      const Layer& l = w.layers[b];
      BlockTape tape;
      RowMatrix y = inputs[b];
      RunLlamaBlock(b, y, nullptr, &tape);
      inputs[b] = RowMatrix();
      if (!l.skip_mlp) {
        emit(l.down, dx, tape.act);
        const RowMatrix dact = l.down.Back(dx);
        const auto sig = (1.0f / (1.0f + (-tape.gate.array()).exp())).eval();
        const RowMatrix dup = (dact.array() * tape.gate.array() * sig).matrix();
        const RowMatrix dgate =
            (dact.array() * tape.up.array() * sig * (1.0f + tape.gate.array() * (1.0f - sig))).matrix();
        emit(l.gate, dgate, tape.h2);
        emit(l.up, dup, tape.h2);
        dx += RmsNormBack(l.gate.Back(dgate) + l.up.Back(dup), tape.x1, tape.r2, l.n2);
      }
      if (!l.skip_attention) {
        emit(l.o, dx, tape.attn);
        RowMatrix dq, dk, dv;
        AttentionBack(tape.q, tape.k, tape.v, l.o.Back(dx), H, KV, hd, dq, dk, dv);
        ApplyRope(dq, H, hd, rope, /*inverse=*/true);
        ApplyRope(dk, KV, hd, rope, /*inverse=*/true);
        emit(l.q, dq, tape.h1);
        emit(l.k, dk, tape.h1);
        emit(l.v, dv, tape.h1);
        dx += RmsNormBack(l.q.Back(dq) + l.k.Back(dk) + l.v.Back(dv), tape.x0, tape.r1, l.n1);
      }
    }));
    RETURN_IF_ERROR(sink_status);
  }
  return loss;
}

}  // namespace compress
