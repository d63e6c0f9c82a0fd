// factorize-svd: truncated (activation-aware) SVD of linear weights into two factors.
#include "passes/factorize.h"

#include "passes/layer_walk.h"
#include "passes/svd.h"

namespace compress {
namespace {

struct Options {
  int64_t rank = 0;
  double ratio = 0, energy = 0, damp = 0.01;
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

class FactorizePass final : public Pass {
 public:
  FactorizePass(Options o, TensorSelector sel) : o_(std::move(o)), sel_(std::move(sel)) {}

  absl::StatusOr<PreservedAnalyses> Run(Model& model, PassContext& ctx) override {
    int64_t kept_params = 0, dense_params = 0;
    RETURN_IF_ERROR(ForEachLinear(
        model, ctx, sel_, o_.activation_aware, /*need_xtx=*/o_.activation_aware, /*accept_quantized=*/false,
        "factorize",
        [&](const std::string& name, const LinearLayer& layer, const LinearStats* st) -> absl::Status {
          const Tensor src = model.tensors.at(name);
          if (src.factors()) {
            ctx.report.notes.push_back(fmt::format("left '{}' alone: already factorized", name));
            return absl::OkStatus();
          }
          const int64_t rows = src.shape()[0], cols = src.shape()[1];
          ASSIGN_OR_RETURN(std::vector<float> wf, src.ToF32());
          // Work on the [out, in] orientation.
          MatD w = ToDouble(wf, rows, cols);
          if (layer.out_axis == 1) w.transposeInPlace();
          const int64_t m = w.rows(), n = w.cols();
          MatD whiten;
          if (st) {
            ASSIGN_OR_RETURN(whiten, WhiteningFactor(st->xtx, n, o_.damp));
          }
          const MatD target = st ? MatD(w * whiten) : w;
          const int64_t max_rank = std::min(m, n);
          int64_t r = o_.rank > 0 ? o_.rank : o_.ratio > 0 ? RankForRatio(m, n, o_.ratio) : 0;
          const bool randomized =
              r > 0 && (o_.method == "randomized" ||
                        (o_.method == "auto" && r < max_rank / 4 && m * n > (int64_t{1} << 20)));
          Svd svd = randomized
                        ? RandomizedSvd(target, std::min(r, max_rank), o_.oversample, o_.power_iterations)
                        : ExactSvd(target);
          if (r == 0) r = RankForEnergy(svd.S, o_.energy);
          r = std::min<int64_t>(r, svd.S.size());
          dense_params += m * n;
          if (r * (m + n) >= m * n) {
            kept_params += m * n;
            ctx.report.notes.push_back(fmt::format(
                "left '{}' dense: rank {} factors ({} parameters) would not be smaller than {} x {}", name, r,
                r * (m + n), m, n));
            return absl::OkStatus();
          }
          const double total = st ? target.squaredNorm() : w.squaredNorm();
          const double discarded = std::max(0.0, total - svd.S.head(r).squaredNorm());
          MatD a, b;
          TruncatedFactors(svd, r, st ? &whiten : nullptr, a, b);
          // Back to the stored orientation: [in, out] weights are B^T A^T.
          LowRankFactors f;
          f.rank = r;
          if (layer.out_axis == 0) {
            f.a = ToFloat(a), f.b = ToFloat(b);
          } else {
            f.a = ToFloat(b.transpose()), f.b = ToFloat(a.transpose());
          }
          // Round the factors to the weight's dtype so that what is measured is what is stored.
          for (auto* v : {&f.a, &f.b}) {
            ASSIGN_OR_RETURN(Tensor t, Tensor::FromF32(*v, {static_cast<int64_t>(v->size())}, src.dtype()));
            ASSIGN_OR_RETURN(*v, t.ToF32());
          }
          Tensor out = Tensor::Factorized(src.dtype(), src.shape(), std::move(f));
          ASSIGN_OR_RETURN(std::vector<float> back, out.ToF32());
          TensorChange ch = WeightChange(name, src, out,
                                         fmt::format("{}svd rank {}{}", st ? "activation-aware " : "", r,
                                                     randomized ? " (randomized)" : ""),
                                         wf, back);
          ch.metrics["rank"] = static_cast<double>(r);
          ch.metrics["discarded_energy_fraction"] = total > 0 ? discarded / total : 0.0;
          if (st) ch.metrics["rel_output_error"] = RelativeOutputError(wf, back, rows, cols, st->xtx);
          ctx.report.tensors.push_back(std::move(ch));
          kept_params += r * (m + n);
          model.tensors.Set(name, std::move(out));
          return absl::OkStatus();
        }));
    ctx.report.stats["layers_factorized"] = static_cast<double>(ctx.report.tensors.size());
    ctx.report.stats["parameter_fraction_kept"] =
        dense_params ? static_cast<double>(kept_params) / dense_params : 1.0;
    return PreservedAnalyses::None();
  }

 private:
  Options o_;
  TensorSelector sel_;
};

}  // namespace

PassInfo FactorizeSvdPassInfo() {
  PassInfo info;
  info.name = "factorize-svd";
  info.summary = "low-rank factorization W ~ A B by truncated SVD (plain or activation-aware)";
  info.options = {
      {"rank", OptionType::kInt, "0", "rank of every factorized layer", {}, 0, 1 << 20},
      {"ratio",
       OptionType::kFloat,
       "0",
       "keep at most this fraction of each layer's parameters",
       {},
       0.0,
       1.0},
      {"energy", OptionType::kFloat, "0", "keep this fraction of the singular-value energy", {}, 0.0, 1.0},
      {"activation-aware", OptionType::kBool, "false",
       "whiten by the calibration X^T X (minimises output error; needs calibration data)"},
      {"damp", OptionType::kFloat, "0.01", "X^T X dampening, relative to its mean diagonal", {}, 0.0, 10.0},
      {"method", OptionType::kEnum, "auto", "SVD algorithm", {"auto", "exact", "randomized"}},
      {"oversample", OptionType::kInt, "10", "randomized SVD: extra columns", {}, 0, 4096},
      {"power-iterations", OptionType::kInt, "2", "randomized SVD: power iterations", {}, 0, 32},
  };
  info.create = [info](const OptionValues& v) -> absl::StatusOr<std::unique_ptr<Pass>> {
    Options o;
    o.rank = v.GetInt("rank");
    o.ratio = v.GetFloat("ratio");
    o.energy = v.GetFloat("energy");
    const int set = (o.rank > 0) + (o.ratio > 0) + (o.energy > 0);
    if (set != 1) return InvalidArgument("factorize-svd: give exactly one of rank=, ratio= or energy=");
    o.activation_aware = v.GetBool("activation-aware");
    o.damp = v.GetFloat("damp");
    o.method = v.GetString("method");
    if (o.method == "randomized" && o.energy > 0) {
      return InvalidArgument(
          "factorize-svd: method=randomized needs rank= or ratio= (energy needs every singular value)");
    }
    o.oversample = v.GetInt("oversample");
    o.power_iterations = static_cast<int>(v.GetInt("power-iterations"));
    return std::make_unique<FactorizePass>(std::move(o), SelectorFrom(info, v));
  };
  return info;
}

}  // namespace compress
