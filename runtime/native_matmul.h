// Products on linear weights kept in their stored form, with the numerics of llama.cpp's CPU
// backend: bf16 weights times activations rounded to bf16 (pairs of bf16 products summed in
// f32, as AVX-512 BF16's VDPBF16PS does), f16 / f32 weights (f16 widened) times the f32 activations
// (one fused multiply-add per input, in input order: the f32 path's values up to the order of
// the sum), and 4/8-bit integer weights in groups of 32 (GGUF
// Q8_0 / Q4_0, compress's int8 / int4 g32) times activations quantized to int8 per block of
// 32 (llama.cpp's Q8_0 activations): each block's integer dot product is exact, then scaled by
// both blocks' scales and added in f32, block after block. GGUF K-quants and the affine legacy
// types keep their codes with a scale and an offset per 16 inputs: each half block's integer
// dot is scaled, and the offset times the half's activation sum added.
//
// The weight is packed once at load into groups of 16 output rows, interleaved so that one
// 64-byte vector holds the same input positions of 16 rows (4 int8 codes or 2 bf16 per row):
// a product broadcasts 4 activation bytes (or 2 bf16) and gets 16 outputs per instruction
// (VPDPBUSD / VDPBF16PS), with no horizontal sums. Without those instructions (checked at run
// time) AVX2 kernels read the same packing 8 lanes at a time (the integer dot products with
// VPMADDUBSW / VPMADDWD, exact; bf16 widened to f32 with FMA where that is exact for the values
// at hand, else the portable loop), and without AVX2 a plain loop computes the same sums in the
// same order, so the results are the same bits on every x86-64 CPU (the bf16 path emulates
// VDPBF16PS's flush of subnormals to zero).
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "Eigen/Core"

namespace compress {

class Tensor;

// How the runtime multiplies activations by linear weights.
enum class MatmulMode {
  kF32,     // every weight decoded to f32, f32 products: the reference numerics (default)
  kNative,  // f32, f16, bf16 and int 4/8-bit g32 weights stay packed and run the products above
  // kNative, with f32 and f16 weights rounded to bf16 at load (to nearest even) and run as bf16
  // weights: the products of a bf16 checkpoint for any dense checkpoint (not its exact values).
  kBf16,
};
// "f32", "native", "bf16" (kF32 for anything else: callers check the name first).
MatmulMode MatmulModeNamed(std::string_view name);

// bf16 exponent fields (biased) of a set of values: the smallest and largest among the normal
// nonzero ones, and whether any is subnormal or infinite / NaN (ScanBf16 in the .cc fills it).
struct Bf16Exponents {
  int lo = 255, hi = 0;
  bool subnormal = false, special = false;
};

class PackedWeight {
 public:
  using RowMatrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  // kInt8: one scale per row and block of 32; kInt8Grouped: a scale and an offset per 16
  // (GGUF K-quants and the affine legacy types: w = scale x code + offset). kLevels16: 4-bit
  // codes into a table of 16 f32 levels with a scale per row and group of inputs (NF4):
  // each weight is levels[code] x scale in f32 (the dequantized value), times the f32
  // activations with one fused multiply-add per input in input order, as kF32.
  enum class Kind { kBf16, kF16, kF32, kInt8, kInt8Grouped, kLevels16 };

  // Rows [row0, row0 + rows) of the 2-D weight `t` ([out, in]) packed, or nullopt when its form
  // has no native product: other dense types (f64, fp8), fp8-e4m3 codes with group scales, [in, out]
  // layouts, integer groups that are not a multiple of 32 (or an input width that is not), 8-bit codes
  // with zero points. LLM.int8() weights pack their int8 codes and keep the f16 outlier input
  // features apart: the codes multiply the activations with those features set to 0 (so they
  // do not widen their blocks' int8 steps), and each outlier feature is added in f32, one
  // fused multiply-add per feature in order. GGUF block types (Q4_0 ... Q8_0, Q2_K ... Q6_K, IQ4_NL, IQ4_XS) pack their
  // stored codes with their block scales (and mins); FP4 / MXFP4 codebooks pack their levels as
  // int8 (IntegerLevelMultiplier); other codebooks of at most 16 levels (NF4) as kLevels16, for
  // any even group size that divides the input width. fp8-e4m3 codes with one scale per output
  // row (W8A8 FP8) pack as f16 (every e4m3 value is one exactly) times the f32 activations,
  // each row's sum then times its scale. `why` (when given) receives the reason.
  // `dense_as_bf16`: f32 and f16 weights with an even input width are rounded to bf16 (to
  // nearest even) and packed as bf16 (MatmulMode::kBf16).
  static std::optional<PackedWeight> Pack(const Tensor& t, int64_t row0, int64_t rows, std::string* why = nullptr,
                                          bool dense_as_bf16 = false);
  // The same for a weight stored [in, out] (GPT-2's Conv1D): f32, f16, bf16, or integer / FP4 codes with
  // channel_axis 1, packed as their transpose [out, in] (every output row); `dense_as_bf16` as Pack's.
  static std::optional<PackedWeight> PackTransposed(const Tensor& t, std::string* why = nullptr,
                                                    bool dense_as_bf16 = false);
  // Packs plain values: bf16 bits [out, in], or int codes [out, in] with one scale per row and
  // block of 32 ([out, in / 32]); in must be even (bf16) or a multiple of 32 (int).
  static PackedWeight FromBf16(const uint16_t* w, int64_t out, int64_t in);
  // f16 bits or f32 values [out, in], any in.
  static PackedWeight FromF16(const uint16_t* w, int64_t out, int64_t in);
  static PackedWeight FromF32(const float* w, int64_t out, int64_t in);
  static PackedWeight FromCodes(const int8_t* codes, const float* scales, int64_t out, int64_t in);
  // Codes with a scale and an offset per row and 16 inputs ([out, in / 16] each; offsets may
  // be null for none); in a multiple of 32.
  static PackedWeight FromGroupedCodes(const int8_t* codes, const float* scales, const float* offsets, int64_t out,
                                       int64_t in);
  // Codes 0..15 [out, in] into `levels` (16 values), one scale per row and `group` inputs
  // ([out, in / group]); group even and dividing in.
  static PackedWeight FromLevelCodes(const uint8_t* codes, const float* levels, const float* scales, int64_t out,
                                     int64_t in, int64_t group);

  // y [m, out] = x [m, in] W^T.
  RowMatrix Apply(const RowMatrix& x) const;
  // The same for activations an integer activation quantization (core/act_quant.h, at most
  // 8 bits, symmetric) has already made code x step: `steps` [m, in / group] holds each row's
  // step per group of inputs (a row's single step: group = in), and the integer product runs
  // on those codes themselves (the int8 kinds only; TakesCodedActs says whether it applies).
  bool TakesCodedActs(int64_t group) const;
  // Whether Apply multiplies the f32 activations as given (f32, f16, levels and fp8 forms), so
  // any activation quantization applied to them first keeps its values.
  bool TakesF32Acts() const { return kind_ == Kind::kF16 || kind_ == Kind::kF32 || kind_ == Kind::kLevels16; }
  RowMatrix ApplyCodedActs(const RowMatrix& xq, std::span<const float> steps, int64_t group,
                           bool portable = false) const;
  struct ActSteps {
    const float* steps;
    int64_t group;
  };
  // The same with the portable loop whatever the CPU has (tests compare the two).
  RowMatrix ApplyPortable(const RowMatrix& x) const;
  // Takes input features `features` (ascending) out of the integer product, as LLM.int8()'s
  // outlier features: their weight columns are kept in f32 (the packed values) and each is
  // added with one fused multiply-add per feature, the activations' own value (not a code).
  // For activation codes that would leave int8 there (core/act_quant.h CodedActApart). The int8
  // kinds only; false (and no change) for others or features out of range or order.
  bool KeepInputsApart(std::span<const int64_t> features);
  // Each output row's sum of the packed weight values over the inputs that run the product
  // (the features kept apart excluded), summed in f64: with ApplyCodedActs on codes shifted by
  // an offset (zero-point inputs), offset x step x this sum gives the shift back.
  std::vector<double> CodedRowSums() const;
  // The weight's values (f32, bf16 / f16 widened, or s x q).
  RowMatrix ToF32() const;
  bool IsZero() const;

  Kind kind() const { return kind_; }
  int64_t out() const { return out_; }
  int64_t in() const { return in_; }
  int64_t bytes() const {
    return static_cast<int64_t>(
        data_.size() + 2 * code_sums_.size() +
        4 * (scales_.size() + offsets_.size() + outlier_values_.size() + row_scales_.size()));
  }

 private:
  RowMatrix Run(const RowMatrix& x, bool portable, const ActSteps* steps = nullptr) const;
  float PackedValue(int64_t n, int64_t k) const;  // weight (n, k) as packed (no outliers, no row scale)
  RowMatrix RunPacked(const RowMatrix& x, bool portable, const ActSteps* steps) const;
  template <typename E>
  static PackedWeight FromWide(Kind kind, const E* w, int64_t out, int64_t in);
  void SumCodes();  // code_sums_ and max_abs_code_ from data_
  static std::optional<PackedWeight> PackBlocks(const Tensor& t, int64_t row0, int64_t rows, std::string* why);
  static std::optional<PackedWeight> PackLevels(const Tensor& t, int64_t row0, int64_t rows, std::string* why);
  static std::optional<PackedWeight> PackFp8(const Tensor& t, int64_t row0, int64_t rows, std::string* why);

  Kind kind_ = Kind::kBf16;
  int64_t out_ = 0, in_ = 0;
  int64_t groups_ = 0;  // ceil(out / 16)
  int64_t steps_ = 0;   // bf16: in / 2 pairs; f16, f32, levels: in; int8: in / 32 blocks
  int64_t level_group_ = 0;  // kLevels16: inputs per scale
  // bf16: [group][pair][16 lanes][2] uint16; f16 / f32: [group][input][16 lanes] uint16 / float;
  // int8: [group][block][8 quads][16 lanes][4] codes + 128; levels: [group][pair][16 lanes]
  // bytes, the pair's first code in the low nibble.
  std::vector<uint8_t> data_;
  std::vector<float> scales_;   // int8: [group][block][16 lanes]; grouped: [group][block][2 halves][16 lanes];
                                // levels: [group][input group][16 lanes]
  std::vector<float> offsets_;  // grouped: as scales_, empty when every offset is 0
  std::vector<float> levels_;   // kLevels16: the 16 levels
  // Input features kept apart (LLM.int8()'s outliers, KeepInputsApart; ascending) and their
  // values, [feature][out].
  std::vector<int64_t> outlier_inputs_;
  std::vector<float> outlier_values_;
  // fp8: each output row's scale, applied to its finished sum ([out]; empty: none).
  std::vector<float> row_scales_;
  // int8 kinds: each row's code sum per half block, [group][block][2 halves][16 lanes], and the
  // largest |code| (the AVX2 kernels for small codes).
  std::vector<int16_t> code_sums_;
  int max_abs_code_ = 128;
  // bf16: the exponent range of the weights (whether the AVX2 kernel's FMAs are exact).
  Bf16Exponents bf16_exponents_;
};

// Whether this CPU runs the packed products with vector kernels: AVX-512 VNNI / BF16, or AVX2
// with FMA and F16C (8 lanes; the same bits as the portable loop, which the AVX2 bf16 product
// checks per call: see Bf16TileAvx2).
bool NativeMatmulAccelerated();
// The kernels in use: "avx512", "avx2" or "portable".
std::string NativeMatmulIsa();
// Caps the kernels at `name` ("portable", "avx2", "avx512"; also the environment variable
// COMPRESS_MATMUL_ISA at start), for tests and benchmarks that compare them on one CPU; false
// (no change) for another name or one this CPU lacks.
bool SetNativeMatmulIsa(std::string_view name);

// Whether Pack (out_axis 0: `t` is [out, in]) or PackTransposed (out_axis 1: [in, out]) would
// find `t`'s form packable, judged from its dtype and quantization alone (no data read; Pack
// may still refuse codes that leave int8 after their zero points).
bool HasNativeForm(const Tensor& t, int out_axis = 0);
// Whether Pack (out_axis 0) or PackTransposed (1) would give `t` a form that takes f32
// activations as they are (TakesF32Acts): dense f32 / f16, and for Pack fp8 per row or a
// 16-level codebook without integer levels.
bool NativeFormTakesF32Acts(const Tensor& t, int out_axis = 0);
// (IntegerLevelMultiplier, which picks the int8 form of codebook weights, is in core/codebook.h.)

}  // namespace compress
