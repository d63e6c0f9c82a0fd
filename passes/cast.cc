// The cast pass: lazy dtype conversion with per-tensor error metrics.
#include "passes/cast.h"

#include <cmath>

namespace compress {
namespace {

class CastPass final : public Pass {
 public:
  CastPass(DType target, TensorSelector sel) : target_(target), sel_(std::move(sel)) {}

  absl::StatusOr<PreservedAnalyses> Run(Model& model, PassContext& ctx) override {
    std::vector<std::string> names = sel_.Select(model);
    int64_t done = 0;
    for (const auto& name : names) {
      const Tensor src = model.tensors.at(name);
      ctx.Progress("cast", done++, static_cast<int64_t>(names.size()));
      if (!IsFloating(src.dtype())) {
        ctx.report.notes.push_back(fmt::format("left '{}' alone: {} is not a floating type", name,
                                               DTypeName(src.dtype())));
        continue;
      }
      if (src.dtype() == target_) continue;
      TensorChange change{name, src.shape(), src.shape(), std::string(DTypeName(src.dtype())),
                          std::string(DTypeName(target_)), src.nbytes(), 0,
                          fmt::format("cast {}->{}", DTypeName(src.dtype()), DTypeName(target_)), {}};
      // Error metrics: decode once, re-encode, compare. The lazy tensor recomputes the
      // same deterministic conversion when the writer asks for the bytes.
      ASSIGN_OR_RETURN(std::vector<float> w, src.ToF32());
      std::vector<uint8_t> enc(DTypeBytes(target_, w.size()));
      RETURN_IF_ERROR(EncodeFromF32(target_, w.data(), w.size(), enc.data()));
      std::vector<float> back(w.size());
      RETURN_IF_ERROR(DecodeToF32(target_, enc.data(), w.size(), back.data()));
      double max_abs = 0, err2 = 0, ref2 = 0;
      int64_t nonfinite = 0;
      for (size_t i = 0; i < w.size(); ++i) {
        if (!std::isfinite(back[i]) && std::isfinite(w[i])) { ++nonfinite; continue; }
        if (!std::isfinite(w[i])) continue;
        double d = static_cast<double>(back[i]) - w[i];
        max_abs = std::max(max_abs, std::fabs(d));
        err2 += d * d;
        ref2 += static_cast<double>(w[i]) * w[i];
      }
      src.ReleasePages();
      change.metrics["max_abs_error"] = max_abs;
      change.metrics["rel_fro_error"] = ref2 > 0 ? std::sqrt(err2 / ref2) : 0.0;
      if (nonfinite) change.metrics["overflowed_to_inf"] = static_cast<double>(nonfinite);
      const DType target = target_;
      Tensor lazy = Tensor::Lazy(target_, src.shape(), [src, target]()
                                     -> absl::StatusOr<std::shared_ptr<const Buffer>> {
        ASSIGN_OR_RETURN(std::vector<float> v, src.ToF32());
        auto out = std::make_shared<OwnedBuffer>(DTypeBytes(target, v.size()));
        RETURN_IF_ERROR(EncodeFromF32(target, v.data(), v.size(), out->mutable_data()));
        return std::shared_ptr<const Buffer>(std::move(out));
      });
      change.bytes_after = lazy.nbytes();
      model.tensors.Set(name, std::move(lazy));
      ctx.report.tensors.push_back(std::move(change));
    }
    ctx.report.stats["tensors_cast"] = static_cast<double>(ctx.report.tensors.size());
    UpdateConfigDType(model);
    return PreservedAnalyses::None();
  }

 private:
  // HF loaders read torch_dtype (older) or dtype (newer) to pick the load type.
  static void UpdateConfigDType(Model& model) {
    if (model.format != ModelFormat::kSafetensors || !model.config.is_object()) return;
    std::optional<DType> common;
    for (const auto& n : model.tensors.names()) {
      DType d = model.tensors.at(n).dtype();
      if (!IsFloating(d)) continue;
      if (common && *common != d) return;
      common = d;
    }
    if (!common) return;
    const char* torch = *common == DType::kF32 ? "float32" : *common == DType::kF16 ? "float16"
                      : *common == DType::kBF16 ? "bfloat16" : nullptr;
    if (!torch) return;
    for (const char* key : {"torch_dtype", "dtype"}) {
      if (model.config.contains(key)) model.config[key] = torch;
    }
    if (!model.config.contains("torch_dtype") && !model.config.contains("dtype")) {
      model.config["torch_dtype"] = torch;
    }
  }

  DType target_;
  TensorSelector sel_;
};

}  // namespace

PassInfo CastPassInfo() {
  PassInfo info;
  info.name = "cast";
  info.summary = "convert floating-point tensors to f16, bf16 or f32 (round to nearest even)";
  info.scope = DefaultScope::kAllFloating;
  info.options = {{"dtype", OptionType::kEnum, "bf16", "target type", {"f16", "bf16", "f32"}}};
  info.create = [info](const OptionValues& v) -> absl::StatusOr<std::unique_ptr<Pass>> {
    ASSIGN_OR_RETURN(DType t, ParseDType(v.GetString("dtype")));
    return std::make_unique<CastPass>(t, SelectorFrom(info, v));
  };
  return info;
}

}  // namespace compress
