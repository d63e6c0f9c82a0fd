// Integer quantization of 2-D weights: parameters carried by a quantized Tensor, and the
// round-to-nearest quantizer/dequantizer that every int format and writer shares.
//
// Codes are signed int8 values (any bit width 2..8 keeps its codes in the signed range
// [-2^(b-1), 2^(b-1)-1]); a group is `group_size` consecutive elements along the input
// dimension of one output channel, and owns one scale s (and zero point z if asymmetric):
//   symmetric:  s = max|w| / (2^(b-1)-1),          q = clamp(round(w/s), -(2^(b-1)-1), 2^(b-1)-1)
//   asymmetric: s = (max w - min w) / (2^b - 1),   z = clamp(round(-2^(b-1) - min w / s)),
//               q = clamp(round(w/s) + z, -2^(b-1), 2^(b-1)-1)
//   w' = (q - z) * s, and |w - w'| <= s/2 for every element (the bound the tests check).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <memory>
#include <atomic>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "core/buffer.h"
#include "core/codebook.h"
#include "core/dtype.h"
#include "core/weight_error.h"

namespace compress {

// The quantization a pass will give the weights it selects, known from its options before it
// runs (PassInfo::planned_quant): output writers check it before any work.
struct PlannedQuant {
  std::string format = "int";  // "int", "nf4", "fp4", "mxfp4", ...
  int bits = 8;
  bool symmetric = true;
  int64_t group_size = 0;      // 0: one scale per output channel
  std::string scale_dtype = "f32";
  bool outlier_inputs = false;  // LLM.int8() f16 outlier columns
};

class DeferredQuant;

struct QuantInfo {
  int bits = 8;
  bool symmetric = true;
  int channel_axis = 0;    // 0: shape [out, in] (HF Linear); 1: [in, out] (ONNX MatMul B, GPT-2 Conv1D)
  int64_t group_size = 0;  // elements per group along the input axis; == in_features for per-channel
  int64_t channels = 0, groups = 0;
  DType original_dtype = DType::kF32;
  // The type whose values the scales are (rounded up to it by the quantizer: GGUF's f16 block
  // scales); f32 when unknown or unrounded.
  DType scale_dtype = DType::kF32;

  // [channels * groups] scales, channel-major, and the zero points in the same layout (empty
  // when symmetric). A deferred quantization (MakeDeferred) makes them with its codes in one
  // read of the source: the first access produces them when nothing asked for the codes yet.
  const std::vector<float>& scales() const { return deferred_ ? DeferredValues().scales_ : scales_; }
  const std::vector<int8_t>& zero_points() const { return deferred_ ? DeferredValues().zero_points_ : zero_points_; }
  // Writable values; a deferred quantization's are produced and copied first (the copy stops
  // sharing the production).
  std::vector<float>& mutable_scales() {
    if (deferred_) Materialize();
    return scales_;
  }
  std::vector<int8_t>& mutable_zero_points() {
    if (deferred_) Materialize();
    return zero_points_;
  }
  bool deferred() const { return deferred_ != nullptr; }
  // OK once the values exist; a deferred quantization produces them now and says whether that
  // failed (then scales() holds NaN and the codes' producer returns the same error).
  absl::Status Resolve() const;
  // The deferred production's error when it ran and failed; OK otherwise (never runs it).
  absl::Status DeferredFailure() const;
  // Codebook formats (fp4-e2m1/e3m0/e1m2, nf4, mxfp4): codes are indices 0..15 into
  // `levels()` and w' = levels[q] * s; mxfp4's scales are powers of two (E8M0 on disk).
  // Integer formats have format "int" and no levels.
  const std::string& format() const { return format_later_ && deferred_ ? DeferredValues().format_ : format_; }
  const std::vector<float>& levels() const { return format_later_ && deferred_ ? DeferredValues().levels_ : levels_; }
  void set_format(std::string format, std::vector<float> levels = {}) {
    format_ = std::move(format);
    levels_ = std::move(levels);
    format_later_ = false;
  }
  // A deferred quantization whose production chooses the codebook among formats with the same
  // bits, plain f32 scales and no mxfp4 / fp8 (quantize-fp4's format=auto): format() and
  // levels() then run the production when it has not run (the writer's production makes the
  // choice from the read that codes the weight). The meta's own format is what a failed
  // production leaves. Set before DeferredQuant::MakeDeferred.
  void LeaveFormatToProduction() { format_later_ = true; }
  // Whether format() / levels() wait for the production (they are then final once it ran).
  bool format_pending() const;
  // LLM.int8() decomposition: these input features (ascending) are kept in f16 outside the
  // codes, whose entries there are 0; values [channels, outliers], f16-rounded.
  std::vector<int64_t> outlier_inputs;
  std::vector<float> outlier_values;

  // fp8-e4m3 (W8A8 FP8 weights): codes are e4m3 bytes and w' = e4m3(q) * s.
  // (Known without the production for a format left to it: a codebook, neither fp8 nor mxfp4.)
  bool codebook() const { return format_later_ || !levels_.empty(); }
  bool fp8() const { return !format_later_ && format_ == "fp8-e4m3"; }
  bool e8m0_scales() const { return !format_later_ && format_ == "mxfp4"; }

  bool per_channel(int64_t in_features) const { return group_size == in_features; }
  // Index of the scale for element (row, col) of the 2-D weight.
  int64_t ScaleIndex(int64_t row, int64_t col) const {
    const int64_t ch = channel_axis == 0 ? row : col;
    const int64_t k = channel_axis == 0 ? col : row;
    return ch * groups + k / group_size;
  }

 private:
  friend class DeferredQuant;
  const QuantInfo& DeferredValues() const;
  void Materialize();
  std::vector<float> scales_;
  std::vector<int8_t> zero_points_;
  std::shared_ptr<DeferredQuant> deferred_;
  std::string format_ = "int";
  std::vector<float> levels_;
  bool format_later_ = false;
};

// A quantization whose scales, zero points and codes one production over the source makes
// together (the data-free quantizers: the writer's read of a weight is its only read).
// `produce(want_codes)` returns the complete QuantInfo (not deferred) and, when asked, the
// codes; `codes_for(info)` makes the codes again from a complete QuantInfo (the same bytes).
// The first of Codes() / the values' access runs `produce`, once; Codes() after that runs
// `codes_for`.
class DeferredQuant {
 public:
  struct Produced {
    std::shared_ptr<const Buffer> codes;  // null when !want_codes
    QuantInfo info;
  };
  using Produce = std::function<absl::StatusOr<Produced>(bool want_codes)>;
  using CodesFor = std::function<absl::StatusOr<std::shared_ptr<const Buffer>>(const QuantInfo& info)>;

  // `meta`: every field but the values (scales, zero points), as the production will set them.
  // The result carries the shared production; copies of it share it too. `context` prefixes
  // the production's errors (the pass, e.g. "pass 1 of 2 'quantize-int8'": they surface while
  // writing, after the pass ended).
  static QuantInfo MakeDeferred(QuantInfo meta, Produce produce, CodesFor codes_for, std::string context = "");
  // The codes (see above); the production's error when it failed.
  static absl::StatusOr<std::shared_ptr<const Buffer>> Codes(const QuantInfo& info);
  // Productions run and codes made again (codes_for) in this process: a writer that asks for
  // each weight's codes first makes no codes again (tests check it).
  struct Counts {
    int64_t produced = 0, coded_again = 0;
  };
  static Counts counts();
  // Whether the production ran (values final).
  bool ready() const { return ready_.load(std::memory_order_acquire); }

 private:
  friend struct QuantInfo;
  // Runs the production once (want_codes: keep its codes for the caller).
  absl::StatusOr<std::shared_ptr<const Buffer>> Run(bool want_codes);

  std::mutex mu_;
  bool done_ = false;
  // values_ final (set after the production, either way): readers then skip the lock (scales()
  // is read per block or element by writers and decoders).
  std::atomic<bool> ready_{false};
  absl::Status status_;
  QuantInfo meta_, values_;
  std::string context_;
  Produce produce_;
  CodesFor codes_for_;
};

// The codes b-bit values may take: symmetric [-(2^(b-1)-1), 2^(b-1)-1], asymmetric
// [-2^(b-1), 2^(b-1)-1].
struct CodeRange {
  int lo, hi;
};
inline CodeRange CodeRangeOf(int bits, bool symmetric) {
  const int hi = (1 << (bits - 1)) - 1;
  return {symmetric ? -hi : -(1 << (bits - 1)), hi};
}

// OK for the types scales may be stored in (f32, f16, bf16), else InvalidArgument.
absl::Status CheckScaleDType(DType t);

// Smallest value of `scale_dtype` (f32, f16 or bf16) that is >= s > 0: scales stored in a
// narrower type (GGUF's Q8_0/Q4_0 blocks hold an f16 scale) are rounded up before the codes
// are chosen, so codes stay in range and |w - w'| <= s/2 holds for the stored s.
absl::StatusOr<float> RoundScaleUp(float s, DType scale_dtype);

// Scale s (and zero point z, 0 when symmetric) of one group from its minimum lo <= 0,
// maximum hi >= 0 and max |w|, as the formulas above define them; an all-zero group gets s = 1.
// With scale_dtype f16/bf16, s is rounded up to that type (RoundScaleUp) before z is chosen;
// other types leave s unrounded (QuantizeRtn refuses them).
void GroupScale(float lo, float hi, float amax, int bits, bool symmetric, float* s, int* z,
                DType scale_dtype = DType::kF32);

// The checked parameters of an RTN quantization of [rows, cols] (group_size 0: per channel),
// scales (and zero points) zero-filled; InvalidArgument for a group size that does not divide
// the input dimension.
absl::StatusOr<QuantInfo> RtnInfo(int64_t rows, int64_t cols, int bits, bool symmetric, int channel_axis,
                                  int64_t group_size, DType scale_dtype);

// Quantizes a row-major 2-D weight `w` of shape [rows, cols]. `group_size` 0 means one
// group per channel. Fails when group_size does not divide the input dimension.
absl::StatusOr<std::pair<std::vector<int8_t>, QuantInfo>> QuantizeRtn(std::span<const float> w, int64_t rows,
                                                                      int64_t cols, int bits, bool symmetric,
                                                                      int channel_axis, int64_t group_size,
                                                                      DType scale_dtype = DType::kF32);

// QuantizeRtn's codes and scales, byte for byte, read straight from a dense f32, f16 or bf16
// weight (`src`, row-major [rows, cols]) in one pass that also measures what the report says:
// CompareWeights(w, w') and max over groups of max |w - w'| / (s / 2) (at most 1). A NaN or
// infinite weight is an InvalidArgument naming `name` and its first position, as
// FiniteWeights says it. The data-free quantize-int path: no f32 copy of the weight, no
// second pass to dequantize and compare.
struct MeasuredRtn {
  std::shared_ptr<UninitBuffer> codes;  // rows * cols int8 codes
  QuantInfo info;
  WeightError error;
  double max_error_over_half_scale = 0;
};
// An error naming tensor `name`'s first group whose scale left the scale type's range (an f16
// scale past 65504: weights past 65504 x the largest code), which would decode to infinities.
absl::Status ScalesInRange(const QuantInfo& q, DType scale_dtype, std::string_view name);
// keep_codes false: scales and measurements only (codes null), for a pass whose codes are
// produced again at write time (RtnCodes) instead of held.
absl::StatusOr<MeasuredRtn> QuantizeRtnMeasured(DType dtype, std::span<const uint8_t> src, int64_t rows,
                                                int64_t cols, int bits, bool symmetric, int channel_axis,
                                                int64_t group_size, DType scale_dtype, std::string_view name,
                                                bool keep_codes = true);
// The int8 codes of a dense f32 / f16 / bf16 weight for the scales and zero points `q` already
// holds (an integer format): byte for byte QuantizeRtnMeasured's codes when `q` came from it.
// No measurement, no finiteness check (QuantizeRtnMeasured made both).
absl::StatusOr<std::shared_ptr<UninitBuffer>> RtnCodes(DType dtype, std::span<const uint8_t> src, int64_t rows,
                                                       int64_t cols, const QuantInfo& q);

// OCP MX shared scale of a block whose largest |w| is `amax` (finite, > 0) on a grid whose
// largest magnitude is 2^emax_elem x (1 + fraction): 2^(floor(log2 amax) - emax_elem), the
// exponent clamped to E8M0's [-127, 127]. floor(log2) is the exact binary exponent (a float
// log2 rounds values just below a power of two up to it).
// Inline: the quantizers call them once per group of 32.
inline int FloorLog2(float x) {  // exact, for finite x > 0 (subnormals included)
  const int biased = static_cast<int>((detail::FloatBits(x) >> 23) & 0xFF);
  return biased != 0 ? biased - 127 : std::ilogb(x);
}
inline float MxSharedScale(float amax, int emax_elem) {
  const int e = std::clamp(FloorLog2(amax) - emax_elem, -127, 127);
  return e >= -126 ? detail::BitsFloat(static_cast<uint32_t>(e + 127) << 23) : std::ldexp(1.f, e);
}

// Codebook quantization of a row-major 2-D weight: one scale per group of `group_size`
// inputs of a channel (0 = per channel), codes = book.Encode(w / s).
struct CodebookOptions {
  std::string format;  // fp4-e2m1, fp4-e3m0, fp4-e1m2, nf4 or mxfp4
  int channel_axis = 0;
  int64_t group_size = 0;
  enum class Scale {
    kAbsmax,  // s = max|w| / max|level| (NF4, plain FP4)
    kSearch,  // s = r * max|w| / max|level| with the clip ratio r in [min_clip, 1] that minimises
              // sum_k h_k (w_k - w'_k)^2 over the group (LLM-FP4's clipping search)
    kE8M0,    // OCP MX: s = 2^(floor(log2 max|w|) - floor(log2 max|level|)), elements saturate
  } scale = Scale::kAbsmax;
  std::span<const double> input_weight;  // h_k per input feature (e.g. E[x_k^2]); empty = all 1
  int search_steps = 32;
  float min_clip = 0.5f;
};
struct CodebookResult {
  std::vector<int8_t> codes;
  QuantInfo info;
  double weighted_sse = 0;   // sum over elements of h_k (w - w')^2
  double weighted_norm = 0;  // sum over elements of h_k w^2 (non-finite w as 0)
};
// Both sums run per group in element order, the groups of a channel added in order, then the
// channels in order: the same bits for any thread count and for QuantizeCodebookMeasured.
absl::StatusOr<CodebookResult> QuantizeCodebook(std::span<const float> w, int64_t rows, int64_t cols,
                                                const CodebookOptions& opts);
// QuantizeCodebook once per format in `formats` (opts.format ignored); the result with the
// smallest weighted error (the first on ties).
absl::StatusOr<CodebookResult> QuantizeCodebookBest(std::span<const float> w, int64_t rows, int64_t cols,
                                                    const std::vector<std::string>& formats,
                                                    CodebookOptions opts);

// QuantizeCodebookBest read straight from a stored f32 / f16 / bf16 [out, in] weight
// (channel_axis 0, groups of at most kWeightErrorChunk inputs), measured while it codes, in
// one pass over the weight for all formats: codes and scales are the same bits as
// QuantizeCodebookBest on the decoded values, the error is CompareWeights' against the
// dequantized result; both sums are QuantizeCodebookBest's bits too, except where
// PlainCodebookScales (then they are the error's err2 / ref2). A NaN or infinite weight is an InvalidArgument naming `name` and its
// first position (FiniteWeights' message). The data-free NF4 / FP4 / MXFP4 path.
struct MeasuredCodebook {
  std::shared_ptr<UninitBuffer> codes;  // rows * cols int8 codes (4-bit values)
  QuantInfo info;
  double weighted_sse = 0, weighted_norm = 0;
  WeightError error;
};
// No input weights and no clipping search: each group's scale follows from its absmax alone
// (or the E8M0 rule) and the weighted error is the plain one. Then QuantizeCodebookMeasured
// reports the error sums of the stored values (the chosen format's, among several) as
// weighted_sse / weighted_norm and takes per-group sums only to choose among several formats
// (a caller on another path reports the same way), and ChooseCodebookFormat may choose from
// estimates, so a pass can code the chosen format alone.
bool PlainCodebookScales(const CodebookOptions& opts);
// Whether QuantizeCodebookMeasured takes this layout.
bool CodebookMeasuredLayout(int64_t cols, const CodebookOptions& opts);
// Codes are held for the chosen format only: with several formats the scales and sums are
// measured first and the winner is coded afterwards from its scales (a second read), so the
// losers' codes are never stored. keep_codes false: no codes (null), for a pass whose codes
// are produced at write time (CodebookCodes).
absl::StatusOr<MeasuredCodebook> QuantizeCodebookMeasured(DType dtype, std::span<const uint8_t> src, int64_t rows,
                                                          int64_t cols, const std::vector<std::string>& formats,
                                                          CodebookOptions opts, std::string_view name,
                                                          bool keep_codes = true);
// The format QuantizeCodebookMeasured would choose among `formats` for this weight, without
// its codes, error or f64 sums: for scales without a clipping search and no input weights
// (else, and without AVX-512, QuantizeCodebookMeasured chooses). Each format's error sum is
// estimated in f32 (differences rounded once, squares added in fused steps) with a bound on
// how far that and QuantizeCodebookMeasured's f64 sums can be from the exact sum; a format
// whose bound lies below every other's is the one those sums pick, and only where bounds
// overlap (near ties) do the f64 sums decide. A NaN or infinite weight is
// QuantizeCodebookMeasured's error.
// The estimates behind it, for at most three formats: each format's f32 estimate of the
// stored values' squared error sum and bounds that hold both the exact sum and
// QuantizeCodebookMeasured's f64 sums (lower <= sum <= upper); nullopt where it estimates
// nothing (the conditions above, a NaN or infinite weight, no AVX-512).
struct CodebookEstimates {
  std::vector<double> sums, lower, upper;  // per format
};
std::optional<CodebookEstimates> EstimateCodebookErrors(DType dtype, std::span<const uint8_t> src, int64_t rows,
                                                        int64_t cols, const std::vector<std::string>& formats,
                                                        const CodebookOptions& opts);
struct CodebookChoice {
  size_t index = 0;    // into formats
  bool exact = false;  // the f64 sums decided (bounds overlapped, or no estimate here)
};
absl::StatusOr<CodebookChoice> ChooseCodebookFormat(DType dtype, std::span<const uint8_t> src, int64_t rows,
                                                    int64_t cols, const std::vector<std::string>& formats,
                                                    const CodebookOptions& opts, std::string_view name);
// QuantizeCodebookMeasured's QuantInfo for one format, without the scales (a deferred
// quantization's metadata).
absl::StatusOr<QuantInfo> CodebookParameters(int64_t rows, int64_t cols, const std::string& format,
                                             const CodebookOptions& opts);
// The codes of a stored f32 / f16 / bf16 weight in QuantizeCodebookMeasured's layout for the
// codebook and scales `q` holds: byte for byte its codes when `q` came from it.
absl::StatusOr<std::shared_ptr<UninitBuffer>> CodebookCodes(DType dtype, std::span<const uint8_t> src, int64_t rows,
                                                            int64_t cols, const QuantInfo& q);

// Per-channel FP8 E4M3 weights: s = max|w| / 448 per output channel (1 for an all-zero
// channel), codes = e4m3(w / s) rounded to nearest even.
std::pair<std::vector<int8_t>, QuantInfo> QuantizeFp8(std::span<const float> w, int64_t rows, int64_t cols,
                                                      int channel_axis);

// w' = (q - z) * s (integer), levels[q] * s (codebook) or e4m3(q) * s for every element, then the
// outlier inputs' f16 values.
void Dequantize(std::span<const int8_t> codes, int64_t rows, int64_t cols, const QuantInfo& q, float* out);

}  // namespace compress
