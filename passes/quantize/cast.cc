// The cast pass: lazy dtype conversion with per-tensor error metrics.
#include "passes/quantize/cast.h"

#include <cmath>
#include <limits>
#include <optional>
#include <vector>

#include "core/checkpoint_edit.h"
#include "core/vector_math.h"
#include "core/weight_error_simd.h"

namespace compress {
namespace {

struct CastStats {
  WeightError error;  // over the elements that are finite before and after
  int64_t overflowed = 0;
};

#if defined(__AVX512F__)
// 16 finite f32 values rounded to `To` (f16 or bf16: F32ToF16's / F32ToBF16's bits for finite
// values, overflow to infinity included), stored at dst, and given back as f32.
template <DType To>
inline __m512 Round16(__m512 x, uint8_t* dst) {
  if constexpr (To == DType::kF16) {
    const __m256i h = _mm512_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), h);
    return _mm512_cvtph_ps(h);
  } else {
    const __m512i b = _mm512_castps_si512(x);
    const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(b, 16), _mm512_set1_epi32(1));
    const __m512i r = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(b, _mm512_set1_epi32(0x7FFF)), odd), 16);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), _mm512_cvtepi32_epi16(r));
    return _mm512_castsi512_ps(_mm512_slli_epi32(r, 16));
  }
}

// Elements begin .. begin + len - 1 of src (element 0 at an index that is a multiple of 16, as
// `begin` is) converted from From to To into dst (element 0 at dst) in vector steps of 16,
// measured into `err` when given; returns how many were done: it stops before a step holding a
// non-finite value or one that overflows (the general code takes those), and before a tail of
// fewer than 16.
template <DType From, DType To>
int64_t CastSteps(const uint8_t* src, int64_t begin, int64_t len, uint8_t* dst, WeightErrorChunk* err) {
  const __m512 big = _mm512_set1_ps(std::numeric_limits<float>::max());
  std::optional<ErrorLanes8> lanes;
  if (err) lanes.emplace(*err);
  int64_t k = 0;
  for (; k + 16 <= len; k += 16) {
    const __m512 x = Load16As<From>(src, begin + k);
    if (_mm512_cmp_ps_mask(_mm512_abs_ps(x), big, _CMP_LE_OQ) != 0xFFFF) break;
    const __m512 back = Round16<To>(x, dst + 2 * (begin + k));
    if (_mm512_cmp_ps_mask(_mm512_abs_ps(back), big, _CMP_LE_OQ) != 0xFFFF) break;
    // back - x is exact in f32 (Sterbenz: a finite rounding to a narrower type stays within a
    // factor of 2 of x, or is 0): Add16's sums with fewer steps.
    if (lanes) lanes->Add16Exact(x, _mm512_sub_ps(back, x));
  }
  if (lanes) lanes->Store(*err);
  return k;
}

constexpr int64_t kCastStep = 16;
#elif defined(__AVX2__)
// Round16 for 8 values with AVX2 (F16C's conversion, the same bf16 rounding).
template <DType To>
inline __m256 Round8(__m256 x, uint8_t* dst) {
  if constexpr (To == DType::kF16) {
    const __m128i h = _mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst), h);
    return _mm256_cvtph_ps(h);
  } else {
    const __m256i b = _mm256_castps_si256(x);
    const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(b, 16), _mm256_set1_epi32(1));
    const __m256i r =
        _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(b, _mm256_set1_epi32(0x7FFF)), odd), 16);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst),
                     _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(r, 16));
  }
}

// CastSteps (above, AVX-512) in steps of 8 (element 0 at a multiple of 8).
template <DType From, DType To>
int64_t CastSteps(const uint8_t* src, int64_t begin, int64_t len, uint8_t* dst, WeightErrorChunk* err) {
  std::optional<ErrorLanesAvx2> lanes;
  if (err) lanes.emplace(*err);
  int64_t k = 0;
  for (; k + 8 <= len; k += 8) {
    const __m256 x = Load8As<From>(src, begin + k);
    if (_mm256_movemask_ps(FiniteLanes8(x)) != 0xFF) break;
    const __m256 back = Round8<To>(x, dst + 2 * (begin + k));
    if (_mm256_movemask_ps(FiniteLanes8(back)) != 0xFF) break;
    if (lanes) lanes->Add8Exact(x, _mm256_sub_ps(back, x));  // exact, as in the AVX-512 steps
  }
  if (lanes) lanes->Store(*err);
  return k;
}

constexpr int64_t kCastStep = 8;
#endif

#if defined(__AVX2__)
using CastStepsFn = int64_t (*)(const uint8_t*, int64_t, int64_t, uint8_t*, WeightErrorChunk*);
// CastSteps (this build's vector width) for from -> to, or null when it has no vector steps for them.
CastStepsFn CastStepsFor(DType from, DType to) {
  auto to_of = [&]<DType From>() -> CastStepsFn {
    if (to == DType::kF16) return From == DType::kF16 ? nullptr : &CastSteps<From, DType::kF16>;
    if (to == DType::kBF16) return From == DType::kBF16 ? nullptr : &CastSteps<From, DType::kBF16>;
    return nullptr;
  };
  if (from == DType::kF32) return to_of.template operator()<DType::kF32>();
  if (from == DType::kF16) return to_of.template operator()<DType::kF16>();
  if (from == DType::kBF16) return to_of.template operator()<DType::kBF16>();
  return nullptr;
}
#endif

// Converts `n` elements from `from` to `to`, in parallel over chunks of kWeightErrorChunk
// elements, each converted in L1-sized pieces. Writes the converted bytes to `dst` when
// given and measures the rounding error when `stats` is (the chunks' sums combined in order:
// the same figures as CompareWeights, for any thread count).
absl::Status CastChunked(DType from, const uint8_t* src, int64_t n, DType to, uint8_t* dst,
                         CastStats* stats) {
  constexpr int64_t kPiece = 2048;  // even, so 4-bit types split on byte boundaries
  const int64_t chunks = (n + kWeightErrorChunk - 1) / kWeightErrorChunk;
  std::vector<WeightErrorChunk> errors(stats ? chunks : 0);
  int64_t overflowed = 0;
  bool failed = false;
#if defined(__AVX2__)
  const CastStepsFn steps = CastStepsFor(from, to);
#endif
  // One chunk runs on the calling thread: a parallel region per small tensor costs more than
  // the conversion (and wakes sleeping threads under passive waits).
#pragma omp parallel if (chunks > 1) reduction(+ : overflowed)
  {
    std::vector<float> x(kPiece), back(kPiece);
    std::vector<uint8_t> enc(DTypeBytes(to, kPiece));
#pragma omp for schedule(static)
    for (int64_t c = 0; c < chunks; ++c) {
      const int64_t chunk_end = std::min(n, (c + 1) * kWeightErrorChunk);
      bool ok = true;
      // Elements [begin, begin + len) one at a time (through f32 arrays).
      auto general = [&](int64_t begin, int64_t len) {
        uint8_t* out = dst ? dst + DTypeBytes(to, begin) : enc.data();
        ok = DecodeToF32(from, src + DTypeBytes(from, begin), len, x.data()).ok() &&
             EncodeFromF32(to, x.data(), len, out).ok();
        if (!ok || !stats) return;
        ok = DecodeToF32(to, out, len, back.data()).ok();
        // Non-finite inputs are not measured; a finite input that became infinite is counted.
        // Elements left out enter the sums as 0 against 0.
        int64_t over = 0;
#pragma omp simd reduction(+ : over)
        for (int64_t i = 0; i < len; ++i) {
          const bool in_finite = IsFiniteValue(x[i]);
          const bool out_finite = IsFiniteValue(back[i]);
          over += in_finite && !out_finite ? 1 : 0;
          const bool measured = in_finite && out_finite;
          x[i] = measured ? x[i] : 0.f;
          back[i] = measured ? back[i] : 0.f;
        }
        overflowed += over;
        errors[c].AddSpan(begin, x.data(), back.data(), len);
      };
      for (int64_t begin = c * kWeightErrorChunk; ok && begin < chunk_end; begin += kPiece) {
        const int64_t len = std::min(kPiece, chunk_end - begin);
        int64_t k = 0;
#if defined(__AVX2__)
        // Vector steps (the same bits), the general code for a step they leave and the tail.
        while (steps && ok && k < len) {
          uint8_t* out = dst ? dst + DTypeBytes(to, begin) : enc.data();
          k += steps(src + DTypeBytes(from, begin), k, len - k, out, stats ? &errors[c] : nullptr);
          if (k == len) break;
          const int64_t n1 = std::min<int64_t>(kCastStep, len - k);
          general(begin + k, n1);
          k += n1;
        }
#endif
        if (ok && k < len) general(begin + k, len - k);
      }
      if (!ok) {
#pragma omp atomic write
        failed = true;
      }
    }
  }
  if (failed) return Internal("cast {} -> {} failed", DTypeName(from), DTypeName(to));
  if (stats) *stats = {CombineWeightErrorChunks(errors), overflowed};
  return absl::OkStatus();
}

struct CastOptions {
  DType dtype = DType::kBF16;
};

class CastPass final : public Pass {
 public:
  CastPass(CastOptions o, TensorSelector sel) : target_(o.dtype), sel_(std::move(sel)) {}

  absl::StatusOr<PreservedAnalyses> Run(Model& model, PassContext& ctx) override {
    std::vector<std::string> names = sel_.Select(model);
    int64_t done = 0;
    for (const auto& name : names) {
      const Tensor src = model.tensors.at(name);
      ctx.Progress("cast", done++, static_cast<int64_t>(names.size()));
      if (!IsFloating(src.dtype())) {
        ctx.report.notes.push_back(
            fmt::format("left '{}' alone: {} is not a floating type", name, DTypeName(src.dtype())));
        continue;
      }
      if (src.dtype() == target_) continue;
      TensorChange change{name,
                          src.shape(),
                          src.shape(),
                          std::string(DTypeName(src.dtype())),
                          std::string(DTypeName(target_)),
                          src.nbytes(),
                          0,
                          fmt::format("cast {}->{}", DTypeName(src.dtype()), DTypeName(target_)),
                          {}};
      // Converted when the writer (or a later pass) asks for the bytes; the first conversion
      // measures the error too, so the input is read once.
      auto pending = std::make_shared<PendingMetrics>();
      const DType target = target_;
      Tensor lazy = Tensor::Lazy(
          target_, src.shape(), [src, target, pending]() -> absl::StatusOr<std::shared_ptr<const Buffer>> {
            ASSIGN_OR_RETURN(auto in, src.ReadOnce());
            auto out = std::make_shared<UninitBuffer>(DTypeBytes(target, src.numel()));
            CastStats st;
            const bool measure = !pending->ready();
            RETURN_IF_ERROR(CastChunked(src.dtype(), in->data(), src.numel(), target, out->mutable_data(),
                                        measure ? &st : nullptr));
            src.ReleasePages();
            if (measure) {
              std::map<std::string, double> m{{"max_abs_error", st.error.max_abs},
                                               {"rel_fro_error", st.error.rel_fro}};
              if (st.overflowed) m["overflowed_to_inf"] = static_cast<double>(st.overflowed);
              pending->Set(std::move(m));
            }
            return std::shared_ptr<const Buffer>(std::move(out));
          });
      change.pending = pending;
      change.measure = [lazy] { return lazy.Data().status(); };
      change.bytes_after = lazy.nbytes();
      model.tensors.Set(name, std::move(lazy));
      ctx.report.tensors.push_back(std::move(change));
    }
    ctx.report.stats["tensors_cast"] = static_cast<double>(ctx.report.tensors.size());
    RETURN_IF_ERROR(UpdateStorageType(model, ctx));
    return PreservedAnalyses::None();
  }

 private:
  // Checkpoints whose floating-point tensors now share one type record it (HF loaders read
  // torch_dtype / dtype to pick the load type).
  static absl::Status UpdateStorageType(Model& model, const PassContext& ctx) {
    if (model.format != ModelFormat::kSafetensors || !ctx.checkpoint) return absl::OkStatus();
    std::optional<DType> common;
    for (const auto& n : model.tensors.names()) {
      DType d = model.tensors.at(n).dtype();
      if (!IsFloating(d)) continue;
      if (common && *common != d) return absl::OkStatus();
      common = d;
    }
    return common ? ctx.checkpoint->SetStorageType(model, *common) : absl::OkStatus();
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
  OptionBinding<CastOptions> b;
  b.Choice(&CastOptions::dtype, "dtype", "target type", DTypeChoices({DType::kF16, DType::kBF16, DType::kF32}));
  BindPassOptions(info, std::move(b), [](const CastOptions& o, TensorSelector sel) {
    return std::make_unique<CastPass>(o, std::move(sel));
  });
  return info;
}

}  // namespace compress
