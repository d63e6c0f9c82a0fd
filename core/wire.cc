// Encodings of tensors and report entries for transfers between processes.
#include "core/wire.h"

#include "core/status.h"

namespace compress {

absl::Status ByteReader::GetString(std::string& s) {
  uint64_t n = 0;
  RETURN_IF_ERROR(Get(n));
  if (in_.size() - at_ < n) return Truncated();
  s.assign(reinterpret_cast<const char*>(in_.data() + at_), n);
  at_ += n;
  return absl::OkStatus();
}

absl::Status ByteReader::Truncated() const { return InvalidArgument("{}: truncated bytes", what_); }

namespace {

void PutQuant(ByteWriter& w, const QuantInfo& q) {
  w.Put<int32_t>(q.bits);
  w.Put<uint8_t>(q.symmetric);
  w.Put<int32_t>(q.channel_axis);
  w.Put(q.group_size);
  w.Put(q.channels);
  w.Put(q.groups);
  w.PutArray(q.scales());
  w.PutArray(q.zero_points());
  w.Put(q.original_dtype);
  w.PutString(q.format());
  w.PutArray(q.levels());
  w.PutArray(q.outlier_inputs);
  w.PutArray(q.outlier_values);
}

absl::Status GetQuant(ByteReader& r, QuantInfo& q) {
  int32_t bits = 0, axis = 0;
  uint8_t symmetric = 0;
  RETURN_IF_ERROR(r.Get(bits));
  RETURN_IF_ERROR(r.Get(symmetric));
  RETURN_IF_ERROR(r.Get(axis));
  q.bits = bits;
  q.symmetric = symmetric != 0;
  q.channel_axis = axis;
  RETURN_IF_ERROR(r.Get(q.group_size));
  RETURN_IF_ERROR(r.Get(q.channels));
  RETURN_IF_ERROR(r.Get(q.groups));
  RETURN_IF_ERROR(r.GetArray(q.mutable_scales()));
  RETURN_IF_ERROR(r.GetArray(q.mutable_zero_points()));
  RETURN_IF_ERROR(r.Get(q.original_dtype));
  std::string format;
  std::vector<float> levels;
  RETURN_IF_ERROR(r.GetString(format));
  RETURN_IF_ERROR(r.GetArray(levels));
  q.set_format(std::move(format), std::move(levels));
  RETURN_IF_ERROR(r.GetArray(q.outlier_inputs));
  return r.GetArray(q.outlier_values);
}

}  // namespace

absl::Status PutTensor(ByteWriter& w, const Tensor& t) {
  w.Put(t.dtype());
  w.PutArray(t.shape());
  const uint8_t kind = t.quant() ? 1 : t.factors() ? 2 : 0;
  w.Put(kind);
  if (kind == 2) {  // the factors are the tensor; its values are produced from them
    w.Put(t.factors()->rank);
    w.PutArray(t.factors()->a);
    w.PutArray(t.factors()->b);
    return absl::OkStatus();
  }
  if (kind == 1) PutQuant(w, *t.quant());
  ASSIGN_OR_RETURN(auto data, t.Data());
  w.PutArray(std::span<const uint8_t>(data->data(), data->size()));
  return absl::OkStatus();
}

namespace {

// PutTensor's head: type, shape, kind (0 plain, 1 quantized, 2 factorized).
struct TensorHead {
  DType dtype{};
  Shape shape;
  uint8_t kind = 0;
};
absl::Status GetTensorHead(ByteReader& r, TensorHead& h) {
  RETURN_IF_ERROR(r.Get(h.dtype));
  RETURN_IF_ERROR(r.GetArray(h.shape));
  return r.Get(h.kind);
}

}  // namespace

absl::StatusOr<Tensor> GetTensor(ByteReader& r) {
  TensorHead h;
  RETURN_IF_ERROR(GetTensorHead(r, h));
  const DType dtype = h.dtype;
  Shape shape = std::move(h.shape);
  const uint8_t kind = h.kind;
  if (kind == 2) {
    LowRankFactors f;
    RETURN_IF_ERROR(r.Get(f.rank));
    RETURN_IF_ERROR(r.GetArray(f.a));
    RETURN_IF_ERROR(r.GetArray(f.b));
    return Tensor::Factorized(dtype, std::move(shape), std::move(f));
  }
  QuantInfo q;
  if (kind == 1) RETURN_IF_ERROR(GetQuant(r, q));
  std::vector<uint8_t> bytes;
  RETURN_IF_ERROR(r.GetArray(bytes));
  if (kind == 1) {
    std::vector<int8_t> codes(bytes.size());
    std::memcpy(codes.data(), bytes.data(), bytes.size());
    return Tensor::Quantized(std::move(shape), std::move(codes), std::move(q));
  }
  return Tensor(dtype, std::move(shape), std::make_shared<OwnedBuffer>(std::move(bytes)));
}

absl::StatusOr<std::pair<size_t, size_t>> TensorDataRange(ByteReader& r) {
  TensorHead h;
  RETURN_IF_ERROR(GetTensorHead(r, h));
  if (h.kind == 2) return absl::InvalidArgumentError("a factorized tensor has no element bytes");
  QuantInfo q;
  if (h.kind == 1) RETURN_IF_ERROR(GetQuant(r, q));
  uint64_t n = 0;
  RETURN_IF_ERROR(r.Get(n));
  const size_t at = r.at();
  RETURN_IF_ERROR(r.Skip(n));
  return std::pair<size_t, size_t>{at, static_cast<size_t>(n)};
}

void PutTensorChange(ByteWriter& w, const TensorChange& c) {
  w.PutString(c.name);
  w.PutArray(c.shape_before);
  w.PutArray(c.shape_after);
  w.PutString(c.dtype_before);
  w.PutString(c.dtype_after);
  w.Put(c.bytes_before);
  w.Put(c.bytes_after);
  w.PutString(c.method);
  w.Put<uint64_t>(c.metrics.size());
  for (const auto& [k, v] : c.metrics) {
    w.PutString(k);
    w.Put(v);
  }
}

absl::StatusOr<TensorChange> GetTensorChange(ByteReader& r) {
  TensorChange c;
  RETURN_IF_ERROR(r.GetString(c.name));
  RETURN_IF_ERROR(r.GetArray(c.shape_before));
  RETURN_IF_ERROR(r.GetArray(c.shape_after));
  RETURN_IF_ERROR(r.GetString(c.dtype_before));
  RETURN_IF_ERROR(r.GetString(c.dtype_after));
  RETURN_IF_ERROR(r.Get(c.bytes_before));
  RETURN_IF_ERROR(r.Get(c.bytes_after));
  RETURN_IF_ERROR(r.GetString(c.method));
  uint64_t n = 0;
  RETURN_IF_ERROR(r.Get(n));
  for (uint64_t i = 0; i < n; ++i) {
    std::string k;
    double v = 0;
    RETURN_IF_ERROR(r.GetString(k));
    RETURN_IF_ERROR(r.Get(v));
    c.metrics[k] = v;
  }
  return c;
}

void PutExpertCoverage(ByteWriter& w, const ExpertCoverage& c) {
  w.Put(c.block);
  w.Put(c.expert);
  w.Put(c.tokens);
  w.Put<uint8_t>(c.data_free);
}

absl::StatusOr<ExpertCoverage> GetExpertCoverage(ByteReader& r) {
  ExpertCoverage c;
  uint8_t data_free = 0;
  RETURN_IF_ERROR(r.Get(c.block));
  RETURN_IF_ERROR(r.Get(c.expert));
  RETURN_IF_ERROR(r.Get(c.tokens));
  RETURN_IF_ERROR(r.Get(data_free));
  c.data_free = data_free != 0;
  return c;
}

}  // namespace compress
