// Format dispatch for loading and saving, with staged (all-or-nothing) outputs.
#include "formats/model_io.h"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <filesystem>

#include "core/status.h"
#include "core/file_util.h"
#include "core/json_util.h"
#include "core/output_plan.h"
#include "formats/activation_layout.h"
#include "formats/gguf.h"
#include "formats/gguf_tokenizer.h"
#include "formats/hf_config.h"
#include "formats/hf_edit.h"
#include "formats/onnx_edit.h"
#include "core/family.h"
#include "formats/low_rank_layout.h"
#include "formats/quantized_safetensors.h"
#include "formats/safetensors.h"
#include "formats/sparse24_bitmask.h"
#include "formats/sparse_layout.h"

namespace compress {
namespace fs = std::filesystem;
namespace {

// Files of a checkpoint folder that describe how to use the model, copied beside the output:
// the tokenizer, generation settings, chat templates (transformers writes them to
// chat_template.jinja, processors to chat_template.json) and the image / video processors of
// multimodal checkpoints.
constexpr const char* kSideFiles[] = {"tokenizer.json",           "tokenizer_config.json",
                                      "special_tokens_map.json",  "added_tokens.json",
                                      "generation_config.json",   "tokenizer.model",
                                      "vocab.json",               "merges.txt",
                                      "chat_template.jinja",      "chat_template.json",
                                      "preprocessor_config.json", "processor_config.json",
                                      "video_preprocessor_config.json"};

// Reads the layouts config.json describes and the architecture view. Fields are read with
// typed checks; one read with nlohmann's .value() on a field of the wrong type throws, and
// that is bad input too, reported against the file.
absl::Status InterpretConfig(Model& m, const std::string& cfg_path, const LoadOptions& opts) {
  try {
    const nlohmann::json qc =
        m.config.is_object() ? m.config.value("quantization_config", nlohmann::json()) : nlohmann::json();
    RETURN_IF_ERROR(CollapseQuantized(m, cfg_path, opts));
    RETURN_IF_ERROR(CollapseLowRank(m, cfg_path));
    RETURN_IF_ERROR(CollapseSparseNM(m, cfg_path));
    ASSIGN_OR_RETURN(HfConfig cfg, ParseHfConfig(m.config, cfg_path));
    const FamilySpec* fam = FindFamily(cfg.model_type);
    if (fam && fam->layout == ProjectionLayout::kConv1dGpt2) {
      RETURN_IF_ERROR(RestoreConv1dQuantized(m, {fam->block_prefixes.begin(), fam->block_prefixes.end()}));
    }
    if (fam && qc.is_object() && qc.value("quant_method", "") != "") {
      RETURN_IF_ERROR(CollapseKvCache(m, qc, {fam->block_prefixes.begin(), fam->block_prefixes.end()},
                                      cfg.head_dim, cfg_path));
    }
    ASSIGN_OR_RETURN(m.arch, BuildHfArchitecture(cfg, m.tensors, m.source));
  } catch (const nlohmann::json::exception& e) {
    return DataLoss("{}: a field has the wrong type ({})", cfg_path, e.what());
  }
  return absl::OkStatus();
}

absl::StatusOr<Model> LoadSafetensorsDir(const fs::path& dir, const fs::path& single_file, const LoadOptions& opts) {
  Model m;
  m.format = ModelFormat::kSafetensors;
  m.source = single_file.empty() ? dir.string() : single_file.string();
  fs::path index = dir / "model.safetensors.index.json";
  std::error_code ec;
  if (!single_file.empty()) {
    RETURN_IF_ERROR(ReadSafetensorsFile(single_file.string(), m.tensors, &m.metadata));
  } else if (fs::exists(index, ec)) {
    RETURN_IF_ERROR(ReadSafetensorsIndex(index.string(), m.tensors, &m.metadata));
  } else if (fs::exists(dir / "model.safetensors", ec)) {
    RETURN_IF_ERROR(ReadSafetensorsFile((dir / "model.safetensors").string(), m.tensors, &m.metadata));
  } else {
    return NotFound("{}: no model.safetensors, model.safetensors.index.json or model.onnx here",
                    dir.string());
  }
  fs::path cfg_path = dir / "config.json";
  if (fs::exists(cfg_path, ec)) {
    ASSIGN_OR_RETURN(std::string text, ReadSmallFile(cfg_path.string(), 16 << 20));
    ASSIGN_OR_RETURN(m.config, ParseJsonStrict(text, cfg_path.string()));
    RETURN_IF_ERROR(InterpretConfig(m, cfg_path.string(), opts));
  } else {
    m.arch = BuildGenericArchitecture(m.tensors);
  }
  for (const char* f : kSideFiles) {
    if (fs::is_regular_file(dir / f, ec)) m.side_files.push_back((dir / f).string());
  }
  if (single_file.empty()) {
    m.inputs.push_back(dir.string());  // the folder stands for the index, shards and side files
  } else {
    m.inputs.push_back(single_file.string());
    if (fs::exists(cfg_path, ec)) m.inputs.push_back(cfg_path.string());
    m.inputs.insert(m.inputs.end(), m.side_files.begin(), m.side_files.end());
  }
  return m;
}

bool HasSideFile(const Model& model, const std::string& name) {
  return std::any_of(model.side_files.begin(), model.side_files.end(),
                     [&](const std::string& f) { return fs::path(f).filename() == name; });
}

}  // namespace

absl::StatusOr<Model> LoadModel(const std::string& path, const LoadOptions& opts) {
  std::error_code ec;
  fs::path p(path);
  if (!fs::exists(p, ec)) return NotFound("{}: no such file or folder", path);
  if (fs::is_directory(p, ec)) {
    if (!fs::exists(p / "model.safetensors", ec) && !fs::exists(p / "model.safetensors.index.json", ec) &&
        fs::exists(p / "model.onnx", ec)) {
      ASSIGN_OR_RETURN(Model m, LoadOnnx((p / "model.onnx").string()));
      m.inputs.insert(m.inputs.begin(), p.string());
      return m;
    }
    return LoadSafetensorsDir(p, {}, opts);
  }
  if (p.extension() == ".onnx") return LoadOnnx(path);
  if (p.extension() == ".gguf") return LoadGguf(path, opts);
  if (p.extension() == ".safetensors") return LoadSafetensorsDir(p.parent_path(), p, opts);
  if (p.filename() == "model.safetensors.index.json") return LoadSafetensorsDir(p.parent_path(), {}, opts);
  return InvalidArgument(
      "{}: unrecognized model; expected a .onnx, .safetensors or .gguf file or a "
      "checkpoint folder",
      path);
}

absl::StatusOr<OutputLayout> PlanOutput(const Model& model, const std::string& out, const SaveOptions& opts) {
  const std::string ext = fs::path(out).extension().string();
  if (ext == ".gguf") {
    if (model.format != ModelFormat::kSafetensors) {
      return InvalidArgument("{}: GGUF output is written from safetensors checkpoints, not from ONNX graphs",
                             out);
    }
    if (opts.sparse_m > 0 || opts.max_shard_bytes > 0) {
      return InvalidArgument(
          "{}: GGUF output is one file with dense or Q8_0/Q4_0 tensors; drop the sharding and "
          "n:m storage options",
          out);
    }
    // Checked before any pass runs: the writer embeds the tokenizer. A GGUF input brings its
    // own tokenizer metadata (formats/gguf_tokenizer.h).
    if (!HasSideFile(model, "tokenizer.json") && !HasSideFile(model, "tokenizer.model") &&
        fs::path(model.source).extension() != ".gguf") {
      return FailedPrecondition(
          "{}: GGUF output embeds the tokenizer, but the model has no tokenizer.json or tokenizer.model beside it",
          model.source);
    }
    return OutputLayout{false, {}};
  }
  if (model.format == ModelFormat::kOnnx) {
    if (ext != ".onnx") {
      return InvalidArgument("{}: an ONNX model is written as a .onnx file; give a path ending in .onnx", out);
    }
    OutputLayout l{false, {}, {}};
    if (opts.onnx.external != OnnxWriteOptions::External::kNever) {
      const auto [name, old] = OnnxDataNames(out);
      l.siblings.push_back(name);
      if (!old.empty()) l.obsolete.push_back(old);
    }
    return l;
  }
  if (ext == ".onnx" || ext == ".safetensors") {
    return InvalidArgument(
        "{}: a safetensors checkpoint is written as a folder; give a folder path "
        "(converting to ONNX is not supported)",
        out);
  }
  return OutputLayout{true, {}};
}

std::pair<std::string, std::string> OnnxDataNames(const std::string& out) {
  const fs::path path = fs::path(out).lexically_normal();
  const std::string file = path.filename().string();
  const std::string a = file + ".data", b = file + ".b.data";
  std::error_code ec;
  const fs::path dir = path.parent_path().empty() ? fs::path(".") : path.parent_path();
  const bool has_a = fs::exists(dir / a, ec), has_b = fs::exists(dir / b, ec);
  // The existing OUT.onnx names its data file as a plain string in the protobuf.
  auto referenced = [&](const std::string& name) {
    auto f = MappedFile::Open((dir / file).string());
    if (!f.ok() || (*f)->size() == 0) return false;
    return std::search((*f)->data(), (*f)->data() + (*f)->size(), name.begin(), name.end()) !=
           (*f)->data() + (*f)->size();
  };
  std::string use = a;
  if (has_a && !has_b) {
    use = b;
  } else if (has_a && has_b) {  // a crash left both: overwrite the one OUT.onnx does not read
    use = referenced(b) && !referenced(a) ? a : b;
  }
  const std::string other = use == a ? b : a;
  const bool has_other = use == a ? has_b : has_a;
  return {use, has_other && referenced(other) ? other : std::string()};
}

absl::StatusOr<std::vector<std::string>> WriteModelFiles(const Model& model, const std::string& dir,
                                                         const std::string& out, const SaveOptions& opts,
                                                         ProgressSink* progress) {
  RETURN_IF_ERROR(PlanOutput(model, out, opts).status());
  fs::path out_path = fs::path(out).lexically_normal();
  if (out_path.filename().empty()) out_path = out_path.parent_path();
  const std::string name = out_path.filename().string();
  if (fs::path(out).extension() == ".gguf") return WriteGguf(model, dir, name, progress);
  if (model.format == ModelFormat::kOnnx) {
    OnnxWriteOptions o = opts.onnx;
    if (o.data_name.empty()) o.data_name = OnnxDataNames(out).first;
    return WriteOnnx(model, dir, name, o, progress);
  }
  SafetensorsWriteOptions so;
  so.max_shard_bytes = opts.max_shard_bytes;
  so.metadata = model.metadata;
  if (!so.metadata.count("format")) so.metadata["format"] = "pt";
  ASSIGN_OR_RETURN(ExpandedStore disk, ExpandQuantized(model));
  ASSIGN_OR_RETURN(nlohmann::json low_rank, ExpandLowRank(disk.tensors));
  nlohmann::json sparse;
  const bool compressed_tensors = disk.quantization_config.is_null() ||
                                  disk.quantization_config.value("quant_method", "") == "compressed-tensors";
  // The compressed-tensors sparse forms apply to linear layers' [out, in] weights (what its
  // loaders target).
  auto linear = [&](const std::string& name) {
    const LinearLayer* l = model.arch.LayerOfWeight(name);
    return l && l->out_axis == 0 && model.RoleOf(name) == TensorRole::kLinearWeight;
  };
  nlohmann::json sparsity_config;  // compressed-tensors' sparsity_config, null when none
  if (opts.sparse_n == 2 && opts.sparse_m == 4 && compressed_tensors) {  // the 2:4 form vLLM loads
    ASSIGN_OR_RETURN(sparsity_config, ExpandSparse24Bitmask(disk.tensors, linear));
  } else if (opts.sparse_bitmask) {
    if (!compressed_tensors) {
      return InvalidArgument("{}: --sparse-storage bitmask is a compressed-tensors form; this model's quantized weights "
                             "are written in compress's own layout",
                             out);
    }
    ASSIGN_OR_RETURN(sparsity_config, ExpandSparseBitmask(disk.tensors, linear));
  } else if (opts.sparse_m > 0) {
    ASSIGN_OR_RETURN(sparse, ExpandSparseNM(disk.tensors, opts.sparse_n, opts.sparse_m));
  }
  if (!sparsity_config.is_null()) {
    if (disk.quantization_config.is_null()) disk.quantization_config = {{"quant_method", "compressed-tensors"}};
    disk.quantization_config["sparsity_config"] = std::move(sparsity_config);
  }
  ASSIGN_OR_RETURN(auto files, WriteSafetensors(disk.tensors, dir, so, progress));
  FinishQuantizationConfig(disk);
  nlohmann::json config = model.config;
  auto describe = [&](const char* key, const nlohmann::json& value, const char* what) -> absl::Status {
    if (value.is_null()) return absl::OkStatus();
    if (!config.is_object()) {
      return InvalidArgument("{}: {} need a config.json to describe them", model.source, what);
    }
    config[key] = value;
    return absl::OkStatus();
  };
  RETURN_IF_ERROR(describe("quantization_config", disk.quantization_config, "quantized safetensors"));
  RETURN_IF_ERROR(describe("compress_low_rank", low_rank, "factorized safetensors"));
  RETURN_IF_ERROR(describe("compress_sparse_nm", sparse, "n:m sparse weights"));
  if (!config.is_null()) {
    RETURN_IF_ERROR(WriteSmallFile((fs::path(dir) / "config.json").string(), config.dump(2) + "\n"));
    files.push_back("config.json");
  }
  std::error_code ec;
  for (const auto& side : model.side_files) {
    fs::path dst = fs::path(dir) / fs::path(side).filename();
    fs::copy_file(side, dst, fs::copy_options::overwrite_existing, ec);
    if (ec) return InvalidArgument("{}: cannot copy beside the output: {}", side, ec.message());
    files.push_back(fs::path(side).filename().string());
  }
  // A GGUF input carries its tokenizer in its metadata: the checkpoint gets the Hugging Face
  // files it stands for (a tokenizer kind with no such form is left out; `compress run` warns).
  if (fs::path(model.source).extension() == ".gguf" && !HasSideFile(model, "tokenizer.json")) {
    if (auto made = TokenizerFilesFromGguf(model.source); made.ok()) {
      for (const auto& [name, text] : *made) {
        if (HasSideFile(model, name)) continue;
        RETURN_IF_ERROR(WriteSmallFile((fs::path(dir) / name).string(), text));
        files.push_back(name);
      }
    }
  }
  return files;
}

absl::StatusOr<std::vector<std::string>> SaveModel(const Model& model, const std::string& out,
                                                   const SaveOptions& opts, ProgressSink* progress) {
  ASSIGN_OR_RETURN(OutputLayout layout, PlanOutput(model, out, opts));
  OutputPlan plan(opts.force);
  for (const auto& in : model.inputs) plan.AddInput(in, "the input model");
  if (model.inputs.empty()) plan.AddInput(model.source, "the input model");
  RETURN_IF_ERROR(plan.SetModel(out, layout.folder, layout.siblings, layout.obsolete));
  ASSIGN_OR_RETURN(std::string dir, plan.ModelStaging());
  ASSIGN_OR_RETURN(auto files, WriteModelFiles(model, dir, out, opts, progress));
  RETURN_IF_ERROR(plan.Commit());
  std::vector<std::string> written;
  const fs::path base = layout.folder ? fs::path(out) : fs::path(out).parent_path();
  for (const auto& f : files) written.push_back((base / f).string());
  return written;
}

int64_t WeightBytesOnDisk(const std::string& dir, const std::vector<std::string>& files) {
  int64_t total = 0;
  for (const auto& f : files) {
    const std::string ext = fs::path(f).extension().string();
    if (ext != ".safetensors" && ext != ".onnx" && ext != ".data" && ext != ".gguf") continue;
    std::error_code ec;
    const auto n = fs::file_size(fs::path(dir) / f, ec);
    if (!ec) total += static_cast<int64_t>(n);
  }
  return total;
}

int64_t InputWeightBytes(const Model& model) {
  std::vector<std::string> files;
  std::error_code ec;
  for (const auto& in : model.inputs) {
    if (fs::is_directory(in, ec)) {
      for (fs::directory_iterator it(in, ec), end; !ec && it != end; it.increment(ec)) {
        files.push_back(it->path().string());
      }
    } else {
      files.push_back(in);
    }
  }
  std::sort(files.begin(), files.end());
  files.erase(std::unique(files.begin(), files.end()), files.end());
  return WeightBytesOnDisk("", files);  // the paths are complete (absolute or relative to here)
}

namespace {

class FormatEditor final : public CheckpointEditor {
 public:
  absl::Status CheckEditable(const Model& m, StructuralEdit e) const override { return Of(m).CheckEditable(m, e); }
  absl::StatusOr<bool> SplitFused(Model& m) const override { return Of(m).SplitFused(m); }
  absl::Status Fuse(Model& m) const override { return Of(m).Fuse(m); }
  absl::Status SetAttentionHeads(Model& m, int64_t heads, int64_t kv_heads, int64_t head_dim) const override {
    return Of(m).SetAttentionHeads(m, heads, kv_heads, head_dim);
  }
  absl::Status SetFfnWidth(Model& m, int64_t dense, int64_t expert, int64_t shared) const override {
    return Of(m).SetFfnWidth(m, dense, expert, shared);
  }
  absl::Status KeepFfnNeurons(Model& m, const std::map<std::string, std::vector<int64_t>>& kept) const override {
    return Of(m).KeepFfnNeurons(m, kept);
  }
  absl::Status SetExpertCount(Model& m, int64_t experts) const override { return Of(m).SetExpertCount(m, experts); }
  absl::StatusOr<std::pair<std::vector<bool>, std::vector<bool>>> RemoveSublayers(
      Model& m, std::vector<bool> attention, std::vector<bool> mlp) const override {
    return Of(m).RemoveSublayers(m, std::move(attention), std::move(mlp));
  }
  absl::Status SetStorageType(Model& m, DType type) const override { return Of(m).SetStorageType(m, type); }

 private:
  static const CheckpointEditor& Of(const Model& m) {
    return m.format == ModelFormat::kOnnx ? OnnxCheckpointEditor() : HfCheckpointEditor();
  }
};

}  // namespace

const CheckpointEditor& ModelCheckpointEditor() {
  static const FormatEditor editor;
  return editor;
}

}  // namespace compress
