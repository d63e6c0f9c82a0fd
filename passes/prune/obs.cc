// Optimal Brain Surgeon (per row) and its Optimal BERT Surgeon block variant.
#include "passes/prune/obs.h"

#include <Eigen/Cholesky>
#include <atomic>
#include <cmath>
#include <set>

#include "calibrate/fisher.h"
#include "passes/math/hessian.h"
#include "passes/layer_walk.h"

namespace compress {

namespace {

// Loss increase of removing the group [s, s + block) of w:  1/2 w_G^T [(H^-1)_GG]^-1 w_G.
double GroupLoss(const MatD& hinv, const Eigen::VectorXd& w, int64_t s, int64_t block) {
  if (block == 1) return w(s) * w(s) / (2 * hinv(s, s));
  const Eigen::VectorXd wg = w.segment(s, block);
  return 0.5 * wg.dot(hinv.block(s, s, block, block).ldlt().solve(wg));
}

// Removes the group with the optimal compensation of the surviving weights and drops its
// coordinates from H^-1 (zero rows and columns, unit diagonal: inert from then on).
void RemoveGroup(MatD& hinv, Eigen::VectorXd& w, int64_t s, int64_t block) {
  const Eigen::LDLT<MatD> ldlt(hinv.block(s, s, block, block));
  const MatD cols_g = hinv.middleCols(s, block);  // H^-1_{:,G}
  const Eigen::VectorXd coef = ldlt.solve(w.segment(s, block));
  w.noalias() -= cols_g * coef;
  w.segment(s, block).setZero();
  hinv.noalias() -= cols_g * ldlt.solve(cols_g.transpose());
  hinv.middleRows(s, block).setZero();
  hinv.middleCols(s, block).setZero();
  hinv.block(s, s, block, block).setIdentity();
}

}  // namespace

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
        const double loss = GroupLoss(hinv, w, g * block, block);
        if (best < 0 || loss < best_loss) best = g, best_loss = loss;
      }
      RemoveGroup(hinv, w, best * block, block);
      gone[best] = true;
    }
    for (int64_t g = 0; g < groups; ++g)
      if (gone[g]) w.segment(g * block, block).setZero();
    for (int64_t c = 0; c < cols; ++c) out[r * cols + c] = static_cast<float>(w(c));
  }
  return out;
}

absl::StatusOr<FisherObsResult> ObsPruneFisher(std::span<const float> wf, const FisherBlocks& f,
                                               double sparsity, int64_t block, double damp) {
  const int64_t rows = f.rows, cols = f.cols, B = f.block;
  if (B < 1 || cols % B != 0)
    return InvalidArgument("fisher-block {} does not divide the input dimension {}", B, cols);
  if (block < 1 || B % block != 0)
    return InvalidArgument("block {} does not divide fisher-block {}", block, B);
  if (f.samples < 1) return FailedPrecondition("the Fisher blocks hold no samples");
  if (static_cast<int64_t>(wf.size()) != rows * cols ||
      static_cast<int64_t>(f.sums.size()) != rows * cols * B)
    return Internal("ObsPruneFisher: sizes do not match [{}, {}] x {}", rows, cols, B);
  const int64_t nb = cols / B, per_block = B / block, groups = cols / block;
  const int64_t prune = std::llround(sparsity * static_cast<double>(groups));
  // Dampening relative to the layer's mean Fisher diagonal (a layer with no gradient at all
  // gets F = damp I: magnitude order).
  double diag = 0;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < nb; ++j)
      for (int64_t a = 0; a < B; ++a) diag += f.Block(r, j)[a * B + a];
  diag /= static_cast<double>(rows * cols) * static_cast<double>(f.samples);
  const double lambda0 = std::max(damp, 1e-8) * (diag > 0 ? diag : 1.0);
  FisherObsResult res;
  res.weights.resize(rows * cols);
  std::vector<double> row_loss(rows, 0.0);
  std::atomic<bool> failed{false};
#pragma omp parallel for schedule(dynamic, 4)
  for (int64_t r = 0; r < rows; ++r) {
    std::vector<MatD> hinv(nb);
    std::vector<Eigen::VectorXd> w(nb);
    std::vector<double> best_loss(nb);
    std::vector<int64_t> best(nb, -1);
    std::vector<bool> gone(groups, false);
    auto rescore = [&](int64_t j) {
      best[j] = -1;
      for (int64_t g = 0; g < per_block; ++g) {
        if (gone[j * per_block + g]) continue;
        const double loss = GroupLoss(hinv[j], w[j], g * block, block);
        if (best[j] < 0 || loss < best_loss[j]) best[j] = g, best_loss[j] = loss;
      }
    };
    for (int64_t j = 0; j < nb; ++j) {
      const std::span<const float> fb = f.Block(r, j);
      MatD F(B, B);
      for (int64_t a = 0; a < B; ++a)
        for (int64_t b = 0; b < B; ++b) F(a, b) = static_cast<double>(fb[a * B + b]) / f.samples;
      // F + lambda I, with 10x more dampening (up to 4 times) if it stays indefinite.
      Eigen::LLT<MatD> llt;
      double lambda = lambda0;
      for (int attempt = 0; attempt < 5; ++attempt, lambda *= 10) {
        llt.compute(F + lambda * MatD::Identity(B, B));
        if (llt.info() == Eigen::Success) break;
      }
      if (llt.info() != Eigen::Success) failed = true;
      hinv[j] = llt.solve(MatD::Identity(B, B));
      w[j].resize(B);
      for (int64_t a = 0; a < B; ++a) w[j](a) = wf[r * cols + j * B + a];
      rescore(j);
    }
    for (int64_t step = 0; step < prune; ++step) {
      int64_t jb = -1;
      for (int64_t j = 0; j < nb; ++j)
        if (best[j] >= 0 && (jb < 0 || best_loss[j] < best_loss[jb])) jb = j;
      row_loss[r] += best_loss[jb];
      RemoveGroup(hinv[jb], w[jb], best[jb] * block, block);
      gone[jb * per_block + best[jb]] = true;
      rescore(jb);
    }
    for (int64_t j = 0; j < nb; ++j) {
      for (int64_t a = 0; a < B; ++a) {
        const bool removed = gone[(j * B + a) / block];
        res.weights[r * cols + j * B + a] = removed ? 0.f : static_cast<float>(w[j](a));
      }
    }
  }
  if (failed) return FailedPrecondition("a Fisher block stayed indefinite after dampening; raise damp");
  for (double l : row_loss) res.predicted_loss += l;
  return res;
}

namespace {

struct ObsOptions {
  double sparsity = 0.5;
  int64_t block = 1;
  double damp = 0.01;
  bool fisher = false;  // hessian=fisher
  int64_t fisher_block = 64;
  FisherSample fisher_sample = FisherSample::kToken;
  int64_t fisher_memory_mib = 4096;  // MiB of Fisher blocks held at once
};

class ObsPass final : public Pass {
 public:
  ObsPass(ObsOptions o, TensorSelector sel) : o_(o), sel_(std::move(sel)) {}
  absl::StatusOr<PreservedAnalyses> Run(Model& model, PassContext& ctx) override {
    if (o_.fisher) {
      if (model.format != ModelFormat::kSafetensors)
        return Unimplemented(
            "prune-obs hessian=fisher needs the LLM runtime's gradients (safetensors LLM "
            "checkpoints); use hessian=xtx for ONNX models");
      RuntimeOptions ro;
      ro.stream_blocks = true;  // gradients always see the model's current (partly pruned) weights
      auto rt = LlamaRuntime::Create(model, ro);
      if (!rt.ok()) return Annotate(rt.status(), "prune-obs hessian=fisher");
      grad_rt_ = *std::move(rt);
    }
    double predicted = 0;
    RETURN_IF_ERROR(ForEachLinear(
        model, ctx, sel_, /*calibrated=*/true, /*need_xtx=*/true, /*accept_quantized=*/false, "obs",
        [&](const std::string& name, const LinearLayer& layer, const LinearStats* st) -> absl::Status {
          const Tensor src = model.tensors.at(name);
          ASSIGN_OR_RETURN(OutInWeight oi, ReadOutIn(src, &layer));
          const int64_t rows = oi.rows, cols = oi.cols;
          const std::vector<float>& w = oi.w;
          std::vector<float> pruned;
          double layer_predicted = -1;
          if (o_.fisher) {
            if (!fisher_.contains(name)) RETURN_IF_ERROR(NextFisherGroup(model, ctx, name));
            auto r = ObsPruneFisher(w, fisher_.at(name), o_.sparsity, o_.block, o_.damp);
            fisher_.erase(name);
            pruned_.insert(name);
            if (!r.ok()) return Annotate(r.status(), fmt::format("tensor '{}'", name));
            pruned = std::move(r->weights);
            layer_predicted = r->predicted_loss;
            predicted += layer_predicted;
          } else {
            auto r = ObsPrune(w, rows, cols, st->xtx, o_.sparsity, o_.block, o_.damp);
            if (!r.ok()) return Annotate(r.status(), fmt::format("tensor '{}'", name));
            pruned = *std::move(r);
          }
          ASSIGN_OR_RETURN(Tensor out, Tensor::FromF32(StoredLayout(oi, pruned), src.shape(), src.dtype()));
          // The stored (rounded) values, back in [out, in] for the metrics.
          ASSIGN_OR_RETURN(OutInWeight stored, ReadOutIn(out, &layer));
          const std::vector<float>& back = stored.w;
          TensorChange ch =
              WeightChange(name, src, out,
                           fmt::format("obs {:.0f}%{}{}", 100 * o_.sparsity,
                                       o_.block > 1 ? fmt::format(" block {}", o_.block) : "",
                                       o_.fisher ? fmt::format(" fisher {}", o_.fisher_block) : ""),
                           w, back);
          ch.metrics["sparsity"] =
              static_cast<double>(std::count(back.begin(), back.end(), 0.f)) / back.size();
          ch.metrics["rel_output_error"] = RelativeOutputError(w, back, rows, cols, st->xtx);
          if (layer_predicted >= 0) ch.metrics["fisher_loss_increase"] = layer_predicted;
          ctx.report.tensors.push_back(std::move(ch));
          model.tensors.Set(name, std::move(out));
          return absl::OkStatus();
        },
        /*keep_rows=*/0, /*spread=*/!o_.fisher));  // Fisher groups carry state across layers
    ctx.report.stats["layers_pruned"] = static_cast<double>(ctx.report.tensors.size());
    if (o_.fisher) {
      ctx.report.stats["fisher_loss_increase"] = predicted;
      ctx.report.stats["fisher_gradient_passes"] = static_cast<double>(gradient_passes_);
    }
    return PreservedAnalyses::None();
  }

 private:
  // Computes the Fisher blocks of the selected projections from `first`'s block onwards, as
  // many as fisher-memory holds (at least one), over every calibration window.
  absl::Status NextFisherGroup(const Model& model, PassContext& ctx, const std::string& first) {
    int64_t first_block = -1;
    for (const Block& b : model.arch.blocks)
      for (const auto* list : {&b.attention, &b.mlp})
        for (const LinearLayer& l : *list)
          if (l.weight == first) first_block = b.index;
    // `first`, then the unpruned selected projections of its block and the later ones.
    std::vector<std::string> candidates = {first};
    for (const Block& b : model.arch.blocks) {
      if (b.index < first_block) continue;
      for (const auto* list : {&b.attention, &b.mlp}) {
        for (const LinearLayer& l : *list) {
          const Tensor* t = model.tensors.find(l.weight);
          if (l.weight == first || pruned_.contains(l.weight) || !sel_.Selects(model, l.weight) || !t ||
              t->shape().size() != 2 || t->quant() || l.out_axis != 0)
            continue;
          candidates.push_back(l.weight);
        }
      }
    }
    std::map<std::string, FisherBlocks> shapes;
    int64_t bytes = 0;
    for (const std::string& name : candidates) {
      const Shape& shape = model.tensors.at(name).shape();
      if (shape.size() != 2) return InvalidArgument("prune-obs hessian=fisher: '{}' is not 2-D", name);
      const int64_t rows = shape[0], cols = shape[1];
      if (cols % o_.fisher_block != 0)
        return InvalidArgument("fisher-block {} does not divide the {} inputs of '{}'", o_.fisher_block, cols,
                               name);
      const int64_t need = rows * cols * o_.fisher_block * 4;
      if (!shapes.empty() && bytes + need > (o_.fisher_memory_mib << 20)) break;
      bytes += need;
      shapes.emplace(name, MakeFisherBlocks(rows, cols, o_.fisher_block));
    }
    if (first_block < 0) return Internal("prune-obs: '{}' is not a projection of any block", first);
    auto f = ComputeFisher(*grad_rt_, *ctx.calibration, shapes, o_.fisher_sample,
                           [&](int64_t done, int64_t total) { ctx.Progress("obs: Fisher", done, total); });
    if (!f.ok()) return Annotate(f.status(), "prune-obs hessian=fisher");
    ++gradient_passes_;
    fisher_.merge(*f);
    return absl::OkStatus();
  }

  ObsOptions o_;
  TensorSelector sel_;
  std::unique_ptr<LlamaRuntime> grad_rt_;
  std::map<std::string, FisherBlocks> fisher_;
  std::set<std::string> pruned_;
  int64_t gradient_passes_ = 0;
};

}  // namespace

PassInfo PruneObsPassInfo() {
  PassInfo info;
  info.name = "prune-obs";
  info.summary = "Optimal Brain Surgeon pruning per row (block > 1: Optimal BERT Surgeon groups)";
  info.needs_calibration = true;
  OptionBinding<ObsOptions> b;
  b.Float(&ObsOptions::sparsity, "sparsity", "fraction of weights (groups) removed in every row", 0.0, 1.0)
      .Int(&ObsOptions::block, "block", "consecutive inputs pruned together (1 = classic OBS)", 1, 64)
      .Float(&ObsOptions::damp, "damp", "Hessian dampening, relative to its mean diagonal", 0.0, 10.0)
      .Choice(&ObsOptions::fisher, "hessian",
              "xtx: H = X^T X of the layer's inputs (exact per row); fisher: the empirical Fisher of the "
              "calibration windows' losses, block-diagonal (LLM checkpoints)",
              {{"xtx", false}, {"fisher", true}})
      .Int(&ObsOptions::fisher_block, "fisher-block", "inputs per diagonal block of the Fisher (hessian=fisher)", 1,
           1024)
      .Choice(&ObsOptions::fisher_sample, "fisher-samples",
              "what one Fisher sample is (hessian=fisher): a calibration window's loss gradient, or one "
              "position's term of it (windows x tokens samples, T times the accumulation cost)",
              {{"window", FisherSample::kWindow}, {"token", FisherSample::kToken}})
      .Int(&ObsOptions::fisher_memory_mib, "fisher-memory",
           "MiB of Fisher blocks held at once; more layers than fit cost another gradient pass", 16, 1 << 20);
  BindPassOptions(info, std::move(b),
                  [](const ObsOptions& o, TensorSelector sel) -> absl::StatusOr<std::unique_ptr<Pass>> {
                    if (o.fisher && o.fisher_block % o.block != 0)
                      return InvalidArgument("prune-obs: block {} does not divide fisher-block {}", o.block,
                                             o.fisher_block);
                    return std::make_unique<ObsPass>(o, std::move(sel));
                  });
  return info;
}

}  // namespace compress
