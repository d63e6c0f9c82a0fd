// The shared per-layer visit of weight passes.
#include "passes/layer_walk.h"

#include <set>

namespace compress {

absl::Status ForEachLinear(Model& model, PassContext& ctx, const TensorSelector& sel, bool calibrated,
                           bool need_xtx, bool accept_quantized, std::string_view label,
                           const LinearVisitor& fn, int64_t keep_rows) {
  const std::vector<std::string> selected = sel.Select(model);
  std::set<std::string> todo;
  for (const auto& name : selected) {
    const Tensor& t = model.tensors.at(name);
    const LinearLayer* layer = model.arch.LayerOfWeight(name);
    const char* why = t.quant() && !accept_quantized         ? "already quantized"
                      : !t.quant() && !IsFloating(t.dtype()) ? "not a floating-point tensor"
                      : t.shape().size() != 2                ? "not a 2-D weight"
                      : !layer                               ? "not the weight of a known linear layer"
                                                             : nullptr;
    if (why) {
      ctx.report.notes.push_back(fmt::format("left '{}' alone: {}", name, why));
    } else {
      todo.insert(name);
    }
  }
  const int64_t total = static_cast<int64_t>(todo.size());
  auto visit = [&](const std::string& name, const LinearStats* st) -> absl::Status {
    RETURN_IF_ERROR(fn(name, *model.arch.LayerOfWeight(name), st));
    todo.erase(name);
    ctx.Progress(label, total - static_cast<int64_t>(todo.size()), total);
    return absl::OkStatus();
  };
  if (!calibrated) {
    for (const auto& name : selected) {
      if (todo.count(name)) RETURN_IF_ERROR(visit(name, nullptr));
    }
    return absl::OkStatus();
  }
  if (!ctx.calibration) return FailedPrecondition("calibration data is needed; give --calibration FILE");
  DriverOptions opts;
  opts.collect_xtx = need_xtx;
  opts.experts = &ctx.report.experts;
  opts.keep_rows = keep_rows;
  RETURN_IF_ERROR(RunCalibration(
      model, *ctx.calibration, opts,
      [&](int, const std::map<std::string, LinearStats>& stats) -> absl::Status {
        for (const auto& [name, st] : stats) {
          if (todo.count(name)) RETURN_IF_ERROR(visit(name, &st));
        }
        return absl::OkStatus();
      },
      [&](int64_t done, int64_t blocks) { ctx.Progress("calibration blocks", done, blocks); }));
  for (const auto& name : todo) {
    ctx.report.notes.push_back(fmt::format("left '{}' alone: not a linear layer the runtime runs", name));
  }
  return absl::OkStatus();
}

}  // namespace compress

namespace compress {

namespace {
template <class T>
std::vector<T> Transpose(std::span<const T> w, int64_t rows, int64_t cols) {
  std::vector<T> out(w.size());
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) out[c * rows + r] = w[r * cols + c];
  return out;
}
}  // namespace

absl::StatusOr<OutInWeight> ReadOutIn(const Tensor& t, const LinearLayer* layer) {
  if (t.shape().size() != 2) return InvalidArgument("not a 2-D weight");
  OutInWeight o;
  ASSIGN_OR_RETURN(std::vector<float> w, FiniteWeights(t, layer ? layer->weight : std::string("weight")));
  o.transposed = layer && layer->out_axis == 1;
  if (o.transposed) {
    o.rows = t.shape()[1];
    o.cols = t.shape()[0];
    o.w = Transpose<float>(w, o.cols, o.rows);
  } else {
    o.rows = t.shape()[0];
    o.cols = t.shape()[1];
    o.w = std::move(w);
  }
  return o;
}

std::vector<float> StoredLayout(const OutInWeight& like, std::span<const float> out_in) {
  if (!like.transposed) return {out_in.begin(), out_in.end()};
  return Transpose<float>(out_in, like.rows, like.cols);
}

Tensor QuantizedStored(const OutInWeight& like, const Shape& stored_shape, std::vector<int8_t> codes, QuantInfo info) {
  if (like.transposed) {
    codes = Transpose<int8_t>(codes, like.rows, like.cols);
    info.channel_axis = 1;
  }
  return Tensor::Quantized(stored_shape, std::move(codes), std::move(info));
}

std::string StoredTypeName(const Tensor& t) {
  if (!t.quant()) return std::string(DTypeName(t.dtype()));
  const QuantInfo& q = *t.quant();
  std::string name = q.format == "int" ? fmt::format("int{}", q.bits) : q.format;
  if (!q.outlier_inputs.empty()) name += "+f16-outliers";
  return name;
}

TensorChange WeightChange(const std::string& name, const Tensor& before, const Tensor& after,
                          std::string method, std::span<const float> before_values,
                          std::span<const float> after_values) {
  const WeightError err = CompareWeights(before_values, after_values);
  return TensorChange{
      name,
      before.shape(),
      after.shape(),
      StoredTypeName(before),
      StoredTypeName(after),
      before.storage_bytes(),
      after.storage_bytes(),
      std::move(method),
      {{"max_abs_error", err.max_abs},
       {"rel_fro_error", err.rel_fro},
       {"bits_per_parameter", 8.0 * after.storage_bytes() / std::max<int64_t>(1, after.numel())}}};
}

}  // namespace compress
