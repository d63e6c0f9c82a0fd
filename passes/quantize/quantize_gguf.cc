// quantize-gguf: llama-quantize's per-tensor type rules, then our weighted block encoder.
#include "passes/quantize/quantize_gguf.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <map>
#include <numeric>

#include "core/block_quant.h"
#include "core/select.h"
#include "core/vector_math.h"
#include "core/weight_error.h"
#include "formats/gguf_layout.h"
#include "formats/imatrix.h"
#include "passes/quantize/gptq.h"
#include "passes/math/hessian.h"
#include "passes/layer_walk.h"

namespace compress {
namespace {

struct Preset {
  std::string_view name;
  DType base;
  uint32_t file_type;  // llama_ftype
};
constexpr Preset kPresets[] = {
    {"Q2_K", DType::kQ2_K, 10},     {"Q2_K_S", DType::kQ2_K, 21},   {"Q3_K_S", DType::kQ3_K, 11},
    {"Q3_K_M", DType::kQ3_K, 12},   {"Q3_K_L", DType::kQ3_K, 13},   {"Q4_K_S", DType::kQ4_K, 14},
    {"Q4_K_M", DType::kQ4_K, 15},   {"Q5_K_S", DType::kQ5_K, 16},   {"Q5_K_M", DType::kQ5_K, 17},
    {"Q6_K", DType::kQ6_K, 18},     {"IQ4_NL", DType::kIQ4_NL, 25}, {"IQ4_XS", DType::kIQ4_XS, 30},
    {"Q4_0", DType::kQ4_0, 2},      {"Q4_1", DType::kQ4_1, 3},      {"Q5_0", DType::kQ5_0, 8},
    {"Q5_1", DType::kQ5_1, 9},      {"Q8_0", DType::kQ8_0, 7},
};

std::string UpperName(DType t);

// A [rows, cols] weight stored as f32 / f16 / bf16 `src`, encoded one row at a time into a
// block type while it is measured: each row is decoded into a thread's buffer, checked,
// encoded (`encode_row`), its blocks decoded back, and both measured there, so the weight is
// read once and no full-size f32 copy exists. The error equals CompareWeights of the two full
// arrays bit for bit (the fixed chunks of core/weight_error.h, each filled in element order:
// rows are taken in units that start on a chunk boundary), and the per-row weighted sums are
// the ones the unfused path computes.
// One row's sum h v^2 and sum h (v - v')^2 (v the weight, v' its decoded value), and whether a
// decoded value is not finite.
struct RowSums {
  double norm = 0, err = 0;
  bool bad = false;
};
inline RowSums WeightedRowSums(const float* x, const float* y, const float* h, int64_t cols) {
  double n2 = 0, e2 = 0;
  int bad = 0;
#pragma omp simd reduction(+ : n2, e2) reduction(| : bad)
  for (int64_t c = 0; c < cols; ++c) {
    const double v = x[c], e = v - y[c];
    n2 += h[c] * v * v;
    e2 += h[c] * e * e;
    bad |= !IsFiniteValue(y[c]);
  }
  return {n2, e2, bad != 0};
}

struct MeasuredBlocks {
  std::shared_ptr<UninitBuffer> bytes;
  WeightError error;
  std::vector<double> row_norm, row_err;  // sum h v^2 and sum h (v - v')^2 per row
  int64_t first_nonfinite = INT64_MAX;    // flat index of the first NaN / infinite weight
  int64_t first_bad_decode = INT64_MAX;   // flat index of the first non-finite decoded value
};

MeasuredBlocks EncodeBlocksMeasured(DType stored, const uint8_t* src, int64_t rows, int64_t cols, DType type,
                                    const std::vector<float>* h,
                                    const std::function<bool(const float*, uint8_t*, float*)>& encode_row) {
  MeasuredBlocks m;
  const int64_t n = rows * cols, row_bytes = DTypeBytes(type, cols), es = DTypeBytes(stored, 1);
  m.bytes = std::make_shared<UninitBuffer>(static_cast<size_t>(rows * row_bytes));
  m.row_norm.assign(rows, 0.0);
  m.row_err.assign(rows, 0.0);
  std::vector<WeightErrorChunk> chunks((n + kWeightErrorChunk - 1) / kWeightErrorChunk);
  const int64_t unit = kWeightErrorChunk / std::gcd(cols, kWeightErrorChunk);  // rows per unit
  const int64_t units = (rows + unit - 1) / unit;
  std::vector<int64_t> first_bad(units, INT64_MAX), first_decode(units, INT64_MAX);
  const std::vector<float> ones(h ? 0 : cols, 1.0f);
  const float* hv = h ? h->data() : ones.data();
#pragma omp parallel
  {
    std::vector<float> x(cols), back(cols);
#pragma omp for schedule(dynamic, 1)
    for (int64_t u = 0; u < units; ++u) {
      for (int64_t r = u * unit; r < std::min(rows, (u + 1) * unit); ++r) {
        (void)DecodeToF32(stored, src + r * cols * es, cols, x.data());
        int nonfinite = 0;
#pragma omp simd reduction(| : nonfinite)
        for (int64_t c = 0; c < cols; ++c) nonfinite |= !IsFiniteValue(x[c]);
        if (nonfinite) {
          int64_t c = 0;
          while (IsFiniteValue(x[c])) ++c;
          first_bad[u] = r * cols + c;
          break;
        }
        uint8_t* out = m.bytes->mutable_data() + r * row_bytes;
        if (!encode_row(x.data(), out, back.data())) DecodeBlocks(type, out, cols, back.data());
        const float* xr = x.data();
        const float* y = back.data();
        const RowSums rs = WeightedRowSums(xr, y, hv, cols);
        m.row_norm[r] = rs.norm, m.row_err[r] = rs.err;
        if (rs.bad && first_decode[u] == INT64_MAX) {
          int64_t c = 0;
          while (IsFiniteValue(y[c])) ++c;
          first_decode[u] = r * cols + c;
        }
        for (int64_t i = r * cols; i < (r + 1) * cols;) {  // the row's pieces of each chunk
          const int64_t end = std::min((r + 1) * cols, (i / kWeightErrorChunk + 1) * kWeightErrorChunk);
          chunks[i / kWeightErrorChunk].AddSpan(i, xr + (i - r * cols), y + (i - r * cols), end - i);
          i = end;
        }
      }
    }
  }
  m.first_nonfinite = *std::min_element(first_bad.begin(), first_bad.end());
  m.first_bad_decode = *std::min_element(first_decode.begin(), first_decode.end());
  if (m.first_nonfinite == INT64_MAX) m.error = CombineWeightErrorChunks(chunks);
  return m;
}

// One row by the weighted block search (below).
void EncodeRowSearched(DType type, const float* x, int64_t cols, const std::vector<float>* h, uint8_t* out);
// The error for a weight whose block scales would pass f16's range (below).
absl::Status NotInF16BlockScales(const std::string& name, DType type, const std::vector<float>& w, float decoded,
                                 int64_t i);

// The blocks of a stored [out, in] f32 / f16 / bf16 weight in one read, measured as they are
// made: ggml's reference rounding (`reference`) or the weighted search; the weight's non-finite
// value or a block scale past f16 is the error.
struct MeasuredWeightBlocks {
  std::shared_ptr<UninitBuffer> bytes;
  WeightError error;
  double weighted_rel_error = 0;
};
absl::StatusOr<MeasuredWeightBlocks> EncodeWeightBlocks(const Tensor& src, const std::string& name, DType type,
                                                        bool reference, const std::vector<float>* h) {
  const int64_t rows = src.shape()[0], cols = src.shape()[1];
  ASSIGN_OR_RETURN(auto data, src.ReadOnce());
  // Returns whether it wrote the decoded row too.
  auto encode = [&](const float* x, uint8_t* out, float* back) {
    if (reference && EncodeDecodeReference(type, x, cols, out, back)) return true;
    if (reference) {
      EncodeBlocksReference(type, x, cols, out);
    } else {
      EncodeRowSearched(type, x, cols, h, out);
    }
    return false;
  };
  MeasuredBlocks mb = EncodeBlocksMeasured(src.dtype(), data->data(), rows, cols, type, h, encode);
  if (mb.first_nonfinite != INT64_MAX) {
    float v;
    (void)DecodeToF32(src.dtype(), data->data() + mb.first_nonfinite * DTypeBytes(src.dtype(), 1), 1, &v);
    return NonFiniteWeightError(name, v, mb.first_nonfinite, cols);
  }
  if (mb.first_bad_decode != INT64_MAX) {
    ASSIGN_OR_RETURN(std::vector<float> w, src.ToF32());
    const Tensor out(type, src.shape(), mb.bytes);
    ASSIGN_OR_RETURN(std::vector<float> back, out.ToF32());
    return NotInF16BlockScales(name, type, w, back[mb.first_bad_decode], mb.first_bad_decode);
  }
  src.ReleasePages();
  double wnorm = 0, wsse = 0;
  for (int64_t r = 0; r < rows; ++r) wnorm += mb.row_norm[r], wsse += mb.row_err[r];
  return MeasuredWeightBlocks{std::move(mb.bytes), mb.error, wnorm > 0 ? wsse / wnorm : 0.0};
}

// One row by the weighted block search. Element weights: the input's importance times
// sqrt(mean w^2 of the row + w^2), so the search also favours the row's large weights (measured
// better than either factor alone on pycode-llama, docs/results.md).
void EncodeRowSearched(DType type, const float* x, int64_t cols, const std::vector<float>* h, uint8_t* out) {
  double s2 = 0;
  for (int64_t c = 0; c < cols; ++c) s2 += static_cast<double>(x[c]) * x[c];
  s2 /= static_cast<double>(cols);
  std::vector<float> hr(cols);
  MagnitudeWeights(x, cols, s2, h ? std::span<const float>(*h) : std::span<const float>(), hr.data());
  EncodeBlocks(type, x, cols, hr.data(), out);
}

// Block scales are f16: weights beyond its range would decode to inf / NaN. Refused rather
// than written.
absl::Status NotInF16BlockScales(const std::string& name, DType type, const std::vector<float>& w, float decoded,
                                 int64_t i) {
  float amax = 0;
  for (float v : w) amax = std::max(amax, std::fabs(v));
  return InvalidArgument(
      "tensor '{}': weights up to {:g} do not fit {}'s f16 block scales (element {} decodes to {}); "
      "exclude it or give it output-type/embed-type=f16",
      name, amax, UpperName(type), i, decoded);
}

// llama-quantize's tensor categories (by GGUF role).
enum class Cat { kOutput, kTokenEmbd, kAttnV, kAttnK, kAttnQ, kAttnOutput, kFfnUp, kFfnGate, kFfnDown, kOther };

Cat CategoryOf(const Model& m, const std::string& name) {
  const auto role = m.arch.roles.find(name);
  if (role != m.arch.roles.end() && role->second == TensorRole::kLmHead) return Cat::kOutput;
  if (role != m.arch.roles.end() && role->second == TensorRole::kEmbedding) return Cat::kTokenEmbd;
  const LinearLayer* l = m.arch.LayerOfWeight(name);
  if (!l) return Cat::kOther;
  const std::string& k = l->kind;
  if (k == "v_proj" || k == "qkv_proj" || k == "c_attn" || k == "query_key_value") return Cat::kAttnV;
  if (k == "k_proj") return Cat::kAttnK;
  if (k == "q_proj") return Cat::kAttnQ;
  if (k == "o_proj" || k == "dense" || (k == "c_proj" && name.find(".attn.") != std::string::npos)) {
    return Cat::kAttnOutput;
  }
  if (k == "up_proj" || k == "gate_up_proj" || k == "c_fc" || k == "w3") return Cat::kFfnUp;
  if (k == "gate_proj" || k == "w1") return Cat::kFfnGate;
  if (k == "down_proj" || k == "c_proj" || k == "w2") return Cat::kFfnDown;
  return Cat::kOther;
}

struct Facts {
  int64_t n_gqa = 1, n_expert = 0, n_layer = 1;
  bool is_70b = false, has_imatrix = false;
};

bool UseMoreBits(int64_t i, int64_t n) { return i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2; }

// The type llama-quantize's rules give a tensor of category `c` in mix `p` (before fallback).
DType RuleType(const Preset& p, Cat c, int64_t i_wv, int64_t n_wv, int64_t layer, const Facts& f) {
  const std::string_view n = p.name;
  DType t = p.base;
  switch (c) {
    case Cat::kOutput:
      return t == DType::kQ8_0 ? t : DType::kQ6_K;
    case Cat::kAttnV:
      if (n == "Q2_K") {
        t = f.n_gqa >= 4 ? DType::kQ4_K : DType::kQ3_K;
      } else if (n == "Q2_K_S" && f.n_gqa >= 4) {
        t = DType::kQ4_K;
      } else if (n == "Q3_K_M") {
        t = i_wv < 2 ? DType::kQ5_K : DType::kQ4_K;
      } else if (n == "Q3_K_L") {
        t = DType::kQ5_K;
      } else if ((n == "IQ4_NL" || n == "IQ4_XS") && f.n_gqa >= 4) {
        t = DType::kQ5_K;
      } else if ((n == "Q4_K_M" || n == "Q5_K_M") && UseMoreBits(i_wv, n_wv)) {
        t = DType::kQ6_K;
      } else if (n == "Q4_K_S" && i_wv < 4) {
        t = DType::kQ5_K;
      }
      if (f.is_70b && (t == DType::kQ3_K || t == DType::kQ4_K)) t = DType::kQ5_K;
      if (f.n_expert == 8) t = DType::kQ8_0;
      return t;
    case Cat::kAttnK:
      return f.n_expert == 8 ? DType::kQ8_0 : t;
    case Cat::kFfnDown: {
      const int64_t i = layer, nl = f.n_layer;
      if (n == "Q2_K") return DType::kQ3_K;
      if (n == "Q2_K_S") return i < nl / 8 ? DType::kQ4_K : t;
      if (n == "Q3_K_M") return i < nl / 16 ? DType::kQ5_K : DType::kQ4_K;
      if (n == "Q3_K_L") return DType::kQ5_K;
      if (n == "Q4_K_M") return UseMoreBits(i, nl) ? DType::kQ6_K : t;
      if (i < nl / 8 && (n == "IQ4_NL" || n == "IQ4_XS") && !f.has_imatrix) return DType::kQ5_K;
      if (n == "Q5_K_M") return UseMoreBits(i, nl) ? DType::kQ6_K : t;
      if (n == "Q4_K_S") return i < nl / 8 ? DType::kQ5_K : t;
      if ((n == "Q4_0" || n == "Q5_0") && f.has_imatrix && i < nl / 8) {
        return n == "Q4_0" ? DType::kQ4_1 : DType::kQ5_1;
      }
      return t;
    }
    case Cat::kAttnOutput:
      if (f.n_expert == 8) {
        for (std::string_view m : {"Q2_K", "Q3_K_S", "Q3_K_M", "IQ4_NL", "Q4_K_S", "Q4_K_M", "IQ4_XS"}) {
          if (n == m) return DType::kQ5_K;
        }
        return t;
      }
      if (n == "Q2_K") return DType::kQ3_K;
      if (n == "Q3_K_M") return DType::kQ4_K;
      if (n == "Q3_K_L") return DType::kQ5_K;
      return t;
    default:
      return t;
  }
}

// llama-quantize's fallback for rows that are not whole blocks; kF16 when none fits.
DType Fallback(DType t, int64_t cols) {
  if (cols % BlockElements(t) == 0) return t;
  DType f = t;
  switch (t) {
    case DType::kIQ4_XS: f = DType::kIQ4_NL; break;
    case DType::kQ2_K:
    case DType::kQ3_K: f = DType::kQ4_0; break;
    case DType::kQ4_K: f = DType::kQ5_0; break;
    case DType::kQ5_K: f = DType::kQ5_1; break;
    case DType::kQ6_K: f = DType::kQ8_0; break;
    default: break;
  }
  return cols % BlockElements(f) == 0 ? f : DType::kF16;
}

std::string UpperName(DType t) {
  std::string s(DTypeName(t));
  for (char& c : s) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return s;
}

// Element importance of weight `name` from an importance matrix: mean x^2 per input, looked up
// by the weight's GGUF name (an expert's: its matrix of the block's merged expert entry); empty
// when the matrix has no entry for it.
absl::StatusOr<std::vector<float>> ImatrixImportance(const Imatrix& m, const Model& model, const std::string& name,
                                                     int64_t in_features) {
  std::string g;
  int64_t mat = 0, n_mat = 1;
  if (auto e = gguf::GgufExpertName(name)) {
    g = e->first;
    mat = e->second;
    n_mat = model.arch.num_experts;
  } else {
    absl::StatusOr<std::string> gn = gguf::GgufWeightName(name, model.arch.family);
    if (!gn.ok()) return std::vector<float>();
    g = *gn;
  }
  auto it = m.entries.find(g);
  if (it == m.entries.end()) return std::vector<float>();
  if (it->second.n_mat() != n_mat || it->second.n_per_row != in_features || mat >= n_mat) {
    return InvalidArgument("importance matrix entry '{}' holds {} x {} values; weight '{}' has {} inputs{}", g,
                           it->second.n_mat(), it->second.n_per_row, name, in_features,
                           n_mat > 1 ? fmt::format(" and its block {} experts", n_mat) : "");
  }
  std::vector<float> all = it->second.MeanSquares();
  return std::vector<float>(all.begin() + mat * in_features, all.begin() + (mat + 1) * in_features);
}

// Adds a small floor (1e-3 of the mean) so inputs calibration never excited still count a little.
std::vector<float> FloorImportance(const std::vector<double>& raw) {
  double mean = 0;
  for (double v : raw) mean += v;
  mean /= static_cast<double>(std::max<size_t>(1, raw.size()));
  std::vector<float> h;
  for (double v : raw) h.push_back(static_cast<float>(v + 1e-3 * mean));
  return h;
}

struct Options {
  std::string type = "Q4_K_M";     // the preset's name
  const Preset* preset = nullptr;  // resolved from `type`
  bool importance = true;
  std::string output_type = "auto", embed_type = "auto";
  bool pure = false;
  std::string method = "auto";
  bool search = true;  // false: llama.cpp's reference rounding for the types that have one
  double damp = 0.01;
  bool act_order = false;
  std::string imatrix;  // llama.cpp importance matrix file: element importance instead of calibration's E[x^2]
};

class QuantizeGgufPass final : public Pass {
 public:
  QuantizeGgufPass(Options o, TensorSelector sel) : o_(std::move(o)), sel_(std::move(sel)) {}

  absl::StatusOr<PreservedAnalyses> Run(Model& model, PassContext& ctx) override {
    if (model.format != ModelFormat::kSafetensors) {
      return FailedPrecondition("quantize-gguf makes GGUF block types; {} is an ONNX model", model.source);
    }
    // auto: GPTQ when the run has calibration data (every mix, IQ4 included: docs/results.md).
    if (!o_.search && o_.method == "gptq") {
      return InvalidArgument("quantize-gguf: search=false rounds without error feedback; it does not combine with method=gptq");
    }
    const bool gptq = o_.method == "gptq" || (o_.method == "auto" && ctx.calibration && o_.search);
    if (gptq && !ctx.calibration) {
      return FailedPrecondition("quantize-gguf{{method=gptq}} needs calibration data: pass --calibration TEXT");
    }
    std::optional<Imatrix> imatrix;
    if (!o_.imatrix.empty()) {
      if (!o_.importance) {
        return InvalidArgument("quantize-gguf: imatrix={} and importance=none contradict each other", o_.imatrix);
      }
      ASSIGN_OR_RETURN(imatrix, LoadImatrix(o_.imatrix));
    }
    const bool calibrated = ctx.calibration && (o_.importance || gptq);
    const bool weighted = imatrix || calibrated;
    using TypeMap = std::map<std::string, DType>;
    ASSIGN_OR_RETURN(TypeMap types, PlanTypes(model, weighted));

    int64_t deferred = 0;
    // `conv1d`: the weight is stored [in, out] (GPT-2); in a block type it is stored [out, in]
    // as GGUF holds it (blocks run along inputs), in a dense type as it was.
    auto quantize = [&](const std::string& name, const std::vector<float>* h, const LinearStats* st,
                        const LinearLayer* conv1d) -> absl::Status {
      const Tensor src = model.tensors.at(name);
      const DType type = types.at(name);
      if (src.shape().size() != 2) return Internal("'{}' is not 2-D", name);
      const bool use_gptq = gptq && st && !st->xtx.empty() && IsBlockType(type);
      const bool reference = !o_.search && HasReferenceRounding(type);
      // The block encoders on a [out, in] f32 / f16 / bf16 weight read it once, measuring as
      // they go (the output error needs the full arrays: calibrated runs keep the path below).
      if (IsBlockType(type) && !use_gptq && !conv1d && !(st && !st->xtx.empty()) &&
          (src.dtype() == DType::kF32 || src.dtype() == DType::kF16 || src.dtype() == DType::kBF16)) {
        const std::string method =
            fmt::format("gguf {} ({}){}", UpperName(type), o_.preset->name, h ? " weighted" : "");
        if (src.mapped()) {
          // Read from a file: the blocks and their error made when the writer asks for them (one
          // read of the weight, no block bytes held until then).
          auto pending = std::make_shared<PendingMetrics>();
          std::shared_ptr<const std::vector<float>> hv;  // null: unweighted
          if (h) hv = std::make_shared<const std::vector<float>>(*h);
          Tensor out = Tensor::Lazy(
              type, src.shape(),
              [src, name, type, reference, hv, pending,
               context = ctx.label]() -> absl::StatusOr<std::shared_ptr<const Buffer>> {
                absl::StatusOr<MeasuredWeightBlocks> mb = EncodeWeightBlocks(src, name, type, reference, hv.get());
                if (!mb.ok()) return context.empty() ? mb.status() : Annotate(mb.status(), context);
                pending->Set({{"max_abs_error", mb->error.max_abs},
                              {"rel_fro_error", mb->error.rel_fro},
                              {"weighted_rel_error", mb->weighted_rel_error}});
                return std::shared_ptr<const Buffer>(std::move(mb->bytes));
              });
          ctx.report.tensors.push_back(LazyWeightChange(name, src, out, method, pending));
          model.tensors.Set(name, std::move(out));
          ++deferred;
          return absl::OkStatus();
        }
        ASSIGN_OR_RETURN(MeasuredWeightBlocks mb, EncodeWeightBlocks(src, name, type, reference, h));
        Tensor out(type, src.shape(), std::move(mb.bytes));
        TensorChange change = WeightChange(name, src, out, method, mb.error);
        change.metrics["weighted_rel_error"] = mb.weighted_rel_error;
        ctx.report.tensors.push_back(std::move(change));
        model.tensors.Set(name, std::move(out));
        return absl::OkStatus();
      }
      std::vector<float> w;
      if (conv1d && IsBlockType(type)) {
        ASSIGN_OR_RETURN(OutInWeight oi, ReadOutIn(src, conv1d));
        w = std::move(oi.w);
      } else {
        ASSIGN_OR_RETURN(w, FiniteWeights(src, name));
        conv1d = nullptr;
      }
      const Shape shape = conv1d ? Shape{src.shape()[1], src.shape()[0]} : src.shape();
      const int64_t rows = shape[0], cols = shape[1];
      src.ReleasePages();
      Tensor out;
      double wsse = 0, wnorm = 0;
      if (use_gptq) {
        ASSIGN_OR_RETURN(std::vector<uint8_t> bytes,
                         GptqQuantizeBlocks(w, rows, cols, st->xtx, type, o_.damp,
                                            h ? std::span<const float>(*h) : std::span<const float>(), o_.act_order));
        out = Tensor(type, shape, std::make_shared<OwnedBuffer>(std::move(bytes)));
      } else if (IsBlockType(type) && reference) {
        const int64_t row_bytes = DTypeBytes(type, cols);
        auto buf = std::make_shared<OwnedBuffer>(static_cast<size_t>(rows * row_bytes));
#pragma omp parallel for schedule(static)
        for (int64_t r = 0; r < rows; ++r) EncodeBlocksReference(type, w.data() + r * cols, cols, buf->mutable_data() + r * row_bytes);
        out = Tensor(type, shape, std::move(buf));
      } else if (IsBlockType(type)) {
        const int64_t row_bytes = DTypeBytes(type, cols);
        auto buf = std::make_shared<OwnedBuffer>(static_cast<size_t>(rows * row_bytes));
#pragma omp parallel for schedule(dynamic, 4)
        for (int64_t r = 0; r < rows; ++r) EncodeRowSearched(type, w.data() + r * cols, cols, h, buf->mutable_data() + r * row_bytes);
        out = Tensor(type, shape, std::move(buf));
      } else {
        ASSIGN_OR_RETURN(out, Tensor::FromF32(w, src.shape(), type));
      }
      ASSIGN_OR_RETURN(std::vector<float> back, out.ToF32());
      {  // per row over the threads, rows added in order: the same sums for any thread count
        std::vector<double> rn(rows), re(rows);
        std::vector<int> bad(rows);
        const std::vector<float> ones(h ? 0 : cols, 1.0f);
        const float* hv = h ? h->data() : ones.data();
#pragma omp parallel for schedule(static)
        for (int64_t r = 0; r < rows; ++r) {
          const RowSums rs = WeightedRowSums(w.data() + r * cols, back.data() + r * cols, hv, cols);
          rn[r] = rs.norm, re[r] = rs.err, bad[r] = rs.bad;
        }
        for (int64_t r = 0; r < rows; ++r) {
          // Block scales are f16: weights beyond its range would decode to inf / NaN. Refuse
          // rather than write them.
          if (bad[r]) {
            int64_t i = r * cols;
            while (IsFiniteValue(back[i])) ++i;
            return NotInF16BlockScales(name, type, w, back[i], i);
          }
          wnorm += rn[r], wsse += re[r];
        }
      }
      TensorChange change = WeightChange(
          name, src, out,
          fmt::format("gguf {} ({}){}", UpperName(type), o_.preset->name,
                      use_gptq ? " gptq" : h ? " weighted" : ""),
          w, back);
      change.metrics["weighted_rel_error"] = wnorm > 0 ? wsse / wnorm : 0.0;
      if (st && !st->xtx.empty()) change.metrics["rel_output_error"] = RelativeOutputError(w, back, rows, cols, st->xtx);
      ctx.report.tensors.push_back(std::move(change));
      model.tensors.Set(name, std::move(out));  // (a Conv1D layer's view turns in ForEachLinear)
      return absl::OkStatus();
    };

    // GPTQ's per-layer solves go through VisitSpread (layers over MPI ranks, each visit in the
    // resume journal, results held by it): the visit changes only its weight and the report
    // (the counts below are taken from the report afterwards). A GPT-2 Conv1D weight written
    // as blocks is [out, in]: the walk turns its layer in the view on every rank (ForEachLinear).
    const bool spread = gptq;
    RETURN_IF_ERROR(ForEachLinear(
        model, ctx, sel_, calibrated, /*need_xtx=*/gptq, /*accept_quantized=*/false, "quantize",
        [&](const std::string& name, const LinearLayer& layer, const LinearStats* st) -> absl::Status {
          if (!types.count(name)) return absl::OkStatus();
          std::vector<double> raw;
          if (imatrix) {
            ASSIGN_OR_RETURN(std::vector<float> m, ImatrixImportance(*imatrix, model, name, layer.in_features));
            raw.assign(m.begin(), m.end());
          } else if (st && st->rows > 0 && o_.importance) {
            for (int64_t k = 0; k < layer.in_features; ++k) raw.push_back(st->sum_sq[k] / st->rows);
          }
          const std::vector<float> h = FloorImportance(raw);
          return quantize(name, h.empty() ? nullptr : &h, st, layer.out_axis != 0 ? &layer : nullptr);
        },
        /*keep_rows=*/0, spread));
    for (const std::string& name : {model.arch.embedding, model.arch.lm_head}) {
      if (!name.empty() && types.count(name) && model.tensors.contains(name)) {
        RETURN_IF_ERROR(quantize(name, nullptr, nullptr, nullptr));
      }
    }
    if (ctx.report.tensors.empty()) {
      int64_t quantized = 0;
      for (const LinearLayer* l : model.arch.AllLinears()) {
        const Tensor* t = model.tensors.find(l->weight);
        quantized += t && (t->quant() || IsBlockType(t->dtype())) ? 1 : 0;  // codes or ggml blocks
      }
      if (quantized > 0) {
        return FailedPrecondition(
            "quantize-gguf: the weights of {} are already quantized ({} of them); to re-quantize, decode "
            "them "
            "first: -p 'dequantize,quantize-gguf{{...}}'",
            model.source, quantized);
      }
      return FailedPrecondition("quantize-gguf: no 2-D floating-point weight was selected in {}", model.source);
    }
    model.metadata["gguf.file_type"] = std::to_string(o_.preset->file_type);
    // Counts from the report's entries (one per weight changed), the same in every MPI rank and
    // for visits replayed from a resume journal.
    std::map<std::string, int64_t> count;
    int64_t imatrix_missing = 0, reference_rounded = 0;
    for (const TensorChange& c : ctx.report.tensors) {
      const DType type = types.at(c.name);
      ++count[UpperName(type)];
      reference_rounded += IsBlockType(type) && !o_.search && HasReferenceRounding(type);
      if (imatrix) {
        if (const LinearLayer* l = model.arch.LayerOfWeight(c.name)) {
          ASSIGN_OR_RETURN(std::vector<float> m, ImatrixImportance(*imatrix, model, c.name, l->in_features));
          imatrix_missing += m.empty();
        }
      }
    }
    ctx.report.stats["tensors_quantized"] = static_cast<double>(ctx.report.tensors.size());
    for (const auto& [t, n] : count) ctx.report.stats["tensors_" + t] = static_cast<double>(n);
    if (imatrix) {
      ctx.report.notes.push_back(fmt::format(
          "block scale search weighted by the importance matrix {} ({} entries, {} chunks of {} tokens{}{})", o_.imatrix,
          imatrix->entries.size(), imatrix->chunk_count, imatrix->chunk_size,
          imatrix->datasets.empty() ? "" : ", dataset " + imatrix->datasets.front(),
          imatrix_missing ? fmt::format("; {} selected weights had no entry and were quantized unweighted",
                                        imatrix_missing)
                          : ""));
    } else if (calibrated && o_.importance) {
      ctx.report.notes.push_back("block scale search weighted by calibration E[x^2] per input");
    }
    if (reference_rounded > 0) {
      ctx.report.notes.push_back(fmt::format(
          "search=false: {} tensors rounded as llama-quantize does without an "
          "importance matrix (no search, no importance)",
          reference_rounded));
    }
    if (gptq) ctx.report.notes.push_back("GPTQ error feedback onto each block's fixed grid (damp " + std::to_string(o_.damp) + ")");
    NoteDeferredWeights(ctx.report, deferred);
    return PreservedAnalyses::None();
  }

 private:
  // The type of every tensor the pass changes, by llama-quantize's rules and order.
  absl::StatusOr<std::map<std::string, DType>> PlanTypes(const Model& model, bool weighted) const {
    const Architecture& a = model.arch;
    Facts f;
    f.n_gqa = a.num_kv_heads > 0 ? a.num_heads / a.num_kv_heads : 1;
    f.n_expert = a.num_experts;
    f.n_layer = static_cast<int64_t>(std::max<size_t>(1, a.blocks.size()));
    f.is_70b = (a.family == "llama") && a.blocks.size() == 80;
    f.has_imatrix = weighted;
    std::map<std::string, int> block_of;
    for (const Block& b : a.blocks) {
      for (const auto* group : {&b.attention, &b.mlp}) {
        for (const LinearLayer& l : *group) block_of[l.weight] = b.index;
      }
    }
    int64_t n_wv = 0, i_wv = 0;
    for (const auto& name : model.tensors.names()) n_wv += CategoryOf(model, name) == Cat::kAttnV;
    auto excluded = [&](const std::string& name) {
      for (const auto& g : sel_.exclude) {
        if (GlobMatch(g, name)) return true;
      }
      return false;
    };
    const bool tied = a.lm_head.empty() || !model.tensors.contains(a.lm_head);
    std::map<std::string, DType> types;
    for (const auto& name : model.tensors.names()) {
      const Tensor& t = model.tensors.at(name);
      const Cat c = CategoryOf(model, name);
      const bool head = c == Cat::kOutput || (c == Cat::kTokenEmbd && tied);
      const bool embd = c == Cat::kTokenEmbd && !tied;
      if (head || embd) {
        if (excluded(name) || t.shape().size() != 2 || !IsFloating(t.dtype())) continue;
      } else if (!sel_.Selects(model, name)) {
        continue;
      }
      if (c == Cat::kAttnV) ++i_wv;
      if (t.shape().size() != 2 || t.quant() || t.factors() || !IsFloating(t.dtype())) continue;
      // Blocks run along the inputs: a Conv1D weight ([in, out]) has rows of shape[0].
      const LinearLayer* layer = model.arch.LayerOfWeight(name);
      const int64_t cols = layer && layer->out_axis == 1 ? t.shape()[0] : t.shape()[1];
      DType type = o_.preset->base;
      const std::string& forced = head ? o_.output_type : embd ? o_.embed_type : std::string("auto");
      if (forced == "keep") continue;
      if (forced != "auto") {
        ASSIGN_OR_RETURN(type, ParseDType(forced));
        types[name] = Fallback(type, cols);
        continue;
      }
      if (head) {
        type = o_.pure ? type : (cols % 256 != 0 ? DType::kQ8_0 : RuleType(*o_.preset, Cat::kOutput, 0, 0, 0, f));
      } else if (!o_.pure && !embd) {
        const auto b = block_of.find(name);
        type = RuleType(*o_.preset, c, i_wv - 1, n_wv, b != block_of.end() ? b->second : 0, f);
      }
      types[name] = Fallback(type, cols);
    }
    return types;
  }

  Options o_;
  TensorSelector sel_;
};

}  // namespace

PassInfo QuantizeGgufPassInfo() {
  PassInfo info;
  info.name = "quantize-gguf";
  info.summary = "llama.cpp quantization mixes (Q4_K_M, Q3_K_M, Q2_K, IQ4_XS ...) with importance-weighted block search";
  std::vector<std::string> presets, block_types = {"auto", "keep"};
  for (const auto& p : kPresets) presets.emplace_back(p.name);
  for (DType t : kAllDTypes) {
    if (IsBlockType(t)) block_types.emplace_back(DTypeName(t));
  }
  block_types.emplace_back("f16");
  OptionBinding<Options> b;
  b.Choice(&Options::type, "type", "llama-quantize mix", presets)
      .Choice(&Options::importance, "importance",
              "auto: weight the block search by calibration E[x^2] per input when --calibration is given; none",
              {{"auto", true}, {"none", false}})
      .Choice(&Options::output_type, "output-type", "output head type (auto: the mix's rule)", block_types)
      .Choice(&Options::embed_type, "embed-type", "token embedding type (auto: the mix's rule)", block_types)
      .Flag(&Options::pure, "pure", "the mix's base type for every weight (llama-quantize --pure)")
      .Choice(&Options::method, "method",
              "rtn: weighted block search per row; gptq: GPTQ error feedback onto the block grids (needs "
              "--calibration); auto: gptq with --calibration, else rtn",
              {"auto", "rtn", "gptq"})
      .Flag(&Options::search, "search",
            "search each block's scales (else every block type is rounded as llama-quantize does "
            "without an importance matrix: the same bytes, much faster, larger error)")
      .Float(&Options::damp, "damp", "GPTQ dampening, a fraction of mean(diag H)", 0.0, 1.0)
      .Flag(&Options::act_order, "act-order",
            "GPTQ: every block's grid fitted to the original weights first, then the inputs visited by "
            "decreasing activation energy (H_ii)")
      .InputFile(&Options::imatrix, "imatrix",
                 "llama.cpp importance matrix (llama-imatrix or compress imatrix output): weights the block search "
                 "instead of calibration E[x^2]");
  info.output_extension = ".gguf";
  BindPassOptions(info, std::move(b), [](Options o, TensorSelector sel) -> absl::StatusOr<std::unique_ptr<Pass>> {
    for (const auto& p : kPresets) {
      if (p.name == o.type) o.preset = &p;
    }
    if (!o.preset) return InvalidArgument("quantize-gguf: unknown type '{}'", o.type);
    return std::make_unique<QuantizeGgufPass>(std::move(o), std::move(sel));
  });
  return info;
}

}  // namespace compress
