// Example out-of-tree compress plugin: clip-channels{sigma=4}, a per-output-channel weight
// clipping pass. Every weight of a linear layer's output channel is clipped to
// +-sigma x that channel's root-mean-square, which tames rare outliers before quantization.
#include <cmath>

#include "core/plugin.h"

namespace {

using namespace compress;

class ClipChannelsPass final : public Pass {
 public:
  struct Options {
    double sigma = 4.0;
  };
  ClipChannelsPass(const Options& o, TensorSelector sel) : sigma_(o.sigma), sel_(std::move(sel)) {}

  absl::StatusOr<PreservedAnalyses> Run(Model& model, PassContext& ctx) override {
    int64_t clipped_total = 0;
    const std::vector<std::string> names = sel_.Select(model);
    for (size_t i = 0; i < names.size(); ++i) {
      ctx.Progress("clip-channels", static_cast<int64_t>(i), static_cast<int64_t>(names.size()));
      const std::string& name = names[i];
      const Tensor src = model.tensors.at(name);
      const LinearLayer* layer = model.arch.LayerOfWeight(name);
      if (!layer || src.shape().size() != 2 || src.quant() || !IsFloating(src.dtype())) {
        ctx.report.notes.push_back(fmt::format("left '{}' alone: not a float linear weight", name));
        continue;
      }
      ASSIGN_OR_RETURN(std::vector<float> w, src.ToF32());
      const int64_t rows = src.shape()[0], cols = src.shape()[1];
      const int64_t channels = layer->out_axis == 0 ? rows : cols, in = layer->out_axis == 0 ? cols : rows;
      auto at = [&](int64_t ch, int64_t k) { return layer->out_axis == 0 ? ch * cols + k : k * cols + ch; };
      int64_t clipped = 0;
      std::vector<float> before = w;
      for (int64_t ch = 0; ch < channels; ++ch) {
        double ss = 0;
        for (int64_t k = 0; k < in; ++k) ss += static_cast<double>(w[at(ch, k)]) * w[at(ch, k)];
        const float limit = static_cast<float>(sigma_ * std::sqrt(ss / in));
        for (int64_t k = 0; k < in; ++k) {
          float& v = w[at(ch, k)];
          if (std::fabs(v) > limit) {
            v = std::copysign(limit, v);
            ++clipped;
          }
        }
      }
      ASSIGN_OR_RETURN(Tensor out, Tensor::FromF32(w, src.shape(), src.dtype()));
      const WeightError err = CompareWeights(before, *out.ToF32());
      ctx.report.tensors.push_back({name,
                                    src.shape(),
                                    src.shape(),
                                    std::string(DTypeName(src.dtype())),
                                    std::string(DTypeName(out.dtype())),
                                    src.storage_bytes(),
                                    out.storage_bytes(),
                                    fmt::format("clip +-{} x channel rms", sigma_),
                                    {{"clipped", static_cast<double>(clipped)}, {"rel_fro_error", err.rel_fro}}});
      model.tensors.Set(name, std::move(out));
      clipped_total += clipped;
    }
    ctx.report.stats["weights_clipped"] = static_cast<double>(clipped_total);
    return PreservedAnalyses::None();
  }

 private:
  double sigma_;
  TensorSelector sel_;
};

PassInfo ClipChannelsInfo() {
  PassInfo info;
  info.name = "clip-channels";
  info.summary = "clip each output channel's weights to +-sigma x the channel's RMS (example plugin)";
  OptionBinding<ClipChannelsPass::Options> b;
  b.Float(&ClipChannelsPass::Options::sigma, "sigma", "clip limit in channel RMS units", 0.1, 1e6);
  BindPassOptions(info, std::move(b), [](const ClipChannelsPass::Options& o, TensorSelector sel) {
    return std::make_unique<ClipChannelsPass>(o, std::move(sel));
  });
  return info;
}

absl::Status Register(PluginRegistrar& r) { return r.AddPass(ClipChannelsInfo()); }

}  // namespace

COMPRESS_PLUGIN("clip-channels-example", Register)
