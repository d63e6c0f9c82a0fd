// FP4 (with format and clipping search), NF4 and MXFP4 weight quantization passes.
#include "passes/quantize/quantize_fp.h"

#include <cmath>
#include <vector>

#include "passes/layer_walk.h"

namespace compress {
namespace {

struct CodebookPassOptions {
  std::vector<std::string> formats;  // candidates; the smallest weighted error wins
  int64_t group_size = 128;
  CodebookOptions::Scale scale = CodebookOptions::Scale::kAbsmax;
  float min_clip = 0.5f;
  bool weighted = true;  // use calibration statistics when present
  std::string method;  // for the report
};

// The codes of stored weight `src` for the codebook and scales `info` holds, read again.
absl::StatusOr<std::shared_ptr<const Buffer>> StoredCodebookCodes(const Tensor& src, int64_t rows, int64_t cols,
                                                                  const QuantInfo& info) {
  ASSIGN_OR_RETURN(auto bytes, src.ReadOnce());
  ASSIGN_OR_RETURN(auto codes, CodebookCodes(src.dtype(), bytes->span(), rows, cols, info));
  src.ReleasePages();
  return std::shared_ptr<const Buffer>(std::move(codes));
}

// The codebook quantization of `src` as a DeferredQuant: one production makes the scales, the
// codes and the report's measurements (into `pending`) when the writer first asks for either
// (`co.input_weight` is copied). With several `formats` (plain scales, no search: format=auto)
// the production chooses among them first, from the same read (ChooseCodebookFormat: no codes,
// no f64 sums but near ties), and codes and measures the chosen one; the format is then known
// once the production ran (QuantInfo::LeaveFormatToProduction).
absl::StatusOr<Tensor> DeferredCodebook(const Tensor& src, const std::string& name, int64_t rows, int64_t cols,
                                        const CodebookOptions& co, const std::vector<std::string>& formats,
                                        std::shared_ptr<PendingMetrics> pending, std::string context) {
  ASSIGN_OR_RETURN(QuantInfo meta, CodebookParameters(rows, cols, formats[0], co));
  meta.original_dtype = src.dtype();
  if (formats.size() > 1) meta.LeaveFormatToProduction();
  auto weights = std::make_shared<const std::vector<double>>(co.input_weight.begin(), co.input_weight.end());
  QuantInfo info = DeferredQuant::MakeDeferred(
      std::move(meta),
      [src, name, rows, cols, co, formats, weights, pending](bool want_codes) -> absl::StatusOr<DeferredQuant::Produced> {
        CodebookOptions o = co;
        o.input_weight = *weights;
        ASSIGN_OR_RETURN(auto bytes, src.ReadOnce());
        std::string format = formats[0];
        if (formats.size() > 1) {
          ASSIGN_OR_RETURN(CodebookChoice choice,
                           ChooseCodebookFormat(src.dtype(), bytes->span(), rows, cols, formats, o, name));
          format = formats[choice.index];
        }
        ASSIGN_OR_RETURN(MeasuredCodebook m,
                         QuantizeCodebookMeasured(src.dtype(), bytes->span(), rows, cols, {format}, o, name, want_codes));
        src.ReleasePages();
        m.info.original_dtype = src.dtype();
        pending->Set({{"max_abs_error", m.error.max_abs},
                      {"rel_fro_error", m.error.rel_fro},
                      {"weighted_rel_error", m.weighted_norm > 0 ? m.weighted_sse / m.weighted_norm : 0.0}});
        return DeferredQuant::Produced{std::move(m.codes), std::move(m.info)};
      },
      [src, rows, cols](const QuantInfo& full) { return StoredCodebookCodes(src, rows, cols, full); },
      std::move(context));
  return Tensor::DeferredQuantized(src.shape(), std::move(info));
}

class CodebookPass final : public Pass {
 public:
  CodebookPass(CodebookPassOptions o, TensorSelector sel) : o_(std::move(o)), sel_(std::move(sel)) {}

  absl::StatusOr<PreservedAnalyses> Run(Model& model, PassContext& ctx) override {
    const bool weighted = ctx.calibration && o_.weighted && o_.scale == CodebookOptions::Scale::kSearch;
    std::map<std::string, int> chosen;
    // Formats the writer's productions choose, by weight name.
    auto chosen_later = std::make_shared<std::vector<std::pair<std::string, QuantInfo>>>();
    // Past the memory budget only scales stay; the writer codes again (the chosen format only).
    // So it does for a weight read from a file in a layout coded from the stored bytes (a copy
    // to read again beats fresh memory held): those are not counted.
    const bool past_budget = CodesPastMemoryBudget(
        model, sel_.Select(model), ctx.report, [&](const std::string& name, const Tensor& t) {
          const LinearLayer* layer = model.arch.LayerOfWeight(name);
          if (!layer) return true;  // not quantized here
          CodebookOptions co;
          co.channel_axis = layer->out_axis;
          co.group_size = o_.group_size;
          const DType d = t.dtype();
          return t.mapped() && (d == DType::kF32 || d == DType::kF16 || d == DType::kBF16) &&
                 CodebookMeasuredLayout(t.shape()[1], co);
        });
    int64_t held = 0, deferred = 0;
    RETURN_IF_ERROR(ForEachLinear(
        model, ctx, sel_, weighted, /*need_xtx=*/false, /*accept_quantized=*/false, "quantize",
        [&](const std::string& name, const LinearLayer& layer, const LinearStats* st) -> absl::Status {
          const Tensor src = model.tensors.at(name);
          const int64_t rows = src.shape()[0], cols = src.shape()[1];
          const int64_t in = layer.out_axis == 0 ? cols : rows;
          if (o_.group_size > 0 && in % o_.group_size != 0) {
            return InvalidArgument(
                "tensor '{}': in_features {} is not a multiple of the group size {}; "
                "use a divisor of it{}",
                name, in, o_.group_size, o_.formats[0] == "mxfp4" ? "" : " or 0 (per channel)");
          }
          std::vector<double> h;
          if (st) {
            for (int64_t k = 0; k < in; ++k) h.push_back(st->rows ? st->sum_sq[k] / st->rows : 1.0);
          }
          CodebookOptions co;
          co.channel_axis = layer.out_axis;
          co.group_size = o_.group_size;
          co.scale = o_.scale;
          co.input_weight = h;
          co.min_clip = o_.min_clip;
          const std::string method = fmt::format(
              "{} {}", o_.method, o_.group_size > 0 ? fmt::format("group {}", o_.group_size) : "per-channel");
          const DType t = src.dtype();
          const bool stream = past_budget || src.mapped();
          Tensor out;
          TensorChange change;
          double wsse = 0, wnorm = 0;
          const bool measured_layout =
              (t == DType::kF32 || t == DType::kF16 || t == DType::kBF16) && CodebookMeasuredLayout(cols, co);
          if (measured_layout && src.mapped() && (o_.formats.size() == 1 || PlainCodebookScales(co))) {
            // Read from a file: the format's choice (several formats, no search), scales, codes
            // and the error made together when the writer asks for the codes (DeferredQuant):
            // one read of the weight. The chosen formats are counted after the writer.
            auto pending = std::make_shared<PendingMetrics>();
            ASSIGN_OR_RETURN(out, DeferredCodebook(src, name, rows, cols, co, o_.formats, pending, ctx.label));
            if (o_.formats.size() > 1) {
              chosen_later->emplace_back(name, *out.quant());
            } else {
              ++chosen[o_.formats[0]];
            }
            ++deferred;
            ctx.report.tensors.push_back(DeferredWeightChange(name, src, out, method, pending));
            model.tensors.Set(name, std::move(out));
            return absl::OkStatus();
          }
          if (measured_layout) {
            // Straight from the stored bytes, measured while coding: one read of the weight.
            ASSIGN_OR_RETURN(auto bytes, src.ReadOnce());
            std::vector<std::string> formats = o_.formats;
            if (formats.size() > 1 && PlainCodebookScales(co)) {  // the winner alone measured
              ASSIGN_OR_RETURN(CodebookChoice choice,
                               ChooseCodebookFormat(t, bytes->span(), rows, cols, formats, co, name));
              formats = {formats[choice.index]};
            }
            ASSIGN_OR_RETURN(MeasuredCodebook m,
                             QuantizeCodebookMeasured(t, bytes->span(), rows, cols, formats, co, name, !stream));
            src.ReleasePages();
            m.info.original_dtype = t;
            wsse = m.weighted_sse, wnorm = m.weighted_norm;
            if (stream) {  // coded again from the chosen scales when the writer asks
              auto info = std::make_shared<const QuantInfo>(std::move(m.info));
              out = Tensor::LazyQuantized(src.shape(), *info,
                                          [src, rows, cols, info] { return StoredCodebookCodes(src, rows, cols, *info); });
            } else {
              out = Tensor::Quantized(src.shape(), std::move(m.codes), std::move(m.info));
            }
            change = WeightChange(name, src, out, method, m.error);
          } else {
            held += past_budget;  // this layout's codes are not produced again while writing
            ASSIGN_OR_RETURN(std::vector<float> w, FiniteWeights(src, name));
            src.ReleasePages();
            ASSIGN_OR_RETURN(CodebookResult best, QuantizeCodebookBest(w, rows, cols, o_.formats, co));
            best.info.original_dtype = t;
            wsse = best.weighted_sse, wnorm = best.weighted_norm;
            out = Tensor::Quantized(src.shape(), std::move(best.codes), std::move(best.info));
            ASSIGN_OR_RETURN(std::vector<float> back, out.ToF32());
            change = WeightChange(name, src, out, method, w, back);
            if (PlainCodebookScales(co)) {
              // As QuantizeCodebookMeasured reports it: the stored values' error sums.
              const WeightError e = CompareWeights(w, back);
              wsse = e.err2, wnorm = e.ref2;
            }
          }
          const std::string format = out.quant()->format();
          change.metrics["weighted_rel_error"] = wnorm > 0 ? wsse / wnorm : 0.0;
          ++chosen[format];
          ctx.report.tensors.push_back(std::move(change));
          model.tensors.Set(name, std::move(out));
          return absl::OkStatus();
        }));
    NoteDeferredWeights(ctx.report, deferred);
    ctx.report.stats["tensors_quantized"] = static_cast<double>(ctx.report.tensors.size());
    for (const auto& [f, n] : chosen) ctx.report.stats["tensors_" + f] = n;
    if (!chosen_later->empty()) {
      ctx.report.finish.push_back([chosen_later](PassReport& r) {
        std::map<std::string, TensorChange*> changes;
        for (TensorChange& c : r.tensors) changes[c.name] = &c;
        for (const auto& [name, q] : *chosen_later) {
          r.stats["tensors_" + q.format()] += 1;
          if (auto it = changes.find(name); it != changes.end()) it->second->dtype_after = q.format();
        }
        chosen_later->clear();
      });
    }
    if (weighted) ctx.report.notes.push_back("clipping search weighted by calibration E[x^2] per input");
    if (held > 0) {
      ctx.report.notes.push_back(fmt::format(
          "{} weights in layouts coded from f32 ([in, out] Conv1D, f64, or groups past 65,536 inputs) keep their "
          "codes in memory despite the budget",
          held));
    }
    return PreservedAnalyses::None();
  }

 private:
  CodebookPassOptions o_;
  TensorSelector sel_;
};

}  // namespace

PassInfo QuantizeFp4PassInfo() {
  PassInfo info;
  info.name = "quantize-fp4";
  info.summary = "LLM-FP4: 4-bit floating point with per-tensor format and per-group clipping search";
  info.planned_quant = [](const OptionValues& v) -> std::optional<PlannedQuant> {
    return PlannedQuant{"fp4", 4, true, v.GetInt("group-size"), "f32"};
  };
  struct O {
    std::string format = "auto";
    int64_t group_size = 128;
    bool search = true;
    double min_clip = 0.5;
    bool weighted = true;
  };
  OptionBinding<O> b;
  b.Choice(&O::format, "format", "FP4 layout; auto picks the smallest error per tensor",
           {"auto", "e2m1", "e3m0", "e1m2"})
      .Int(&O::group_size, "group-size", "inputs sharing one scale; 0 = one per output channel", 0, 1 << 20)
      .Flag(&O::search, "search", "search the clipping ratio per group (else absmax scaling)")
      .Float(&O::min_clip, "min-clip", "smallest clipping ratio the search tries", 0.05, 1.0)
      .Flag(&O::weighted, "weighted",
            "weight the search by calibration E[x^2] per input when the pipeline has calibration data");
  BindPassOptions(info, std::move(b), [](const O& v, TensorSelector sel) {
    CodebookPassOptions o;
    o.formats = v.format == "auto" ? std::vector<std::string>{"fp4-e2m1", "fp4-e3m0", "fp4-e1m2"}
                                   : std::vector<std::string>{"fp4-" + v.format};
    o.group_size = v.group_size;
    o.scale = v.search ? CodebookOptions::Scale::kSearch : CodebookOptions::Scale::kAbsmax;
    o.min_clip = static_cast<float>(v.min_clip);
    o.weighted = v.weighted;
    o.method = fmt::format("fp4 {}{}", v.format, v.search ? " clip-search" : "");
    return std::make_unique<CodebookPass>(std::move(o), std::move(sel));
  });
  return info;
}

PassInfo QuantizeNf4PassInfo() {
  PassInfo info;
  info.name = "quantize-nf4";
  info.summary = "QLoRA NormalFloat-4 codes with one absmax scale per block of inputs";
  info.planned_quant = [](const OptionValues& v) -> std::optional<PlannedQuant> {
    return PlannedQuant{"nf4", 4, true, v.GetInt("block"), "f32"};
  };
  struct O {
    int64_t block = 64;
  };
  OptionBinding<O> b;
  b.Int(&O::block, "block", "inputs sharing one absmax scale; 0 = one per output channel", 0, 1 << 20);
  BindPassOptions(info, std::move(b), [](const O& v, TensorSelector sel) {
    CodebookPassOptions o;
    o.formats = {"nf4"};
    o.group_size = v.block;
    o.method = "nf4 absmax";
    return std::make_unique<CodebookPass>(std::move(o), std::move(sel));
  });
  return info;
}

PassInfo QuantizeMxfp4PassInfo() {
  PassInfo info;
  info.name = "quantize-mxfp4";
  info.summary = "OCP MXFP4: E2M1 elements, one E8M0 power-of-two scale per 32 inputs";
  info.planned_quant = [](const OptionValues&) -> std::optional<PlannedQuant> {
    return PlannedQuant{"mxfp4", 4, true, 32, "e8m0"};
  };
  BindPassOptions(info, OptionBinding<NoOptions>(), [](const NoOptions&, TensorSelector sel) {
    CodebookPassOptions o;
    o.formats = {"mxfp4"};
    o.group_size = 32;
    o.scale = CodebookOptions::Scale::kE8M0;
    o.method = "mxfp4";
    return std::make_unique<CodebookPass>(std::move(o), std::move(sel));
  });
  return info;
}

}  // namespace compress
