// FP4 (with format and clipping search), NF4 and MXFP4 weight quantization passes.
#include "passes/quantize_fp.h"

#include <cmath>

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

class CodebookPass final : public Pass {
 public:
  CodebookPass(CodebookPassOptions o, TensorSelector sel) : o_(std::move(o)), sel_(std::move(sel)) {}

  absl::StatusOr<PreservedAnalyses> Run(Model& model, PassContext& ctx) override {
    const bool weighted = ctx.calibration && o_.weighted && o_.scale == CodebookOptions::Scale::kSearch;
    std::map<std::string, int> chosen;
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
          ASSIGN_OR_RETURN(std::vector<float> w, FiniteWeights(src, name));
          src.ReleasePages();
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
          ASSIGN_OR_RETURN(CodebookResult best, QuantizeCodebookBest(w, rows, cols, o_.formats, co));
          best.info.original_dtype = src.dtype();
          const std::string format = best.info.format;
          const double wsse = best.weighted_sse;
          Tensor out = Tensor::Quantized(src.shape(), std::move(best.codes), std::move(best.info));
          ASSIGN_OR_RETURN(std::vector<float> back, out.ToF32());
          TensorChange change = WeightChange(
              name, src, out,
              fmt::format("{} {}", o_.method,
                          o_.group_size > 0 ? fmt::format("group {}", o_.group_size) : "per-channel"),
              w, back);
          double wnorm = 0;
          for (int64_t r = 0; r < rows; ++r) {
            for (int64_t c = 0; c < cols; ++c) {
              const double v = w[r * cols + c];
              wnorm += (h.empty() ? 1.0 : h[layer.out_axis == 0 ? c : r]) * v * v;
            }
          }
          change.metrics["weighted_rel_error"] = wnorm > 0 ? wsse / wnorm : 0.0;
          ++chosen[format];
          ctx.report.tensors.push_back(std::move(change));
          model.tensors.Set(name, std::move(out));
          return absl::OkStatus();
        }));
    ctx.report.stats["tensors_quantized"] = static_cast<double>(ctx.report.tensors.size());
    for (const auto& [f, n] : chosen) ctx.report.stats["tensors_" + f] = n;
    if (weighted) ctx.report.notes.push_back("clipping search weighted by calibration E[x^2] per input");
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
  info.options = {
      {"format",
       OptionType::kEnum,
       "auto",
       "FP4 layout; auto picks the smallest error per tensor",
       {"auto", "e2m1", "e3m0", "e1m2"}},
      {"group-size",
       OptionType::kInt,
       "128",
       "inputs sharing one scale; 0 = one per output channel",
       {},
       0,
       1 << 20},
      {"search", OptionType::kBool, "true", "search the clipping ratio per group (else absmax scaling)"},
      {"min-clip", OptionType::kFloat, "0.5", "smallest clipping ratio the search tries", {}, 0.05, 1.0},
      {"weighted", OptionType::kBool, "true",
       "weight the search by calibration E[x^2] per input when the pipeline has calibration data"},
  };
  info.create = [info](const OptionValues& v) -> absl::StatusOr<std::unique_ptr<Pass>> {
    CodebookPassOptions o;
    const std::string f = v.GetString("format");
    o.formats = f == "auto" ? std::vector<std::string>{"fp4-e2m1", "fp4-e3m0", "fp4-e1m2"}
                            : std::vector<std::string>{"fp4-" + f};
    o.group_size = v.GetInt("group-size");
    o.scale = v.GetBool("search") ? CodebookOptions::Scale::kSearch : CodebookOptions::Scale::kAbsmax;
    o.min_clip = static_cast<float>(v.GetFloat("min-clip"));
    o.weighted = v.GetBool("weighted");
    o.method = fmt::format("fp4 {}{}", f, v.GetBool("search") ? " clip-search" : "");
    return std::make_unique<CodebookPass>(std::move(o), SelectorFrom(info, v));
  };
  return info;
}

PassInfo QuantizeNf4PassInfo() {
  PassInfo info;
  info.name = "quantize-nf4";
  info.summary = "QLoRA NormalFloat-4 codes with one absmax scale per block of inputs";
  info.options = {{"block", OptionType::kInt, "64", "inputs sharing one absmax scale; 0 = one per output channel", {}, 0, 1 << 20}};
  info.create = [info](const OptionValues& v) -> absl::StatusOr<std::unique_ptr<Pass>> {
    CodebookPassOptions o;
    o.formats = {"nf4"};
    o.group_size = v.GetInt("block");
    o.method = "nf4 absmax";
    return std::make_unique<CodebookPass>(std::move(o), SelectorFrom(info, v));
  };
  return info;
}

PassInfo QuantizeMxfp4PassInfo() {
  PassInfo info;
  info.name = "quantize-mxfp4";
  info.summary = "OCP MXFP4: E2M1 elements, one E8M0 power-of-two scale per 32 inputs";
  info.create = [info](const OptionValues& v) -> absl::StatusOr<std::unique_ptr<Pass>> {
    CodebookPassOptions o;
    o.formats = {"mxfp4"};
    o.group_size = 32;
    o.scale = CodebookOptions::Scale::kE8M0;
    o.method = "mxfp4";
    return std::make_unique<CodebookPass>(std::move(o), SelectorFrom(info, v));
  };
  return info;
}

}  // namespace compress
