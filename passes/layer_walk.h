// Visiting the selected weights of linear layers, with or without calibration statistics.
#pragma once

#include <functional>
#include <string>

#include "absl/status/status.h"
#include "calibrate/calibration.h"
#include "core/pass.h"

namespace compress {

// Why a pass cannot change weight `t` from its values (a report note), or nullptr: codes of an
// earlier quantization (unless `accept_quantized`), ggml blocks (dequantize first), not floats.
const char* WhyNotFloatWeight(const Tensor& t, bool accept_quantized);

// Calls `fn(name, layer, stats)` once for every selected weight that is a 2-D float (or,
// with `accept_quantized`, quantized) weight of a known linear layer; other selected tensors
// get a note in the report saying why they were left alone. With `calibrated` the visit runs
// block by block through RunCalibration (sequential: later blocks see the changed weights)
// and `stats` holds that layer's input statistics; otherwise stats is null and the order is
// the selection's. Progress is reported under `label`.
using LinearVisitor =
    std::function<absl::Status(const std::string& name, const LinearLayer& layer, const LinearStats* stats)>;
// `keep_rows` > 0 keeps about that many input rows per layer in stats->samples. `spread`:
// the visits of one block run through VisitSpread (the visitor changes only its own weight
// and the pass report's tensors and notes). After each visit (every rank, replays included) a
// weight now in a GGUF block type has its layer turned to [out, in] in the view (GPT-2's
// Conv1D layers): visitors do not turn it themselves.
absl::Status ForEachLinear(Model& model, PassContext& ctx, const TensorSelector& sel, bool calibrated,
                           bool need_xtx, bool accept_quantized, std::string_view label,
                           const LinearVisitor& fn, int64_t keep_rows = 0, bool spread = false);

// The report note of a pass that runs the block-by-block calibration driver itself instead of
// reusing the run's calibration-statistics analysis: its statistics depend on its own changes.
std::string SequentialCalibrationNote(const PassContext& ctx);

// Runs `visit(name)` for each of `names`, layers whose visits are independent of each other
// (one block's layers in a calibrated pass: their statistics were taken before any of them
// changed). In one process: in order. Under MPI (core/distributed.h) the i-th layer is
// visited on rank i % ranks, and each visit's effects (the weight `name` as it left it, the
// report tensors and notes it added) go to every rank and are applied there in list order,
// so every rank ends with the model and report of one process. A visit must change nothing
// else (no other tensor, no state of the pass).
//
// With the run's resume journal (core/resume_journal.h) each visit's effects are recorded
// in the block being computed, and in a block being replayed the recorded effects are
// applied instead of visiting.
absl::Status VisitSpread(Model& model, PassReport& report, std::span<const std::string> names,
                         const std::function<absl::Status(const std::string& name)>& visit,
                         ResumeJournal* journal = nullptr);
// VisitSpread over one calibrated block's layers `names` (keys of `stats`): the narrowest
// inputs first (name order among equals: the same order on every rank and in a replay), and
// each layer's X^T X and kept rows freed as soon as its visit returns, so the block's widest
// statistics (down_proj's, [ffn, ffn] in f64) are solved after the others were freed instead of
// beside them. `visit` gets the layer's statistics (empty in a replayed block).
absl::Status VisitBlockLayers(Model& model, PassReport& report, std::vector<std::string> names,
                              std::map<std::string, LinearStats>& stats,
                              const std::function<absl::Status(const std::string& name, const LinearStats& st)>& visit,
                              ResumeJournal* journal);

}  // namespace compress

namespace compress {

// A linear weight as row-major [out, in] f32 values, whatever its stored layout: ONNX MatMul
// weights ([in, out], out_axis 1) are transposed, so row-wise algorithms (GPTQ, SparseGPT,
// OBS, N:M along inputs, Wanda) work on both. An ONNX convolution kernel (IsConvKernel) is read
// as [M, C/group x k...], the layout its im2col calibration statistics have.
struct OutInWeight {
  std::vector<float> w;
  int64_t rows = 0, cols = 0;  // out, in
  bool transposed = false;     // stored as [in, out]
};
absl::StatusOr<OutInWeight> ReadOutIn(const Tensor& t, const LinearLayer* layer);
// [out, in] values back in the stored layout of `like`.
std::vector<float> StoredLayout(const OutInWeight& like, std::span<const float> out_in);
// A quantized result computed on [out, in] (codes row-major, channel_axis 0) in the stored
// layout: transposed codes with channel_axis 1 when the weight is [in, out].
Tensor QuantizedStored(const OutInWeight& like, const Shape& stored_shape, std::vector<int8_t> codes, QuantInfo info);

// Whether the int8 codes a weight quantizer would hold of `names` (2-D floating tensors not yet
// quantized) exceed ResultMemoryBudget(): then the pass keeps only quantization parameters and
// produces codes again when the writer asks (the same deterministic coding of the same input).
// Says so in `report`'s notes. Weights for which `never_held(name, tensor)` is true are not
// counted: the pass produces their codes while writing whatever the budget (weights read from a
// file, in the layouts it defers).
bool CodesPastMemoryBudget(const Model& model, const std::vector<std::string>& names, PassReport& report,
                           const std::function<bool(const std::string&, const Tensor&)>& never_held);

// The type a report names for a tensor: its dtype, or the quantized format (int4, nf4, ...).
std::string StoredTypeName(const Tensor& t);

// A report entry for a weight changed in place (same shape): types, stored bytes, bits per
// parameter, and the max-abs / relative Frobenius error between `before_values` and
// `after_values` (the weights as the model computes with them).
TensorChange WeightChange(const std::string& name, const Tensor& before, const Tensor& after,
                          std::string method, std::span<const float> before_values,
                          std::span<const float> after_values);
// The same with the error already measured (QuantizeRtnMeasured).
TensorChange WeightChange(const std::string& name, const Tensor& before, const Tensor& after,
                          std::string method, const WeightError& err);
// The entry for a weight whose quantization a DeferredQuant (core/quant.h) makes while
// writing: sizes now, the error metrics when its production fills `pending` (or, when nothing
// read the weight, by resolving it).
TensorChange DeferredWeightChange(const std::string& name, const Tensor& before, const Tensor& after,
                                  std::string method, std::shared_ptr<PendingMetrics> pending);
// The same for a lazy tensor (Tensor::Lazy) whose producer fills `pending`: when nothing read it,
// resolving the report produces it once.
TensorChange LazyWeightChange(const std::string& name, const Tensor& before, const Tensor& after,
                              std::string method, std::shared_ptr<PendingMetrics> pending);
// The pass report's note saying how many weights the pass deferred that way (none: no note).
void NoteDeferredWeights(PassReport& report, int64_t deferred);
// Whether `w` is the kernel of an ONNX Conv / ConvTranspose layer ([M, C/group, k...], rank >= 3):
// weight passes that take it treat it as the row-major matrix [M, numel / M], axis 0 as rows.
bool IsConvKernel(const LinearLayer& layer, const Tensor& w);
// The group size an integer pass uses for weight `w` of `layer` when asked for `group_size`: 0
// (one scale per output channel) for a convolution kernel whose inputs per channel it does not
// equal, since ONNX's DequantizeLinear scales one axis of a kernel; `group_size` otherwise.
int64_t KernelGroupSize(const LinearLayer& layer, const Tensor& w, int64_t group_size);
// The report note for the `kernels` kernels that KernelGroupSize took per channel (none: no note).
void NoteKernelsPerChannel(PassReport& report, int64_t kernels, int64_t group_size);

}  // namespace compress
