// Optimal Brain Surgeon (per row) and its Optimal BERT Surgeon block variant.
#include "passes/obs.h"

#include <Eigen/Cholesky>
#include <cmath>

#include "passes/hessian.h"
#include "passes/layer_walk.h"

namespace compress {

absl::StatusOr<std::vector<float>> ObsPrune(std::span<const float> wf, int64_t rows, int64_t cols,
                                            std::span<const double> xtx, double sparsity, int64_t block,
                                            double damp) {
  if (block < 1 || cols % block != 0)
    return InvalidArgument("block {} does not divide the input dimension {}", block, cols);
  if (cols > 4096) return Unimplemented("OBS on {} inputs would take too long; use prune-sparsegpt", cols);
  MatD W = ToDouble(wf, rows, cols);
  ASSIGN_OR_RETURN(MatD U, InverseHessianFactor(xtx, cols, damp, W));
  const MatD hinv0 = U.transpose() * U;
  const int64_t groups = cols / block;
  const int64_t prune = std::llround(sparsity * static_cast<double>(groups));
  std::vector<float> out(rows * cols);
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t r = 0; r < rows; ++r) {
    MatD hinv = hinv0;
    Eigen::VectorXd w = W.row(r).transpose();
    std::vector<bool> gone(groups, false);
    for (int64_t step = 0; step < prune; ++step) {
      int64_t best = -1;
      double best_loss = 0;
      for (int64_t g = 0; g < groups; ++g) {
        if (gone[g]) continue;
        const int64_t s = g * block;
        double loss;
        if (block == 1) {
          loss = w(s) * w(s) / (2 * hinv(s, s));
        } else {
          const Eigen::VectorXd wg = w.segment(s, block);
          loss = 0.5 * wg.dot(hinv.block(s, s, block, block).ldlt().solve(wg));
        }
        if (best < 0 || loss < best_loss) best = g, best_loss = loss;
      }
      const int64_t s = best * block;
      const MatD hgg = hinv.block(s, s, block, block);
      const Eigen::LDLT<MatD> ldlt(hgg);
      const MatD cols_g = hinv.middleCols(s, block);  // H^-1_{:,G}
      const Eigen::VectorXd coef = ldlt.solve(w.segment(s, block));
      w.noalias() -= cols_g * coef;
      w.segment(s, block).setZero();
      hinv.noalias() -= cols_g * ldlt.solve(cols_g.transpose());
      // Keep the removed coordinates inert: zero rows/cols and a unit diagonal.
      hinv.middleRows(s, block).setZero();
      hinv.middleCols(s, block).setZero();
      hinv.block(s, s, block, block).setIdentity();
      gone[best] = true;
    }
    for (int64_t g = 0; g < groups; ++g)
      if (gone[g]) w.segment(g * block, block).setZero();
    for (int64_t c = 0; c < cols; ++c) out[r * cols + c] = static_cast<float>(w(c));
  }
  return out;
}

namespace {

class ObsPass final : public Pass {
 public:
  ObsPass(double sparsity, int64_t block, double damp, TensorSelector sel)
      : sparsity_(sparsity), block_(block), damp_(damp), sel_(std::move(sel)) {}
  absl::StatusOr<PreservedAnalyses> Run(Model& model, PassContext& ctx) override {
    RETURN_IF_ERROR(ForEachLinear(
        model, ctx, sel_, /*calibrated=*/true, /*need_xtx=*/true, /*accept_quantized=*/false, "obs",
        [&](const std::string& name, const LinearLayer& layer, const LinearStats* st) -> absl::Status {
          const Tensor src = model.tensors.at(name);
          ASSIGN_OR_RETURN(OutInWeight oi, ReadOutIn(src, &layer));
          const int64_t rows = oi.rows, cols = oi.cols;
          const std::vector<float>& w = oi.w;
          auto pruned = ObsPrune(w, rows, cols, st->xtx, sparsity_, block_, damp_);
          if (!pruned.ok()) return Annotate(pruned.status(), fmt::format("tensor '{}'", name));
          ASSIGN_OR_RETURN(Tensor out, Tensor::FromF32(StoredLayout(oi, *pruned), src.shape(), src.dtype()));
          // The stored (rounded) values, back in [out, in] for the metrics.
          ASSIGN_OR_RETURN(OutInWeight stored, ReadOutIn(out, &layer));
          const std::vector<float>& back = stored.w;
          TensorChange ch = WeightChange(name, src, out,
                                         fmt::format("obs {:.0f}%{}", 100 * sparsity_,
                                                     block_ > 1 ? fmt::format(" block {}", block_) : ""),
                                         w, back);
          ch.metrics["sparsity"] =
              static_cast<double>(std::count(back.begin(), back.end(), 0.f)) / back.size();
          ch.metrics["rel_output_error"] = RelativeOutputError(w, back, rows, cols, st->xtx);
          ctx.report.tensors.push_back(std::move(ch));
          model.tensors.Set(name, std::move(out));
          return absl::OkStatus();
        }));
    ctx.report.stats["layers_pruned"] = static_cast<double>(ctx.report.tensors.size());
    return PreservedAnalyses::None();
  }

 private:
  double sparsity_;
  int64_t block_;
  double damp_;
  TensorSelector sel_;
};

}  // namespace

PassInfo PruneObsPassInfo() {
  PassInfo info;
  info.name = "prune-obs";
  info.summary = "Optimal Brain Surgeon pruning per row (block > 1: Optimal BERT Surgeon groups)";
  info.needs_calibration = true;
  info.options = {
      {"sparsity",
       OptionType::kFloat,
       "0.5",
       "fraction of weights (groups) removed in every row",
       {},
       0.0,
       1.0},
      {"block", OptionType::kInt, "1", "consecutive inputs pruned together (1 = classic OBS)", {}, 1, 64},
      {"damp", OptionType::kFloat, "0.01", "Hessian dampening, relative to its mean diagonal", {}, 0.0, 10.0},
  };
  info.create = [info](const OptionValues& v) -> absl::StatusOr<std::unique_ptr<Pass>> {
    return std::make_unique<ObsPass>(v.GetFloat("sparsity"), v.GetInt("block"), v.GetFloat("damp"),
                                     SelectorFrom(info, v));
  };
  return info;
}

}  // namespace compress
