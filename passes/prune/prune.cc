// Magnitude / Wanda / N:M pruning and SparseGPT.
#include "passes/prune/prune.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <numeric>
#include <set>

#include "calibrate/calibration.h"
#include "passes/math/hessian.h"
#include "passes/layer_walk.h"

namespace compress {
namespace {

// Zeroes the `k` entries of `idx` (indices into w) with the smallest scores.
int64_t ZeroSmallest(std::span<float> w, std::vector<int64_t>& idx, int64_t k,
                     const std::function<double(int64_t)>& score) {
  if (k <= 0) return 0;
  std::nth_element(idx.begin(), idx.begin() + (k - 1), idx.end(), [&](int64_t a, int64_t b) {
    const double sa = score(a), sb = score(b);
    return sa < sb || (sa == sb && a < b);
  });
  for (int64_t i = 0; i < k; ++i) w[idx[i]] = 0.f;
  return k;
}

struct LayerJob {
  std::string name;
  std::vector<float> w;
  int64_t rows = 0, cols = 0;
  const LinearStats* stats = nullptr;  // with calibration data
};

// Runs `fn` on every selected 2-D linear weight, with calibration statistics (block by block,
// sequentially) when `calibrated`, and stores the result back. Reports sparsity and errors.
absl::Status ForEachLayer(Model& model, PassContext& ctx, const TensorSelector& sel, bool calibrated,
                          bool need_xtx, const std::string& method,
                          const std::function<absl::Status(LayerJob&, std::vector<float>& out)>& fn) {
  const auto selected = sel.Select(model);
  std::set<std::string> todo(selected.begin(), selected.end());
  const int64_t total = static_cast<int64_t>(todo.size());
  auto process = [&](const std::string& name, const LinearStats* st) -> absl::Status {
    const Tensor src = model.tensors.at(name);
    if (src.shape().size() != 2 || (!IsFloating(src.dtype()) && !src.quant())) return absl::OkStatus();
    // Row-wise methods see [out, in]; ONNX [in, out] weights are transposed there and back.
    ASSIGN_OR_RETURN(OutInWeight oi, ReadOutIn(src, model.arch.LayerOfWeight(name)));
    LayerJob job{name, oi.w, oi.rows, oi.cols, st};
    std::vector<float> out;
    RETURN_IF_ERROR(fn(job, out));
    const int64_t zeros = std::count(out.begin(), out.end(), 0.f);
    TensorChange ch{name,
                    src.shape(),
                    src.shape(),
                    std::string(DTypeName(src.dtype())),
                    std::string(DTypeName(src.dtype())),
                    src.storage_bytes(),
                    src.storage_bytes(),
                    method,
                    {{"sparsity", static_cast<double>(zeros) / out.size()},
                     {"rel_fro_error", CompareWeights(job.w, out).rel_fro}}};
    if (st && !st->xtx.empty()) {
      ch.metrics["rel_output_error"] = RelativeOutputError(job.w, out, job.rows, job.cols, st->xtx);
    }
    ASSIGN_OR_RETURN(Tensor t, Tensor::FromF32(StoredLayout(oi, out), src.shape(),
                                               src.quant() ? src.quant()->original_dtype : src.dtype()));
    model.tensors.Set(name, std::move(t));
    ctx.report.tensors.push_back(std::move(ch));
    todo.erase(name);
    ctx.Progress("prune", total - static_cast<int64_t>(todo.size()), total);
    return absl::OkStatus();
  };
  if (calibrated) {
    const std::set<std::string> wanted = todo;  // statistics (and blocks) only for these
    RETURN_IF_ERROR(RunCalibration(
        model, *ctx.calibration,
        {.collect_xtx = need_xtx, .experts = &ctx.report.experts, .wanted = &wanted, .journal = ctx.journal},
        [&](int, std::map<std::string, LinearStats>& stats) -> absl::Status {
          std::vector<std::string> names;
          for (const auto& [name, st] : stats) {
            const Tensor* t = todo.count(name) ? model.tensors.find(name) : nullptr;
            if (t && t->shape().size() == 2 && (IsFloating(t->dtype()) || t->quant())) names.push_back(name);
          }
          // One block's layers are independent: spread over MPI ranks when there are several.
          RETURN_IF_ERROR(VisitBlockLayers(model, ctx.report, names, stats,
                                           [&](const std::string& name, const LinearStats& st) { return process(name, &st); },
                                           ctx.journal));
          for (const auto& name : names) todo.erase(name);
          ctx.Progress("prune", total - static_cast<int64_t>(todo.size()), total);
          return absl::OkStatus();
        },
        [&](int64_t done, int64_t blocks) { ctx.Progress("blocks", done, blocks); }));
    for (const auto& name : todo) {
      ctx.report.notes.push_back(fmt::format("left '{}' alone: not a linear layer the runtime runs", name));
    }
    ctx.report.notes.push_back(SequentialCalibrationNote(ctx));
  } else {
    for (const auto& name : selected) RETURN_IF_ERROR(process(name, nullptr));
  }
  double zeros = 0, count = 0;
  for (const auto& t : ctx.report.tensors) {
    zeros += t.metrics.at("sparsity") * NumElements(t.shape_after);
    count += NumElements(t.shape_after);
  }
  ctx.report.stats["layers_pruned"] = static_cast<double>(ctx.report.tensors.size());
  ctx.report.stats["sparsity"] = count > 0 ? zeros / count : 0.0;
  return absl::OkStatus();
}

std::string PatternName(const SparsityPattern& p) {
  return p.m > 0 ? fmt::format("{}:{}", p.n, p.m) : fmt::format("{:.0f}%", 100 * p.sparsity);
}

// |w| as the bits of a non-negative float: ordered like |w|.
uint32_t AbsBits(float v) { return std::bit_cast<uint32_t>(v) & 0x7FFFFFFFu; }

// The global magnitude threshold over the selected 2-D weights: the `k` smallest |w| are
// those with AbsBits < threshold plus the first `ties` with AbsBits == threshold (in visiting
// order). Two histogram passes over the weights (high then low 16 bits), no copy of them.
struct GlobalCut {
  uint32_t threshold = 0;
  int64_t ties = 0, total = 0, k = 0;
};

absl::StatusOr<GlobalCut> FindGlobalCut(const Model& model, const std::vector<std::string>& names, double sparsity) {
  GlobalCut cut;
  std::vector<int64_t> hi(65536, 0), lo(65536, 0);
  auto each = [&](const std::function<void(uint32_t)>& fn) -> absl::Status {
    for (const auto& name : names) {
      const Tensor& t = model.tensors.at(name);
      if (t.shape().size() != 2 || (!IsFloating(t.dtype()) && !t.quant())) continue;
      ASSIGN_OR_RETURN(std::vector<float> w, FiniteWeights(t, name));
      for (float v : w) fn(AbsBits(v));
    }
    return absl::OkStatus();
  };
  RETURN_IF_ERROR(each([&](uint32_t b) { ++hi[b >> 16]; }));
  for (int64_t c : hi) cut.total += c;
  cut.k = static_cast<int64_t>(std::floor(sparsity * cut.total));
  if (cut.k >= cut.total) {
    cut.threshold = 0xFFFFFFFFu;  // everything goes
    return cut;
  }
  int64_t below = 0;
  uint32_t bin = 0;
  while (below + hi[bin] <= cut.k) below += hi[bin++];
  RETURN_IF_ERROR(each([&](uint32_t b) {
    if ((b >> 16) == bin) ++lo[b & 0xFFFF];
  }));
  uint32_t low = 0;
  while (below + lo[low] <= cut.k) below += lo[low++];
  cut.threshold = (bin << 16) | low;
  cut.ties = cut.k - below;
  return cut;
}

class ScorePrunePass final : public Pass {
 public:
  ScorePrunePass(SparsityPattern p, bool wanda, bool global, TensorSelector sel)
      : p_(p), wanda_(wanda), global_(global), sel_(std::move(sel)) {}
  absl::StatusOr<PreservedAnalyses> Run(Model& model, PassContext& ctx) override {
    if (wanda_ && !ctx.calibration) {
      return FailedPrecondition("score=wanda needs calibration data; give --calibration FILE");
    }
    if (global_) {
      if (wanda_ || p_.m > 0) return InvalidArgument("scope=global applies to unstructured magnitude pruning");
      ASSIGN_OR_RETURN(GlobalCut cut, FindGlobalCut(model, sel_.Select(model), p_.sparsity));
      int64_t ties = cut.ties;
      RETURN_IF_ERROR(ForEachLayer(model, ctx, sel_, false, false,
                                   fmt::format("magnitude {:.0f}% global", 100 * p_.sparsity),
                                   [&](LayerJob& job, std::vector<float>& out) -> absl::Status {
                                     out = job.w;
                                     for (float& v : out) {
                                       const uint32_t b = AbsBits(v);
                                       if (b < cut.threshold || (b == cut.threshold && ties > 0)) {
                                         if (b == cut.threshold) --ties;
                                         v = 0.f;
                                       }
                                     }
                                     return absl::OkStatus();
                                   }));
      ctx.report.stats["global_threshold"] = std::bit_cast<float>(cut.threshold == 0xFFFFFFFFu ? 0x7F800000u : cut.threshold);
      ctx.report.stats["weights_zeroed"] = static_cast<double>(cut.k);
      return PreservedAnalyses::None();
    }
    const std::string method = fmt::format("{} {}", wanda_ ? "wanda" : "magnitude", PatternName(p_));
    RETURN_IF_ERROR(ForEachLayer(model, ctx, sel_, wanda_, false, method,
                                 [&](LayerJob& job, std::vector<float>& out) -> absl::Status {
                                   out = job.w;
                                   std::vector<double> norm;
                                   if (wanda_) {
                                     for (double s : job.stats->sum_sq) norm.push_back(std::sqrt(s));
                                   }
                                   PruneByScore(out, job.rows, job.cols, p_, norm);
                                   return absl::OkStatus();
                                 }));
    return PreservedAnalyses::None();
  }

 private:
  SparsityPattern p_;
  bool wanda_, global_;
  TensorSelector sel_;
};

class SparseGptPass final : public Pass {
 public:
  SparseGptPass(SparsityPattern p, int64_t block, double damp, TensorSelector sel)
      : p_(p), block_(block), damp_(damp), sel_(std::move(sel)) {}
  absl::StatusOr<PreservedAnalyses> Run(Model& model, PassContext& ctx) override {
    RETURN_IF_ERROR(ForEachLayer(
        model, ctx, sel_, true, true, "sparsegpt " + PatternName(p_),
        [&](LayerJob& job, std::vector<float>& out) -> absl::Status {
          ASSIGN_OR_RETURN(out, SparseGpt(job.w, job.rows, job.cols, job.stats->xtx, p_, block_, damp_));
          // The magnitude baseline on the same layer, for the report.
          std::vector<float> mag = job.w;
          PruneByScore(mag, job.rows, job.cols, p_, {});
          const std::span<const float> approximations[] = {out, mag};
          const std::vector<double> e = RelativeOutputErrors(job.w, approximations, job.rows, job.cols, job.stats->xtx);
          ctx.report.notes.push_back(
              fmt::format("{}: relative output error {:.4g} (magnitude: {:.4g})", job.name, e[0], e[1]));
          return absl::OkStatus();
        }));
    return PreservedAnalyses::None();
  }

 private:
  SparsityPattern p_;
  int64_t block_;
  double damp_;
  TensorSelector sel_;
};

absl::StatusOr<SparsityPattern> CheckedPattern(double sparsity, int n, int m) {
  if (m > 0 && (n < 1 || n >= m)) return InvalidArgument("need 0 < n < m for n:m sparsity (got {}:{})", n, m);
  return SparsityPattern{sparsity, n, m};
}

struct MagnitudeOptions {
  double sparsity = 0.5;
  bool wanda = false;   // score=wanda
  bool global = false;  // scope=global
};

struct NmOptions {
  int n = 2, m = 4;
  bool wanda = false;
};

struct SparseGptOptions {
  double sparsity = 0.5;
  int n = 0, m = 0;
  int64_t block_size = 128;
  double damp = 0.01;
};

}  // namespace

int64_t PruneByScore(std::span<float> w, int64_t rows, int64_t cols, const SparsityPattern& p,
                     std::span<const double> col_norm) {
  auto score = [&](int64_t i) {
    const double a = std::fabs(static_cast<double>(w[i]));
    return col_norm.empty() ? a : a * col_norm[i % cols];
  };
  int64_t zeros = 0;
  if (p.m > 0) {
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t c0 = 0; c0 + p.m <= cols; c0 += p.m) {
        std::vector<int64_t> idx(p.m);
        std::iota(idx.begin(), idx.end(), r * cols + c0);
        zeros += ZeroSmallest(w, idx, p.m - p.n, score);
      }
    }
    return zeros;
  }
  if (!col_norm.empty()) {  // Wanda: compare within each output row
    const int64_t k = static_cast<int64_t>(std::floor(p.sparsity * cols));
    for (int64_t r = 0; r < rows; ++r) {
      std::vector<int64_t> idx(cols);
      std::iota(idx.begin(), idx.end(), r * cols);
      zeros += ZeroSmallest(w, idx, k, score);
    }
    return zeros;
  }
  std::vector<int64_t> idx(rows * cols);
  std::iota(idx.begin(), idx.end(), 0);
  return ZeroSmallest(w, idx, static_cast<int64_t>(std::floor(p.sparsity * rows * cols)), score);
}

absl::StatusOr<std::vector<float>> SparseGpt(std::span<const float> w, int64_t rows, int64_t cols,
                                             std::span<const double> xtx, const SparsityPattern& p,
                                             int64_t block_size, double damp) {
  MatD W = ToDouble(w, rows, cols);
  auto factor = InverseHessianFactor(xtx, cols, damp, W);
  if (!factor.ok()) return Annotate(factor.status(), "SparseGPT");
  const MatD& U = *factor;
  if (p.m > 0 && block_size % p.m != 0)
    return InvalidArgument("block-size {} must be a multiple of m={}", block_size, p.m);
  MatD Q = MatD::Zero(rows, cols);
  Eigen::Matrix<bool, Eigen::Dynamic, Eigen::Dynamic> mask;  // the batch's pruned weights
  int64_t b1 = 0;                                            // the batch's first column
  auto begin = [&](int64_t i1, int64_t count, const MatD& W1) {
    b1 = i1;
    mask = Eigen::Matrix<bool, Eigen::Dynamic, Eigen::Dynamic>::Constant(rows, count, false);
    if (p.m != 0) return;
    // Adaptive mask: prune the batch's weights with the smallest w^2 / U_jj^2.
    std::vector<std::pair<double, int64_t>> sc(rows * count);
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t c = 0; c < count; ++c) {
        const double d = U(i1 + c, i1 + c);
        sc[r * count + c] = {W1(r, c) * W1(r, c) / (d * d), r * count + c};
      }
    }
    const int64_t k = static_cast<int64_t>(std::floor(p.sparsity * rows * count));
    if (k > 0) {
      std::nth_element(sc.begin(), sc.begin() + (k - 1), sc.end());
      for (int64_t i = 0; i < k; ++i) mask(sc[i].second / count, sc[i].second % count) = true;
    }
  };
  auto column = [&](int64_t r0, int64_t r1, int64_t i, int64_t col, const MatD& W1, double* y) {
    const int64_t count = mask.cols();
    if (p.m > 0 && i % p.m == 0 && i + p.m <= count) {
      // n:m: in each row, prune the m-n smallest w^2 / U_jj^2 of the next m columns
      // (scored on the weights as updated so far).
      std::vector<std::pair<double, int>> sc(p.m);
      for (int64_t r = r0; r < r1; ++r) {
        for (int j = 0; j < p.m; ++j) {
          const double d = U(b1 + i + j, b1 + i + j);
          sc[j] = {W1(r, i + j) * W1(r, i + j) / (d * d), j};
        }
        std::sort(sc.begin(), sc.end());
        for (int j = 0; j < p.m - p.n; ++j) mask(r, i + sc[j].second) = true;
      }
    }
    for (int64_t r = r0; r < r1; ++r) Q(r, col) = y[r - r0] = mask(r, i) ? 0.0 : W1(r, i);
  };
  ErrorFeedbackSweep(W, U, block_size, column, begin);
  std::vector<float> out(rows * cols);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) out[r * cols + c] = static_cast<float>(Q(r, c));
  }
  return out;
}

PassInfo PruneMagnitudePassInfo() {
  PassInfo info;
  info.name = "prune-magnitude";
  info.summary = "zero the smallest weights of each layer (|w|, or Wanda's |w|*||x|| with calibration)";
  OptionBinding<MagnitudeOptions> b;
  b.Float(&MagnitudeOptions::sparsity, "sparsity", "fraction of weights to zero in each layer (or overall)", 0, 1)
      .Choice(&MagnitudeOptions::wanda, "score", "magnitude: |w| over the layer; wanda: |w|*||x_j|| per row",
              {{"magnitude", false}, {"wanda", true}})
      .Choice(&MagnitudeOptions::global, "scope",
              "layer: every layer loses `sparsity`; global: the smallest |w| over all selected layers",
              {{"layer", false}, {"global", true}});
  BindPassOptions(info, std::move(b),
                  [](const MagnitudeOptions& o, TensorSelector sel) -> absl::StatusOr<std::unique_ptr<Pass>> {
                    ASSIGN_OR_RETURN(SparsityPattern p, CheckedPattern(o.sparsity, 0, 0));
                    return std::make_unique<ScorePrunePass>(p, o.wanda, o.global, std::move(sel));
                  });
  return info;
}

PassInfo PruneNmPassInfo() {
  PassInfo info;
  info.name = "prune-nm";
  info.summary = "n:m sparsity along the input dimension (keep n of every m weights), e.g. 2:4";
  OptionBinding<NmOptions> b;
  b.Int(&NmOptions::n, "n", "weights kept in each group", 1, 64)
      .Int(&NmOptions::m, "m", "group length", 2, 64)
      .Choice(&NmOptions::wanda, "score", "magnitude or wanda (needs calibration)",
              {{"magnitude", false}, {"wanda", true}});
  BindPassOptions(info, std::move(b),
                  [](const NmOptions& o, TensorSelector sel) -> absl::StatusOr<std::unique_ptr<Pass>> {
                    ASSIGN_OR_RETURN(SparsityPattern p, CheckedPattern(0.0, o.n, o.m));
                    return std::make_unique<ScorePrunePass>(p, o.wanda, false, std::move(sel));
                  });
  return info;
}

PassInfo PruneSparseGptPassInfo() {
  PassInfo info;
  info.name = "prune-sparsegpt";
  info.summary = "SparseGPT: second-order pruning with error compensation (unstructured or n:m)";
  info.needs_calibration = true;
  using O = SparseGptOptions;
  OptionBinding<O> b;
  b.Float(&O::sparsity, "sparsity", "fraction to zero (unstructured, when m=0)", 0, 1)
      .Int(&O::n, "n", "n:m: weights kept per group (0 = unstructured)", 0, 64)
      .Int(&O::m, "m", "n:m: group length (0 = unstructured)", 0, 64)
      .Int(&O::block_size, "block-size", "columns per mask/update block", 1, 1 << 16)
      .Float(&O::damp, "damp", "dampening, fraction of the mean Hessian diagonal", 0, 10);
  BindPassOptions(info, std::move(b), [](const O& o, TensorSelector sel) -> absl::StatusOr<std::unique_ptr<Pass>> {
    ASSIGN_OR_RETURN(SparsityPattern p, CheckedPattern(o.sparsity, o.n, o.m));
    if ((p.n == 0) != (p.m == 0)) return InvalidArgument("prune-sparsegpt: give both n and m, or neither");
    return std::make_unique<SparseGptPass>(p, o.block_size, o.damp, std::move(sel));
  });
  return info;
}

}  // namespace compress
