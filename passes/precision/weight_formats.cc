// Named weight formats, each produced by the quantizer that owns it.
#include "passes/precision/weight_formats.h"

#include "core/quant.h"
#include "core/status.h"

namespace compress {

bool IsWeightFormat(const std::string& n) {
  if (n == "bf16" || n == "f16" || n == "int8" || n == "nf4" || n == "fp4" || n == "mxfp4") return true;
  return n.size() == 4 && n.starts_with("int") && n[3] >= '2' && n[3] <= '7';
}

absl::StatusOr<Tensor> QuantizeWeightAs(const std::string& name, const Tensor& src, std::span<const float> w,
                                        const LinearLayer& layer, int64_t group, std::span<const double> h) {
  const int64_t rows = src.shape()[0], cols = src.shape()[1];
  const int64_t in = layer.out_axis == 0 ? cols : rows;
  const DType original = src.quant() ? src.quant()->original_dtype : src.dtype();
  if (name == "bf16" || name == "f16")
    return Tensor::FromF32(w, src.shape(), name == "bf16" ? DType::kBF16 : DType::kF16);
  if (name.starts_with("int")) {
    const int bits = name[3] - '0';
    const int64_t g = bits == 8 || group <= 0 || in % group != 0 ? 0 : group;
    ASSIGN_OR_RETURN(auto q, QuantizeRtn(w, rows, cols, bits, true, layer.out_axis, g));
    q.second.original_dtype = original;
    return Tensor::Quantized(src.shape(), std::move(q.first), std::move(q.second));
  }
  CodebookOptions o;
  o.channel_axis = layer.out_axis;
  if (name == "nf4") {
    o.format = "nf4";
    o.group_size = in % 64 == 0 ? 64 : 0;
  } else if (name == "mxfp4") {
    if (in % 32 != 0) return InvalidArgument("mxfp4 needs in_features divisible by 32, got {}", in);
    o.format = "mxfp4";
    o.group_size = 32;
    o.scale = CodebookOptions::Scale::kE8M0;
  } else if (name == "fp4") {
    o.format = "fp4-e2m1";
    o.group_size = group > 0 && in % group == 0 ? group : 0;
    o.scale = CodebookOptions::Scale::kSearch;
    o.input_weight = h;
  } else {
    return InvalidArgument("unknown weight format '{}'", name);
  }
  ASSIGN_OR_RETURN(CodebookResult r, QuantizeCodebook(w, rows, cols, o));
  r.info.original_dtype = original;
  return Tensor::Quantized(src.shape(), std::move(r.codes), std::move(r.info));
}

}  // namespace compress
