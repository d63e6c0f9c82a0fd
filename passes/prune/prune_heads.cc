// Structured attention-head (KV-group) pruning with consistent q/k/v/o surgery.
#include "passes/prune/prune_heads.h"

#include "passes/prune/prune_structured.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "calibrate/calibration.h"
#include "core/checkpoint_edit.h"
#include "passes/layer_walk.h"

namespace compress {

// Rows [r0, r0 + n) of each listed block of a row-major [rows, cols] matrix, concatenated.
std::vector<float> TakeRows(const std::vector<float>& w, int64_t cols, const std::vector<int64_t>& starts,
                            int64_t n) {
  std::vector<float> out;
  out.reserve(starts.size() * n * cols);
  for (int64_t s : starts) out.insert(out.end(), w.begin() + s * cols, w.begin() + (s + n) * cols);
  return out;
}

std::vector<float> TakeCols(const std::vector<float>& w, int64_t rows, int64_t cols,
                            const std::vector<int64_t>& starts, int64_t n) {
  const int64_t kept = static_cast<int64_t>(starts.size()) * n;
  std::vector<float> out(rows * kept);
  for (int64_t r = 0; r < rows; ++r) {
    int64_t c = 0;
    for (int64_t s : starts)
      for (int64_t i = 0; i < n; ++i) out[r * kept + c++] = w[r * cols + s + i];
  }
  return out;
}

HeadCut ChooseHeads(const HeadWeights& w, const HeadShape& s, int64_t keep, const std::string& score_kind,
                    const std::vector<double>* o_in_sq) {
  const int64_t H = s.heads, KV = s.kv_heads, d = s.head_dim, per = H / KV, D = s.hidden, O = s.out;
  auto acc = [&](double x) { return score_kind == "l1" ? std::fabs(x) : x * x; };
  std::vector<double> score(KV, 0.0);
  for (int64_t g = 0; g < KV; ++g) {
    double sum = 0, o2 = 0, in2 = 0;
    for (int64_t h = g * per; h < (g + 1) * per; ++h) {
      for (int64_t r = h * d; r < (h + 1) * d; ++r) {
        for (int64_t c = 0; c < D; ++c) sum += acc(w.q[r * D + c]);
        for (int64_t j = 0; j < O; ++j) {
          const double x = w.o[j * H * d + r];
          sum += acc(x), o2 += x * x;
        }
        if (score_kind == "wanda" && o_in_sq) in2 += (*o_in_sq)[r];
      }
    }
    for (int64_t r = g * d; r < (g + 1) * d; ++r)
      for (int64_t c = 0; c < D; ++c) sum += acc(w.k[r * D + c]) + acc(w.v[r * D + c]);
    score[g] = score_kind == "wanda" ? std::sqrt(o2) * std::sqrt(in2) : score_kind == "l1" ? sum : std::sqrt(sum);
  }
  std::vector<int64_t> order(KV);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t x, int64_t y) { return score[x] > score[y]; });
  HeadCut cut;
  cut.kept.assign(order.begin(), order.begin() + keep);
  std::sort(cut.kept.begin(), cut.kept.end());
  for (int64_t g : cut.kept) {
    cut.kv_rows.push_back(g * d);
    for (int64_t h = g * per; h < (g + 1) * per; ++h) cut.q_rows.push_back(h * d);
  }
  for (int64_t g = 0; g < KV; ++g)
    if (!std::binary_search(cut.kept.begin(), cut.kept.end(), g))
      cut.removed += (cut.removed.empty() ? "" : ", ") + std::to_string(g);
  return cut;
}

namespace {

const LinearLayer* Find(const Block& b, const char* kind) {
  for (const auto& l : b.attention)
    if (l.kind == kind) return &l;
  return nullptr;
}

class PruneHeadsPass final : public Pass {
 public:
  PruneHeadsPass(double ratio, std::string score) : ratio_(ratio), score_(std::move(score)) {}

  absl::StatusOr<PreservedAnalyses> Run(Model& model, PassContext& ctx) override {
    ASSIGN_OR_RETURN(const CheckpointEditor* editor, ctx.Editor("prune-structured{target=heads}"));
    RETURN_IF_ERROR(editor->CheckEditable(model, StructuralEdit::kAttentionHeads));
    // Phi-3's fused q/k/v: cut on the separate projections, fused again at the end.
    ASSIGN_OR_RETURN(const bool fused, editor->SplitFused(model));
    const Architecture& a = model.arch;
    const int64_t H = a.num_heads, KV = a.num_kv_heads > 0 ? a.num_kv_heads : a.num_heads, d = a.head_dim;
    if (H <= 0 || d <= 0 || H % KV != 0) return Internal("{}: no head counts in the architecture view", model.source);
    const int64_t per = H / KV;  // query heads per unit
    const int64_t keep = std::max<int64_t>(1, std::llround((1.0 - ratio_) * KV));
    std::map<std::string, std::vector<double>> o_in_sq;  // o_proj weight -> sum x^2 per input
    if (score_ == "wanda") {
      ASSIGN_OR_RETURN(o_in_sq, InputSquareSums(model, ctx));
    }
    int64_t done = 0;
    for (const Block& b : a.blocks) {
      ctx.Progress("prune heads", done++, static_cast<int64_t>(a.blocks.size()));
      const LinearLayer *q = Find(b, "q_proj"), *k = Find(b, "k_proj"), *v = Find(b, "v_proj"),
                        *o = Find(b, "o_proj");
      if (!q || !k || !v || !o) return Unimplemented("block {} has no q/k/v/o projections", b.index);
      std::map<const LinearLayer*, OutInWeight> w;  // [out, in] whatever the stored layout
      for (const LinearLayer* l : {q, k, v, o}) {
        const Tensor& t = model.tensors.at(l->weight);
        if (t.quant() || t.factors() || !IsFloating(t.dtype()))
          return FailedPrecondition("block {}: prune-structured must run before quantization/factorization",
                                    b.index);
        ASSIGN_OR_RETURN(w[l], ReadOutIn(t, l));
      }
      const int64_t D = w[q].cols;  // hidden size
      const int64_t O = w[o].rows;
      const HeadCut cut = ChooseHeads({w[q].w, w[k].w, w[v].w, w[o].w}, {H, KV, d, D, O}, keep, score_,
                                      o_in_sq.count(o->weight) ? &o_in_sq[o->weight] : nullptr);
      const std::vector<int64_t>&q_rows = cut.q_rows, &kv_rows = cut.kv_rows;
      const std::string method = fmt::format("structured: kept {} of {} {} ({}), removed [{}]", keep, KV,
                                             per > 1 ? "KV groups" : "heads", score_, cut.removed);
      const std::map<std::string, double> metrics = {{"heads_removed", static_cast<double>((KV - keep) * per)}};
      auto put = [&](const LinearLayer* l, std::vector<float> out_in, int64_t rows, int64_t cols) {
        return SetOutIn(model, ctx.report, l->weight, w[l], std::move(out_in), rows, cols, method, metrics);
      };
      RETURN_IF_ERROR(put(q, TakeRows(w[q].w, D, q_rows, d), keep * per * d, D));
      RETURN_IF_ERROR(put(k, TakeRows(w[k].w, D, kv_rows, d), keep * d, D));
      RETURN_IF_ERROR(put(v, TakeRows(w[v].w, D, kv_rows, d), keep * d, D));
      RETURN_IF_ERROR(put(o, TakeCols(w[o].w, O, H * d, q_rows, d), O, keep * per * d));
      for (auto [l, rows] : {std::pair{q, &q_rows}, {k, &kv_rows}, {v, &kv_rows}}) {
        if (l->bias.empty()) continue;
        ASSIGN_OR_RETURN(std::vector<float> bias, model.tensors.at(l->bias).ToF32());
        RETURN_IF_ERROR(SetCut(model, ctx.report, l->bias, TakeRows(bias, 1, *rows, d),
                               {static_cast<int64_t>(rows->size()) * d}, method, metrics));
      }
    }
    RETURN_IF_ERROR(editor->SetAttentionHeads(model, keep * per, keep, d));
    if (fused) RETURN_IF_ERROR(editor->Fuse(model));
    ctx.report.stats["attention_heads_before"] = static_cast<double>(H);
    ctx.report.stats["attention_heads_after"] = static_cast<double>(keep * per);
    ctx.report.stats["kv_heads_before"] = static_cast<double>(KV);
    ctx.report.stats["kv_heads_after"] = static_cast<double>(keep);
    return PreservedAnalyses::None();
  }

 private:
  double ratio_;
  std::string score_;
};

}  // namespace

std::unique_ptr<Pass> MakePruneHeadsPass(double ratio, std::string score) {
  return std::make_unique<PruneHeadsPass>(ratio, std::move(score));
}

}  // namespace compress
