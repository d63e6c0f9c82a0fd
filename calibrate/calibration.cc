// Calibration sampling and the block-by-block statistics driver.
#include "calibrate/calibration.h"

#include <algorithm>
#include <filesystem>
#include <random>

#include "calibrate/onnx_calibration.h"
#include "calibrate/stats_io.h"
#include "core/distributed.h"
#include "core/file_util.h"
#include "core/status.h"
#include "runtime/tokenizer.h"

namespace compress {
namespace {

class StatsObserver final : public LinearObserver {
 public:
  StatsObserver(std::map<std::string, LinearStats>& stats, std::map<std::string, std::string>& aliases, bool xtx,
                bool f32_xtx, const DriverOptions& opts)
      : stats_(stats), aliases_(aliases), xtx_(xtx), f32_xtx_(f32_xtx), opts_(opts) {}
  void ObserveKv(int block, const RowMatrix& q, const RowMatrix& k, const RowMatrix& v) override {
    if (opts_.kv) opts_.kv(block, q, k, v);
  }
  // Layers reading the same input share one accumulation (under the first name), copied to
  // the others when the block's statistics are complete.
  void Observe(int, std::span<const std::string> weights, const RowMatrix& x) override {
    for (size_t i = 1; i < weights.size(); ++i) aliases_[weights[i]] = weights[0];
    LinearStats& st = stats_[weights[0]];
    bool xtx = xtx_;
    if (xtx && opts_.wanted) {  // X^T X only for an input some wanted weight reads
      xtx = std::any_of(weights.begin(), weights.end(),
                        [&](const std::string& w) { return opts_.wanted->count(w) > 0; });
    }
    AccumulateStats(st, x.data(), x.rows(), x.cols(), xtx, f32_xtx_);
    if (per_window_ > 0 && x.rows() > 0) {
      const int64_t take = std::min<int64_t>(per_window_, x.rows());
      for (int64_t i = 0; i < take; ++i) {
        const int64_t r = i * x.rows() / take;
        st.samples.insert(st.samples.end(), x.row(r).data(), x.row(r).data() + x.cols());
      }
      st.sample_rows += take;
    }
  }
  void SetRowsPerWindow(int64_t n) { per_window_ = n; }

 private:
  std::map<std::string, LinearStats>& stats_;
  std::map<std::string, std::string>& aliases_;
  bool xtx_, f32_xtx_;
  const DriverOptions& opts_;
  int64_t per_window_ = 0;
};

// The windows' ids as little-endian int32 bytes, hashed in order.
uint64_t HashWindows(const std::vector<std::vector<int32_t>>& windows) {
  uint64_t h = kFnv1aOffset;
  for (const auto& w : windows) {
    std::string bytes(w.size() * 4, '\0');
    for (size_t i = 0; i < w.size(); ++i)
      for (int b = 0; b < 4; ++b) bytes[i * 4 + b] = static_cast<char>(static_cast<uint32_t>(w[i]) >> (8 * b));
    h = Fnv1a(bytes, h);
  }
  return h;
}

// Replaces the statistics of every expert of block `b` that saw fewer than `min_tokens`
// calibration tokens with data-free ones, and records every expert's count.
void CoverExperts(const Block& b, int64_t min_tokens, bool xtx, std::map<std::string, LinearStats>& stats,
                  std::vector<ExpertCoverage>* record) {
  for (int e = 0; e < b.num_experts; ++e) {
    int64_t tokens = 0;
    for (const LinearLayer& l : b.mlp) {
      if (l.expert == e && l.kind != "down_proj") {
        auto it = stats.find(l.weight);
        if (it != stats.end()) tokens = it->second.rows;
      }
    }
    const bool starved = tokens < min_tokens;
    if (record) record->push_back(ExpertCoverage{b.index, e, tokens, starved});
    if (!starved) continue;
    for (const LinearLayer& l : b.mlp) {
      if (l.expert != e) continue;
      LinearStats s;
      s.in_features = l.in_features;
      s.rows = std::max<int64_t>(tokens, 1);
      s.absmax.assign(l.in_features, 1.f);
      s.sum_abs.assign(l.in_features, static_cast<double>(s.rows));
      s.sum_sq.assign(l.in_features, static_cast<double>(s.rows));
      if (xtx) {
        s.xtx.assign(l.in_features * l.in_features, 0.0);
        for (int64_t i = 0; i < l.in_features; ++i) s.xtx[i * l.in_features + i] = static_cast<double>(s.rows);
      }
      s.data_free = true;
      stats[l.weight] = std::move(s);
    }
  }
}

}  // namespace

const char* PrecisionName(CalibrationOptions::Precision p) {
  return p == CalibrationOptions::Precision::kBf16 ? "bf16" : "f32";
}

std::optional<CalibrationOptions::Precision> PrecisionNamed(std::string_view name) {
  for (auto p : {CalibrationOptions::Precision::kF32, CalibrationOptions::Precision::kBf16}) {
    if (name == PrecisionName(p)) return p;
  }
  return std::nullopt;
}

void AccumulateStats(LinearStats& s, const float* x, int64_t rows, int64_t in, bool xtx, bool f32_products) {
  if (s.in_features == 0) {
    s.in_features = in;
    s.absmax.assign(in, 0.f);
    s.sum_abs.assign(in, 0.0);
    s.sum_sq.assign(in, 0.0);
    if (xtx && !f32_products) s.xtx.assign(in * in, 0.0);  // f32 products: FlushStats makes them
  }
  s.rows += rows;
  for (int64_t t = 0; t < rows; ++t) {
    for (int64_t i = 0; i < in; ++i) {
      const float a = std::fabs(x[t * in + i]);
      s.absmax[i] = std::max(s.absmax[i], a);
      s.sum_abs[i] += a;
      s.sum_sq[i] += static_cast<double>(a) * a;
    }
  }
  if (xtx) {
    // The lower triangle in bands of 128 rows, one GEMM per band, bands spread over the
    // threads (Eigen's symmetric rank update runs on one thread): H[r0:r1, 0:r1] += X[:, r0:r1]^T
    // X[:, 0:r1]. Each entry is summed by one GEMM whatever the thread count.
    using RowD = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
    using RowF = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
    constexpr int64_t kBand = 128;
    const int64_t bands = (in + kBand - 1) / kBand;
    const bool parallel = static_cast<double>(rows) * in * in > 1e7;
    auto sum_bands = [&](auto& h, const auto& xs) {
#pragma omp parallel for schedule(dynamic, 1) if (parallel)
      for (int64_t b = bands - 1; b >= 0; --b) {  // the widest bands first
        const int64_t r0 = b * kBand, r1 = std::min(in, r0 + kBand);
        h.block(r0, 0, r1 - r0, r1).noalias() += xs.middleCols(r0, r1 - r0).transpose() * xs.leftCols(r1);
      }
    };
    if (f32_products) {
      if (s.xtx32.empty()) s.xtx32.assign(in * in, 0.f);
      Eigen::Map<RowF> h32(s.xtx32.data(), in, in);
      sum_bands(h32, Eigen::Map<const RowF>(x, rows, in));
    } else {
      Eigen::Map<RowD> h(s.xtx.data(), in, in);
      sum_bands(h, RowD(Eigen::Map<const RowF>(x, rows, in).cast<double>()));
    }
  }
}

void FlushStats(LinearStats& s) {
  const int64_t n = s.in_features;
  if (s.xtx32.size() != static_cast<size_t>(n * n)) return;
  if (s.xtx.empty()) s.xtx.assign(n * n, 0.0);
#pragma omp parallel for schedule(static) if (n * n > (int64_t{1} << 20))
  for (int64_t i = 0; i < n; ++i) {
    double* h = s.xtx.data() + i * n;
    float* p = s.xtx32.data() + i * n;
    for (int64_t j = 0; j <= i; ++j) h[j] += p[j];
    std::fill(p, p + n, 0.f);  // the bands also summed some entries right of the diagonal
  }
}

void FreeFlushedStats(LinearStats& s) {
  FlushStats(s);
  s.xtx32 = AlignedVector<float>();
}

void FinishStats(LinearStats& s) {
  FreeFlushedStats(s);
  const int64_t n = s.in_features;
  if (s.xtx.size() != static_cast<size_t>(n * n)) return;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = i + 1; j < n; ++j) s.xtx[i * n + j] = s.xtx[j * n + i];
}

uint64_t Fnv1a(std::string_view bytes, uint64_t h) {
  for (unsigned char c : bytes) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

absl::StatusOr<CalibrationData> LoadCalibration(const CalibrationOptions& opts,
                                                const std::string& tokenizer_json) {
  if (opts.samples < 1 || opts.seqlen < 2) {
    return InvalidArgument("calibration needs samples >= 1 and seqlen >= 2 (got {} x {})", opts.samples,
                           opts.seqlen);
  }
  // The windows are kept as token ids, and the driver runs one window at a time, so tokens
  // bound the memory: refuse before allocating when they alone would pass 2^28 (1 GiB).
  if (opts.samples > (int64_t{1} << 20) || opts.seqlen > (int64_t{1} << 20) ||
      opts.samples * opts.seqlen > (int64_t{1} << 28)) {
    return InvalidArgument(
        "calibration of {} samples x {} tokens would hold {:.1f} GiB of token ids alone; the limit is 2^28 "
        "tokens (the usual setting is 128 x 512)",
        opts.samples, opts.seqlen, static_cast<double>(opts.samples) * static_cast<double>(opts.seqlen) * 4 / (1 << 30));
  }
  if (std::filesystem::is_directory(opts.file)) return LoadTensorSets(opts);
  ASSIGN_OR_RETURN(std::string text, ReadSmallFile(opts.file, 1ull << 32));
  std::vector<int32_t> ids;
  ASSIGN_OR_RETURN(auto json_ids, TokenIdsFromText(text, opts.file));
  if (json_ids) {
    ids = *std::move(json_ids);
  } else {
    auto tok = Tokenizer::FromFile(tokenizer_json);
    if (!tok.ok()) return Annotate(tok.status(), "calibration text needs the model's tokenizer");
    auto enc = (*tok)->Encode(text);
    if (!enc.ok()) return Annotate(enc.status(), opts.file);
    ids = *std::move(enc);
  }
  const int64_t n = static_cast<int64_t>(ids.size());
  if (n < opts.seqlen) {
    return InvalidArgument("{}: {} tokens, fewer than one calibration window of {}", opts.file, n,
                           opts.seqlen);
  }
  CalibrationData d;
  d.options = opts;
  std::mt19937_64 rng(opts.seed);
  std::uniform_int_distribution<int64_t> start(0, n - opts.seqlen);
  for (int64_t s = 0; s < opts.samples; ++s) {
    const int64_t b = start(rng);
    d.windows.emplace_back(ids.begin() + b, ids.begin() + b + opts.seqlen);
  }
  d.hash = HashWindows(d.windows);
  return d;
}

namespace {

// Windows are summed in shards of this many, each shard from zero, and the shards' sums are
// added in shard order: the same additions whichever process computed which shard, so a
// distributed run gives the single-process bytes. A run of at most one shard adds exactly as
// a plain sum over windows.
constexpr int64_t kWindowsPerShard = 8;

// Which calibration windows this process runs: every window, or under MPI the shards
// k with k % ranks == rank.
struct WindowPlan {
  bool sharded = false;  // statistics summed per shard (and spread over ranks when distributed)
  int64_t shards = 1;
  std::vector<int64_t> local;  // window indices this process holds, in order
  int Owner(int64_t shard) const { return static_cast<int>(shard % dist::Size()); }
  int64_t ShardOf(int64_t window) const { return window / kWindowsPerShard; }
};

WindowPlan PlanWindows(int64_t windows, const DriverOptions& opts) {
  WindowPlan p;
  // The KV observer and kept sample rows see windows one by one: every process runs them all.
  p.sharded = !opts.kv && opts.keep_rows == 0;
  p.shards = p.sharded ? std::max<int64_t>(1, (windows + kWindowsPerShard - 1) / kWindowsPerShard) : 1;
  for (int64_t w = 0; w < windows; ++w) {
    if (!p.sharded || p.Owner(p.ShardOf(w)) == dist::Rank()) p.local.push_back(w);
  }
  return p;
}

// One block's statistics over every window: each shard's sum from this process or (rank 0)
// from its owner, merged in shard order; then rank 0's total goes to every rank.
absl::StatusOr<BlockStats> BlockStatistics(const LlamaRuntime& rt, int b, const WindowPlan& plan,
                                           std::vector<RowMatrix>& states, std::vector<RowMatrix>* outputs,
                                           const DriverOptions& opts, bool f32_xtx) {
  BlockStats total;
  auto run = [&](size_t from, size_t to, BlockStats& into) {
    StatsObserver obs(into.layers, into.aliases, opts.collect_xtx, f32_xtx, opts);
    if (opts.keep_rows > 0 && !states.empty()) {
      const int64_t n = static_cast<int64_t>(states.size());
      obs.SetRowsPerWindow((opts.keep_rows + n - 1) / n);
    }
    for (size_t i = from; i < to; ++i) {
      RowMatrix y = states[i];
      rt.RunBlock(b, y, &obs);
      if (outputs) (*outputs)[i] = std::move(y);
      // f32 sums of X^T X products go into the f64 sums every shard's worth of windows. A
      // shard's part keeps only its f32 sums (MergeStats adds them to the total's f64 ones).
      if (f32_xtx && !plan.sharded && (i + 1 - from) % kWindowsPerShard == 0) {
        for (auto& [name, st] : into.layers) FlushStats(st);
      }
    }
  };
  if (!plan.sharded) {
    run(0, states.size(), total);
    for (auto& [name, st] : total.layers) FlushStats(st);
    return total;
  }
  size_t at = 0;  // next local window
  for (int64_t k = 0; k < plan.shards; ++k) {
    const int owner = plan.Owner(k);
    if (owner == dist::Rank()) {
      const size_t from = at;
      while (at < plan.local.size() && plan.ShardOf(plan.local[at]) == k) ++at;
      BlockStats part;
      run(from, at, part);
      if (dist::Rank() == 0) {
        MergeStats(total, std::move(part));
      } else {
        for (auto& [name, st] : part.layers) FlushStats(st);  // the wire form carries f64 sums
        RETURN_IF_ERROR(dist::SendBuffer(0, SerializeStats(part)));
      }
    } else if (dist::Rank() == 0) {
      std::vector<std::byte> bytes;
      RETURN_IF_ERROR(dist::RecvBuffer(owner, bytes));
      ASSIGN_OR_RETURN(BlockStats part, DeserializeStats(bytes));
      MergeStats(total, std::move(part));
    }
  }
  if (dist::Active()) {
    std::vector<std::byte> bytes;
    if (dist::Rank() == 0) bytes = SerializeStats(total);
    RETURN_IF_ERROR(dist::Broadcast(bytes, 0));
    if (dist::Rank() != 0) {
      ASSIGN_OR_RETURN(total, DeserializeStats(bytes));
    }
  }
  return total;
}

}  // namespace

absl::Status RunCalibration(const Model& model, const CalibrationData& data, const DriverOptions& opts,
                            const BlockCallback& callback, std::function<void(int64_t, int64_t)> progress) {
  if (model.format == ModelFormat::kOnnx) {
    if (data.options.precision != CalibrationOptions::Precision::kF32) {
      return InvalidArgument("calibration precision {}: LLM checkpoints only (ONNX models calibrate in f32)",
                             PrecisionName(data.options.precision));
    }
    return RunOnnxCalibration(model, data, opts, callback, progress);
  }
  if (!data.tensor_sets.empty()) {
    return InvalidArgument("calibration tensor folders feed ONNX models; give this model text or token ids");
  }
  if (data.options.min_expert_tokens < 0) {
    return InvalidArgument("min_expert_tokens must be >= 0 (got {})", data.options.min_expert_tokens);
  }
  // One block's f32 weights at a time: the driver loads each block before its statistics
  // pass and releases it after the calibration states went through it; the embedding is
  // freed once the windows are embedded and the lm_head is never decoded.
  const bool bf16 = data.options.precision == CalibrationOptions::Precision::kBf16;
  ASSIGN_OR_RETURN(auto rt, LlamaRuntime::Create(model, {.lazy_blocks = true,
                                                         .logits = false,
                                                         .matmul = bf16 ? MatmulMode::kBf16 : MatmulMode::kF32}));
  const WindowPlan plan = PlanWindows(static_cast<int64_t>(data.windows.size()), opts);
  std::vector<RowMatrix> states;
  states.reserve(plan.local.size());
  for (int64_t w : plan.local) {
    ASSIGN_OR_RETURN(RowMatrix x, rt->Embed(data.windows[w]));
    states.push_back(std::move(x));
  }
  rt->ReleaseEmbeddings();  // neither the embedding nor the lm_head is needed past this point
  int blocks = rt->num_blocks();
  if (opts.wanted) {  // up to the last block holding a wanted weight
    int last = -1;
    for (const Block& blk : model.arch.blocks) {
      for (const auto* layers : {&blk.attention, &blk.mlp}) {
        for (const LinearLayer& l : *layers) {
          if (opts.wanted->count(l.weight)) last = std::max(last, blk.index);
        }
      }
      if (opts.wanted->count(blk.router) || opts.wanted->count(blk.shared_expert_gate)) {
        last = std::max(last, blk.index);
      }
    }
    blocks = std::min(blocks, last + 1);
  }
  ResumeJournal* journal = opts.journal;  // under MPI each rank's own (its windows' states)
  int first = 0;  // blocks an earlier run finished (replayed from the journal)
  if (journal) {
    ASSIGN_OR_RETURN(first, journal->BeginCall(blocks, states.size()));
    for (int b = 0; b < first; ++b) {
      ASSIGN_OR_RETURN(const JournalBlock* rec, journal->ReplayBlock(b));
      std::map<std::string, LinearStats> keys;  // the pass's visits are replayed: no statistics needed
      for (const auto& l : rec->layers) keys[l];
      if (opts.experts) opts.experts->insert(opts.experts->end(), rec->experts.begin(), rec->experts.end());
      RETURN_IF_ERROR(callback(b, keys));
      RETURN_IF_ERROR(journal->EndReplay());
      if (progress) progress(b + 1, blocks);
    }
    if (first > 0 && first < blocks) {
      RETURN_IF_ERROR(journal->LoadStates([&](size_t i, int64_t rows, int64_t cols) {
        states[i].resize(rows, cols);
        return states[i].data();
      }));
    }
  }
  for (int b = first; b < blocks; ++b) {
    const size_t experts_from = opts.experts ? opts.experts->size() : 0;
    if (journal) journal->BeginBlock(b);
    RETURN_IF_ERROR(rt->LoadBlock(b, model));
    // Statistics pass: observe inputs; keep outputs only when not re-running the block.
    std::vector<RowMatrix> outputs(opts.sequential ? 0 : states.size());
    ASSIGN_OR_RETURN(BlockStats bs,
                     BlockStatistics(*rt, b, plan, states, opts.sequential ? nullptr : &outputs, opts, bf16));
    std::map<std::string, LinearStats>& stats = bs.layers;
    for (auto& [name, st] : stats) FinishStats(st);
    for (const auto& [alias, base] : bs.aliases) stats[alias] = stats[base];
    for (const Block& blk : model.arch.blocks) {
      if (blk.index == b && blk.moe()) {
        CoverExperts(blk, data.options.min_expert_tokens, opts.collect_xtx, stats, opts.experts);
      }
    }
    // The pass's solves do not need the block's f32 projections (the next step reloads them
    // from the possibly changed weights): free them while it works.
    rt->ReleaseBlock(b);
    RETURN_IF_ERROR(callback(b, stats));
    if (opts.sequential) {
      if (b + 1 < blocks) {  // no block reads the last one's outputs
        RETURN_IF_ERROR(rt->ReloadBlock(b, model));
        for (auto& x : states) rt->RunBlock(b, x);
      }
    } else {
      states = std::move(outputs);
    }
    rt->ReleaseBlock(b);
    if (journal) {
      std::vector<std::string> layers;
      for (const auto& [name, st] : stats) layers.push_back(name);
      std::vector<ExpertCoverage> experts;
      if (opts.experts) experts.assign(opts.experts->begin() + experts_from, opts.experts->end());
      RETURN_IF_ERROR(journal->EndBlock(std::move(layers), std::move(experts), [&] {
        std::vector<StateView> v;
        for (const auto& x : states) v.push_back({x.data(), x.rows(), x.cols()});
        return v;
      }));
    }
    if (progress) progress(b + 1, blocks);
  }
  if (journal) journal->EndCall();
  return absl::OkStatus();
}

}  // namespace compress
