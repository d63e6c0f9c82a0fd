// The resume journal: manifest, block records and calibration states on disk.
#include "core/resume_journal.h"

#include <signal.h>
#include <stdio.h>
#include <fcntl.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <regex>
#include <utility>

#include "core/buffer.h"
#include "core/distributed.h"
#include "core/file_util.h"
#include "core/status.h"
#include "core/wire.h"

namespace compress {
namespace fs = std::filesystem;

namespace {

template <typename... Args>
absl::Status DiskError(fmt::format_string<Args...> f, Args&&... args) {
  return absl::UnavailableError(fmt::format(f, std::forward<Args>(args)...));
}

constexpr std::string_view kFormat = "compress resume journal";
constexpr int kVersion = 2;  // 2: states named by their block count, two kept
constexpr uint64_t kStatesMagic = 0x53455441'54534d43ull;  // "CMSTATES"
constexpr std::string_view kBlockMagic = "compress journal block 2";
constexpr std::string_view kManifest = "journal.json";

// The names this journal writes (and the only ones it ever removes).
bool IsJournalFile(const std::string& name) {
  // (results.spill: an earlier version's copy of held results, removed with its journal)
  static const std::regex re(
      R"((journal\.json|results\.spill|p\d+-c\d+-b\d+\.(bin|visits)|p\d+-c\d+-at\d+\.states)(\.tmp)?)");
  return std::regex_match(name, re);
}

absl::Status RemoveJournalFiles(const std::string& dir) {
  std::error_code ec;
  bool others = false;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    if (IsJournalFile(e.path().filename().string()) && e.is_regular_file()) {
      fs::remove(e.path(), ec);
      if (ec) return DiskError("{}: cannot remove: {}", e.path().string(), ec.message());
    } else {
      others = true;
    }
  }
  if (ec) return DiskError("{}: cannot list: {}", dir, ec.message());
  if (!others) fs::remove(dir, ec);  // only an empty folder
  return absl::OkStatus();
}

double EnvSeconds(const char* name, double fallback) {
  const char* v = std::getenv(name);
  if (!v || !*v) return fallback;
  char* end = nullptr;
  const double d = std::strtod(v, &end);
  return end && *end == '\0' && d >= 0 ? d : fallback;
}

// The fingerprint keys whose values differ, for the error of a mismatched resume.
std::string Differences(const nlohmann::json& a, const nlohmann::json& b) {
  std::string out;
  for (const auto& [k, v] : a.items()) {
    if (!b.contains(k) || b.at(k) != v) out += (out.empty() ? "" : ", ") + k;
  }
  for (const auto& [k, v] : b.items()) {
    if (!a.contains(k)) out += (out.empty() ? "" : ", ") + k;
  }
  return out.empty() ? "unknown" : out;
}

}  // namespace

std::string ResumeJournal::PathFor(const std::string& target) {
  fs::path p = fs::path(target).lexically_normal();
  if (p.filename().empty()) p = p.parent_path();
  return (p.parent_path() / ("." + p.filename().string() + ".compress-resume")).string();
}

absl::StatusOr<std::unique_ptr<ResumeJournal>> ResumeJournal::Open(const std::string& dir, nlohmann::json fingerprint,
                                                                   bool resume, std::string* note) {
  nlohmann::json fresh = {{"format", kFormat}, {"version", kVersion}, {"fingerprint", fingerprint},
                          {"calls", nlohmann::json::array()}};
  std::unique_ptr<ResumeJournal> j;
  std::error_code ec;
  if (!fs::exists(dir, ec)) {
    j.reset(new ResumeJournal(dir, std::move(fresh)));
  } else {
    const std::string manifest_path = (fs::path(dir) / kManifest).string();
    auto text = fs::is_directory(dir, ec) ? ReadSmallFile(manifest_path, 1 << 24) : absl::NotFoundError("");
    nlohmann::json m = text.ok() ? nlohmann::json::parse(*text, nullptr, false) : nlohmann::json();
    if (!m.is_object() || m.value("format", "") != kFormat || !m.contains("fingerprint") ||
        !m.contains("calls") || !m["calls"].is_array()) {
      return InvalidArgument("{}: exists and is not a compress resume journal (compress leaves it alone; move it away)",
                             dir);
    }
    if (resume && m.value("version", 0) == kVersion && m["fingerprint"] == fingerprint) {
      j.reset(new ResumeJournal(dir, std::move(m)));
    } else if (resume) {
      return InvalidArgument(
          "{}: --resume: this journal belongs to a different run ({} differ); run without --resume to start over",
          dir, m.value("version", 0) == kVersion ? Differences(m["fingerprint"], fingerprint) : "journal version");
    } else {
      RETURN_IF_ERROR(RemoveJournalFiles(dir));
      if (note) *note = fmt::format("removed the resume journal of an earlier run ({}); give --resume to continue one", dir);
      j.reset(new ResumeJournal(dir, std::move(fresh)));
    }
  }
  j->checkpoint_seconds_ = EnvSeconds("COMPRESS_CHECKPOINT_SECONDS", 60);
  j->kill_after_ = static_cast<int>(EnvSeconds("COMPRESS_JOURNAL_KILL_AFTER", 0));  // tests: die like a killed run
  // tests (MPI): die after the states of that checkpoint are written, before it is committed
  j->kill_before_commit_ = static_cast<int>(EnvSeconds("COMPRESS_JOURNAL_KILL_BEFORE_COMMIT", 0));
  return j;
}

ResumeJournal::~ResumeJournal() {
  if (visits_out_) std::fclose(visits_out_);
  if (visits_in_) std::fclose(visits_in_);
}

void ResumeJournal::BeginPass(size_t index) {
  pass_ = index;
  call_ = -1;
}

nlohmann::json& ResumeJournal::CallEntry() {
  for (auto& c : manifest_["calls"]) {
    if (c.value("pass", -1) == static_cast<int64_t>(pass_) && c.value("call", -1) == call_) return c;
  }
  manifest_["calls"].push_back({{"pass", pass_}, {"call", call_}, {"blocks", call_blocks_}, {"done", 0}, {"states", 0}});
  return manifest_["calls"].back();
}

std::string ResumeJournal::BlockFile(int block) const {
  return (fs::path(dir_) / fmt::format("p{}-c{}-b{}.bin", pass_, call_, block)).string();
}
std::string ResumeJournal::VisitsFile(int block) const {
  return (fs::path(dir_) / fmt::format("p{}-c{}-b{}.visits", pass_, call_, block)).string();
}
std::string ResumeJournal::StatesFile(int done) const {
  return (fs::path(dir_) / fmt::format("p{}-c{}-at{}.states", pass_, call_, done)).string();
}

absl::Status ResumeJournal::EnsureFolder() {
  std::error_code ec;
  if (fs::is_directory(dir_, ec)) return absl::OkStatus();
  fs::create_directory(dir_, ec);
  if (ec) return DiskError("{}: cannot create the resume journal: {}", dir_, ec.message());
  return SaveManifest();
}

absl::Status ResumeJournal::SaveManifest() {
  const std::string text = manifest_.dump(1) + "\n";
  return WriteFileAtomic((fs::path(dir_) / kManifest).string(),
                     [&](FILE* f) { return std::fwrite(text.data(), 1, text.size(), f) == text.size(); });
}

absl::StatusOr<int> ResumeJournal::BeginCall(int blocks, size_t states) {
  ++call_;
  call_blocks_ = blocks;
  last_checkpoint_ = std::chrono::steady_clock::now();
  nlohmann::json& c = CallEntry();
  int done = c.value("done", 0);
  if (c.value("blocks", -1) != blocks && done > 0) done = -1;  // checked below
  // Under MPI every rank resumes from the blocks all of them committed (a rank killed between
  // writing a checkpoint's states and committing it is one checkpoint behind; the others
  // kept their previous states for that case).
  ASSIGN_OR_RETURN(const int64_t agreed, dist::MinAll(done));
  if (done >= 0) done = static_cast<int>(agreed);
  committed_ = std::max(done, 0);
  if (done >= 0 && c.value("done", 0) != done) {  // behind another rank: what this one holds from now on
    c["done"] = done;
    RETURN_IF_ERROR(SaveManifest());
  }
  kept_states_.clear();
  if (done > 0 && done < blocks) kept_states_.push_back(done);
  if (done == 0) {
    c["blocks"] = blocks;
    c["states"] = states;
    return 0;
  }
  if (done < 0 || (done < blocks && c.value("states", uint64_t{0}) != states)) {
    return InvalidArgument("{}: the journal's calibration run {} of pass {} does not match this one ({} blocks, {} "
                           "states); run without --resume to start over",
                           dir_, call_ + 1, pass_ + 1, blocks, states);
  }
  resumed_ += fmt::format("{}pass {} calibration run {}: {} of {} blocks from the journal", resumed_.empty() ? "" : "; ",
                          pass_ + 1, call_ + 1, done, blocks);
  return done;
}

absl::StatusOr<const JournalBlock*> ResumeJournal::ReplayBlock(int block) {
  const std::string path = BlockFile(block);
  ASSIGN_OR_RETURN(std::string bytes, ReadSmallFile(path, size_t{1} << 40));
  ByteReader r(std::as_bytes(std::span(bytes.data(), bytes.size())), path);
  JournalBlock b;
  std::string magic;
  RETURN_IF_ERROR(r.GetString(magic));
  if (magic != kBlockMagic) return InvalidArgument("{}: not a journal block record", path);
  uint64_t n = 0;
  RETURN_IF_ERROR(r.Get(n));
  b.layers.resize(std::min<uint64_t>(n, 1 << 20));
  if (n != b.layers.size()) return InvalidArgument("{}: corrupt journal block record", path);
  for (auto& l : b.layers) RETURN_IF_ERROR(r.GetString(l));
  RETURN_IF_ERROR(r.Get(n));
  if (n > (1 << 20)) return InvalidArgument("{}: corrupt journal block record", path);
  for (uint64_t i = 0; i < n; ++i) {
    ASSIGN_OR_RETURN(ExpertCoverage e, GetExpertCoverage(r));
    b.experts.push_back(e);
  }
  RETURN_IF_ERROR(r.Get(n));
  if (n > (1 << 20)) return InvalidArgument("{}: corrupt journal block record", path);
  b.visits.resize(n);
  for (auto& v : b.visits) RETURN_IF_ERROR(r.GetString(v));
  if (!r.done()) return InvalidArgument("{}: trailing bytes in a journal block record", path);
  if (visits_in_) std::fclose(visits_in_);
  visits_in_ = std::fopen(VisitsFile(block).c_str(), "rb");
  if (!visits_in_ && !b.visits.empty()) {
    return DiskError("{}: cannot read the journal's layer results: {}", VisitsFile(block), std::strerror(errno));
  }
  replayed_ = std::move(b);
  replaying_ = true;
  replay_at_ = 0;
  block_replayed_ = block;
  return &replayed_;
}

absl::StatusOr<std::vector<std::byte>> ResumeJournal::TakeReplayedVisit(const std::string& name) {
  if (!replaying_ || replay_at_ >= replayed_.visits.size() || replayed_.visits[replay_at_] != name) {
    return InvalidArgument("{}: the journal does not match this run (layer '{}' was not visited next); run without "
                           "--resume to start over",
                           dir_, name);
  }
  ++replay_at_;
  // One visit: u64 name length, name, u64 byte count, bytes.
  const std::string path = VisitsFile(block_replayed_);
  uint64_t n = 0;
  std::string got;
  if (std::fread(&n, 8, 1, visits_in_) != 1 || n > (1 << 16)) return InvalidArgument("{}: truncated or corrupt", path);
  got.resize(n);
  if (std::fread(got.data(), 1, n, visits_in_) != n || got != name || std::fread(&n, 8, 1, visits_in_) != 1) {
    return InvalidArgument("{}: truncated or corrupt (at layer '{}')", path, name);
  }
  const long at = std::ftell(visits_in_);
  std::vector<std::byte> bytes(n);
  if (at < 0 || std::fread(bytes.data(), 1, n, visits_in_) != n) {
    return InvalidArgument("{}: truncated at layer '{}'", path, name);
  }
  replayed_at_ = static_cast<uint64_t>(at);
  return bytes;
}

absl::Status ResumeJournal::EndReplay() {
  replaying_ = false;
  if (replay_at_ != replayed_.visits.size()) {
    return InvalidArgument("{}: the journal does not match this run ({} recorded layer visits were not replayed); run "
                           "without --resume to start over",
                           dir_, replayed_.visits.size() - replay_at_);
  }
  replayed_ = {};
  if (visits_in_) std::fclose(visits_in_);
  visits_in_ = nullptr;
  return absl::OkStatus();
}

absl::Status ResumeJournal::LoadStates(const std::function<float*(size_t, int64_t, int64_t)>& alloc) {
  const std::string path = StatesFile(committed_);
  FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) return DiskError("{}: cannot read the journal's calibration states: {}", path, std::strerror(errno));
  absl::Status st = absl::OkStatus();
  uint64_t magic = 0, count = 0;
  const size_t expected = CallEntry().value("states", uint64_t{0});
  if (std::fread(&magic, 8, 1, f) != 1 || magic != kStatesMagic || std::fread(&count, 8, 1, f) != 1 ||
      count != expected) {
    st = InvalidArgument("{}: not the calibration states of this run", path);
  }
  for (uint64_t i = 0; st.ok() && i < count; ++i) {
    int64_t rc[2] = {0, 0};
    if (std::fread(rc, 8, 2, f) != 2 || rc[0] < 0 || rc[1] < 0 || rc[0] > (1 << 24) || rc[1] > (1 << 24)) {
      st = InvalidArgument("{}: truncated or corrupt calibration states", path);
      break;
    }
    float* dst = alloc(i, rc[0], rc[1]);
    const size_t n = static_cast<size_t>(rc[0] * rc[1]);
    if (std::fread(dst, sizeof(float), n, f) != n) st = InvalidArgument("{}: truncated calibration states", path);
  }
  std::fclose(f);
  return st;
}

void ResumeJournal::BeginBlock(int block) {
  block_ = block;
  recording_ = true;
  current_ = {};
}

absl::StatusOr<uint64_t> ResumeJournal::RecordVisit(const std::string& name, std::span<const std::byte> effects) {
  if (!recording_) return Internal("a layer visit recorded outside a block");
  const std::string tmp = VisitsFile(block_) + ".tmp";
  if (!visits_out_) {
    RETURN_IF_ERROR(EnsureFolder());
    visits_out_ = std::fopen(tmp.c_str(), "wb");
    if (!visits_out_) return DiskError("{}: cannot write the resume journal: {}", tmp, std::strerror(errno));
  }
  const uint64_t head = name.size(), size = effects.size();
  if (std::fwrite(&head, 8, 1, visits_out_) != 1 || std::fwrite(name.data(), 1, head, visits_out_) != head ||
      std::fwrite(&size, 8, 1, visits_out_) != 1) {
    return DiskError("{}: writing the resume journal failed (disk full?)", tmp);
  }
  const long at = std::ftell(visits_out_);
  // Flushed: a held result may be read back from here (Hold) before the block ends.
  if (at < 0 || std::fwrite(effects.data(), 1, size, visits_out_) != size || std::fflush(visits_out_) != 0) {
    return DiskError("{}: writing the resume journal failed (disk full?)", tmp);
  }
  current_.visits.push_back(name);
  return static_cast<uint64_t>(at);
}

absl::Status ResumeJournal::EndBlock(std::vector<std::string> layers, std::vector<ExpertCoverage> experts,
                                     const std::function<std::vector<StateView>()>& states) {
  recording_ = false;
  current_.layers = std::move(layers);
  current_.experts = std::move(experts);
  RETURN_IF_ERROR(EnsureFolder());
  ByteWriter w;
  w.PutString(kBlockMagic);
  w.Put<uint64_t>(current_.layers.size());
  for (const auto& l : current_.layers) w.PutString(l);
  w.Put<uint64_t>(current_.experts.size());
  for (const auto& e : current_.experts) PutExpertCoverage(w, e);
  w.Put<uint64_t>(current_.visits.size());
  for (const auto& name : current_.visits) w.PutString(name);
  current_ = {};
  if (visits_out_) {  // the visits first: the block record is the commit point
    const std::string tmp = VisitsFile(block_) + ".tmp";
    const bool ok = std::fflush(visits_out_) == 0 && ::fsync(fileno(visits_out_)) == 0;
    const bool closed = std::fclose(visits_out_) == 0;
    visits_out_ = nullptr;
    std::error_code ec;
    if (ok && closed) fs::rename(tmp, VisitsFile(block_), ec);
    if (!ok || !closed || ec) return DiskError("{}: writing the resume journal failed", tmp);
  }
  const std::vector<std::byte> record = w.Take();
  RETURN_IF_ERROR(WriteFileAtomic(BlockFile(block_), [&](FILE* f) {
    return std::fwrite(record.data(), 1, record.size(), f) == record.size();
  }));
  const bool last = block_ + 1 == call_blocks_;
  const auto now = std::chrono::steady_clock::now();
  // Whether to checkpoint: rank 0's clock decides for every rank (MPI), so all checkpoint
  // after the same blocks.
  std::vector<std::byte> due(1, std::byte{
      last || std::chrono::duration<double>(now - last_checkpoint_).count() >= checkpoint_seconds_});
  RETURN_IF_ERROR(dist::Broadcast(due, 0));
  if (due[0] == std::byte{0}) return absl::OkStatus();
  const int done = block_ + 1;
  if (!last) {
    const std::vector<StateView> views = states();
    RETURN_IF_ERROR(WriteFileAtomic(StatesFile(done), [&](FILE* f) {
      const uint64_t head[2] = {kStatesMagic, views.size()};
      if (std::fwrite(head, 8, 2, f) != 2) return false;
      for (const StateView& v : views) {
        const int64_t rc[2] = {v.rows, v.cols};
        const size_t n = static_cast<size_t>(v.rows * v.cols);
        if (std::fwrite(rc, 8, 2, f) != 2 || std::fwrite(v.data, sizeof(float), n, f) != n) return false;
      }
      return true;
    }));
  }
  // Every rank holds this checkpoint's states before any commits it; so every rank committed
  // the previous one, and the states before that are no longer anyone's fallback.
  RETURN_IF_ERROR(dist::Barrier());
  for (int old : std::exchange(kept_states_, {})) {
    if (old == committed_) {
      kept_states_.push_back(old);
    } else {
      std::error_code ec;
      fs::remove(StatesFile(old), ec);
    }
  }
  if (!last) kept_states_.push_back(done);
  ++checkpoints_;
  if (kill_before_commit_ > 0 && checkpoints_ == kill_before_commit_) {
    ::usleep(500000);  // the other ranks commit meanwhile, as they may when one dies here
    ::raise(SIGKILL);
  }
  CallEntry()["done"] = done;
  RETURN_IF_ERROR(SaveManifest());
  committed_ = done;
  if (last && !dist::Active()) {  // committed, and nobody can be behind: the call's states are done with
    for (int old : std::exchange(kept_states_, {})) {
      std::error_code ec;
      fs::remove(StatesFile(old), ec);
    }
  }
  last_checkpoint_ = std::chrono::steady_clock::now();
  if (kill_after_ > 0 && checkpoints_ == kill_after_) ::raise(SIGKILL);
  return absl::OkStatus();
}

void ResumeJournal::EndCall() { block_ = -1; }

ResumeJournal::VisitBytes ResumeJournal::RecordedAt(uint64_t offset) const {
  return {VisitsFile(block_), VisitsFile(block_) + ".tmp", offset};
}

ResumeJournal::VisitBytes ResumeJournal::LastReplayed() const {
  return {VisitsFile(block_replayed_), "", replayed_at_};
}

absl::StatusOr<Tensor> ResumeJournal::Hold(const Tensor& t, const VisitBytes& in_file, uint64_t data_at) {
  if (t.is_lazy() || t.mapped() || t.factors()) return t;
  const int64_t bytes = t.nbytes();
  if (held_bytes_ + bytes <= std::min(kHeldResultBytes, ResultMemoryBudget())) {
    held_bytes_ += bytes;
    return t;
  }
  const std::string path = in_file.path, fallback = in_file.fallback;
  const uint64_t offset = in_file.offset + data_at;
  const size_t size = static_cast<size_t>(bytes);
  Tensor::Producer read = [path, fallback, offset, size]() -> absl::StatusOr<std::shared_ptr<const Buffer>> {
    auto buf = std::make_shared<UninitBuffer>(size);
    // A block's visits file has its .tmp name until the block ends.
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0 && !fallback.empty()) fd = ::open(fallback.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return DiskError("{}: cannot read a journaled result: {}", path, std::strerror(errno));
    size_t at = 0;
    while (at < size) {
      const ssize_t r = ::pread(fd, buf->mutable_data() + at, std::min<size_t>(size - at, size_t{1} << 30),
                                static_cast<off_t>(offset + at));
      if (r <= 0) break;
      at += static_cast<size_t>(r);
    }
    ::close(fd);
    if (at != size) return DiskError("{}: a journaled result is truncated", path);
    return buf;
  };
  if (const QuantInfo* q = t.quant()) return Tensor::LazyQuantized(t.shape(), *q, std::move(read));
  return Tensor::Lazy(t.dtype(), t.shape(), std::move(read));
}

absl::Status ResumeJournal::Discard() {
  std::error_code ec;
  if (!fs::is_directory(dir_, ec)) return absl::OkStatus();
  return RemoveJournalFiles(dir_);
}

}  // namespace compress
