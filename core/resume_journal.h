// A run's resume journal (`compress run --resume`): what the block-by-block calibration
// driver (calibrate/calibration.h) finished, so that a run killed after some blocks continues
// from its last checkpoint and writes the same bytes as an uninterrupted run.
//
// The journal is a hidden folder beside the output, `.NAME.compress-resume`, holding
//   journal.json          what run it belongs to (the fingerprint: input files with sizes and
//                         modification times, pipeline, calibration, output) and, per driver
//                         run ("call") of each pass, how many leading blocks are finished;
//   p{P}-c{C}-b{B}.bin    per finished block: the statistics keys the pass was handed, the
//                         experts' calibration coverage and the layers visited, and beside it
//   p{P}-c{C}-b{B}.visits each layer visit's effects (the weight it left, the report entries
//                         and notes it added; the encoding of passes/layer_walk.h's VisitSpread),
//                         written and read one visit at a time;
//   p{P}-c{C}-at{N}.states the calibration states (every window's hidden state) after the
//                         call's first N blocks: the last checkpoint's and, until the next
//                         one, the one before (an MPI rank one checkpoint behind resumes there).
// On resume the finished blocks are replayed (the pass's callback runs with the recorded
// statistics keys, its visits apply the recorded effects), the states are read back and the
// driver continues with the next block. Only passes whose every change goes through
// VisitSpread journal (GPTQ, SparseGPT / Wanda / OBS pruning, ForEachLinear's spread visits);
// everything else runs again on resume, which gives the same bytes since runs are
// deterministic. The folder is removed when the run succeeds. Under MPI every rank keeps its
// own (docs/distributed.md): checkpoints are decided by rank 0 and committed after a barrier,
// and a resume starts every rank from the smallest block count all of them committed.
//
// Files hold values in this machine's byte order: a journal is resumed on the machine type
// that wrote it.
#pragma once

#include <chrono>
#include <cstdio>
#include <cstddef>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/report.h"
#include "core/tensor.h"
#include "nlohmann/json.hpp"

namespace compress {

// One finished block of a driver run.
struct JournalBlock {
  std::vector<std::string> layers;      // statistics keys handed to the pass, in order
  std::vector<ExpertCoverage> experts;  // coverage entries the driver added for this block
  // The layers visited, in order (their effect bytes are streamed to and from a side file,
  // one visit at a time, so a block's record is never held in memory).
  std::vector<std::string> visits;
};

// A calibration state as the driver holds it: a row-major [rows, cols] f32 matrix.
struct StateView {
  const float* data = nullptr;
  int64_t rows = 0, cols = 0;
};

class ResumeJournal {
 public:
  // The journal folder of the output `target` (file or folder).
  static std::string PathFor(const std::string& target);
  // Opens the journal of the run described by `fingerprint`. With `resume`, a journal there
  // with the same fingerprint is continued, one with another is an error naming what differs,
  // and none starts a fresh run. Without, an existing journal is removed (and `*note` says
  // so). A folder at the path that is not a journal is an error and is left alone.
  static absl::StatusOr<std::unique_ptr<ResumeJournal>> Open(const std::string& dir, nlohmann::json fingerprint,
                                                             bool resume, std::string* note);
  ~ResumeJournal();

  // Pass manager: the pass about to run (its index in the pipeline).
  void BeginPass(size_t index);

  // Driver: starts a driver run of `blocks` blocks and `states` calibration states in the
  // current pass. Returns how many leading blocks the journal holds finished: the driver
  // replays them (ReplayBlock) and, when fewer than `blocks`, reads the states after the
  // last one (LoadStates) before it continues.
  absl::StatusOr<int> BeginCall(int blocks, size_t states);
  absl::StatusOr<const JournalBlock*> ReplayBlock(int block);
  // `alloc(i, rows, cols)` returns where state i's rows x cols floats go.
  absl::Status LoadStates(const std::function<float*(size_t, int64_t, int64_t)>& alloc);
  // A block about to be computed: VisitSpread records into Recording() until EndBlock.
  void BeginBlock(int block);
  // Writes the block's record; when the checkpoint interval has passed (or it is the last
  // block) also the states after it and the journal's progress.
  absl::Status EndBlock(std::vector<std::string> layers, std::vector<ExpertCoverage> experts,
                        const std::function<std::vector<StateView>()>& states);
  void EndCall();

  // VisitSpread: whether a block is being recorded, and one visit's effects, appended to the
  // block's record; whether a block is being replayed, and its next visit's effects, which
  // must be of layer `name`.
  bool recording() const { return recording_; }
  // RecordVisit returns where in the block's visits file the effects' bytes begin.
  absl::StatusOr<uint64_t> RecordVisit(const std::string& name, std::span<const std::byte> effects);
  bool replaying() const { return replaying_; }
  absl::StatusOr<std::vector<std::byte>> TakeReplayedVisit(const std::string& name);
  // Bytes of a visit's effects as they lie in a journal file: the block's visits file from
  // `offset` (RecordVisit's answer, or the last TakeReplayedVisit's).
  struct VisitBytes {
    std::string path, fallback;  // the file, and its name while the block is being recorded
    uint64_t offset = 0;
  };
  VisitBytes RecordedAt(uint64_t offset) const;
  VisitBytes LastReplayed() const;
  // Driver: the replayed block's callback returned; every recorded visit must have been taken.
  absl::Status EndReplay();

  // A layer's result (the weight a visit left, computed or replayed) whose effects lie in the
  // journal at `in_file`, its element bytes `data_at` bytes in: returned as it is while the
  // results this process holds in memory stay within kHeldResultBytes (or a smaller
  // ResultMemoryBudget()); past that, the tensor returned reads its bytes back from that record
  // when asked (the writer, the driver's reload of the block), keeping only its quantization
  // parameters in memory: a calibrated pass over a model larger than memory holds one block's
  // results, not all.
  absl::StatusOr<Tensor> Hold(const Tensor& t, const VisitBytes& in_file, uint64_t data_at);
  static constexpr int64_t kHeldResultBytes = int64_t{256} << 20;

  // What was resumed, for the run report ("" when nothing was).
  const std::string& resumed() const { return resumed_; }
  // The run succeeded: removes the journal.
  absl::Status Discard();

 private:
  ResumeJournal(std::string dir, nlohmann::json manifest) : dir_(std::move(dir)), manifest_(std::move(manifest)) {}
  nlohmann::json& CallEntry();
  std::string BlockFile(int block) const;
  std::string VisitsFile(int block) const;
  std::string StatesFile(int done) const;  // the states after `done` blocks
  absl::Status SaveManifest();
  absl::Status EnsureFolder();

  std::string dir_;
  nlohmann::json manifest_;
  size_t pass_ = 0;
  int call_ = 0;          // ordinal of the driver run within the pass
  int call_blocks_ = 0;   // blocks of the current call
  int block_ = -1;        // block being recorded
  bool recording_ = false;
  JournalBlock current_;
  std::FILE* visits_out_ = nullptr;  // the block being recorded: its visits file (.tmp)
  JournalBlock replayed_;
  std::FILE* visits_in_ = nullptr;   // the block being replayed: its visits file
  bool replaying_ = false;
  size_t replay_at_ = 0;  // next visit of replayed_
  int block_replayed_ = -1;
  uint64_t replayed_at_ = 0;  // where the last replayed visit's effects begin
  std::chrono::steady_clock::time_point last_checkpoint_;
  double checkpoint_seconds_ = 60;
  int checkpoints_ = 0;   // written by this process (fault injection in tests)
  int kill_after_ = 0;
  int kill_before_commit_ = 0;
  int committed_ = 0;              // blocks of the current call this journal committed (or resumed from)
  std::vector<int> kept_states_;   // block counts of the call's states files on disk
  int64_t held_bytes_ = 0;         // results held in memory (Hold)
  std::string resumed_;
};

}  // namespace compress
