// precision-align: per-layer bit widths from the precision-alignment criterion.
#include "passes/precision/precision_align.h"

#include <cmath>

#include "passes/precision/aligned_kv.h"
#include "passes/math/hessian.h"
#include "passes/layer_walk.h"
#include "passes/precision/weight_formats.h"

namespace compress {
namespace {

struct LayerNeed {
  std::string name;
  int64_t params = 0, in = 0;
  double mean_significant_bits = 0;
  // Per candidate group size: the coverage quantile over (row, group)s of the integer bits a
  // group needs at the reference output precision.
  std::vector<std::pair<int64_t, double>> needed;
};

// A layer's stored format under an output-precision shift: bits and group size.
struct Choice {
  int bits = 16;
  int64_t group = 0;
  double need = 0;
};

double Quantile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  const size_t i = std::min(v.size() - 1, static_cast<size_t>(std::floor(q * (v.size() - 1))));
  std::nth_element(v.begin(), v.begin() + i, v.end());
  return v[i];
}

// Bits per parameter a layer stores with `b` integer bits and group `g` (scales f32).
double StoredBits(int b, int64_t in, int64_t g) {
  if (b > 8) return 16;
  if (b == 8 || g <= 0 || in % g != 0) return b + 32.0 / in;
  return b + 32.0 / g;
}

int BitsFor(double need) { return std::clamp(static_cast<int>(std::ceil(need - 1e-9)), 2, 9); }

// The cheapest (bits, group) whose need, lowered by `shift`, is met.
Choice Choose(const LayerNeed& n, double shift) {
  Choice best;
  double best_bits = std::numeric_limits<double>::infinity();
  for (const auto& [g, need] : n.needed) {
    const int b = BitsFor(need - shift);
    const double stored = StoredBits(b, n.in, g);
    if (stored < best_bits - 1e-12) best = {b, g, need - shift}, best_bits = stored;
  }
  return best;
}

struct PrecisionAlignOptions {
  double output_bits = 8;
  double coverage = 0.9;
  double budget = 0;
  int64_t group_size = 128;
  bool group_search = false;
  bool sum = true;  // error=sum (else addend)
  bool apply = true;
};

class PrecisionAlignPass final : public Pass {
 public:
  PrecisionAlignPass(const PrecisionAlignOptions& o, TensorSelector sel)
      : sum_(o.sum),
        p_(o.output_bits),
        coverage_(o.coverage),
        budget_(o.budget),
        group_(o.group_size),
        group_search_(o.group_search),
        apply_(o.apply),
        sel_(std::move(sel)) {}

  absl::StatusOr<PreservedAnalyses> Run(Model& model, PassContext& ctx) override {
    std::vector<LayerNeed> needs;
    KvStats kv;
    std::map<std::string, int> block_of;
    for (const Block& b : model.arch.blocks) {
      for (const auto* list : {&b.attention, &b.mlp})
        for (const auto& l : *list) block_of[l.weight] = b.index;
    }
    RETURN_IF_ERROR(ForEachLinear(
        model, ctx, sel_, /*calibrated=*/true, /*need_xtx=*/true, /*accept_quantized=*/false, "precision-align",
        [&](const std::string& name, const LinearLayer& layer, const LinearStats* st) -> absl::Status {
          const int blk = block_of.count(name) ? block_of[name] : -1;
          ASSIGN_OR_RETURN(LayerNeed need, MeasureLayer(model, name, layer, st, blk, kv));
          needs.push_back(std::move(need));
          return absl::OkStatus();
        }));
    if (needs.empty()) return FailedPrecondition("precision-align: no linear weights selected");
    ASSIGN_OR_RETURN(const PlanResult plan, FitBudget(needs));
    RETURN_IF_ERROR(ApplyPlan(model, ctx, needs, plan));
    ReportKvPlan(model, ctx, kv, plan.shift);
    return PreservedAnalyses::None();
  }

 private:
  struct KvStats {
    std::map<int, Eigen::VectorXd> q_rms, k_rms;      // block -> per-channel RMS of q / k
    std::map<int, std::pair<double, double>> v_bits;  // block -> (mean, max) bits of o_proj inputs
  };
  struct PlanResult {
    std::vector<Choice> plan;
    double shift = 0, total = 0, params = 0;
    int upgrades = 0;
  };

  // Which bits each (row, group) of `name` needs for each candidate group size, and the
  // per-block K/V statistics of q/k/o projections (block `blk`, -1 outside blocks).
  absl::StatusOr<LayerNeed> MeasureLayer(const Model& model, const std::string& name, const LinearLayer& layer,
                                         const LinearStats* st, int blk, KvStats& kv) const {
    const Tensor& src = model.tensors.at(name);
    ASSIGN_OR_RETURN(OutInWeight oi, ReadOutIn(src, &layer));  // [out, in] for ONNX MatMuls too
    const std::vector<float>& w = oi.w;
    const int64_t rows = oi.rows, cols = oi.cols;
    // Candidate group sizes: group-size, and with group-search its halves down to 16.
    std::vector<int64_t> groups;
    for (int64_t g = group_; g >= 16 && g > 0; g /= 2) {
      if (cols % g == 0) groups.push_back(g);
      if (!group_search_ || g % 2 != 0) break;
    }
    if (groups.empty()) groups.push_back(cols);
    std::vector<std::vector<double>> group_bits(groups.size());  // per candidate, per (row, group)
    std::vector<double> a(cols);
    for (int64_t k = 0; k < cols; ++k) a[k] = st->rows ? std::sqrt(st->sum_sq[k] / st->rows) : 0.0;
    LayerNeed need{name, rows * cols, cols, 0, {}};
    double sig_sum = 0;
    int64_t sig_n = 0;
    std::vector<double> input_need(cols, -1e30);  // per input: finest resolution any row needs (log2)
    for (int64_t j = 0; j < rows; ++j) {
      const float* wr = w.data() + j * cols;
      double t = 0;
      for (int64_t k = 0; k < cols; ++k) t = std::max(t, std::fabs(wr[k]) * a[k]);
      if (t <= 0) continue;
      const double ulp =
          std::ldexp(1.0, static_cast<int>(std::floor(std::log2(t))) - static_cast<int>(p_) + 1);
      for (size_t c = 0; c < groups.size(); ++c) {
        const int64_t g = groups[c];
        double sum = 0;  // error=sum: sum over groups of M^2 * sum of a_k^2
        for (int64_t g0 = 0; g0 < cols; g0 += g) {
          double m = 0, min_d = std::numeric_limits<double>::infinity(), a2 = 0;
          for (int64_t k = g0; k < g0 + g; ++k) {
            m = std::max(m, static_cast<double>(std::fabs(wr[k])));
            if (a[k] > 0) min_d = std::min(min_d, ulp / (2 * a[k]));
            a2 += a[k] * a[k];
          }
          sum += m * m * a2;
          if (!sum_ && m > 0 && std::isfinite(min_d))
            group_bits[c].push_back(1 + std::log2(1 + m / (2 * min_d)));
        }
        // The row's rounding errors add up: RMS error sqrt(sum_g s_g^2 / 12 * sum a_k^2) with
        // s_g = M_g / (2^(b-1) - 1) stays within ulp / 2 when b >= 1 + log2(1 + sqrt(sum / 3) / ulp).
        if (sum_ && sum > 0) group_bits[c].push_back(1 + std::log2(1 + std::sqrt(sum / 3) / ulp));
      }
      for (int64_t k = 0; k < cols; ++k) {
        if (wr[k] == 0 || a[k] <= 0) continue;
        const double d = ulp / (2 * a[k]);
        sig_sum += std::max(0.0, std::floor(std::log2(std::fabs(wr[k]))) - std::floor(std::log2(d)));
        ++sig_n;
        // Input side: x_k may err by ulp / (2 |W_jk|) in row j; the finest over rows binds.
        input_need[k] = std::max(input_need[k], std::log2(std::fabs(wr[k]) / (ulp / 2)));
      }
    }
    need.mean_significant_bits = sig_n ? sig_sum / sig_n : 0.0;
    for (size_t c = 0; c < groups.size(); ++c)
      need.needed.emplace_back(groups[c], Quantile(std::move(group_bits[c]), coverage_));
    if (layer.kind == "o_proj") {  // V cache: bits each attention-output channel needs
      double sum = 0, mx = 0;
      int64_t n = 0;
      for (int64_t k = 0; k < cols; ++k) {
        if (a[k] <= 0 || input_need[k] < -1e29) continue;
        const double bits =
            std::clamp(std::floor(std::log2(a[k])) + std::ceil(input_need[k]), 0.0, 24.0);
        sum += bits, mx = std::max(mx, bits), ++n;
      }
      kv.v_bits[blk] = {n ? sum / n : 0.0, mx};
    }
    if (layer.kind == "q_proj" || layer.kind == "k_proj") {
      // Channel RMS of the projection output: sqrt(diag(W H W^T) / tokens).
      const RowMatD h = Eigen::Map<const RowMatD>(st->xtx.data(), cols, cols);
      const RowMatD wd = ToDouble(w, rows, cols);
      Eigen::VectorXd r = ((wd * h).cwiseProduct(wd)).rowwise().sum() / std::max<int64_t>(1, st->rows);
      (layer.kind == "q_proj" ? kv.q_rms : kv.k_rms)[blk] = r.cwiseMax(0).cwiseSqrt();
    }
    return need;
  }

  // The plan under the budget: the output precision lowered uniformly until it fits, then
  // the rest of the budget spent one bit at a time.
  absl::StatusOr<PlanResult> FitBudget(const std::vector<LayerNeed>& needs) const {
    // Lower the output precision uniformly until the plan fits the budget.
    PlanResult r;
    double& shift = r.shift;
    auto plan_bits = [&](double s) {
      double bits = 0, params = 0;
      for (const auto& n : needs) {
        const Choice c = Choose(n, s);
        bits += StoredBits(c.bits, n.in, c.group) * n.params;
        params += n.params;
      }
      return bits / params;
    };
    if (budget_ > 0) {
      while (plan_bits(shift) > budget_ && shift < 64) shift += 0.01;
      if (plan_bits(shift) > budget_) {
        return InvalidArgument("precision-align: even 2-bit layers exceed the budget of {} bits", budget_);
      }
    }
    std::vector<Choice>& plan = r.plan;
    for (const auto& n : needs) plan.push_back(Choose(n, shift));
    // Spend what the shift left of the budget: one more bit, in turn, to the layer whose need
    // comes closest to (or exceeds) its bits, while the plan fits.
    double &total = r.total, &params = r.params;
    for (size_t i = 0; i < needs.size(); ++i) {
      total += StoredBits(plan[i].bits, needs[i].in, plan[i].group) * needs[i].params;
      params += needs[i].params;
    }
    int& upgrades = r.upgrades;
    while (budget_ > 0) {
      int best = -1;
      double best_deficit = -1e30, best_extra = 0;
      for (size_t i = 0; i < needs.size(); ++i) {
        const Choice& c = plan[i];
        const double deficit = c.need - c.bits;
        if (c.bits >= 8 || deficit <= best_deficit) continue;
        const double extra =
            (StoredBits(c.bits + 1, needs[i].in, c.group) - StoredBits(c.bits, needs[i].in, c.group)) *
            needs[i].params;
        if ((total + extra) / params > budget_ + 1e-12) continue;
        best = static_cast<int>(i), best_deficit = deficit, best_extra = extra;
      }
      if (best < 0) break;
      ++plan[best].bits;
      total += best_extra;
      ++upgrades;
    }
    return r;
  }

  // Quantizes (apply=true) or records the planned bits of every measured layer.
  absl::Status ApplyPlan(Model& model, PassContext& ctx, const std::vector<LayerNeed>& needs,
                         const PlanResult& r) const {
    const double shift = r.shift, total = r.total, params = r.params;
    const std::vector<Choice>& plan = r.plan;
    const int upgrades = r.upgrades;
    ctx.report.stats["output_bits"] = p_ - shift;
    ctx.report.stats["bits_per_parameter"] = total / params;
    ctx.report.stats["budget_fill_upgrades"] = upgrades;
    std::map<int, int> counts;
    for (size_t i = 0; i < needs.size(); ++i) {
      const LayerNeed& n = needs[i];
      const Choice choice = plan[i];
      const int b = choice.bits;
      ++counts[b];
      const Tensor src = model.tensors.at(n.name);
      TensorChange ch;
      if (apply_ && b <= 8) {
        ASSIGN_OR_RETURN(std::vector<float> w, FiniteWeights(src, n.name));
        ASSIGN_OR_RETURN(Tensor out, QuantizeWeightAs(fmt::format("int{}", b), src, w,
                                                      *model.arch.LayerOfWeight(n.name), choice.group, {}));
        ASSIGN_OR_RETURN(std::vector<float> back, out.ToF32());
        ch = WeightChange(
            n.name, src, out,
            b == 8 ? "precision-align int8" : fmt::format("precision-align int{} g{}", b, choice.group), w,
            back);
        model.tensors.Set(n.name, std::move(out));
      } else {
        ch = {n.name,
              src.shape(),
              src.shape(),
              StoredTypeName(src),
              StoredTypeName(src),
              src.storage_bytes(),
              src.storage_bytes(),
              apply_ ? "precision-align: keeps 16-bit" : "precision-align plan",
              {}};
      }
      ch.metrics["needed_int_bits"] = choice.need;
      ch.metrics["group_size"] = static_cast<double>(choice.group);
      ch.metrics["mean_significant_bits"] = std::max(0.0, n.mean_significant_bits - shift);
      ch.metrics["planned_bits"] = b;
      ctx.report.tensors.push_back(std::move(ch));
    }
    for (const auto& [b, c] : counts)
      ctx.report.stats[b > 8 ? "layers_16bit" : fmt::format("layers_int{}", b)] = c;
    return absl::OkStatus();
  }

  // AlignedKV's plan for the cache: significant bits K and V need per block.
  void ReportKvPlan(const Model& model, PassContext& ctx, const KvStats& kv, double shift) const {
    // KV-cache plan.
    const int64_t hd = model.arch.head_dim, H = model.arch.num_heads,
                  KV = std::max<int64_t>(1, model.arch.num_kv_heads);
    for (const auto& [blk, kr] : kv.k_rms) {
      if (!kv.q_rms.count(blk) || hd <= 0) continue;
      const Eigen::VectorXd& qr = kv.q_rms.at(blk);
      Eigen::VectorXd kneed = Eigen::VectorXd::Zero(kr.size());
      for (int64_t h = 0; h < H && (h + 1) * hd <= qr.size(); ++h) {
        const int64_t g = h / std::max<int64_t>(1, H / KV);
        if ((g + 1) * hd > kr.size()) continue;
        const HeadScorePrecision sp = ScorePrecision(qr, kr, h, g, hd, p_ - shift);
        if (sp.u <= 0) continue;
        const std::vector<double>&aq = sp.aq, &ak = sp.ak;
        const double ulp = sp.u;
        for (int64_t i = 0; i < hd; ++i) {
          if (aq[i] <= 0 || ak[i] <= 0) continue;
          const double bits = std::floor(std::log2(ak[i])) - std::floor(std::log2(ulp / (2 * aq[i])));
          kneed(g * hd + i) = std::max(kneed(g * hd + i), std::clamp(bits, 0.0, 24.0));
        }
      }
      const auto v = kv.v_bits.count(blk) ? kv.v_bits.at(blk) : std::pair<double, double>{0, 0};
      ctx.report.notes.push_back(fmt::format(
          "kv plan block {}: K needs {:.1f} significant bits on average (max {:.0f}), V {:.1f} (max {:.0f})",
          blk, kneed.mean(), kneed.maxCoeff(), v.first - shift, v.second - shift));
      ctx.report.stats[fmt::format("kv_block{}_k_bits", blk)] = kneed.mean();
      ctx.report.stats[fmt::format("kv_block{}_v_bits", blk)] = std::max(0.0, v.first - shift);
    }
  }

  bool sum_;
  double p_, coverage_, budget_;
  int64_t group_;
  bool group_search_, apply_;
  TensorSelector sel_;
};

}  // namespace

PassInfo PrecisionAlignPassInfo() {
  PassInfo info;
  info.name = "precision-align";
  info.summary = "AlignedKV precision alignment: bits each layer needs to match its dot products' precision";
  info.needs_calibration = true;
  using O = PrecisionAlignOptions;
  OptionBinding<O> b;
  b.Float(&O::output_bits, "output-bits", "significant bits the layer outputs keep (8 = bf16, 11 = f16)", 1.0, 24.0)
      .Float(&O::coverage, "coverage", "fraction of (row, group)s whose need a layer's bits must meet", 0.0, 1.0)
      .Float(&O::budget, "budget", "if > 0: bits per parameter to fit by lowering output-bits uniformly", 0.0, 32.0)
      .Int(&O::group_size, "group-size", "inputs per scale of the int formats", 0, 1 << 20)
      .Flag(&O::group_search, "group-search",
            "also consider group-size/2, /4, ... (down to 16) per layer and store the cheapest that meets the need")
      .Choice(&O::sum, "error",
              "what must stay below half the output's last kept bit: each addend's error, or the row's summed "
              "rounding error (RMS over its addends)",
              {{"addend", false}, {"sum", true}})
      .Flag(&O::apply, "apply", "quantize to the plan (false: report the plan only)");
  BindPassOptions(info, std::move(b), [](const O& o, TensorSelector sel) {
    return std::make_unique<PrecisionAlignPass>(o, std::move(sel));
  });
  return info;
}

}  // namespace compress
