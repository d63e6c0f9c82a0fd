#include "analyze/onnx_eval.h"

#include "core/checked_math.h"

#include <cmath>
#include <random>

#include "core/status.h"

namespace compress {
using onnxrt::Value;

absl::StatusOr<std::vector<double>> OnnxTokenNlls(const onnxrt::Interpreter& interp, std::span<const int32_t> ids) {
  ASSIGN_OR_RETURN(auto feeds, onnxrt::TokenFeeds(interp, ids));
  ASSIGN_OR_RETURN(auto outs, interp.Run(feeds));
  if (interp.outputs().empty()) return InvalidArgument("ONNX model has no outputs");
  const std::string& name = interp.outputs()[0].name;
  ASSIGN_OR_RETURN(Value logits, onnxrt::CastValue(outs.at(name), DType::kF64));
  const int64_t T = static_cast<int64_t>(ids.size());
  if (T <= 0 || logits.rank() < 2 || logits.shape[logits.rank() - 2] != T || logits.numel() % T) {
    return InvalidArgument("ONNX output '{}' has shape {}; expected logits [1, {}, vocab]", name,
                           ShapeString(logits.shape), T);
  }
  const int64_t V = logits.shape.back();
  std::vector<double> nll(T - 1);
  for (int64_t t = 0; t + 1 < T; ++t) {
    const double* row = logits.data<double>() + t * V;
    const int32_t next = ids[t + 1];
    if (next < 0 || next >= V) return InvalidArgument("token id {} is outside the vocabulary of {}", next, V);
    double mx = row[0];
    for (int64_t v = 1; v < V; ++v) mx = std::max(mx, row[v]);
    double sum = 0;
    for (int64_t v = 0; v < V; ++v) sum += std::exp(row[v] - mx);
    nll[t] = std::log(sum) + mx - row[next];
  }
  return nll;
}

absl::StatusOr<std::map<std::string, Value>> GenerateInputs(const onnxrt::Interpreter& interp, const InputSpec& spec) {
  std::mt19937_64 rng(spec.seed);
  std::map<std::string, Value> feeds;
  for (const auto& in : interp.inputs()) {
    Shape shape;
    for (size_t d = 0; d < in.shape.size(); ++d) {
      if (in.shape[d] >= 0) {
        shape.push_back(in.shape[d]);
        continue;
      }
      auto it = spec.dims.find(in.dim_names[d]);
      shape.push_back(it != spec.dims.end() ? it->second : d == 0 ? spec.default_batch : spec.default_dim);
    }
    // Generated inputs stay below 2^30 elements (4 GiB as f32): refuse before allocating.
    auto count = CheckedElements(shape, int64_t{1} << 30);
    if (!count) {
      return InvalidArgument("input '{}' would be {} (over 2^30 elements); give smaller --dim sizes", in.name,
                             ShapeString(shape));
    }
    const int64_t n = *count;
    if (in.dtype == DType::kI64 || in.dtype == DType::kI32 || in.dtype == DType::kU8 || in.dtype == DType::kI8) {
      std::uniform_int_distribution<int64_t> u(0, std::max<int64_t>(1, spec.int_high) - 1);
      std::vector<int64_t> v(n);
      for (auto& x : v) x = u(rng);
      ASSIGN_OR_RETURN(feeds[in.name], onnxrt::CastValue(onnxrt::MakeValue(DType::kI64, std::move(v), shape), in.dtype));
    } else if (in.dtype == DType::kBool) {
      std::vector<uint8_t> v(n);
      for (auto& x : v) x = rng() & 1;
      feeds[in.name] = onnxrt::MakeValue(DType::kBool, std::move(v), shape);
    } else if (IsFloating(in.dtype)) {
      std::normal_distribution<float> g(0.f, 1.f);
      std::vector<float> v(n);
      for (auto& x : v) x = g(rng);
      ASSIGN_OR_RETURN(feeds[in.name], onnxrt::CastValue(onnxrt::MakeValue(DType::kF32, std::move(v), shape), in.dtype));
    } else {
      return Unimplemented("cannot generate values for input '{}' of type {}", in.name, DTypeName(in.dtype));
    }
  }
  return feeds;
}

absl::Status AgreementMeter::Add(const std::map<std::string, Value>& got, const std::map<std::string, Value>& want) {
  for (const auto& [name, w] : want) {
    auto it = got.find(name);
    if (it == got.end()) return InvalidArgument("output '{}' is missing from the model's outputs", name);
    const Value& g = it->second;
    if (g.shape != w.shape) {
      return InvalidArgument("output '{}': shape {} vs reference {}", name, ShapeString(g.shape), ShapeString(w.shape));
    }
    ASSIGN_OR_RETURN(Value gd, onnxrt::CastValue(g, DType::kF64));
    ASSIGN_OR_RETURN(Value wd, onnxrt::CastValue(w, DType::kF64));
    if (!acc_.count(name)) order_.push_back(name);
    Acc& a = acc_[name];
    a.a.name = name;
    const int64_t n = wd.numel();
    const double* pg = gd.data<double>();
    const double* pw = wd.data<double>();
    for (int64_t i = 0; i < n; ++i) {
      const double d = std::abs(pg[i] - pw[i]);
      a.a.max_abs = std::isnan(d) ? INFINITY : std::max(a.a.max_abs, d);
      a.sum_abs += d;
      a.a.max_ref = std::max(a.a.max_ref, std::abs(pw[i]));
      a.dot += pg[i] * pw[i];
      a.ng += pg[i] * pg[i];
      a.nw += pw[i] * pw[i];
    }
    a.a.elements += n;
    // Top-1 agreement along the last axis for float outputs with more than one class.
    if (IsFloating(w.dtype) && w.rank() >= 1 && w.shape.back() > 1) {
      const int64_t c = w.shape.back();
      for (int64_t r = 0; r < n / c; ++r) {
        int64_t ag = 0, aw = 0;
        for (int64_t j = 1; j < c; ++j) {
          if (pg[r * c + j] > pg[r * c + ag]) ag = j;
          if (pw[r * c + j] > pw[r * c + aw]) aw = j;
        }
        ++a.a.rows;
        a.a.top1_same += ag == aw;
      }
    }
  }
  return absl::OkStatus();
}

std::vector<OutputAgreement> AgreementMeter::Results() const {
  std::vector<OutputAgreement> out;
  for (const auto& name : order_) {
    const Acc& a = acc_.at(name);
    OutputAgreement r = a.a;
    r.mean_abs = r.elements ? a.sum_abs / r.elements : 0;
    r.cosine = a.ng > 0 && a.nw > 0 ? a.dot / std::sqrt(a.ng * a.nw) : (a.ng == a.nw ? 1.0 : 0.0);
    out.push_back(r);
  }
  return out;
}

}  // namespace compress
