// GPTQ: Hessian-aware sequential rounding with Cholesky-based error feedback.
#include "passes/quantize/gptq.h"

#include <Eigen/Cholesky>
#include <Eigen/Core>
#include <cmath>
#include <numeric>

#include "calibrate/calibration.h"
#include "core/block_quant.h"
#include "core/parallel_gemm.h"
#include "passes/math/hessian.h"
#include "passes/layer_walk.h"

namespace compress {
namespace {

class GptqPass final : public Pass {
 public:
  GptqPass(GptqOptions o, TensorSelector sel) : o_(o), sel_(std::move(sel)) {}

  absl::StatusOr<PreservedAnalyses> Run(Model& model, PassContext& ctx) override {
    const auto selected = sel_.Select(model);
    std::set<std::string> todo(selected.begin(), selected.end());
    int64_t total_layers = static_cast<int64_t>(todo.size()), conv_per_channel = 0;
    // One layer of a block (its statistics were taken before any layer of the block changed).
    auto solve = [&](int block, const std::string& name, const LinearStats& st) -> absl::Status {
      {
        const Tensor src = model.tensors.at(name);
        const LinearLayer* layer = model.arch.LayerOfWeight(name);
        ASSIGN_OR_RETURN(OutInWeight oi, ReadOutIn(src, layer));
        const int64_t rows = oi.rows, cols = oi.cols;
        GptqOptions o = o_;
        if (layer) o.group_size = KernelGroupSize(*layer, src, o_.group_size);
        if (o.group_size > 0 && cols % o.group_size != 0) {
          return InvalidArgument("tensor '{}': in_features {} is not a multiple of group-size {}", name, cols,
                                 o.group_size);
        }
        const std::vector<float>& w = oi.w;
        ASSIGN_OR_RETURN(auto q, GptqQuantize(w, rows, cols, st.xtx, o));
        RETURN_IF_ERROR(ScalesInRange(q.second, o.scale_dtype, name));
        q.second.original_dtype = src.dtype();
        // The metrics below compare [out, in] values.
        std::vector<float> gptq_w(w.size());
        Dequantize(q.first, rows, cols, q.second, gptq_w.data());
        Tensor out = QuantizedStored(oi, src.shape(), std::move(q.first), std::move(q.second));
        // The RTN baseline on the same grid, for the report.
        std::vector<float> rtn_w(w.size());
        if (o.format == "int") {
          ASSIGN_OR_RETURN(
              auto rtn, QuantizeRtn(w, rows, cols, o.bits, o.symmetric, 0, o.group_size, o.scale_dtype));
          Dequantize(rtn.first, rows, cols, rtn.second, rtn_w.data());
        } else {
          CodebookOptions co;
          co.format = out.quant()->format();
          co.group_size = o.group_size;
          co.scale = o.format == "mxfp4" ? CodebookOptions::Scale::kE8M0 : CodebookOptions::Scale::kAbsmax;
          ASSIGN_OR_RETURN(CodebookResult rtn, QuantizeCodebook(w, rows, cols, co));
          Dequantize(rtn.codes, rows, cols, rtn.info, rtn_w.data());
        }
        const std::string grid = o.format == "int" ? fmt::format("int{}", o.bits) : out.quant()->format();
        const std::span<const float> approximations[] = {gptq_w, rtn_w};
        const std::vector<double> output_error = RelativeOutputErrors(w, approximations, rows, cols, st.xtx);
        TensorChange ch{
            name,
            src.shape(),
            src.shape(),
            std::string(DTypeName(src.dtype())),
            grid,
            src.storage_bytes(),
            out.storage_bytes(),
            fmt::format("gptq {} {} {}{}", grid,
                        o.symmetric || o.format != "int" ? "symmetric" : "asymmetric",
                        o.group_size > 0 ? fmt::format("group {}", o.group_size) : "per-channel",
                        o.act_order ? " act-order" : ""),
            {{"rel_fro_error", CompareWeights(w, gptq_w).rel_fro},
             {"rel_output_error", output_error[0]},
             {"rel_output_error_rtn", output_error[1]},
             {"calibration_tokens", static_cast<double>(st.rows)},
             {"block", static_cast<double>(block)}}};
        ctx.report.tensors.push_back(std::move(ch));
        model.tensors.Set(name, std::move(out));
      }
      return absl::OkStatus();
    };
    auto cb = [&](int block, std::map<std::string, LinearStats>& stats) -> absl::Status {
      std::vector<std::string> names;
      for (const auto& [name, st] : stats) {
        const Tensor* t = todo.count(name) ? model.tensors.find(name) : nullptr;
        // ONNX convolution kernels too, on the integer grid (the codebook forms are written for
        // matrices only)
        const LinearLayer* layer = model.arch.LayerOfWeight(name);
        const bool kernel = t && layer && IsConvKernel(*layer, *t) && o_.format == "int";
        if (t && !t->quant() && (t->shape().size() == 2 || kernel)) names.push_back(name);
        if (kernel) conv_per_channel += KernelGroupSize(*layer, *t, o_.group_size) != o_.group_size;
      }
      // Spread over MPI ranks when there are several (passes/layer_walk.h).
      RETURN_IF_ERROR(VisitBlockLayers(model, ctx.report, names, stats,
                                       [&](const std::string& name, const LinearStats& st) { return solve(block, name, st); },
                                       ctx.journal));
      for (const auto& name : names) todo.erase(name);
      ctx.Progress("gptq layers", total_layers - static_cast<int64_t>(todo.size()), total_layers);
      return absl::OkStatus();
    };
    const std::set<std::string> wanted = todo;  // statistics (and blocks) only for these
    RETURN_IF_ERROR(RunCalibration(
        model, *ctx.calibration, {.experts = &ctx.report.experts, .wanted = &wanted, .journal = ctx.journal},
        cb, [&](int64_t done, int64_t blocks) { ctx.Progress("gptq blocks", done, blocks); }));
    for (const auto& name : todo) {
      ctx.report.notes.push_back(fmt::format("left '{}' alone: not a linear layer the runtime runs", name));
    }
    NoteKernelsPerChannel(ctx.report, conv_per_channel, o_.group_size);
    ctx.report.stats["layers_quantized"] = static_cast<double>(ctx.report.tensors.size());
    ctx.report.stats["calibration_windows"] = static_cast<double>(ctx.calibration->windows.size());
    ctx.report.notes.push_back(SequentialCalibrationNote(ctx));
    return PreservedAnalyses::None();
  }

 private:
  GptqOptions o_;
  TensorSelector sel_;
};

}  // namespace

namespace {
// The order GPTQ visits the inputs in: perm[j] is the original column visited j-th, the identity
// or, with act-order, by decreasing H_ii (stable); W's columns are permuted to it and the
// permuted H is put in `hp` (left empty without act-order: use xtx as it is).
std::vector<int64_t> VisitOrder(std::span<const double> xtx, int64_t cols, bool act_order, MatD& W,
                                std::vector<double>& hp) {
  std::vector<int64_t> perm(cols);
  std::iota(perm.begin(), perm.end(), int64_t{0});
  if (!act_order) return perm;
  std::stable_sort(perm.begin(), perm.end(),
                   [&](int64_t a, int64_t b) { return xtx[a * cols + a] > xtx[b * cols + b]; });
  MatD Wp(W.rows(), cols);
  for (int64_t j = 0; j < cols; ++j) Wp.col(j) = W.col(perm[j]);
  W = std::move(Wp);
  hp.resize(xtx.size());
  for (int64_t i = 0; i < cols; ++i)
    for (int64_t j = 0; j < cols; ++j) hp[i * cols + j] = xtx[perm[i] * cols + perm[j]];
  return perm;
}
}  // namespace

absl::StatusOr<std::pair<std::vector<int8_t>, QuantInfo>> GptqQuantize(std::span<const float> w, int64_t rows,
                                                                       int64_t cols,
                                                                       std::span<const double> xtx,
                                                                       const GptqOptions& o) {
  RETURN_IF_ERROR(CheckScaleDType(o.scale_dtype));  // the scale rounding below relies on it
  const int64_t group = o.group_size > 0 ? o.group_size : cols;
  if (cols % group != 0) return InvalidArgument("group size {} does not divide {}", group, cols);
  MatD W = ToDouble(w, rows, cols);
  std::vector<double> hp;
  const std::vector<int64_t> perm = VisitOrder(xtx, cols, o.act_order, W, hp);
  auto factor = InverseHessianFactor(o.act_order ? std::span<const double>(hp) : xtx, cols, o.damp, W);
  if (!factor.ok()) return Annotate(factor.status(), "GPTQ");
  const MatD& U = *factor;

  const Codebook* book = nullptr;  // 4-bit codebook grids (fp4 e2m1, nf4, mxfp4)
  if (o.format != "int") {
    ASSIGN_OR_RETURN(book, FindCodebook(o.format == "fp4" ? "fp4-e2m1" : o.format));
  }
  const int emax_elem = book ? FloorLog2(book->max_abs) : 0;
  QuantInfo q;
  q.bits = book ? 4 : o.bits;
  q.symmetric = book ? true : o.symmetric;
  if (book) {
    q.set_format(o.format == "fp4" ? "fp4-e2m1" : o.format, {book->levels.begin(), book->levels.end()});
  }
  q.channel_axis = 0;
  q.group_size = group;
  q.channels = rows;
  q.groups = cols / group;
  q.mutable_scales().assign(rows * q.groups, 1.f);
  if (!q.symmetric) q.mutable_zero_points().assign(rows * q.groups, 0);
  const auto [qmin, qmax] = CodeRangeOf(q.bits, q.symmetric);
  std::vector<int8_t> codes(rows * cols);
  // Scale (and zero point) of group g of rows [r0, r1) from the group's current weights.
  auto set_group = [&](int64_t g, const auto& gw, int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const auto gv = gw.row(r);
      float s;
      int z = 0;
      const float amax = static_cast<float>(gv.cwiseAbs().maxCoeff());
      if (book) {  // absmax onto the largest level, or the MX shared power of two
        s = !(amax > 0) ? 1.f
            : o.format == "mxfp4"
                ? MxSharedScale(amax, emax_elem)
                : *RoundScaleUp(amax / book->max_abs, o.scale_dtype);
      } else {
        GroupScale(static_cast<float>(std::min(0.0, gv.minCoeff())),
                   static_cast<float>(std::max(0.0, gv.maxCoeff())), amax, o.bits, o.symmetric, &s, &z,
                   o.scale_dtype);
      }
      q.mutable_scales()[r * q.groups + g] = s;
      if (!q.symmetric) q.mutable_zero_points()[r * q.groups + g] = static_cast<int8_t>(z);
    }
  };
  if (o.act_order) {  // static groups: parameters from the original contiguous groups
    const MatD W0 = ToDouble(w, rows, cols);
    for (int64_t g = 0; g < q.groups; ++g) set_group(g, W0.middleCols(g * group, group), 0, rows);
  }
  // Row r's code for column col (rows [r0, r1)), its group's parameters fitted first.
  auto column = [&](int64_t r0, int64_t r1, int64_t i, int64_t col, const MatD& W1, double* y) {
    if (!o.act_order && col % group == 0) {
      // Group parameters from the weights as they stand at the start of this batch
      // (W is updated only at batch ends), as the reference implementation does.
      set_group(col / group, W.middleCols(col, group), r0, r1);
    }
    const int64_t g = perm[col] / group;
    for (int64_t r = r0; r < r1; ++r) {
      const float s = q.scales()[r * q.groups + g];
      const double v = W1(r, i);
      if (book) {
        const uint8_t c = book->Encode(static_cast<float>(v) / s);
        codes[r * cols + perm[col]] = static_cast<int8_t>(c);
        y[r - r0] = static_cast<double>(book->levels[c]) * s;
        continue;
      }
      const int z = q.symmetric ? 0 : q.zero_points()[r * q.groups + g];
      const int c = std::clamp(static_cast<int>(std::nearbyint(v / s)) + z, qmin, qmax);
      codes[r * cols + perm[col]] = static_cast<int8_t>(c);
      y[r - r0] = static_cast<double>(c - z) * s;
    }
  };
  ErrorFeedbackSweep(W, U, o.block_size, column);
  return std::make_pair(std::move(codes), std::move(q));
}

void MagnitudeWeights(const float* x, int64_t n, double row_mean_sq, std::span<const float> importance,
                      float* out) {
  for (int64_t c = 0; c < n; ++c) {
    out[c] = (importance.empty() ? 1.0f : importance[c]) * std::sqrt(static_cast<float>(row_mean_sq) + x[c] * x[c]);
  }
}

absl::StatusOr<std::vector<uint8_t>> GptqQuantizeBlocks(std::span<const float> w, int64_t rows, int64_t cols,
                                                        std::span<const double> xtx, DType type, double damp,
                                                        std::span<const float> importance, bool act_order) {
  const int64_t be = BlockElements(type), bb = BlockBytes(type);
  if (!IsBlockType(type) || cols % be != 0) {
    return InvalidArgument("{} needs rows of whole {}-element blocks, not {}", DTypeName(type), be, cols);
  }
  const int64_t row_bytes = cols / be * bb, batch = std::max<int64_t>(be, 128);
  std::vector<double> row_ms(rows);  // mean w^2 of each row, for the element weights
  for (int64_t r = 0; r < rows; ++r) {
    double s = 0;
    for (int64_t c = 0; c < cols; ++c) s += static_cast<double>(w[r * cols + c]) * w[r * cols + c];
    row_ms[r] = s / static_cast<double>(cols);
  }
  std::vector<uint8_t> out(static_cast<size_t>(rows * row_bytes));
  // Row r's block starting at column c0 fitted to the weights x (its be values).
  auto fit = [&](int64_t r, int64_t c0, const float* x) {
    std::vector<float> h(be);
    MagnitudeWeights(x, be, row_ms[r], importance.empty() ? importance : importance.subspan(c0, be), h.data());
    EncodeBlocks(type, x, be, h.data(), out.data() + r * row_bytes + c0 / be * bb);
  };
  if (act_order) {
    // Static grids: every block fitted to the original weights first, then the columns visited
    // by decreasing H_ii, each rounded on its block's grid.
#pragma omp parallel for schedule(dynamic, 16)
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c0 = 0; c0 < cols; c0 += be) fit(r, c0, w.data() + r * cols + c0);
  }
  MatD W = ToDouble(w, rows, cols);
  std::vector<double> hp;
  const std::vector<int64_t> perm = VisitOrder(xtx, cols, act_order, W, hp);
  auto factor = InverseHessianFactor(act_order ? std::span<const double>(hp) : xtx, cols, damp, W);
  if (!factor.ok()) return Annotate(factor.status(), "GPTQ");
  const MatD& U = *factor;
  // Row r's replacement of column col (rows [r0, r1)), its block's grid fitted first.
  auto column = [&](int64_t r0, int64_t r1, int64_t i, int64_t col, const MatD& W1, double* y) {
    if (!act_order && col % be == 0) {  // fix this block's scales from the weights as they stand now
      std::vector<float> x(be);
      for (int64_t r = r0; r < r1; ++r) {
        for (int64_t c = 0; c < be; ++c) x[c] = static_cast<float>(W1(r, i + c));
        fit(r, col, x.data());
      }
    }
    const int64_t oc = perm[col];
    for (int64_t r = r0; r < r1; ++r) {
      y[r - r0] = SetNearest(type, out.data() + r * row_bytes + oc / be * bb, static_cast<int>(oc % be),
                             static_cast<float>(W1(r, i)));
    }
  };
  ErrorFeedbackSweep(W, U, batch, column);
  return out;
}

PassInfo QuantizeGptqPassInfo() {
  PassInfo info;
  info.name = "quantize-gptq";
  info.summary = "GPTQ integer quantization with calibration data (Hessian-aware error feedback)";
  info.needs_calibration = true;
  info.planned_quant = [](const OptionValues& v) -> std::optional<PlannedQuant> {
    const std::string& format = v.GetString("format");
    return PlannedQuant{format, format == "int" ? static_cast<int>(v.GetInt("bits")) : 4,
                        format != "int" || v.GetBool("symmetric"), format == "mxfp4" ? 32 : v.GetInt("group-size"),
                        v.GetString("scale-dtype")};
  };
  OptionBinding<GptqOptions> b;
  b.Choice(&GptqOptions::format, "format",
           "grid: integer (bits, symmetric), or a 4-bit codebook with absmax / MX scales",
           {"int", "fp4", "nf4", "mxfp4"})
      .Int(&GptqOptions::bits, "bits", "bits per weight code (format=int)", 2, 8)
      .Int(&GptqOptions::group_size, "group-size", "inputs sharing one scale; 0 = per output channel", 0, 1 << 20)
      .Flag(&GptqOptions::symmetric, "symmetric", "symmetric or asymmetric (zero point) grid")
      .Int(&GptqOptions::block_size, "block-size", "columns updated together (lazy batch updates)", 1, 1 << 16)
      .Float(&GptqOptions::damp, "damp", "dampening, as a fraction of the mean Hessian diagonal", 0, 10)
      .Flag(&GptqOptions::act_order, "act-order",
            "visit inputs by decreasing activation energy (H_ii); group scales fixed up front")
      .Choice(&GptqOptions::scale_dtype, "scale-dtype",
              "precision of the scales (rounded up); f16 with format=int, bits=8|4, group-size=32 is GGUF Q8_0|Q4_0",
              DTypeChoices({DType::kF32, DType::kF16, DType::kBF16}));
  BindPassOptions(info, std::move(b),
                  [](GptqOptions o, TensorSelector sel) -> absl::StatusOr<std::unique_ptr<Pass>> {
                    if (o.format == "mxfp4") {
                      if (o.group_size != 128 && o.group_size != 32)
                        return InvalidArgument(
                            "quantize-gptq: format=mxfp4 uses blocks of 32 inputs; leave group-size alone");
                      o.group_size = 32;
                    }
                    return std::make_unique<GptqPass>(o, std::move(sel));
                  });
  return info;
}

}  // namespace compress
