// The shared per-layer visit of weight passes.
#include "passes/layer_walk.h"

#include <set>

#include "core/block_quant.h"
#include "core/distributed.h"
#include "core/wire.h"

namespace compress {

namespace {

// What one visit did: the weight it left (absent when unchanged), and the report entries
// and notes it added.
absl::StatusOr<std::vector<std::byte>> CaptureEffects(const Model& model, const PassReport& report,
                                                      const std::string& name, const Tensor& before,
                                                      size_t tensors_from, size_t notes_from) {
  ByteWriter w;
  const Tensor& after = model.tensors.at(name);
  const bool changed = !after.SameAs(before);
  w.Put<uint8_t>(changed);
  if (changed) RETURN_IF_ERROR(PutTensor(w, after));
  w.Put<uint64_t>(report.tensors.size() - tensors_from);
  for (size_t i = tensors_from; i < report.tensors.size(); ++i) PutTensorChange(w, report.tensors[i]);
  w.Put<uint64_t>(report.notes.size() - notes_from);
  for (size_t i = notes_from; i < report.notes.size(); ++i) w.PutString(report.notes[i]);
  return w.Take();
}

// Runs `visit(name)` and returns its effects; without `keep_in_report` the report entries
// and notes it added are taken back out (they travel in the effects instead).
absl::StatusOr<std::vector<std::byte>> VisitCaptured(Model& model, PassReport& report, const std::string& name,
                                                     const std::function<absl::Status(const std::string&)>& visit,
                                                     bool keep_in_report) {
  const Tensor before = model.tensors.at(name);
  const size_t tensors_from = report.tensors.size(), notes_from = report.notes.size();
  RETURN_IF_ERROR(visit(name));
  ASSIGN_OR_RETURN(auto effects, CaptureEffects(model, report, name, before, tensors_from, notes_from));
  if (!keep_in_report) {
    report.tensors.resize(tensors_from);
    report.notes.resize(notes_from);
  }
  return effects;
}

// The result of visit `name` as the journal holds it (core/resume_journal.h Hold): in memory,
// or past its limit read back from the visit's `effects` as they lie in the journal at `in_file`.
absl::Status HoldResult(Model& model, const std::string& name, ResumeJournal& journal,
                        std::span<const std::byte> effects, const ResumeJournal::VisitBytes& in_file) {
  const Tensor& t = model.tensors.at(name);
  ByteReader r(effects, "layer results");
  uint8_t changed = 0;
  RETURN_IF_ERROR(r.Get(changed));
  if (!changed || t.factors()) return absl::OkStatus();
  // Where the tensor's element bytes lie in the effects (CaptureEffects' layout).
  ASSIGN_OR_RETURN(auto range, TensorDataRange(r));
  if (range.second != static_cast<size_t>(t.nbytes())) return Internal("journaled '{}' has {} bytes", name, range.second);
  ASSIGN_OR_RETURN(Tensor held, journal.Hold(t, in_file, range.first));
  if (!held.SameAs(t)) model.tensors.Set(name, std::move(held));
  return absl::OkStatus();
}

absl::Status ApplyEffects(Model& model, PassReport& report, const std::string& name,
                          std::span<const std::byte> bytes, bool set_tensor) {
  ByteReader r(bytes, "layer results (from another MPI rank or the resume journal)");
  uint8_t changed = 0;
  RETURN_IF_ERROR(r.Get(changed));
  if (changed) {
    ASSIGN_OR_RETURN(Tensor t, GetTensor(r));
    if (set_tensor) model.tensors.Set(name, std::move(t));
  }
  uint64_t n = 0;
  RETURN_IF_ERROR(r.Get(n));
  for (uint64_t i = 0; i < n; ++i) {
    ASSIGN_OR_RETURN(TensorChange c, GetTensorChange(r));
    report.tensors.push_back(std::move(c));
  }
  RETURN_IF_ERROR(r.Get(n));
  for (uint64_t i = 0; i < n; ++i) {
    std::string note;
    RETURN_IF_ERROR(r.GetString(note));
    report.notes.push_back(std::move(note));
  }
  return absl::OkStatus();
}

}  // namespace

std::string SequentialCalibrationNote(const PassContext& ctx) {
  return fmt::format(
      "calibration: ran the {} windows through the model block by block, up to the last block holding a "
      "selected layer (each block's statistics are taken on the outputs of the blocks this pass already "
      "changed, so they are not shared with other passes; X^T X only for the selected layers' inputs)",
      ctx.calibration ? ctx.calibration->windows.size() : 0);
}

absl::Status VisitSpread(Model& model, PassReport& report, std::span<const std::string> names,
                         const std::function<absl::Status(const std::string& name)>& visit, ResumeJournal* journal) {
  if (journal && journal->replaying()) {  // a block an earlier run finished: its effects, recorded
    for (const auto& name : names) {
      ASSIGN_OR_RETURN(std::vector<std::byte> effects, journal->TakeReplayedVisit(name));
      RETURN_IF_ERROR(ApplyEffects(model, report, name, effects, /*set_tensor=*/true));
      RETURN_IF_ERROR(HoldResult(model, name, *journal, effects, journal->LastReplayed()));
    }
    return absl::OkStatus();
  }
  if (!dist::Active()) {
    const bool record = journal && journal->recording();
    for (const auto& name : names) {
      if (!record) {
        RETURN_IF_ERROR(visit(name));
        continue;
      }
      ASSIGN_OR_RETURN(auto effects, VisitCaptured(model, report, name, visit, /*keep_in_report=*/true));
      ASSIGN_OR_RETURN(const uint64_t offset, journal->RecordVisit(name, effects));
      RETURN_IF_ERROR(HoldResult(model, name, *journal, effects, journal->RecordedAt(offset)));
    }
    return absl::OkStatus();
  }
  // Every rank visits its layers first (the solves run in parallel), holding back what they
  // added to the report; then the layers' effects are broadcast and applied in order.
  const int ranks = dist::Size(), me = dist::Rank();
  std::vector<std::vector<std::byte>> effects(names.size());
  for (size_t i = 0; i < names.size(); ++i) {
    if (static_cast<int>(i % ranks) != me) continue;
    ASSIGN_OR_RETURN(effects[i], VisitCaptured(model, report, names[i], visit, /*keep_in_report=*/false));
  }
  const bool record = journal && journal->recording();  // every rank journals every layer's effects
  for (size_t i = 0; i < names.size(); ++i) {
    const int owner = static_cast<int>(i % ranks);
    RETURN_IF_ERROR(dist::Broadcast(effects[i], owner));
    RETURN_IF_ERROR(ApplyEffects(model, report, names[i], effects[i], /*set_tensor=*/owner != me));
    if (record) {
      ASSIGN_OR_RETURN(const uint64_t offset, journal->RecordVisit(names[i], effects[i]));
      RETURN_IF_ERROR(HoldResult(model, names[i], *journal, effects[i], journal->RecordedAt(offset)));
    }
    effects[i] = {};
  }
  return absl::OkStatus();
}

absl::Status VisitBlockLayers(Model& model, PassReport& report, std::vector<std::string> names,
                              std::map<std::string, LinearStats>& stats,
                              const std::function<absl::Status(const std::string& name, const LinearStats& st)>& visit,
                              ResumeJournal* journal) {
  auto width = [&](const std::string& name) {
    const LinearLayer* l = model.arch.LayerOfWeight(name);
    return l ? l->in_features : 0;
  };
  std::sort(names.begin(), names.end(), [&](const std::string& a, const std::string& b) {
    const int64_t wa = width(a), wb = width(b);
    return wa != wb ? wa < wb : a < b;
  });
  return VisitSpread(model, report, names, [&](const std::string& name) -> absl::Status {
    LinearStats& st = stats.at(name);
    RETURN_IF_ERROR(visit(name, st));
    st.xtx = AlignedVector<double>();
    st.samples = AlignedVector<float>();
    st.sample_rows = 0;
    return absl::OkStatus();
  }, journal);
}

namespace {
// A weight in a GGUF block type is stored [out, in] (its blocks run along the inputs): after a
// visit wrote one for a Conv1D layer ([in, out], GPT-2), the view's layer turns, so that the
// block's forward feeding the next block, and the writers, read it so. The walk does it (not the
// visitor) because VisitSpread applies another rank's (or the journal's) weight without the visit.
void TurnBlockTypeLayer(Model& model, const std::string& name) {
  if (!IsBlockType(model.tensors.at(name).dtype())) return;
  for (Block& b : model.arch.blocks)
    for (auto* list : {&b.attention, &b.mlp})
      for (LinearLayer& l : *list)
        if (l.weight == name) l.out_axis = 0;
}
}  // namespace

const char* WhyNotFloatWeight(const Tensor& t, bool accept_quantized) {
  if (t.quant() && !accept_quantized) return "already quantized";
  if (IsBlockType(t.dtype())) return "already quantized (ggml blocks: run dequantize first)";
  if (!t.quant() && !IsFloating(t.dtype())) return "not a floating-point tensor";
  return nullptr;
}

absl::Status ForEachLinear(Model& model, PassContext& ctx, const TensorSelector& sel, bool calibrated,
                           bool need_xtx, bool accept_quantized, std::string_view label,
                           const LinearVisitor& fn, int64_t keep_rows, bool spread) {
  const std::vector<std::string> selected = sel.Select(model);
  std::set<std::string> todo;
  for (const auto& name : selected) {
    const Tensor& t = model.tensors.at(name);
    const LinearLayer* layer = model.arch.LayerOfWeight(name);
    const char* why = WhyNotFloatWeight(t, accept_quantized);
    why = why                     ? why
          : t.shape().size() != 2 ? "not a 2-D weight"
          : !layer                ? "not the weight of a known linear layer"
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
    TurnBlockTypeLayer(model, name);
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
  const std::set<std::string> wanted = todo;  // statistics (and blocks) only for these
  opts.wanted = &wanted;
  if (spread) opts.journal = ctx.journal;  // every change goes through VisitSpread
  RETURN_IF_ERROR(RunCalibration(
      model, *ctx.calibration, opts,
      [&](int, std::map<std::string, LinearStats>& stats) -> absl::Status {
        if (!spread) {
          for (const auto& [name, st] : stats) {
            if (todo.count(name)) RETURN_IF_ERROR(visit(name, &st));
          }
          return absl::OkStatus();
        }
        std::vector<std::string> names;
        for (const auto& [name, st] : stats) {
          if (todo.count(name)) names.push_back(name);
        }
        RETURN_IF_ERROR(VisitBlockLayers(model, ctx.report, names, stats, [&](const std::string& name, const LinearStats& st) {
          return fn(name, *model.arch.LayerOfWeight(name), &st);
        }, ctx.journal));
        for (const auto& name : names) {
          TurnBlockTypeLayer(model, name);
          todo.erase(name);
        }
        ctx.Progress(label, total - static_cast<int64_t>(todo.size()), total);
        return absl::OkStatus();
      },
      [&](int64_t done, int64_t blocks) { ctx.Progress("calibration blocks", done, blocks); }));
  for (const auto& name : todo) {
    ctx.report.notes.push_back(fmt::format("left '{}' alone: not a linear layer the runtime runs", name));
  }
  ctx.report.notes.push_back(SequentialCalibrationNote(ctx));
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
  const bool kernel = layer && IsConvKernel(*layer, t);
  if (t.shape().size() != 2 && !kernel) return InvalidArgument("not a 2-D weight");
  OutInWeight o;
  ASSIGN_OR_RETURN(std::vector<float> w, FiniteWeights(t, layer ? layer->weight : std::string("weight")));
  // Decoded: the file's pages can go (they would stay in the process's resident memory, a
  // whole model's worth over a run).
  t.ReleasePages();
  o.transposed = layer && layer->out_axis == 1;
  if (o.transposed) {
    o.rows = t.shape()[1];
    o.cols = t.shape()[0];
    o.w = Transpose<float>(w, o.cols, o.rows);
  } else {
    o.rows = t.shape()[0];
    o.cols = t.MatrixCols();  // a kernel [M, C/group, k...]: [M, rest]
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

bool IsConvKernel(const LinearLayer& layer, const Tensor& w) {
  return (layer.kind == "Conv" || layer.kind == "ConvTranspose") && w.shape().size() >= 3 && layer.out_axis == 0 &&
         w.shape()[0] > 0;
}

int64_t KernelGroupSize(const LinearLayer& layer, const Tensor& w, int64_t group_size) {
  const bool per_channel = IsConvKernel(layer, w) && group_size > 0 && group_size != w.MatrixCols();
  return per_channel ? 0 : group_size;
}

void NoteKernelsPerChannel(PassReport& report, int64_t kernels, int64_t group_size) {
  if (kernels == 0) return;
  report.notes.push_back(fmt::format(
      "{} convolution kernels quantized with one scale per output channel (axis 0): group-size {} applies to "
      "matrix weights only (ONNX's DequantizeLinear scales one axis of a kernel)",
      kernels, group_size));
}

std::string StoredTypeName(const Tensor& t) {
  if (!t.quant()) return std::string(DTypeName(t.dtype()));
  const QuantInfo& q = *t.quant();
  // (A format the writer's production chooses is named by the pass's report once it ran.)
  if (q.format_pending()) return fmt::format("codebook{} chosen while writing", q.bits);
  std::string name = q.format() == "int" ? fmt::format("int{}", q.bits) : q.format();
  if (!q.outlier_inputs.empty()) name += "+f16-outliers";
  return name;
}

bool CodesPastMemoryBudget(const Model& model, const std::vector<std::string>& names, PassReport& report,
                           const std::function<bool(const std::string&, const Tensor&)>& never_held) {
  int64_t code_bytes = 0;
  for (const auto& name : names) {
    const Tensor& t = model.tensors.at(name);
    if (!t.quant() && IsFloating(t.dtype()) && t.shape().size() == 2 && !never_held(name, t)) {
      code_bytes += t.numel();
    }
  }
  if (code_bytes <= ResultMemoryBudget()) return false;
  report.notes.push_back(fmt::format(
      "codes ({:.1f} GiB) exceed the result memory budget: produced again while writing, one tensor at a time",
      code_bytes / double(int64_t{1} << 30)));
  return true;
}

TensorChange WeightChange(const std::string& name, const Tensor& before, const Tensor& after,
                          std::string method, std::span<const float> before_values,
                          std::span<const float> after_values) {
  return WeightChange(name, before, after, std::move(method), CompareWeights(before_values, after_values));
}

// The entry before its error metrics: sizes now, the metrics when `pending` is filled.
static TensorChange PendingWeightChange(const std::string& name, const Tensor& before, const Tensor& after,
                                        std::string method, std::shared_ptr<PendingMetrics> pending) {
  TensorChange change = WeightChange(name, before, after, std::move(method), WeightError{});
  change.metrics.erase("max_abs_error");  // measured by the production
  change.metrics.erase("rel_fro_error");
  change.pending = std::move(pending);
  return change;
}

TensorChange DeferredWeightChange(const std::string& name, const Tensor& before, const Tensor& after,
                                  std::string method, std::shared_ptr<PendingMetrics> pending) {
  TensorChange change = PendingWeightChange(name, before, after, std::move(method), std::move(pending));
  const QuantInfo info = *after.quant();
  change.measure = [info] { return info.Resolve(); };
  return change;
}

TensorChange LazyWeightChange(const std::string& name, const Tensor& before, const Tensor& after,
                              std::string method, std::shared_ptr<PendingMetrics> pending) {
  TensorChange change = PendingWeightChange(name, before, after, std::move(method), std::move(pending));
  change.measure = [after] { return after.Data().status(); };
  return change;
}

void NoteDeferredWeights(PassReport& report, int64_t deferred) {
  if (deferred == 0) return;
  report.notes.push_back(fmt::format(
      "{} weights read from files are quantized while writing (scales, codes and errors in one read of each)",
      deferred));
}

TensorChange WeightChange(const std::string& name, const Tensor& before, const Tensor& after,
                          std::string method, const WeightError& err) {
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
