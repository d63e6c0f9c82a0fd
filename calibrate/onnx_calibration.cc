#include "calibrate/onnx_calibration.h"

#include <algorithm>
#include <filesystem>
#include <set>

#include "core/status.h"
#include "core/file_util.h"

namespace compress {
namespace fs = std::filesystem;
using onnxrt::Value;

namespace {

class ChunkObserver final : public onnxrt::LinearInputObserver {
 public:
  ChunkObserver(const std::set<std::string>& wanted, std::map<std::string, LinearStats>& stats, bool xtx)
      : wanted_(wanted), stats_(stats), xtx_(xtx) {}
  bool Wants(const std::string& w) const override { return wanted_.count(w) > 0; }
  void Observe(const std::string& w, const float* x, int64_t rows, int64_t cols) override {
    AccumulateStats(stats_[w], x, rows, cols, xtx_);
  }

 private:
  const std::set<std::string>& wanted_;
  std::map<std::string, LinearStats>& stats_;
  bool xtx_;
};

}  // namespace

absl::StatusOr<std::vector<std::string>> TensorSetFolders(const std::string& root) {
  std::vector<std::string> folders;
  if (fs::exists(fs::path(root) / "input_0.pb")) {
    folders.push_back(root);
  } else if (fs::is_directory(root)) {
    for (const auto& e : fs::directory_iterator(root))
      if (e.is_directory() && fs::exists(e.path() / "input_0.pb")) folders.push_back(e.path().string());
    std::sort(folders.begin(), folders.end());
  }
  if (folders.empty()) return InvalidArgument("{}: no input_0.pb in it or in its subfolders", root);
  return folders;
}

absl::StatusOr<CalibrationData> LoadTensorSets(const CalibrationOptions& opts) {
  CalibrationData d;
  d.options = opts;
  ASSIGN_OR_RETURN(d.tensor_sets, TensorSetFolders(opts.file));
  if (static_cast<int64_t>(d.tensor_sets.size()) > opts.samples) d.tensor_sets.resize(opts.samples);
  uint64_t h = kFnv1aOffset;
  for (const auto& set : d.tensor_sets) {
    for (int i = 0; fs::exists(fs::path(set) / fmt::format("input_{}.pb", i)); ++i) {
      ASSIGN_OR_RETURN(std::string bytes, ReadSmallFile((fs::path(set) / fmt::format("input_{}.pb", i)).string(),
                                                        1ull << 32));
      h = Fnv1a(bytes, h);
    }
  }
  d.hash = h;
  return d;
}

absl::StatusOr<std::map<std::string, Value>> ReadInputSet(const onnxrt::Interpreter& interp, const std::string& folder) {
  std::map<std::string, Value> feeds;
  const auto& ins = interp.inputs();
  for (size_t i = 0; i < ins.size(); ++i) {
    const std::string path = (fs::path(folder) / fmt::format("input_{}.pb", i)).string();
    auto v = onnxrt::ReadTensorFile(path);
    if (!v.ok()) return v.status();
    if (v->dtype != ins[i].dtype) {
      return InvalidArgument("{}: holds {} but model input '{}' is {}", path, DTypeName(v->dtype), ins[i].name,
                             DTypeName(ins[i].dtype));
    }
    if (v->rank() != static_cast<int>(ins[i].shape.size())) {
      return InvalidArgument("{}: rank {} but model input '{}' has rank {}", path, v->rank(), ins[i].name,
                             ins[i].shape.size());
    }
    for (size_t d = 0; d < ins[i].shape.size(); ++d) {
      if (ins[i].shape[d] >= 0 && ins[i].shape[d] != v->shape[d]) {
        return InvalidArgument("{}: shape {} does not fit model input '{}'", path, ShapeString(v->shape), ins[i].name);
      }
    }
    feeds[ins[i].name] = std::move(*v);
  }
  return feeds;
}

size_t CalibrationSamples(const CalibrationData& data) {
  return data.tensor_sets.empty() ? data.windows.size() : data.tensor_sets.size();
}

absl::StatusOr<std::map<std::string, Value>> CalibrationFeeds(const onnxrt::Interpreter& interp,
                                                              const CalibrationData& data, size_t i) {
  if (!data.tensor_sets.empty()) return ReadInputSet(interp, data.tensor_sets[i]);
  auto feeds = onnxrt::TokenFeeds(interp, data.windows[i]);
  if (!feeds.ok()) return Annotate(feeds.status(), "calibration (give --calibration a folder of input_N.pb tensors)");
  return feeds;
}

absl::Status RunOnnxCalibration(const Model& model, const CalibrationData& data, const DriverOptions& opts,
                                const BlockCallback& callback, std::function<void(int64_t, int64_t)> progress) {
  ASSIGN_OR_RETURN(auto interp, onnxrt::Interpreter::Create(model));
  auto nodes = interp->WeightNodes();
  if (opts.wanted) {  // only the wanted weights' nodes: fewer chunks, each run up to its last node
    std::erase_if(nodes,
                  [&](const onnxrt::Interpreter::WeightNode& n) { return !opts.wanted->count(n.weight); });
  }
  // Chunks of weight nodes, in graph order.
  std::vector<std::vector<onnxrt::Interpreter::WeightNode>> chunks;
  if (opts.sequential) {
    std::map<std::string, size_t> by_input;
    for (const auto& n : nodes) {
      auto [it, fresh] = by_input.try_emplace(n.input, chunks.size());
      if (fresh) chunks.emplace_back();
      chunks[it->second].push_back(n);
    }
  } else {
    constexpr int64_t kBudget = int64_t{2} << 30;
    int64_t used = kBudget;
    for (const auto& n : nodes) {
      const auto& shape = model.tensors.at(n.weight).shape();
      const int64_t in = shape.size() == 2 ? std::min(shape[0], shape[1]) : NumElements(shape);
      const int64_t bytes = opts.collect_xtx ? in * in * 8 : in * 24;
      if (used + bytes > kBudget && !(chunks.size() && chunks.back().empty())) {
        chunks.emplace_back();
        used = 0;
      }
      chunks.back().push_back(n);
      used += bytes;
    }
  }
  const size_t samples = CalibrationSamples(data);
  std::vector<std::map<std::string, Value>> feeds(samples);
  for (size_t i = 0; i < samples; ++i) {
    ASSIGN_OR_RETURN(feeds[i], CalibrationFeeds(*interp, data, i));
  }
  for (size_t c = 0; c < chunks.size(); ++c) {
    std::set<std::string> wanted;
    int last = 0;
    for (const auto& n : chunks[c]) {
      wanted.insert(n.weight);
      last = std::max(last, n.node);
    }
    std::map<std::string, LinearStats> stats;
    ChunkObserver obs(wanted, stats, opts.collect_xtx);
    for (size_t i = 0; i < samples; ++i) {
      auto r = interp->Run(feeds[i], &obs, last);
      if (!r.ok()) return Annotate(r.status(), fmt::format("calibration sample {}", i));
    }
    for (auto& [name, st] : stats) FinishStats(st);
    RETURN_IF_ERROR(callback(static_cast<int>(c), stats));
    if (opts.sequential) RETURN_IF_ERROR(interp->Reload(model, {wanted.begin(), wanted.end()}));
    if (progress) progress(static_cast<int64_t>(c + 1), static_cast<int64_t>(chunks.size()));
  }
  return absl::OkStatus();
}

}  // namespace compress
