// factorize-svd: truncated (activation-aware) SVD of linear weights into two factors.
#include "passes/factorize/factorize.h"

#include <queue>

#include "passes/layer_walk.h"
#include "passes/math/svd.h"

namespace compress {
namespace {

struct Options {
  int64_t rank = 0;
  double ratio = 0, energy = 0, budget = 0, damp = 0.01;
  bool activation_aware = false;
  std::string method = "auto";
  int64_t oversample = 10;
  int power_iterations = 2;
};

std::vector<float> ToFloat(const MatD& m) {  // row-major
  std::vector<float> out(m.rows() * m.cols());
  for (Eigen::Index i = 0; i < m.rows(); ++i)
    for (Eigen::Index j = 0; j < m.cols(); ++j) out[i * m.cols() + j] = static_cast<float>(m(i, j));
  return out;
}

// One layer's decomposition, kept between the SVD and the choice of its rank.
struct LayerSvd {
  std::string name;
  Tensor src;
  int out_axis = 0;
  int64_t m = 0, n = 0;  // [out, in]
  Svd svd;
  MatD whiten;           // empty without calibration
  bool randomized = false;
  double total = 0;      // (whitened) energy of the weight
  std::vector<float> wf;  // the stored weight values, for the report
  const LinearStats* stats = nullptr;
};

class FactorizePass final : public Pass {
 public:
  FactorizePass(Options o, TensorSelector sel) : o_(std::move(o)), sel_(std::move(sel)) {}

  absl::StatusOr<PreservedAnalyses> Run(Model& model, PassContext& ctx) override {
    int64_t kept_params = 0, dense_params = 0;
    std::vector<LayerSvd> pending;  // budget= only: every layer's SVD before ranks are chosen
    std::map<std::string, LinearStats> stats_copy;
    RETURN_IF_ERROR(ForEachLinear(
        model, ctx, sel_, o_.activation_aware, /*need_xtx=*/o_.activation_aware, /*accept_quantized=*/false,
        "factorize",
        [&](const std::string& name, const LinearLayer& layer, const LinearStats* st) -> absl::Status {
          const Tensor src = model.tensors.at(name);
          if (src.factors()) {
            ctx.report.notes.push_back(fmt::format("left '{}' alone: already factorized", name));
            return absl::OkStatus();
          }
          ASSIGN_OR_RETURN(LayerSvd l, Decompose(name, src, layer, st));
          if (o_.budget > 0) {
            if (st) l.stats = &(stats_copy[name] = *st);  // the driver's statistics do not outlive the block
            pending.push_back(std::move(l));
            return absl::OkStatus();
          }
          int64_t r = o_.rank > 0 ? o_.rank : o_.ratio > 0 ? RankForRatio(l.m, l.n, o_.ratio) : 0;
          if (r == 0) r = RankForEnergy(l.svd.S, o_.energy);
          return Apply(model, ctx, l, r, kept_params, dense_params);
        }));
    if (o_.budget > 0) {
      const auto ranks = AllocateRanks(pending, o_.budget);
      for (size_t i = 0; i < pending.size(); ++i) {
        RETURN_IF_ERROR(Apply(model, ctx, pending[i], ranks[i], kept_params, dense_params));
        ctx.Progress("factorize (budget)", static_cast<int64_t>(i + 1), static_cast<int64_t>(pending.size()));
      }
    }
    ctx.report.stats["layers_factorized"] = static_cast<double>(ctx.report.tensors.size());
    ctx.report.stats["parameter_fraction_kept"] =
        dense_params ? static_cast<double>(kept_params) / dense_params : 1.0;
    return PreservedAnalyses::None();
  }

 private:
  absl::StatusOr<LayerSvd> Decompose(const std::string& name, const Tensor& src, const LinearLayer& layer,
                                     const LinearStats* st) const {
    LayerSvd l;
    l.name = name;
    l.src = src;
    l.out_axis = layer.out_axis;
    l.stats = st;
    const int64_t rows = src.shape()[0], cols = src.shape()[1];
    ASSIGN_OR_RETURN(l.wf, src.ToF32());
    // Work on the [out, in] orientation.
    MatD w = ToDouble(l.wf, rows, cols);
    if (layer.out_axis == 1) w.transposeInPlace();
    l.m = w.rows();
    l.n = w.cols();
    if (st) {
      ASSIGN_OR_RETURN(l.whiten, WhiteningFactor(st->xtx, l.n, o_.damp));
    }
    const MatD target = st ? MatD(w * l.whiten) : w;
    const int64_t max_rank = std::min(l.m, l.n);
    const int64_t r = o_.rank > 0 ? o_.rank : o_.ratio > 0 ? RankForRatio(l.m, l.n, o_.ratio) : 0;
    l.randomized = o_.budget == 0 && r > 0 &&
                   (o_.method == "randomized" ||
                    (o_.method == "auto" && r < max_rank / 4 && l.m * l.n > (int64_t{1} << 20)));
    l.svd = l.randomized ? RandomizedSvd(target, std::min(r, max_rank), o_.oversample, o_.power_iterations)
                         : ExactSvd(target);
    l.total = target.squaredNorm();
    return l;
  }

  // Keeps the first r singular triplets (or the dense weight when that is not smaller).
  absl::Status Apply(Model& model, PassContext& ctx, const LayerSvd& l, int64_t r, int64_t& kept_params,
                     int64_t& dense_params) const {
    const int64_t m = l.m, n = l.n;
    r = std::min<int64_t>(r, l.svd.S.size());
    dense_params += m * n;
    if (r * (m + n) >= m * n) {
      kept_params += m * n;
      ctx.report.notes.push_back(fmt::format("left '{}' dense: rank {} factors ({} parameters) would not be smaller than {} x {}",
                                             l.name, r, r * (m + n), m, n));
      return absl::OkStatus();
    }
    const LinearStats* st = l.stats;
    const double discarded = std::max(0.0, l.total - l.svd.S.head(r).squaredNorm());
    MatD a, b;
    TruncatedFactors(l.svd, r, st ? &l.whiten : nullptr, a, b);
    // Back to the stored orientation: [in, out] weights are B^T A^T.
    LowRankFactors f;
    f.rank = r;
    if (l.out_axis == 0) {
      f.a = ToFloat(a), f.b = ToFloat(b);
    } else {
      f.a = ToFloat(b.transpose()), f.b = ToFloat(a.transpose());
    }
    // Round the factors to the weight's dtype so that what is measured is what is stored.
    for (auto* v : {&f.a, &f.b}) {
      ASSIGN_OR_RETURN(Tensor t, Tensor::FromF32(*v, {static_cast<int64_t>(v->size())}, l.src.dtype()));
      ASSIGN_OR_RETURN(*v, t.ToF32());
    }
    Tensor out = Tensor::Factorized(l.src.dtype(), l.src.shape(), std::move(f));
    ASSIGN_OR_RETURN(std::vector<float> back, out.ToF32());
    TensorChange ch = WeightChange(l.name, l.src, out,
                                   fmt::format("{}svd rank {}{}{}", st ? "activation-aware " : "", r,
                                               l.randomized ? " (randomized)" : "", o_.budget > 0 ? " (global budget)" : ""),
                                   l.wf, back);
    ch.metrics["rank"] = static_cast<double>(r);
    ch.metrics["discarded_energy_fraction"] = l.total > 0 ? discarded / l.total : 0.0;
    if (st) ch.metrics["rel_output_error"] = RelativeOutputError(l.wf, back, l.src.shape()[0], l.src.shape()[1], st->xtx);
    ctx.report.tensors.push_back(std::move(ch));
    kept_params += r * (m + n);
    model.tensors.Set(l.name, std::move(out));
    return absl::OkStatus();
  }

  // Ranks under a global parameter budget: greedily add the singular triplet with the most
  // relative energy (sigma_k^2 / the layer's total) per parameter it costs (m + n), starting
  // from rank 1 everywhere, until the factors reach `budget` x the layers' dense parameters.
  // A layer whose rank passes the break-even point is stored dense (its cost is then m n).
  static std::vector<int64_t> AllocateRanks(const std::vector<LayerSvd>& layers, double budget) {
    int64_t dense = 0, used = 0;
    std::vector<int64_t> r(layers.size(), 1);
    using Item = std::pair<double, size_t>;  // gain per parameter, layer
    std::priority_queue<Item> heap;
    auto gain = [&](size_t i) {
      const auto& l = layers[i];
      if (r[i] >= l.svd.S.size() || l.total <= 0) return -1.0;
      const double s = l.svd.S[r[i]];
      return s * s / l.total / static_cast<double>(l.m + l.n);
    };
    for (size_t i = 0; i < layers.size(); ++i) {
      dense += layers[i].m * layers[i].n;
      used += layers[i].m + layers[i].n;
      heap.push({gain(i), i});
    }
    const int64_t limit = static_cast<int64_t>(budget * dense);
    while (!heap.empty()) {
      auto [g, i] = heap.top();
      heap.pop();
      if (g < 0) continue;
      const auto& l = layers[i];
      const int64_t step = l.m + l.n;
      if (used + step > limit) continue;  // too expensive; cheaper layers may still fit
      used += step;
      ++r[i];
      heap.push({gain(i), i});
    }
    return r;
  }

  Options o_;
  TensorSelector sel_;
};

}  // namespace

PassInfo FactorizeSvdPassInfo() {
  PassInfo info;
  info.name = "factorize-svd";
  info.summary = "low-rank factorization W ~ A B by truncated SVD (plain or activation-aware)";
  OptionBinding<Options> b;
  b.Int(&Options::rank, "rank", "rank of every factorized layer", 0, 1 << 20)
      .Float(&Options::ratio, "ratio", "keep at most this fraction of each layer's parameters", 0.0, 1.0)
      .Float(&Options::energy, "energy", "keep this fraction of the singular-value energy", 0.0, 1.0)
      .Float(&Options::budget, "budget",
             "keep at most this fraction of the selected layers' parameters overall; ranks chosen across layers",
             0.0, 1.0)
      .Flag(&Options::activation_aware, "activation-aware",
            "whiten by the calibration X^T X (minimises output error; needs calibration data)")
      .Float(&Options::damp, "damp", "X^T X dampening, relative to its mean diagonal", 0.0, 10.0)
      .Choice(&Options::method, "method", "SVD algorithm", {"auto", "exact", "randomized"})
      .Int(&Options::oversample, "oversample", "randomized SVD: extra columns", 0, 4096)
      .Int(&Options::power_iterations, "power-iterations", "randomized SVD: power iterations", 0, 32);
  BindPassOptions(info, std::move(b),
                  [](const Options& o, TensorSelector sel) -> absl::StatusOr<std::unique_ptr<Pass>> {
                    const int set = (o.rank > 0) + (o.ratio > 0) + (o.energy > 0) + (o.budget > 0);
                    if (set != 1) {
                      return InvalidArgument("factorize-svd: give exactly one of rank=, ratio=, energy= or budget=");
                    }
                    if (o.method == "randomized" && o.energy > 0) {
                      return InvalidArgument(
                          "factorize-svd: method=randomized needs rank= or ratio= (energy needs every singular "
                          "value)");
                    }
                    return std::make_unique<FactorizePass>(o, std::move(sel));
                  });
  return info;
}

}  // namespace compress
