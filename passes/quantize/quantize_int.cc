// Integer RTN quantization passes and the dequantize pass.
#include "passes/quantize/quantize_int.h"

#include <cmath>
#include <cstring>
#include <set>

#include "core/block_quant.h"

#include "passes/layer_walk.h"

namespace compress {
namespace {

struct QuantizeIntOptions {
  int bits = 4;
  int64_t group_size = 128;
  bool symmetric = true;
  DType scale_dtype = DType::kF32;
};

// f(dtype, bytes) on the weight's elements: f32 / f16 / bf16 weights straight from their
// stored bytes, other types (f64, fp8) decoded to f32 first; the pages are released afterwards.
template <typename F>
auto WithElements(const Tensor& src, F f) -> decltype(f(DType::kF32, std::span<const uint8_t>())) {
  const DType t = src.dtype();
  decltype(f(DType::kF32, std::span<const uint8_t>())) r;
  if (t == DType::kF32 || t == DType::kF16 || t == DType::kBF16) {
    ASSIGN_OR_RETURN(auto bytes, src.ReadOnce());
    r = f(t, bytes->span());
  } else {
    ASSIGN_OR_RETURN(std::vector<float> w, src.ToF32());
    r = f(DType::kF32, {reinterpret_cast<const uint8_t*>(w.data()), w.size() * 4});
  }
  src.ReleasePages();
  return r;
}

// Codes (unless !keep_codes), scales and error metrics of one weight in one read of it.
absl::StatusOr<MeasuredRtn> Measure(const Tensor& src, const std::string& name, int64_t rows, int64_t cols,
                                    const QuantizeIntOptions& o, int axis, bool keep_codes) {
  return WithElements(src, [&](DType t, std::span<const uint8_t> bytes) {
    return QuantizeRtnMeasured(t, bytes, rows, cols, o.bits, o.symmetric, axis, o.group_size, o.scale_dtype, name,
                               keep_codes);
  });
}

// The codes of `src` for the scales `info` holds (made again: the writer asks for them).
absl::StatusOr<std::shared_ptr<const Buffer>> CodesFor(const Tensor& src, int64_t rows, int64_t cols,
                                                       const QuantInfo& info) {
  ASSIGN_OR_RETURN(auto codes, WithElements(src, [&](DType t, std::span<const uint8_t> bytes) {
                     return RtnCodes(t, bytes, rows, cols, info);
                   }));
  return std::shared_ptr<const Buffer>(std::move(codes));
}

Tensor::Producer CodesOnDemand(const Tensor& src, int64_t rows, int64_t cols, std::shared_ptr<const QuantInfo> info) {
  return [src, rows, cols, info] { return CodesFor(src, rows, cols, *info); };
}

// The quantized tensor of `src` as a DeferredQuant: one production makes the scales, the codes
// and the report's measurements (into `pending`) when the writer first asks for either.
absl::StatusOr<Tensor> DeferredRtn(const Tensor& src, const std::string& name, int64_t rows, int64_t cols,
                                   const QuantizeIntOptions& o, int axis, std::shared_ptr<PendingMetrics> pending,
                                   std::string context) {
  ASSIGN_OR_RETURN(QuantInfo meta, RtnInfo(rows, cols, o.bits, o.symmetric, axis, o.group_size, o.scale_dtype));
  meta.original_dtype = src.dtype();
  QuantInfo info = DeferredQuant::MakeDeferred(
      std::move(meta),
      [src, name, rows, cols, o, axis, pending](bool want_codes) -> absl::StatusOr<DeferredQuant::Produced> {
        ASSIGN_OR_RETURN(MeasuredRtn q, Measure(src, name, rows, cols, o, axis, want_codes));
        q.info.original_dtype = src.dtype();
        pending->Set({{"max_abs_error", q.error.max_abs},
                      {"rel_fro_error", q.error.rel_fro},
                      {"max_error_over_half_scale", q.max_error_over_half_scale}});
        return DeferredQuant::Produced{std::move(q.codes), std::move(q.info)};
      },
      [src, rows, cols](const QuantInfo& full) { return CodesFor(src, rows, cols, full); },
      std::move(context));
  return Tensor::DeferredQuantized(src.shape(), std::move(info));
}

class QuantizeIntPass final : public Pass {
 public:
  QuantizeIntPass(QuantizeIntOptions o, TensorSelector sel) : o_(o), sel_(std::move(sel)) {}

  absl::StatusOr<PreservedAnalyses> Run(Model& model, PassContext& ctx) override {
    std::vector<std::string> names = sel_.Select(model);
    // Past the memory budget only scales stay; the writer rounds again. So it does for a weight
    // read from a file at any size: reading it again (a copy, ReadOnce) costs less than
    // holding its codes in fresh memory until the writer runs.
    const bool past_budget = CodesPastMemoryBudget(model, names, ctx.report,
                                                   [](const std::string&, const Tensor& t) { return t.mapped(); });
    int64_t done = 0, deferred = 0, conv_per_channel = 0;
    for (const auto& name : names) {
      ctx.Progress("quantize", done++, static_cast<int64_t>(names.size()));
      const Tensor src = model.tensors.at(name);
      const LinearLayer* layer = model.arch.LayerOfWeight(name);
      // An ONNX Conv / ConvTranspose kernel [M, C/group, k...] is quantized as the matrix
      // [M, C/group x k...] (row-major: the same bytes), one scale per slice of axis 0.
      const bool conv = layer && IsConvKernel(*layer, src);
      const char* not_float = WhyNotFloatWeight(src, /*accept_quantized=*/false);
      if (not_float || (src.shape().size() != 2 && !conv) || !layer) {
        ctx.report.notes.push_back(fmt::format("left '{}' alone: {}", name,
                                               not_float ? not_float
                                               : !layer  ? "not the weight of a known linear layer"
                                                         : "not a 2-D weight or a convolution kernel"));
        continue;
      }
      const int64_t rows = src.shape()[0], cols = src.MatrixCols();
      const int64_t in = layer->out_axis == 0 ? cols : rows;
      QuantizeIntOptions o = o_;
      o.group_size = KernelGroupSize(*layer, src, o_.group_size);
      conv_per_channel += o.group_size != o_.group_size;
      if (o.group_size > 0 && in % o.group_size != 0) {
        return InvalidArgument(
            "tensor '{}': in_features {} is not a multiple of group-size {}; "
            "use a divisor of it or group-size=0 (per channel)",
            name, in, o.group_size);
      }
      const std::string method =
          fmt::format("rtn int{} {} {}", o.bits, o.symmetric ? "symmetric" : "asymmetric",
                      o.group_size > 0 ? fmt::format("group {}", o.group_size) : std::string("per-channel"));
      if (src.mapped()) {
        // Read from a file: scales, codes and the error are made together when the writer asks
        // for the codes, so the weight is read once (DeferredQuant).
        auto pending = std::make_shared<PendingMetrics>();
        ASSIGN_OR_RETURN(Tensor out, DeferredRtn(src, name, rows, cols, o, layer->out_axis, pending, ctx.label));
        ctx.report.tensors.push_back(DeferredWeightChange(name, src, out, method, pending));
        model.tensors.Set(name, std::move(out));
        ++deferred;
        continue;
      }
      ASSIGN_OR_RETURN(MeasuredRtn q, Measure(src, name, rows, cols, o, layer->out_axis, !past_budget));
      q.info.original_dtype = src.dtype();
      auto info = std::make_shared<const QuantInfo>(std::move(q.info));
      Tensor out = past_budget ? Tensor::LazyQuantized(src.shape(), *info, CodesOnDemand(src, rows, cols, info))
                               : Tensor::Quantized(src.shape(), std::move(q.codes), *info);
      TensorChange change = WeightChange(name, src, out, method, q.error);
      change.metrics["max_error_over_half_scale"] = q.max_error_over_half_scale;
      ctx.report.tensors.push_back(std::move(change));
      model.tensors.Set(name, std::move(out));
    }
    NoteDeferredWeights(ctx.report, deferred);
    NoteKernelsPerChannel(ctx.report, conv_per_channel, o_.group_size);
    ctx.report.stats["tensors_quantized"] = static_cast<double>(ctx.report.tensors.size());
    return PreservedAnalyses::None();
  }

 private:
  QuantizeIntOptions o_;
  TensorSelector sel_;
};

struct DequantizeOptions {
  std::string dtype = "original";
};

class DequantizePass final : public Pass {
 public:
  explicit DequantizePass(DequantizeOptions o) : dtype_(std::move(o.dtype)) {}
  absl::StatusOr<PreservedAnalyses> Run(Model& model, PassContext& ctx) override {
    for (const auto& name : model.tensors.names()) {
      const Tensor src = model.tensors.at(name);
      const bool blocks = IsBlockType(src.dtype());
      if (!src.quant() && !src.factors() && !blocks) continue;
      // GGUF block types do not record what they were made from: f32 holds them exactly.
      DType target = src.quant() ? src.quant()->original_dtype : blocks ? DType::kF32 : src.dtype();
      if (dtype_ != "original") {
        ASSIGN_OR_RETURN(target, ParseDType(dtype_));
      }
      ASSIGN_OR_RETURN(std::vector<float> w, FiniteWeights(src, name));
      ASSIGN_OR_RETURN(Tensor dense, Tensor::FromF32(w, src.shape(), target));
      ctx.report.tensors.push_back({name,
                                    src.shape(),
                                    src.shape(),
                                    src.quant() || blocks ? StoredTypeName(src)
                                                          : fmt::format("rank-{} factors", src.factors()->rank),
                                    std::string(DTypeName(target)),
                                    src.storage_bytes(),
                                    dense.nbytes(),
                                    src.factors() ? "multiply factors" : "dequantize",
                                    {}});
      model.tensors.Set(name, std::move(dense));
    }
    // Weights read from sparse storage are dense in memory already: the writer stores them
    // dense (in the type asked for).
    std::set<std::string> dequantized;
    int64_t restored = 0, sparse_bytes = 0, dense_bytes = 0;
    for (const auto& c : ctx.report.tensors) dequantized.insert(c.name);
    for (const auto& [name, stored_bytes] : model.sparse_stored) {
      if (!model.tensors.contains(name) || dequantized.count(name)) continue;
      Tensor src = model.tensors.at(name);
      DType target = src.dtype();
      if (dtype_ != "original") {
        ASSIGN_OR_RETURN(target, ParseDType(dtype_));
      }
      if (target != src.dtype() && IsFloating(src.dtype())) {
        ASSIGN_OR_RETURN(std::vector<float> w, src.ToF32());
        ASSIGN_OR_RETURN(src, Tensor::FromF32(w, src.shape(), target));
        model.tensors.Set(name, src);
      }
      ++restored, sparse_bytes += stored_bytes, dense_bytes += src.nbytes();
    }
    if (restored) {  // values unchanged: a note, not tensor changes
      ctx.report.notes.push_back(fmt::format("{} weights read from sparse storage ({} bytes) are stored dense ({} bytes)",
                                             restored, sparse_bytes, dense_bytes));
    }
    model.sparse_stored.clear();
    // A dense model runs at full precision: the inputs' and the cache's quantization go too.
    if (!model.input_quant.empty() || model.kv_cache) {
      ctx.report.notes.push_back(fmt::format("dropped the activation quantization of {} layers{}",
                                             model.input_quant.size(), model.kv_cache ? " and of the KV cache" : ""));
      model.input_quant.clear();
      model.kv_cache.reset();
    }
    if (ctx.report.tensors.empty() && !restored) {
      return FailedPrecondition(
          "no quantized or factorized weights found in the model (ONNX models written with "
          "DequantizeLinear or factor MatMuls are not re-imported as such yet)");
    }
    return PreservedAnalyses::None();
  }

 private:
  std::string dtype_;
};

}  // namespace

PassInfo QuantizeIntPassInfo() {
  PassInfo info;
  info.name = "quantize-int";
  info.summary = "round-to-nearest integer weight quantization (2..8 bits, per channel or per group)";
  info.planned_quant = [](const OptionValues& v) -> std::optional<PlannedQuant> {
    return PlannedQuant{"int", static_cast<int>(v.GetInt("bits")), v.GetBool("symmetric"), v.GetInt("group-size"),
                        v.GetString("scale-dtype")};
  };
  OptionBinding<QuantizeIntOptions> b;
  b.Int(&QuantizeIntOptions::bits, "bits", "bits per weight code", 2, 8)
      .Int(&QuantizeIntOptions::group_size, "group-size", "inputs sharing one scale; 0 = one scale per output channel",
           0, 1 << 20)
      .Flag(&QuantizeIntOptions::symmetric, "symmetric",
            "symmetric (no zero point) or asymmetric (min/max with zero point)")
      .Choice(&QuantizeIntOptions::scale_dtype, "scale-dtype",
              "precision of the scales (rounded up); f16 with bits=8|4, group-size=32, symmetric is GGUF Q8_0|Q4_0",
              DTypeChoices({DType::kF32, DType::kF16, DType::kBF16}));
  BindPassOptions(info, std::move(b), [](const QuantizeIntOptions& o, TensorSelector sel) {
    return std::make_unique<QuantizeIntPass>(o, std::move(sel));
  });
  return info;
}

PassInfo QuantizeInt8PassInfo() {
  PassInfo info;
  info.name = "quantize-int8";
  info.summary = "vector-wise symmetric int8: one absmax scale per output channel";
  info.planned_quant = [](const OptionValues&) -> std::optional<PlannedQuant> {
    return PlannedQuant{"int", 8, true, 0, "f32"};
  };
  BindPassOptions(info, OptionBinding<NoOptions>(), [](const NoOptions&, TensorSelector sel) {
    return std::make_unique<QuantizeIntPass>(QuantizeIntOptions{8, 0, true, DType::kF32}, std::move(sel));
  });
  return info;
}

PassInfo DequantizePassInfo() {
  PassInfo info;
  info.name = "dequantize";
  info.summary =
      "turn quantized (int, 4-bit codebook, LLM.int8, GGUF block types) and factorized weights back into dense "
      "tensors";
  info.selects_tensors = false;
  OptionBinding<DequantizeOptions> b;
  b.Choice(&DequantizeOptions::dtype, "dtype",
           "dense type; original = the type before quantization (f32 for GGUF block types)",
           {"original", "f32", "f16", "bf16"});
  BindPassOptions(info, std::move(b), [](const DequantizeOptions& o, TensorSelector) {
    return std::make_unique<DequantizePass>(o);
  });
  return info;
}

}  // namespace compress
