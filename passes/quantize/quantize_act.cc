// quantize-w8a8 and quantize-kv: weights and the activations the target runtime quantizes.
#include "passes/quantize/quantize_act.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "Eigen/Core"

#include "passes/precision/aligned_kv.h"
#include "passes/layer_walk.h"

namespace compress {

void AddActivationMetrics(TensorChange& change, const ActivationQuant* spec, const LinearStats* st,
                          double outlier_threshold) {
  if (st && !st->data_free && !st->absmax.empty()) {
    const float amax = *std::max_element(st->absmax.begin(), st->absmax.end());
    change.metrics["act_absmax"] = amax;
    change.metrics["act_outlier_features"] = static_cast<double>(
        std::count_if(st->absmax.begin(), st->absmax.end(), [&](float a) { return a >= outlier_threshold; }));
  }
  if (spec && !spec->dynamic) change.metrics["act_scale"] = spec->scale;
}

void AddOutputErrors(TensorChange& change, const LinearStats* st, std::span<const float> w,
                     std::span<const float> back, int out_axis, const ActivationQuant& spec,
                     std::span<const int64_t> keep) {
  if (!st || st->data_free || st->sample_rows == 0) return;
  const int64_t n = st->sample_rows, in = st->in_features, out = static_cast<int64_t>(w.size()) / in;
  using Mat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  const Eigen::Map<const Mat> x(st->samples.data(), n, in);
  // W^T as [in, out] whatever the stored layout.
  auto wt = [&](std::span<const float> v) -> Mat {
    if (out_axis == 1) return Eigen::Map<const Mat>(v.data(), in, out);
    return Eigen::Map<const Mat>(v.data(), out, in).transpose();
  };
  const Mat w0 = wt(w), w1 = wt(back);
  Mat xq = x;
  FakeQuantize(spec, keep, xq.data(), n, in);
  const Mat ref = x * w0;
  const double norm = ref.norm();
  if (!(norm > 0)) return;
  change.metrics["output_rel_error_weights_only"] = (ref - x * w1).norm() / norm;
  change.metrics["output_rel_error"] = (ref - xq * w1).norm() / norm;
}

std::vector<double> InputColumnNorms(std::span<const float> w, int64_t in, int out_axis) {
  const int64_t out = static_cast<int64_t>(w.size()) / in;
  const int64_t rows = out_axis == 0 ? out : in, cols = out_axis == 0 ? in : out;
  std::vector<double> norms(in, 0.0);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) {
      const double v = w[r * cols + c];
      norms[out_axis == 0 ? c : r] += v * v;
    }
  return norms;
}

double WeightedInputError(const ActivationQuant& spec, const LinearStats& st, std::span<const double> colnorm,
                          std::vector<float>& x) {
  const int64_t in = st.in_features, n = st.sample_rows;
  x.assign(st.samples.begin(), st.samples.end());
  FakeQuantize(spec, {}, x.data(), n, in);
  double err = 0;
  for (int64_t r = 0; r < n; ++r)
    for (int64_t k = 0; k < in; ++k) {
      const double d = double(x[r * in + k]) - st.samples[r * in + k];
      err += colnorm[k] * d * d;
    }
  return err;
}

absl::Status RefuseOnnxActivations(const Model& model, std::string_view pass) {
  if (model.format != ModelFormat::kOnnx) return absl::OkStatus();
  return Unimplemented(
      "{}: activation and KV-cache quantization is written for safetensors checkpoints only; ONNX graphs "
      "(QDQ / DynamicQuantizeLinear + MatMulInteger) are not written yet",
      pass);
}

ClipChoice SearchClipping(const ActivationQuant& spec, float range, const LinearStats& st,
                          std::span<const double> colnorm) {
  ClipChoice best;
  std::vector<float> scratch;
  for (int step = 0; step <= 14; ++step) {
    ActivationQuant c = spec;
    const float clip = 1.0f - 0.05f * step;
    c.scale = clip * range / spec.Qmax();
    if (!(c.scale > 0)) break;
    const double err = WeightedInputError(c, st, colnorm, scratch);
    if (best.error < 0 || err < best.error) best = {clip, c.scale, err};
  }
  return best;
}

namespace {

struct W8A8Options {
  bool fp8 = false;            // type=fp8
  bool static_scales = false;  // activations=static
  std::string granularity = "auto";
  std::string estimator = "minmax";
  double percentile = 99.99;
};

class QuantizeW8A8Pass final : public Pass {
 public:
  QuantizeW8A8Pass(const W8A8Options& o, TensorSelector sel)
      : fp8_(o.fp8),
        static_(o.static_scales),
        granularity_(o.granularity),
        estimator_(o.estimator),
        percentile_(o.percentile),
        sel_(std::move(sel)) {}

  absl::StatusOr<PreservedAnalyses> Run(Model& model, PassContext& ctx) override {
    // ONNX graphs get ONNX Runtime's forms (formats/onnx_quant.h): static QDQ, or dynamic
    // per-tensor uint8 inputs with a zero point (DynamicQuantizeLinear); ONNX has no per-token
    // dynamic or FP8-before-opset-19 form we write.
    const bool onnx = model.format == ModelFormat::kOnnx;
    if (onnx && (fp8_ || granularity_ == "token")) {
      return Unimplemented(
          "quantize-w8a8 on ONNX graphs writes int8 inputs per tensor: static (QuantizeLinear/DequantizeLinear, "
          "with --calibration) or dynamic with a zero point (DynamicQuantizeLinear, ONNX Runtime's dynamic "
          "quantization); give quantize-w8a8{{type=int8}} with granularity=auto or tensor");
    }
    if (static_ && granularity_ == "token") {
      return InvalidArgument("quantize-w8a8: static input scales are per tensor; give granularity=auto or tensor");
    }
    if (fp8_ && !static_ && granularity_ == "tensor") {
      return Unimplemented("quantize-w8a8: dynamic per-tensor inputs are uint8 with a zero point; type=fp8 has none");
    }
    // Dynamic per tensor: ONNX Runtime's DynamicQuantizeLinear form (uint8 with a zero point).
    const bool zero_point = !static_ && (granularity_ == "tensor" || (granularity_ == "auto" && onnx));
    if (static_ && !ctx.calibration) {
      return FailedPrecondition(
          "quantize-w8a8{{activations=static}} needs calibration data (--calibration FILE) for its input "
          "scales; activations=dynamic needs none");
    }
    const ActFormat format = fp8_ ? ActFormat::kFp8E4M3 : ActFormat::kInt;
    int64_t fallbacks = 0;
    RETURN_IF_ERROR(ForEachLinear(
        model, ctx, sel_, ctx.calibration != nullptr, /*need_xtx=*/false, /*accept_quantized=*/false,
        "quantize-w8a8", [&](const std::string& name, const LinearLayer& layer, const LinearStats* st) -> absl::Status {
          const Tensor src = model.tensors.at(name);
          const int64_t rows = src.shape()[0], cols = src.shape()[1];
          ASSIGN_OR_RETURN(std::vector<float> w, FiniteWeights(src, name));
          src.ReleasePages();
          std::pair<std::vector<int8_t>, QuantInfo> q;
          if (fp8_) {
            q = QuantizeFp8(w, rows, cols, layer.out_axis);
          } else {
            ASSIGN_OR_RETURN(q, QuantizeRtn(w, rows, cols, 8, true, layer.out_axis, 0));
          }
          q.second.original_dtype = src.dtype();
          Tensor out = Tensor::Quantized(src.shape(), std::move(q.first), std::move(q.second));
          ASSIGN_OR_RETURN(std::vector<float> back, out.ToF32());
          ActivationQuant a;
          a.format = format;
          a.bits = 8;
          if (zero_point) {
            a.granularity = ActivationQuant::Granularity::kTensor;
            a.zero_point = true;
          } else if (static_ && st && !st->data_free) {
            a.granularity = ActivationQuant::Granularity::kTensor;
            a.dynamic = false;
            a.scale = StaticScale(a, *st, w, layer.out_axis);
          } else if (static_) {
            ++fallbacks;  // an expert the calibration data barely reached: no range to trust
            if (onnx) {  // ONNX has no per-token form: the graph's dynamic per-tensor one
              a.granularity = ActivationQuant::Granularity::kTensor;
              a.zero_point = true;
            }
            ctx.report.notes.push_back(fmt::format(
                "{}: too few calibration tokens for a static input scale; its inputs use {}", name, a.Describe()));
          }
          TensorChange change = WeightChange(
              name, src, out,
              fmt::format("w8a8: {} weights per channel, inputs {}", fp8_ ? "fp8-e4m3" : "int8", a.Describe()), w,
              back);
          AddActivationMetrics(change, &a, st);
          AddOutputErrors(change, st, w, back, layer.out_axis, a);
          ctx.report.tensors.push_back(std::move(change));
          model.tensors.Set(name, std::move(out));
          model.input_quant[name] = a;
          return absl::OkStatus();
        },
        static_ && estimator_ != "minmax" ? 1024 : kErrorRows));
    ctx.report.stats["tensors_quantized"] = static_cast<double>(ctx.report.tensors.size());
    if (fallbacks) ctx.report.stats["static_scale_fallbacks"] = static_cast<double>(fallbacks);
    ctx.report.notes.push_back(fmt::format(
        "inputs: {} {}", fp8_ ? "fp8-e4m3" : "int8",
        static_      ? fmt::format("static per-tensor scales from the {} estimator (values past them clip)", estimator_)
        : zero_point ? "dynamic per-tensor uint8 with a zero point (ONNX's DynamicQuantizeLinear): s = (max(x, 0) - "
                       "min(x, 0)) / 255 over each input tensor"
                     : "dynamic per-token scales = max |x| of the token / qmax"));
    return PreservedAnalyses::None();
  }

 private:
  // The static per-tensor input scale by the chosen range estimator: minmax (calibration max),
  // percentile (that percentile of |x| over the kept calibration rows), entropy (the KL
  // threshold over the kept rows, core/act_quant.h's EntropyThreshold) or mse (the clipping of
  // the max, 0.3..1 in steps of 0.05, with the smallest sum_j ||W_.j||^2 (x_j - x'_j)^2 on them).
  float StaticScale(const ActivationQuant& spec, const LinearStats& st, std::span<const float> w, int out_axis) const {
    const float amax = *std::max_element(st.absmax.begin(), st.absmax.end());
    if (estimator_ == "minmax" || st.sample_rows == 0) return ActScale(spec.format, spec.bits, amax);
    if (estimator_ == "entropy") {  // int only (the factory refuses fp8)
      const int levels = static_cast<int>(ActQmax(spec.format, spec.bits)) + 1;
      return ActScale(spec.format, spec.bits, EntropyThreshold(st.samples, levels));
    }
    if (estimator_ == "percentile") {
      std::vector<float> mag(st.samples.size());
      for (size_t i = 0; i < mag.size(); ++i) mag[i] = std::fabs(st.samples[i]);
      const size_t k = std::min(mag.size() - 1, static_cast<size_t>(percentile_ / 100.0 * static_cast<double>(mag.size())));
      std::nth_element(mag.begin(), mag.begin() + k, mag.end());
      return ActScale(spec.format, spec.bits, std::max(mag[k], amax * 1e-3f));
    }
    const std::vector<double> colnorm = InputColumnNorms(w, st.in_features, out_axis);
    const ClipChoice best = SearchClipping(spec, amax, st, colnorm);
    return best.error < 0 ? ActScale(spec.format, spec.bits, amax) : best.scale;
  }

  bool fp8_, static_;
  std::string granularity_;
  std::string estimator_;
  double percentile_;
  TensorSelector sel_;
};

absl::StatusOr<KvCacheQuant::Granularity> ParseKvGranularity(const std::string& s) {
  if (s == "channel") return KvCacheQuant::Granularity::kChannel;
  if (s == "tensor") return KvCacheQuant::Granularity::kTensor;
  if (s == "head") return KvCacheQuant::Granularity::kHead;
  if (s == "channel-group") return KvCacheQuant::Granularity::kChannelGroup;
  return InvalidArgument("KV-cache granularity '{}' (channel, tensor, head, channel-group)", s);
}

struct KvOptions {
  std::string type = "int8", k = "auto", v = "head";
  int64_t token_group = 32;
  double output_bits = 8;
};

class QuantizeKvPass final : public Pass {
 public:
  explicit QuantizeKvPass(const KvOptions& o)
      : type_(o.type), k_(o.k), v_(o.v), token_group_(o.token_group), output_bits_(o.output_bits) {}

  absl::StatusOr<PreservedAnalyses> Run(Model& model, PassContext& ctx) override {
    RETURN_IF_ERROR(RefuseOnnxActivations(model, "quantize-kv"));
    const Architecture& a = model.arch;
    if (a.blocks.empty() || a.num_kv_heads <= 0 || a.head_dim <= 0) {
      return FailedPrecondition("quantize-kv: {} has no attention blocks the architecture view knows", model.source);
    }
    KvCacheQuant q;
    q.format = type_ == "fp8" ? ActFormat::kFp8E4M3 : ActFormat::kInt;
    q.bits = type_ == "int4" ? 4 : 8;
    const bool aligned = type_ == "aligned";  // AlignedKV: static per-channel scales and bits
    ASSIGN_OR_RETURN(q.k, ParseKvGranularity(aligned ? "channel" : k_ == "auto" ? (ctx.calibration ? "channel" : "head") : k_));
    ASSIGN_OR_RETURN(q.v, ParseKvGranularity(aligned ? "channel" : v_));
    q.token_group = token_group_;
    auto is_static = [](KvCacheQuant::Granularity g) {
      return g == KvCacheQuant::Granularity::kChannel || g == KvCacheQuant::Granularity::kTensor;
    };
    const bool needs_static = is_static(q.k) || is_static(q.v);
    if (needs_static && !ctx.calibration) {
      return FailedPrecondition(
          "quantize-kv{{k={},v={}}} needs calibration data (--calibration FILE) for its static scales; "
          "head and channel-group (dynamic) need none",
          k_, v_);
    }
    const int64_t kv_dim = a.num_kv_heads * a.head_dim;
    const int blocks = static_cast<int>(a.blocks.size());
    std::map<int, KvMoments> moments;  // block -> what calibration saw of its attention
    double bits_sum = 0;
    int capped = 0;
    if (needs_static) {
      DriverOptions opts;
      opts.collect_xtx = false;
      opts.sequential = false;
      opts.kv = [&](int block, const RowMatrix& qm, const RowMatrix& k, const RowMatrix& v) {
        moments[block].Add(qm, k, v);
      };
      std::map<int, LinearStats> o_inputs;  // aligned: o_proj's input statistics per block
      RETURN_IF_ERROR(RunCalibration(
          model, *ctx.calibration, opts,
          [&](int block, const std::map<std::string, LinearStats>& stats) -> absl::Status {
            if (!aligned) return absl::OkStatus();
            for (const Block& b : a.blocks) {
              if (b.index != block) continue;
              for (const LinearLayer& l : b.attention)
                if ((l.kind == "o_proj" || l.kind == "c_proj") && stats.count(l.weight)) o_inputs[block] = stats.at(l.weight);
            }
            return absl::OkStatus();
          },
          [&](int64_t done, int64_t total) { ctx.Progress("quantize-kv", done, total); }));
      for (int b = 0; b < blocks; ++b) {
        auto it = moments.find(b);
        if (it == moments.end() || it->second.k_amax.size() != kv_dim)
          return Internal("quantize-kv: calibration saw no cache of width {} in block {}", kv_dim, b);
        KvCacheQuant::Scales& s = q.scales[b];
        if (aligned) {
          const Block* blk = nullptr;
          for (const Block& x : a.blocks)
            if (x.index == b) blk = &x;
          if (!blk || !o_inputs.count(b)) return Internal("quantize-kv: no o_proj statistics for block {}", b);
          ASSIGN_OR_RETURN(AlignedKvBits ab, ComputeAlignedKvBits(model, *blk, it->second, o_inputs.at(b), output_bits_));
          s.k_bits = std::move(ab.k);
          s.v_bits = std::move(ab.v);
          capped += ab.capped;
          for (int8_t x : s.k_bits) bits_sum += x;
          for (int8_t x : s.v_bits) bits_sum += x;
        }
        for (bool key : {true, false}) {
          const Eigen::VectorXf& m = key ? it->second.k_amax : it->second.v_amax;
          const std::vector<int8_t>& cb = key ? s.k_bits : s.v_bits;
          const KvCacheQuant::Granularity g = key ? q.k : q.v;
          std::vector<float>& out = key ? s.k : s.v;
          if (g == KvCacheQuant::Granularity::kChannel) {
            for (int64_t c = 0; c < kv_dim; ++c) out.push_back(ActScale(q.format, cb.empty() ? q.bits : cb[c], m(c)));
          } else if (g == KvCacheQuant::Granularity::kTensor) {
            out.push_back(ActScale(q.format, q.bits, m.maxCoeff()));
          }
        }
        std::string bits;
        if (aligned) {
          auto mean = [](const std::vector<int8_t>& v) { return std::accumulate(v.begin(), v.end(), 0.0) / v.size(); };
          bits = fmt::format("; aligned bits K {:.2f}, V {:.2f} per channel on average", mean(s.k_bits), mean(s.v_bits));
        }
        ctx.report.notes.push_back(fmt::format("block {}: max |K| {:.4g} (channels {:.4g}..{:.4g}), max |V| {:.4g}{}", b,
                                               it->second.k_amax.maxCoeff(), it->second.k_amax.minCoeff(),
                                               it->second.k_amax.maxCoeff(), it->second.v_amax.maxCoeff(), bits));
      }
    }
    if (absl::Status s = q.Validate(blocks, kv_dim); !s.ok()) return Internal("quantize-kv: {}", s.message());
    // Cache bytes per token: codes, plus one f16 scale per KV head and token for the dynamic form.
    const double elems = 2.0 * blocks * kv_dim;
    double bytes = aligned ? bits_sum / 8 : elems * q.bits / 8;
    if (aligned) {
      ctx.report.stats["kv_mean_bits"] = bits_sum / elems;
      ctx.report.stats["kv_channels_capped_at_8_bits"] = capped;
    }
    for (KvCacheQuant::Granularity g : {q.k, q.v}) {
      if (g == KvCacheQuant::Granularity::kHead) bytes += 2.0 * blocks * a.num_kv_heads;
      if (g == KvCacheQuant::Granularity::kChannelGroup) bytes += 2.0 * blocks * kv_dim / q.token_group;
    }
    ctx.report.stats["kv_bits"] = aligned ? bits_sum / elems : q.bits;
    ctx.report.stats["kv_bytes_per_token"] = bytes;
    ctx.report.stats["kv_bytes_per_token_f16"] = elems * 2;
    ctx.report.notes.push_back(fmt::format("KV cache: {} ({:.0f} bytes per token, f16 {:.0f})", q.Describe(), bytes,
                                           elems * 2));
    model.kv_cache = std::move(q);
    return PreservedAnalyses::None();
  }

 private:
  std::string type_, k_, v_;
  int64_t token_group_;
  double output_bits_;
};

}  // namespace

PassInfo QuantizeW8A8PassInfo() {
  PassInfo info;
  info.name = "quantize-w8a8";
  info.summary = "8-bit weights (int8 or FP8 E4M3, per channel) and 8-bit inputs (dynamic or static)";
  OptionBinding<W8A8Options> b;
  b.Choice(&W8A8Options::fp8, "type", "weight and activation type", {{"int8", false}, {"fp8", true}})
      .Choice(&W8A8Options::static_scales, "activations",
              "dynamic: per-token scales at run time; static: per-tensor scales from calibration",
              {{"dynamic", false}, {"static", true}})
      .Choice(&W8A8Options::granularity, "granularity",
              "dynamic inputs: token (one symmetric scale per token), tensor (one uint8 scale and zero point per "
              "input tensor: ONNX Runtime's DynamicQuantizeLinear), auto (tensor for ONNX graphs, token otherwise); "
              "static inputs are per tensor",
              {"auto", "token", "tensor"})
      .Choice(&W8A8Options::estimator, "estimator",
              "static scales: minmax (calibration max), percentile, entropy (KL threshold as TensorRT and ONNX "
              "Runtime calibrate int8; not fp8), or mse (clipping with the smallest output-weighted error on "
              "calibration rows)",
              {"minmax", "percentile", "entropy", "mse"})
      .Float(&W8A8Options::percentile, "percentile", "estimator=percentile: percentile of |x|", 50, 100);
  BindPassOptions(info, std::move(b),
                  [](const W8A8Options& o, TensorSelector sel) -> absl::StatusOr<std::unique_ptr<Pass>> {
                    if (o.fp8 && o.estimator == "entropy") {
                      return InvalidArgument(
                          "quantize-w8a8: estimator=entropy models int8's evenly spaced levels; for type=fp8 "
                          "use minmax, percentile or mse");
                    }
                    return std::make_unique<QuantizeW8A8Pass>(o, std::move(sel));
                  });
  return info;
}

PassInfo QuantizeKvPassInfo() {
  PassInfo info;
  info.name = "quantize-kv";
  info.summary = "KV-cache quantization (int8, fp8, int4): K per channel, V per token and head";
  info.selects_tensors = false;
  OptionBinding<KvOptions> b;
  b.Choice(&KvOptions::type, "type",
           "cache element type; aligned: AlignedKV, int bits per channel (2..8) from the precision-alignment "
           "criterion, static per-channel scales (needs calibration)",
           {"int8", "fp8", "int4", "aligned"})
      .Choice(&KvOptions::k, "k",
              "K scales: channel / tensor (static, calibrated), head (dynamic per token and head), channel-group "
              "(dynamic per channel over token-group tokens, KIVI); auto: channel with calibration data, else head",
              {"auto", "channel", "tensor", "head", "channel-group"})
      .Choice(&KvOptions::v, "v", "V scales, as for k", {"head", "channel", "tensor", "channel-group"})
      .Int(&KvOptions::token_group, "token-group", "tokens per scale for channel-group", 1, 1 << 20)
      .Float(&KvOptions::output_bits, "output-bits",
             "aligned: significant bits attention scores and outputs keep (8 = bf16, 11 = f16)", 2, 24);
  BindPassOptions(info, std::move(b),
                  [](const KvOptions& o, TensorSelector) { return std::make_unique<QuantizeKvPass>(o); });
  return info;
}

}  // namespace compress
