// Calibration data (seeded token windows from text or token files) and the block-by-block
// driver that feeds them through the LLM runtime, collecting per-linear input statistics:
//   H = X^T X (f64 accumulation), per-input-channel max |x| and mean |x|, row count.
// Only the current block's inputs (samples x seqlen x hidden floats) are held in memory.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "core/aligned.h"
#include "core/model.h"
#include "core/report.h"
#include "core/resume_journal.h"
#include "runtime/llama.h"

namespace compress {

struct CalibrationOptions {
  // UTF-8 text (tokenized with the model's tokenizer.json), token ids (.json/.tok), or (ONNX
  // models) a folder of input tensors in the ONNX test-data layout: input_0.pb, input_1.pb...
  // directly inside it or in one subfolder per sample.
  std::string file;
  int64_t samples = 128;
  int64_t seqlen = 512;
  uint64_t seed = 0;
  // Mixture-of-experts models: an expert that the router sent fewer calibration tokens than
  // this gets data-free statistics instead (see RunCalibration).
  int64_t min_expert_tokens = 64;
  // The LLM driver's arithmetic (RunCalibration). kF32: the runtime's f32 products and X^T X in
  // f64 (the reference). kBf16: the block forwards multiply bf16-rounded weights and
  // activations (MatmulMode::kBf16: VDPBF16PS where the CPU has it; quantized weights of a
  // sequential pass run their native integer products) and X^T X sums each window's products
  // in f32 before adding them in f64: about twice as fast, different statistics.
  enum class Precision { kF32, kBf16 };
  Precision precision = Precision::kF32;
};
// "f32" / "bf16", and back (nullopt for any other name).
const char* PrecisionName(CalibrationOptions::Precision p);
std::optional<CalibrationOptions::Precision> PrecisionNamed(std::string_view name);

struct CalibrationData {
  CalibrationOptions options;
  std::vector<std::vector<int32_t>> windows;  // samples x seqlen token ids
  std::vector<std::string> tensor_sets;       // or: folders holding input_N.pb, one per sample
  uint64_t hash = 0;                          // FNV-1a over the windows (or set files), for provenance
  // `run --stats FILE` (calibrate/stats_file.h): the calibration-statistics analysis is read
  // from / saved to this file ("" for none).
  std::string stats_file;
};

// Samples `samples` windows of `seqlen` tokens at seeded uniform offsets (fewer tokens than
// samples x seqlen is fine; fewer than seqlen is an error).
absl::StatusOr<CalibrationData> LoadCalibration(const CalibrationOptions& opts,
                                                const std::string& tokenizer_json);

struct LinearStats {
  int64_t in_features = 0;
  int64_t rows = 0;             // tokens seen
  AlignedVector<double> xtx;    // [in, in] row-major, sum over tokens of x x^T (read in place by Eigen)
  // AccumulateStats with f32 products: their f32 sums (lower triangle) since the last FlushStats.
  AlignedVector<float> xtx32;
  std::vector<float> absmax;    // [in]
  std::vector<double> sum_abs;  // [in]
  std::vector<double> sum_sq;   // [in], sum of x^2 (the diagonal of X^T X, kept even without it)
  // DriverOptions::keep_rows: input rows kept as they were seen, [sample_rows, in] row-major.
  AlignedVector<float> samples;
  int64_t sample_rows = 0;
  // Data-free stand-in for an expert that saw too few tokens: X^T X = rows x I and every
  // channel's mean |x| and mean x^2 = 1, so GPTQ becomes round-to-nearest, SparseGPT and
  // Wanda become magnitude pruning and no input channel counts as an outlier.
  bool data_free = false;
  double mean_abs(int64_t i) const { return rows ? sum_abs[i] / rows : 0.0; }
};

// FNV-1a 64 of `bytes`, continuing from `h` (the provenance hash of calibration data).
inline constexpr uint64_t kFnv1aOffset = 1469598103934665603ull;
uint64_t Fnv1a(std::string_view bytes, uint64_t h = kFnv1aOffset);

// Adds rows x (row-major [rows, cols]) to `s` (allocating it on first use). X^T X is
// accumulated in f64 into its lower triangle only (bands of rows computed by GEMMs in
// parallel, about half the FLOPs of a full product); FinishStats mirrors it before anyone
// reads it.
// `f32_products` (CalibrationOptions::Precision::kBf16): X^T X's products are summed in f32
// (LinearStats::xtx32) until FlushStats adds them to the f64 sums (made then: a statistics
// part that saw only f32 products holds 4 bytes per entry, not 8).
void AccumulateStats(LinearStats& s, const float* x, int64_t rows, int64_t cols, bool xtx, bool f32_products = false);
// Adds the f32 sums (if any) to X^T X (allocated if absent) and clears them; FreeFlushedStats
// also frees them.
void FlushStats(LinearStats& s);
void FreeFlushedStats(LinearStats& s);
void FinishStats(LinearStats& s);

// What a pass does with one block: it receives the statistics of the block's linear layers
// (weight name -> stats) and may change their weights in the model; the driver then reloads
// the block so the next block sees the outputs of the compressed one (sequential mode).
// The callback may free a layer's statistics once it has used them (passes/layer_walk.h
// VisitBlockLayers): the driver reads only the map's keys afterwards.
using BlockCallback = std::function<absl::Status(int block, std::map<std::string, LinearStats>& stats)>;

struct DriverOptions {
  bool collect_xtx = true;
  bool sequential = true;  // propagate through the (possibly modified) block
  // Receives, per MoE block and expert, the calibration tokens routed to it and whether it
  // fell back to data-free statistics (null: not recorded).
  std::vector<ExpertCoverage>* experts = nullptr;
  // Receives every block's queries and attention cache as computed (Q and K after norm and
  // RoPE, V), before any KV-cache quantization the model carries (null: not observed). LLM
  // runtime only.
  std::function<void(int block, const RowMatrix& q, const RowMatrix& k, const RowMatrix& v)> kv;
  // Keep about this many input rows per linear layer (evenly spaced within each window, an
  // equal share per window) in LinearStats::samples, for searches over real activations.
  int64_t keep_rows = 0;
  // The weights whose statistics the callback reads (null: every linear layer's). LLM runtime:
  // X^T X is accumulated only for inputs a wanted weight reads (the other layers keep their
  // per-input sums), and blocks past the last one holding a wanted weight are not run (no
  // callback comes for them). ONNX graphs: only the wanted weights' nodes are observed and
  // chunked (fewer chunks, each run up to its last node). The wanted layers' statistics are the
  // same either way.
  const std::set<std::string>* wanted = nullptr;
  // The run's resume journal (core/resume_journal.h; null: none, and always none under MPI):
  // finished blocks are recorded, and those an earlier run finished are replayed. Only for
  // callbacks whose every change goes through VisitSpread (passes/layer_walk.h).
  ResumeJournal* journal = nullptr;
};

// Safetensors LLMs run block by block in the LLM runtime. ONNX models run in the ONNX
// interpreter in chunks of weight-bearing nodes: sequential mode makes one chunk per set of
// weights reading the same value (re-reading changed weights before the next chunk, so later
// layers see compressed earlier ones); otherwise chunks are as large as 2 GiB of X^T X allows.
// `block` is then the chunk index.
absl::Status RunCalibration(const Model& model, const CalibrationData& data, const DriverOptions& opts,
                            const BlockCallback& callback,
                            std::function<void(int64_t, int64_t)> progress = nullptr);

}  // namespace compress
