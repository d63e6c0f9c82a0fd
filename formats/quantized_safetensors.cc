// compress's own quantized safetensors layout, the choice between it and compressed-tensors,
// and the bit packing both use.
#include "formats/quantized_safetensors.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <optional>

#include "core/dtype.h"
#include "core/json_util.h"
#include "core/quant.h"
#include "core/status.h"
#include "formats/activation_layout.h"
#include "formats/compressed_tensors.h"

namespace compress {
namespace {

Tensor Bytes(DType t, Shape shape, std::vector<uint8_t> bytes) {
  return Tensor(t, std::move(shape), std::make_shared<OwnedBuffer>(std::move(bytes)));
}

// Codes stored as they are: codebook indices and e4m3 bytes; int codes are offset by 2^(bits-1).
bool RawCodes(const QuantInfo& q) { return q.codebook() || q.fp8(); }

absl::StatusOr<ExpandedStore> ExpandCompressLayout(const Model& m) {
  ExpandedStore out;
  nlohmann::json layers = nlohmann::json::object();
  for (const auto& name : m.tensors.names()) {
    const Tensor& t = m.tensors.at(name);
    const QuantInfo* q = t.quant();
    if (!q) {
      out.tensors.Set(name, t);
      continue;
    }
    if (!name.ends_with(".weight") || q->channel_axis != 0) {
      return Unimplemented(
          "tensor '{}': quantized safetensors weights must be '<layer>.weight' of shape [out, in] "
          "(Conv1D-style [in, out] weights are not supported yet)",
          name);
    }
    const std::string base = name.substr(0, name.size() - 7);
    const int64_t rows = t.shape()[0], cols = t.shape()[1];
    // Packed when the writer asks for it: packing overlaps the writing of the previous tensor,
    // and a model larger than memory (codes produced on demand) writes in O(tensor).
    const int64_t row_bytes = (cols * q->bits + 7) / 8;
    const Tensor src = t;
    const int bits = q->bits, offset = RawCodes(*q) ? 0 : 1 << (q->bits - 1);
    out.tensors.Set(base + ".weight_packed",
                    Tensor::Lazy(DType::kU8, {rows, row_bytes},
                                 [src, rows, cols, row_bytes, bits,
                                  offset]() -> absl::StatusOr<std::shared_ptr<const Buffer>> {
                                   ASSIGN_OR_RETURN(auto data, src.Data());
                                   auto packed = std::make_shared<UninitBuffer>(rows * row_bytes);
                                   PackCodeRows(reinterpret_cast<const int8_t*>(data->data()), rows, cols, bits,
                                                offset, packed->mutable_data(), row_bytes);
                                   return std::shared_ptr<const Buffer>(std::move(packed));
                                 }));
    const Shape sshape{q->channels, q->groups};
    // (A deferred quantization's values are made with its codes, checked by that production.)
    if (!q->deferred() && static_cast<int64_t>(q->scales().size()) != q->channels * q->groups)
      return Internal("tensor '{}': {} scales for {} x {} groups", name, q->scales().size(), q->channels, q->groups);
    // Scales too are made when the writer asks (beside the previous tensor's write), in parallel.
    const bool e8m0 = q->e8m0_scales();
    out.tensors.Set(base + ".weight_scale",
                    Tensor::Lazy(e8m0 ? DType::kU8 : DType::kF32, sshape,
                                 [src, e8m0]() -> absl::StatusOr<std::shared_ptr<const Buffer>> {
                                   const std::vector<float>& sc = src.quant()->scales();
                                   const int64_t n = static_cast<int64_t>(sc.size());
                                   auto b = std::make_shared<UninitBuffer>(static_cast<size_t>(n) * (e8m0 ? 1 : 4));
                                   if (!e8m0) {
                                     std::memcpy(b->mutable_data(), sc.data(), static_cast<size_t>(n) * 4);
                                     return std::shared_ptr<const Buffer>(std::move(b));
                                   }
                                   uint8_t* e = b->mutable_data();
#pragma omp parallel for schedule(static) if (n > (1 << 16))
                                   for (int64_t i = 0; i < n; ++i) e[i] = static_cast<uint8_t>(FloorLog2(sc[i]) + 127);
                                   return std::shared_ptr<const Buffer>(std::move(b));
                                 }));
    if (!q->symmetric) {
      out.tensors.Set(base + ".weight_zero_point", ZeroPointTensor(src));
    }
    const int64_t n = static_cast<int64_t>(q->outlier_inputs.size());
    if (n > 0) {
      std::vector<uint8_t> idx(n * 8);
      std::memcpy(idx.data(), q->outlier_inputs.data(), idx.size());
      out.tensors.Set(base + ".weight_outlier_index", Bytes(DType::kI64, {n}, std::move(idx)));
      ASSIGN_OR_RETURN(Tensor v, Tensor::FromF32(q->outlier_values, {rows, n}, DType::kF16));
      out.tensors.Set(base + ".weight_outlier", std::move(v));
    }
    // A format the production chooses is named once the writer has made the codes.
    if (q->format_pending()) out.formats_after_write.emplace_back(base, *q);
    layers[base] = {{"format", q->format_pending() ? std::string() : q->format()},
                    {"bits", q->bits},
                    {"group_size", q->group_size},
                    {"symmetric", q->symmetric},
                    {"outliers", n}};
    if (nlohmann::json in = InputActivationsJson(m, name, false); !in.is_null()) layers[base]["input_activations"] = in;
  }
  out.quantization_config = {
      {"quant_method", "compress"}, {"format_version", 1}, {"layers", std::move(layers)}};
  return out;
}

absl::Status CollapseCompressLayout(Model& m, const nlohmann::json& qc, const std::string& path,
                                    const LoadOptions& opts) {
  if (qc.value("format_version", 0) != 1) {
    return Unimplemented("{}: compress quantization format_version {} is not supported (only 1)", path,
                         qc.value("format_version", 0));
  }
  if (!qc.contains("layers") || !qc["layers"].is_object())
    return DataLoss("{}: quantization_config has no layers", path);
  const DType original = ConfigTorchDType(m.config);
  for (const auto& item : qc["layers"].items()) {
    const std::string base = item.key();  // named (not a binding): the lambdas below capture it
    const nlohmann::json& spec = item.value();
    if (!spec.is_object())
      return DataLoss("{}: quantization_config.layers['{}'] is not an object", path, base);
    QuantInfo q;
    const JsonFields f(spec, path, "quantization_config.layers['" + base + "'].");
    ASSIGN_OR_RETURN(auto format, f.String("format"));
    ASSIGN_OR_RETURN(auto bits, f.Int("bits", 1, 8));
    ASSIGN_OR_RETURN(auto symmetric, f.Bool("symmetric"));
    ASSIGN_OR_RETURN(auto group, f.Int("group_size", 0, INT64_C(1) << 32));
    ASSIGN_OR_RETURN(auto outliers, f.Int("outliers", 0, INT64_C(1) << 32));
    q.set_format(format.value_or(""));
    q.bits = static_cast<int>(bits.value_or(0));
    q.symmetric = symmetric.value_or(true);
    const int64_t group_size = group.value_or(0);
    if (q.fp8()) {
      if (q.bits != 8) return DataLoss("{}: layer '{}': format fp8-e4m3 has 8-bit codes, not {}", path, base, q.bits);
    } else if (q.format() != "int") {
      ASSIGN_OR_RETURN(const Codebook* book, FindCodebook(q.format()));
      q.set_format(q.format(), {book->levels.begin(), book->levels.end()});
      if (q.bits != 4)
        return DataLoss("{}: layer '{}': format {} has 4-bit codes, not {}", path, base, q.format(), q.bits);
    } else if (q.bits < 2 || q.bits > 8) {
      return DataLoss("{}: layer '{}': int codes of {} bits (2..8 supported)", path, base, q.bits);
    }
    const Tensor* packed = m.tensors.find(base + ".weight_packed");
    const Tensor* scale = m.tensors.find(base + ".weight_scale");
    if (!packed || !scale || packed->dtype() != DType::kU8 || packed->shape().size() != 2 ||
        scale->shape().size() != 2) {
      return DataLoss("{}: layer '{}' needs a 2-D U8 weight_packed and a 2-D weight_scale", path, base);
    }
    const int64_t rows = packed->shape()[0], groups = scale->shape()[1];
    if (group_size <= 0 || groups <= 0 || scale->shape()[0] != rows) {
      return DataLoss("{}: layer '{}': weight_scale {} does not fit {} rows with group_size {}", path, base,
                      ShapeString(scale->shape()), rows, group_size);
    }
    const int64_t cols = group_size * groups, row_bytes = (cols * q.bits + 7) / 8;
    if (packed->shape()[1] != row_bytes) {
      return DataLoss("{}: layer '{}': weight_packed {} does not hold {} x {} {}-bit codes", path, base,
                      ShapeString(packed->shape()), rows, cols, q.bits);
    }
    q.channel_axis = 0;
    q.channels = rows;
    q.groups = groups;
    q.group_size = group_size;
    q.original_dtype = original;
    if (q.e8m0_scales() && scale->dtype() != DType::kU8)
      return DataLoss("{}: layer '{}': mxfp4 scales must be U8 (E8M0)", path, base);
    const std::string zname = base + ".weight_zero_point";
    Tensor zero_points;
    if (!q.symmetric) {
      const Tensor* z = m.tensors.find(zname);
      if (!z || z->shape() != scale->shape() || z->dtype() != DType::kI8) {
        return DataLoss("{}: layer '{}' is asymmetric but has no I8 weight_zero_point shaped like its scales",
                        path, base);
      }
      zero_points = *z;
    }
    // The layer's scales and zero points, read and checked into `into`.
    auto read_values = [scale = *scale, zero_points, path, base](QuantInfo& into) -> absl::Status {
      if (into.e8m0_scales()) {
        ASSIGN_OR_RETURN(auto sb, scale.Data());
        static const std::array<float, 256> kE8M0 = [] {  // 2^(e - 127); 255 (NaN) is refused below
          std::array<float, 256> t{};
          for (int e = 0; e < 255; ++e) t[e] = std::ldexp(1.f, e - 127);
          return t;
        }();
        const uint8_t* e = sb->data();
        const int64_t n = scale.numel();
        if (std::find(e, e + n, uint8_t{255}) != e + n)
          return DataLoss("{}: layer '{}': E8M0 scale is NaN (255)", path, base);
        into.mutable_scales().resize(n);
        float* out = into.mutable_scales().data();
#pragma omp parallel for schedule(static) if (n > (1 << 20))
        for (int64_t i = 0; i < n; ++i) out[i] = kE8M0[e[i]];
      } else {
        ASSIGN_OR_RETURN(into.mutable_scales(), scale.ToF32());
      }
      if (!into.symmetric) {
        ASSIGN_OR_RETURN(auto zb, zero_points.Data());
        const auto [lo, hi] = CodeRangeOf(into.bits, false);
        std::vector<int8_t>& zp = into.mutable_zero_points();
        zp.resize(zero_points.numel());
        for (int64_t i = 0; i < zero_points.numel(); ++i) {
          const int8_t v = static_cast<int8_t>(zb->data()[i]);
          if (v < lo || v > hi)
            return DataLoss("{}: layer '{}': zero point {} outside [{}, {}]", path, base, v, lo, hi);
          zp[i] = v;
        }
      }
      return absl::OkStatus();
    };
    const int64_t n = outliers.value_or(0);
    const std::string iname = base + ".weight_outlier_index", vname = base + ".weight_outlier";
    if (n > 0) {
      const Tensor* idx = m.tensors.find(iname);
      const Tensor* val = m.tensors.find(vname);
      if (!idx || !val || idx->dtype() != DType::kI64 || idx->numel() != n ||
          val->shape() != Shape{rows, n}) {
        return DataLoss(
            "{}: layer '{}' declares {} outliers but weight_outlier_index/weight_outlier do not match", path,
            base, n);
      }
      ASSIGN_OR_RETURN(auto ib, idx->Data());
      q.outlier_inputs.resize(n);
      std::memcpy(q.outlier_inputs.data(), ib->data(), n * 8);
      for (int64_t j = 0; j < n; ++j) {
        if (q.outlier_inputs[j] < 0 || q.outlier_inputs[j] >= cols ||
            (j > 0 && q.outlier_inputs[j] <= q.outlier_inputs[j - 1])) {
          return DataLoss("{}: layer '{}': outlier indices must be ascending inputs below {}", path, base,
                          cols);
        }
      }
      ASSIGN_OR_RETURN(q.outlier_values, val->ToF32());
    }
    // Unpacked when the codes are needed (the pages of the packed bytes released after). Codes
    // of a codebook or an asymmetric int grid are all valid; fp8 (NaN) and symmetric int (the
    // code below -2^(bits-1)+1) are checked once now, so a bad file fails at load.
    const Tensor packed_codes = *packed;
    const std::string layer = base;
    const int code_bits = q.bits;
    const bool raw = RawCodes(q), fp8 = q.fp8(), symmetric_int = q.symmetric && !q.codebook() && !q.fp8();
    Tensor::Producer unpack = [packed_codes, rows, cols, row_bytes, code_bits, raw, fp8, symmetric_int, path,
                               layer]() -> absl::StatusOr<std::shared_ptr<const Buffer>> {
      ASSIGN_OR_RETURN(auto pb, packed_codes.ReadOnce());
      auto out = std::make_shared<UninitBuffer>(static_cast<size_t>(rows * cols));
      uint8_t* codes = out->mutable_data();
      for (int64_t r = 0; r < rows; ++r) UnpackBits(pb->data() + r * row_bytes, cols, code_bits, codes + r * cols);
      packed_codes.ReleasePages();
      const int64_t n = rows * cols;
      if (!raw) {
        const uint8_t offset = static_cast<uint8_t>(1 << (code_bits - 1));
#pragma omp simd
        for (int64_t i = 0; i < n; ++i) codes[i] = static_cast<uint8_t>(codes[i] - offset);
      }
      if (fp8) {
        if (FirstBadCode(codes, n, true, 0, 0) >= 0) return DataLoss("{}: layer '{}': an e4m3 code is NaN", path, layer);
      } else if (symmetric_int) {
        const int lo = CodeRangeOf(code_bits, true).lo;
        if (const int64_t i = FirstBadCode(codes, n, false, lo, -lo); i >= 0) {
          return DataLoss("{}: layer '{}': code {} below the symmetric range [{}, {}]", path, layer,
                          static_cast<int8_t>(codes[i]), lo, -lo);
        }
      }
      return std::shared_ptr<const Buffer>(std::move(out));
    };
    Tensor weight;
    if (opts.check_codes) {
      RETURN_IF_ERROR(read_values(q));
      if (fp8 || symmetric_int) RETURN_IF_ERROR(unpack().status());
      weight = Tensor::LazyQuantized({rows, cols}, std::move(q), std::move(unpack));
    } else {
      weight = DeferredFileValues(std::move(q), {rows, cols}, std::move(read_values), std::move(unpack));
    }
    m.tensors.Replace(base + ".weight_packed", base + ".weight", std::move(weight));
    if (spec.contains("input_activations"))
      RETURN_IF_ERROR(CollapseInputActivations(m, base, spec["input_activations"], path));
    for (const auto& extra : {base + ".weight_packed", base + ".weight_scale", zname, iname, vname})
      m.tensors.Erase(extra);
  }
  return absl::OkStatus();
}

}  // namespace

Tensor DeferredFileValues(QuantInfo meta, Shape shape, std::function<absl::Status(QuantInfo&)> read_values,
                          Tensor::Producer codes) {
  QuantInfo info = DeferredQuant::MakeDeferred(
      meta,
      [meta, read_values, codes](bool want_codes) -> absl::StatusOr<DeferredQuant::Produced> {
        DeferredQuant::Produced p{nullptr, meta};
        RETURN_IF_ERROR(read_values(p.info));
        if (want_codes) {
          ASSIGN_OR_RETURN(p.codes, codes());
        }
        return p;
      },
      [codes](const QuantInfo&) { return codes(); });
  return Tensor::DeferredQuantized(std::move(shape), std::move(info));
}

int64_t FirstBadCode(const uint8_t* codes, int64_t n, bool fp8, int lo, int hi) {
  // Byte lanes OR-ed per chunk (the common case, no bad code, runs at memory speed); the
  // position is looked up only in a chunk that has one. int: v in [lo, hi] <=> (uint8)(v - lo)
  // <= hi - lo.
  const uint8_t base = static_cast<uint8_t>(lo), span = static_cast<uint8_t>(hi - lo);
  auto bad = [&](uint8_t c) { return fp8 ? E4M3IsNaN(c) : static_cast<uint8_t>(c - base) > span; };
  constexpr int64_t kChunk = 4096;
  for (int64_t i0 = 0; i0 < n; i0 += kChunk) {
    const int64_t m = std::min(kChunk, n - i0);
    const uint8_t* c = codes + i0;
    uint8_t any = 0;
    if (fp8) {
#pragma omp simd reduction(| : any)
      for (int64_t i = 0; i < m; ++i) any |= static_cast<uint8_t>(E4M3IsNaN(c[i]));
    } else {
#pragma omp simd reduction(| : any)
      for (int64_t i = 0; i < m; ++i) any |= static_cast<uint8_t>(static_cast<uint8_t>(c[i] - base) > span);
    }
    if (!any) continue;
    for (int64_t i = 0; i < m; ++i)
      if (bad(c[i])) return i0 + i;
  }
  return -1;
}

bool AnyPackedFieldZero(const uint8_t* packed, int64_t count, int bits) {
  const int per_byte = 8 / bits;
  const int64_t full = count / per_byte;  // bytes whose every field counts
  const unsigned mask = (1u << bits) - 1;
  uint8_t any = 0;
  if (bits == 8) {
#pragma omp simd reduction(| : any)
    for (int64_t i = 0; i < full; ++i) any |= static_cast<uint8_t>(packed[i] == 0);
  } else if (bits == 4) {
#pragma omp simd reduction(| : any)
    for (int64_t i = 0; i < full; ++i)
      any |= static_cast<uint8_t>((packed[i] & 0x0F) == 0) | static_cast<uint8_t>((packed[i] & 0xF0) == 0);
  } else {
    for (int64_t i = 0; i < full; ++i)
      for (int f = 0; f < per_byte; ++f) any |= static_cast<uint8_t>(((packed[i] >> (f * bits)) & mask) == 0);
  }
  for (int64_t k = full * per_byte; k < count; ++k)  // the fields of a last, partly used byte
    any |= static_cast<uint8_t>(((packed[k / per_byte] >> ((k % per_byte) * bits)) & mask) == 0);
  return any != 0;
}

void PackCodeRows(const int8_t* codes, int64_t rows, int64_t cols, int bits, int offset, uint8_t* out,
                  int64_t row_bytes) {
  const int64_t packed_bytes = (cols * bits + 7) / 8;
#pragma omp parallel if (rows * cols > (1 << 16))
  {
    std::vector<uint8_t> row(cols);
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      const int8_t* in = codes + r * cols;
      uint8_t* dst = out + r * row_bytes;
      if (bits == 4) {  // two codes a byte, low nibble first (PackBits' order)
        for (int64_t i = 0; i < cols / 2; ++i) {
          dst[i] = static_cast<uint8_t>(((in[2 * i] + offset) & 15) | (((in[2 * i + 1] + offset) & 15) << 4));
        }
        if (cols % 2) dst[cols / 2] = static_cast<uint8_t>((in[cols - 1] + offset) & 15);
      } else {
        for (int64_t c = 0; c < cols; ++c) row[c] = static_cast<uint8_t>(in[c] + offset);
        const std::vector<uint8_t> p = PackBits(row, bits);
        std::memcpy(dst, p.data(), packed_bytes);
      }
      std::memset(dst + packed_bytes, 0, row_bytes - packed_bytes);
    }
  }
}

std::vector<uint8_t> PackBits(std::span<const uint8_t> values, int bits) {
  std::vector<uint8_t> out((values.size() * bits + 7) / 8, 0);
  const uint32_t mask = (1u << bits) - 1;
  if (bits == 4) {  // the common case: two values a byte, low nibble first
    const size_t pairs = values.size() / 2;
    for (size_t i = 0; i < pairs; ++i) {
      out[i] = static_cast<uint8_t>((values[2 * i] & 15) | ((values[2 * i + 1] & 15) << 4));
    }
    if (values.size() % 2) out[pairs] = values.back() & 15;
    return out;
  }
  // A little-endian bit accumulator: each value's bits follow the previous value's.
  uint64_t acc = 0;
  int held = 0;
  size_t o = 0;
  for (uint8_t v : values) {
    acc |= static_cast<uint64_t>(v & mask) << held;
    held += bits;
    while (held >= 8) {
      out[o++] = static_cast<uint8_t>(acc);
      acc >>= 8;
      held -= 8;
    }
  }
  if (held > 0) out[o] = static_cast<uint8_t>(acc);
  return out;
}

void UnpackBits(const uint8_t* packed, int64_t count, int bits, uint8_t* values) {
  const uint32_t mask = (1u << bits) - 1;
  if (bits == 4) {
    for (int64_t i = 0; i + 1 < count; i += 2) {
      values[i] = packed[i / 2] & 15;
      values[i + 1] = packed[i / 2] >> 4;
    }
    if (count % 2) values[count - 1] = packed[count / 2] & 15;
    return;
  }
  uint64_t acc = 0;
  int held = 0;
  int64_t in = 0;
  for (int64_t i = 0; i < count; ++i) {
    while (held < bits) {  // reads only the bytes the values span
      acc |= static_cast<uint64_t>(packed[in++]) << held;
      held += 8;
    }
    values[i] = static_cast<uint8_t>(acc & mask);
    acc >>= bits;
    held -= bits;
  }
}

namespace {

// A quantized 2-D weight with its codes transposed and its channel axis flipped: GPT-2's
// Conv1D [in, out] weights are stored [out, in] in quantized files (the layout
// compressed-tensors and vLLM's GPT-2 loader use for packed weights) and read back.
absl::StatusOr<Tensor> TransposeQuantized(const Tensor& t) {
  const QuantInfo& q = *t.quant();
  const int64_t rows = t.shape()[0], cols = t.shape()[1];
  ASSIGN_OR_RETURN(auto data, t.Data());
  std::vector<int8_t> codes(rows * cols);
  const auto* src = reinterpret_cast<const int8_t*>(data->data());
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) codes[c * rows + r] = src[r * cols + c];
  QuantInfo info = q;
  info.channel_axis = 1 - q.channel_axis;
  return Tensor::Quantized({cols, rows}, std::move(codes), std::move(info));
}

}  // namespace

absl::Status RestoreConv1dQuantized(Model& m, const std::vector<std::string>& block_prefixes) {
  for (const auto& name : std::vector<std::string>(m.tensors.names())) {
    const Tensor& t = m.tensors.at(name);
    if (!t.quant() || t.quant()->channel_axis != 0 || t.shape().size() != 2) continue;
    bool in_block = false;
    for (const auto& p : block_prefixes) in_block = in_block || name.starts_with(p + ".");
    if (!in_block) continue;
    ASSIGN_OR_RETURN(Tensor back, TransposeQuantized(t));
    m.tensors.Set(name, std::move(back));
  }
  return absl::OkStatus();
}

absl::StatusOr<ExpandedStore> ExpandQuantized(const Model& in) {
  // [in, out] quantized weights are written [out, in].
  std::optional<Model> transposed;
  for (const auto& name : in.tensors.names()) {
    const Tensor& t = in.tensors.at(name);
    if (!t.quant() || t.quant()->channel_axis != 1 || t.shape().size() != 2) continue;
    if (!transposed) transposed = in;
    ASSIGN_OR_RETURN(Tensor out_in, TransposeQuantized(t));
    transposed->tensors.Set(name, std::move(out_in));
  }
  const Model& m = transposed ? *transposed : in;
  bool any = false, any4 = false;
  for (const auto& name : m.tensors.names()) {
    if (const QuantInfo* q = m.tensors.at(name).quant()) any = true, any4 |= q->bits < 8;
  }
  ExpandedStore out;
  if (!any) {
    out.tensors = m.tensors;
  } else if (FitsCompressedTensors(m, "int-quantized")) {
    ASSIGN_OR_RETURN(out, ExpandCompressedTensors(m, "int-quantized"));
  } else if (any4 && FitsCompressedTensors(m, "pack-quantized")) {
    ASSIGN_OR_RETURN(out, ExpandCompressedTensors(m, "pack-quantized"));
  } else if (FitsCompressedTensors(m, "float-quantized")) {
    ASSIGN_OR_RETURN(out, ExpandCompressedTensors(m, "float-quantized"));
  } else {
    ASSIGN_OR_RETURN(out, ExpandCompressLayout(m));
  }
  RETURN_IF_ERROR(ExpandActivationQuant(m, out));
  return out;
}

DType ConfigTorchDType(const nlohmann::json& config) {
  const std::string torch = config.value("torch_dtype", config.value("dtype", "bfloat16"));
  return torch == "float32" ? DType::kF32 : torch == "float16" ? DType::kF16 : DType::kBF16;
}

void FinishQuantizationConfig(ExpandedStore& store) {
  for (const auto& [base, q] : store.formats_after_write) store.quantization_config["layers"][base]["format"] = q.format();
  store.formats_after_write.clear();
}

absl::Status CollapseQuantized(Model& m, const std::string& path, const LoadOptions& opts) {
  if (!m.config.is_object() || !m.config.contains("quantization_config")) return absl::OkStatus();
  const nlohmann::json qc = m.config["quantization_config"];
  if (!qc.is_object()) return DataLoss("{}: quantization_config is not an object", path);
  ASSIGN_OR_RETURN(auto quant_method, JsonFields(qc, path, "quantization_config.").String("quant_method"));
  const std::string method = quant_method.value_or("");
  if (method == "compressed-tensors") {
    RETURN_IF_ERROR(CollapseCompressedTensors(m, qc, path, opts));
  } else if (method == "compress") {
    RETURN_IF_ERROR(CollapseCompressLayout(m, qc, path, opts));
  } else if (method.empty()) {
    return absl::OkStatus();  // no method named: the tensors load as stored
  } else if (method == "fp8") {
    RETURN_IF_ERROR(CollapseBlockFp8(m, qc, path, opts));
  } else {
    // Other layouts (GPTQ / AWQ packs, bitsandbytes, MXFP4 blocks ...) are not read: their
    // tensors would load as raw integers.
    return Unimplemented(
        "{}: quantization_config.quant_method '{}' is not read (compressed-tensors, fp8 and compress's own are); "
        "start from the unquantized checkpoint",
        path, method);
  }
  m.config.erase("quantization_config");
  return absl::OkStatus();
}

}  // namespace compress
