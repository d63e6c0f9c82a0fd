// compressed-tensors int-quantized: expansion for writing, collapse after reading.
#include "formats/compressed_tensors.h"

#include <cmath>
#include <cstring>
#include <numeric>
#include <regex>
#include <set>

#include "core/json_util.h"
#include "core/status.h"
#include "formats/activation_layout.h"
#include "formats/sparse24_bitmask.h"

namespace compress {
namespace {

std::string SchemeKey(const QuantInfo& q, int64_t in, const nlohmann::json& inputs) {
  return fmt::format("{}:{}:{}:{}:{}", q.format(), q.bits, q.symmetric, q.per_channel(in) ? 0 : q.group_size,
                     inputs.dump());
}

// pack-quantized `<base>.weight_packed` + `<base>.weight_shape` -> int8 codes [out, in], unpacked
// when used. Returns whether a code may lie outside the grid's range, judged on the packed words:
// an asymmetric grid takes every field value, a symmetric one all but the 0 field (-2^(bits-1)
// once the offset is taken off).
absl::StatusOr<bool> UnpackCtWeight(Model& m, const std::string& base, int bits, bool symmetric,
                                    const std::string& path, bool check_codes) {
  const Tensor* p = m.tensors.find(base + ".weight_packed");
  const Tensor* sh = m.tensors.find(base + ".weight_shape");
  if (!p || !sh || p->dtype() != DType::kI32 || p->shape().size() != 2 || sh->numel() != 2) {
    return DataLoss("{}: '{}' needs a 2-D I32 weight_packed and a 2-element weight_shape", path, base);
  }
  if (32 % bits != 0) return Unimplemented("{}: '{}': pack-quantized {}-bit codes", path, base, bits);
  ASSIGN_OR_RETURN(std::vector<float> dims, sh->ToF32());
  const int64_t rows = static_cast<int64_t>(dims[0]), cols = static_cast<int64_t>(dims[1]);
  const int64_t per_word = 32 / bits;
  if (rows != p->shape()[0] || cols <= 0 || (cols + per_word - 1) / per_word != p->shape()[1]) {
    return DataLoss("{}: '{}.weight_shape' [{}, {}] does not match weight_packed {}", path, base, rows, cols,
                    ShapeString(p->shape()));
  }
  // Unpacked when the codes are needed (a checkpoint larger than memory loads); the packed
  // words' pages are released after.
  const Tensor packed = *p;
  const int64_t words = p->shape()[1];
  int out_of_range = 0;
  if (symmetric && check_codes) {
    ASSIGN_OR_RETURN(auto data, packed.ReadOnce());
#pragma omp parallel for schedule(static) reduction(| : out_of_range) if (rows * cols > (1 << 20))
    for (int64_t r = 0; r < rows; ++r) out_of_range |= AnyPackedFieldZero(data->data() + r * words * 4, cols, bits);
    packed.ReleasePages();
  }
  m.tensors.Replace(base + ".weight_packed", base + ".weight",
                    Tensor::Lazy(DType::kI8, {rows, cols},
                                 [packed, rows, cols, words, bits]() -> absl::StatusOr<std::shared_ptr<const Buffer>> {
                                   ASSIGN_OR_RETURN(auto data, packed.ReadOnce());
                                   auto codes = std::make_shared<UninitBuffer>(rows * cols);
                                   uint8_t* c = codes->mutable_data();
                                   for (int64_t r = 0; r < rows; ++r)
                                     UnpackBits(data->data() + r * words * 4, cols, bits, c + r * cols);
                                   for (int64_t i = 0; i < rows * cols; ++i)
                                     c[i] = static_cast<uint8_t>(static_cast<int>(c[i]) - (1 << (bits - 1)));
                                   packed.ReleasePages();
                                   return std::shared_ptr<const Buffer>(std::move(codes));
                                 }));
  m.tensors.Erase(base + ".weight_shape");
  return out_of_range != 0;
}

// The codes of `w`, produced when they are needed (a checkpoint larger than memory loads)
// and checked: int codes within [lo, hi], or (fp8) no e4m3 NaN. The file's pages are released
// after. The loader runs it once on every tensor, so a bad file fails at load.
Tensor::Producer CheckedCodes(const Tensor& w, const std::string& name, const std::string& path, int bits, int lo,
                              int hi, bool fp8) {
  return [w, name, path, bits, lo, hi, fp8]() -> absl::StatusOr<std::shared_ptr<const Buffer>> {
    // A copy of the file's bytes (pread, cheaper than faulting the mapping in), so its pages can go.
    ASSIGN_OR_RETURN(std::shared_ptr<const Buffer> codes, w.ReadCopy());
    w.ReleasePages();
    const int64_t i = FirstBadCode(codes->data(), static_cast<int64_t>(codes->size()), fp8, lo, hi);
    if (i >= 0 && fp8) return DataLoss("{}: '{}' holds an e4m3 NaN", path, name);
    if (i >= 0) {
      return DataLoss("{}: '{}' holds code {} outside the {}-bit range [{}, {}]", path, name,
                      static_cast<int8_t>(codes->data()[i]), bits, lo, hi);
    }
    return codes;
  };
}

// FP8 scales multiply e4m3 values: each must be finite and > 0.
absl::Status CheckPositiveScales(const std::vector<float>& scales, const std::string& path, const std::string& name) {
  for (float v : scales)
    if (!(v > 0) || !std::isfinite(v)) return DataLoss("{}: '{}' holds scale {}, not > 0", path, name, v);
  return absl::OkStatus();
}

// float-quantized: `<base>.weight` F8_E4M3 [out, in] with `<base>.weight_scale` F32 per
// channel ([out, 1] or [out]) or per tensor (one element).
absl::Status CollapseFp8Weight(Model& m, const std::string& base, DType original, const std::string& path) {
  const std::string wname = base + ".weight", scale_name = base + ".weight_scale";
  const Tensor* w = m.tensors.find(wname);
  const Tensor& s = m.tensors.at(scale_name);
  if (!w || w->dtype() != DType::kF8E4M3 || w->shape().size() != 2)
    return DataLoss("{}: '{}' must be a 2-D F8_E4M3 tensor next to '{}'", path, wname, scale_name);
  const int64_t out = w->shape()[0];
  if (s.numel() != 1 && s.numel() != out)
    return DataLoss("{}: '{}' has shape {} but '{}' has {} rows", path, scale_name, ShapeString(s.shape()), wname, out);
  QuantInfo q;
  q.bits = 8;
  q.set_format("fp8-e4m3");
  q.channel_axis = 0;
  q.channels = out;
  q.groups = 1;
  q.group_size = w->shape()[1];
  q.original_dtype = original;
  ASSIGN_OR_RETURN(q.mutable_scales(), s.ToF32());
  RETURN_IF_ERROR(CheckPositiveScales(q.scales(), path, scale_name));
  if (q.scales().size() == 1) q.mutable_scales().assign(out, q.scales()[0]);
  Tensor::Producer codes = CheckedCodes(*w, wname, path, 8, 0, 0, true);
  RETURN_IF_ERROR(codes().status());
  m.tensors.Set(wname, Tensor::LazyQuantized(w->shape(), std::move(q), std::move(codes)));
  m.tensors.Erase(scale_name);
  return absl::OkStatus();
}

}  // namespace

absl::Status CollapseBlockFp8(Model& m, const nlohmann::json& qc, const std::string& path, const LoadOptions& opts) {
  const std::string fmt = qc.value("fmt", "e4m3");
  if (fmt != "e4m3") return Unimplemented("{}: quantization_config fp8 with fmt '{}' (e4m3 is read)", path, fmt);
  int64_t bo = 0, bi = 0;
  if (qc.contains("weight_block_size")) {
    const auto& b = qc["weight_block_size"];
    if (!b.is_array() || b.size() != 2 || !b[0].is_number_integer() || !b[1].is_number_integer() ||
        b[0].get<int64_t>() <= 0 || b[1].get<int64_t>() <= 0 || b[0].get<int64_t>() > (1 << 20) ||
        b[1].get<int64_t>() > (1 << 20))
      return DataLoss("{}: quantization_config.weight_block_size must be two positive integers, not {}", path,
                      b.dump().substr(0, 80));
    bo = b[0].get<int64_t>(), bi = b[1].get<int64_t>();
  }
  const DType original = ConfigTorchDType(m.config);
  const std::string suffix = ".weight_scale_inv";
  int collapsed = 0;
  for (const auto& scale_name : m.tensors.names()) {
    if (!scale_name.ends_with(suffix)) continue;
    const std::string base = scale_name.substr(0, scale_name.size() - suffix.size()), wname = base + ".weight";
    const Tensor* w = m.tensors.find(wname);
    if (!w || w->dtype() != DType::kF8E4M3 || w->shape().size() != 2)
      return DataLoss("{}: '{}' must be a 2-D F8_E4M3 tensor next to '{}'", path, wname, scale_name);
    const Tensor& s = m.tensors.at(scale_name);
    const int64_t out = w->shape()[0], in = w->shape()[1];
    // One scale per bo x bi block (the last ones partial), or without a block size one per tensor.
    const int64_t br = bo ? (out + bo - 1) / bo : 1, bc = bi ? (in + bi - 1) / bi : 1;
    if (s.numel() != br * bc || (s.shape().size() == 2 && (s.shape()[0] != br || s.shape()[1] != bc)))
      return DataLoss("{}: '{}' has shape {}; a {} x {} weight in blocks of {} x {} needs [{}, {}]", path, scale_name,
                      ShapeString(s.shape()), out, in, bo, bi, br, bc);
    ASSIGN_OR_RETURN(std::vector<float> blocks, s.ToF32());
    RETURN_IF_ERROR(CheckPositiveScales(blocks, path, scale_name));
    // Groups of gcd(in, bi) inputs never straddle a block, so each row's scales repeat the blocks' exactly.
    QuantInfo q;
    q.bits = 8;
    q.set_format("fp8-e4m3");
    q.channel_axis = 0;
    q.channels = out;
    q.group_size = bi ? std::gcd(in, bi) : in;
    q.groups = in / q.group_size;
    q.original_dtype = original;
    std::vector<float>& scales = q.mutable_scales();
    scales.resize(static_cast<size_t>(out * q.groups));
    for (int64_t r = 0; r < out; ++r)
      for (int64_t g = 0; g < q.groups; ++g)
        scales[r * q.groups + g] = blocks[(bo ? r / bo : 0) * bc + (bi ? g * q.group_size / bi : 0)];
    Tensor::Producer codes = CheckedCodes(*w, wname, path, 8, 0, 0, true);
    if (opts.check_codes) RETURN_IF_ERROR(codes().status());
    m.tensors.Set(wname, Tensor::LazyQuantized(w->shape(), std::move(q), std::move(codes)));
    m.tensors.Erase(scale_name);
    ++collapsed;
  }
  if (collapsed == 0) return DataLoss("{}: quantization_config says fp8 but no tensor has a weight_scale_inv", path);
  return absl::OkStatus();
}

bool FitsCompressedTensors(const Model& m, std::string_view format) {
  for (const auto& name : m.tensors.names()) {
    const QuantInfo* q = m.tensors.at(name).quant();
    if (!q) continue;
    if (!q->outlier_inputs.empty() || q->channel_axis != 0 || !name.ends_with(".weight")) return false;
    if (format == "float-quantized") {
      if (!q->fp8() || q->groups != 1) return false;
      continue;
    }
    if (q->codebook() || q->fp8() || q->format() != "int") return false;  // (a codebook's format may be pending)
    if (format == "pack-quantized" ? (!q->symmetric || (q->bits != 4 && q->bits != 8)) : q->bits != 8) return false;
  }
  return true;
}


namespace {

// The modules of a multimodal container outside its text decoder (vision tower, projector), as
// regular expressions over any naming ("re:.*vision_tower.*"): vLLM gives every linear layer of
// the model, the vision tower's included, the scheme of the group that targets it and refuses
// a layer that no group targets and `ignore` does not list.
nlohmann::json IgnoredModules(const Model& m) {
  std::set<std::string> modules;
  for (const auto& [name, role] : m.arch.roles) {
    if (m.arch.container.empty() || role != TensorRole::kOther) continue;
    const std::string rest = name.starts_with("model.") ? name.substr(6) : name;
    modules.insert(rest.substr(0, rest.find('.')));
  }
  nlohmann::json out = nlohmann::json::array();
  for (const auto& mod : modules) out.push_back("re:.*" + mod + ".*");
  return out;
}

}  // namespace

absl::StatusOr<ExpandedStore> ExpandCompressedTensors(const Model& m, std::string_view format) {
  const bool packed = format == "pack-quantized";
  ExpandedStore out;
  std::map<std::string, nlohmann::json> groups;  // scheme key -> group object
  for (const auto& name : m.tensors.names()) {
    const Tensor& t = m.tensors.at(name);
    const QuantInfo* q = t.quant();
    if (!q) {
      out.tensors.Set(name, t);
      continue;
    }
    if (!name.ends_with(".weight")) {
      return Unimplemented("tensor '{}': quantized tensors must be '<layer>.weight' in safetensors", name);
    }
    if (q->channel_axis != 0) {
      return Unimplemented(
          "tensor '{}': quantized [in, out] (Conv1D-style) weights cannot be written "
          "as compressed-tensors yet",
          name);
    }
    const std::string base = name.substr(0, name.size() - 7);
    // Every stored form is produced when the writer asks for it, one tensor at a time: a
    // model larger than memory (its codes themselves produced on demand) writes in O(tensor).
    using Result = absl::StatusOr<std::shared_ptr<const Buffer>>;
    const Tensor src = t;
    if (q->fp8()) {
      out.tensors.Set(name, Tensor::Lazy(DType::kF8E4M3, t.shape(), [src]() -> Result { return src.Data(); }));
    } else if (packed) {
      const int64_t rows = t.shape()[0], cols = t.shape()[1], per_word = 32 / q->bits;
      const int64_t words = (cols + per_word - 1) / per_word;
      const int bits = q->bits;
      out.tensors.Set(base + ".weight_packed",
                      Tensor::Lazy(DType::kI32, {rows, words}, [src, rows, cols, words, bits]() -> Result {
                        ASSIGN_OR_RETURN(auto codes, src.Data());
                        auto bytes = std::make_shared<UninitBuffer>(rows * words * 4);
                        PackCodeRows(reinterpret_cast<const int8_t*>(codes->data()), rows, cols, bits,
                                     1 << (bits - 1), bytes->mutable_data(), words * 4);
                        return std::shared_ptr<const Buffer>(std::move(bytes));
                      }));
      out.tensors.Set(base + ".weight_shape", I64Tensor({rows, cols}, {2}));
    } else {
      out.tensors.Set(name, Tensor::Lazy(DType::kI8, t.shape(), [src]() -> Result { return src.Data(); }));
    }
    out.tensors.Set(base + ".weight_scale", Tensor::Lazy(DType::kF32, {q->channels, q->groups}, [src]() -> Result {
                      const std::vector<float>& sc = src.quant()->scales();
                      auto b = std::make_shared<OwnedBuffer>(sc.size() * 4);
                      std::memcpy(b->mutable_data(), sc.data(), sc.size() * 4);
                      return std::shared_ptr<const Buffer>(std::move(b));
                    }));
    if (!q->symmetric) out.tensors.Set(base + ".weight_zero_point", ZeroPointTensor(src));
    const int64_t in = t.shape()[1];
    nlohmann::json inputs = InputActivationsJson(m, name, /*compressed_tensors=*/true);
    auto& g = groups[SchemeKey(*q, in, inputs)];
    if (g.is_null()) {
      const bool per_channel = q->per_channel(in);
      g = {{"targets", nlohmann::json::array()},
           {"weights",
            {{"num_bits", q->bits},
             {"type", q->fp8() ? "float" : "int"},
             {"symmetric", q->symmetric},
             {"strategy", per_channel ? "channel" : "group"},
             {"group_size", per_channel ? nlohmann::json(nullptr) : nlohmann::json(q->group_size)},
             {"dynamic", false},
             {"observer", "minmax"}}},
           {"input_activations", std::move(inputs)},
           {"output_activations", nullptr}};
    }
    g["targets"].push_back(base);
  }
  if (!groups.empty()) {
    nlohmann::json cg = nlohmann::json::object();
    int i = 0;
    for (auto& [_, g] : groups) cg[fmt::format("group_{}", i++)] = std::move(g);
    out.quantization_config = {{"quant_method", "compressed-tensors"},
                               {"format", std::string(format)},
                               {"quantization_status", "compressed"},
                               {"config_groups", std::move(cg)},
                               {"ignore", IgnoredModules(m)}};
  }
  return out;
}

namespace {

// A config group's targets: layer names, "re:" regular expressions, and whether it names the
// class "Linear" (every quantized layer).
struct GroupTargets {
  const nlohmann::json* group = nullptr;
  std::set<std::string> names;
  std::vector<std::regex> patterns;
  bool linear = false;
};

absl::StatusOr<std::vector<GroupTargets>> ParseGroupTargets(const nlohmann::json& groups, const std::string& path) {
  std::vector<GroupTargets> out;
  for (const auto& [key, g] : groups.items()) {
    if (!g.is_object() || !g.contains("weights") || !g["weights"].is_object()) continue;
    GroupTargets t;
    t.group = &g;
    for (const auto& tgt : g.value("targets", nlohmann::json::array())) {
      if (!tgt.is_string()) return DataLoss("{}: config_groups.{}.targets holds {}, not a string", path, key, tgt.dump());
      const std::string s = tgt.get<std::string>();
      if (s == "Linear") {
        t.linear = true;
      } else if (s.starts_with("re:")) {
        try {
          t.patterns.emplace_back(s.substr(3), std::regex::ECMAScript | std::regex::optimize);
        } catch (const std::regex_error& e) {
          return DataLoss("{}: config_groups.{}.targets: '{}' is not a regular expression ({})", path, key, s, e.what());
        }
      } else {
        t.names.insert(s);
      }
    }
    out.push_back(std::move(t));
  }
  return out;
}

// The group whose targets take layer `base`, as compressed-tensors matches them: its exact name
// first, then a "re:" pattern matched from the name's start (Python's re.match), then the class
// "Linear". Null when none does.
const nlohmann::json* GroupOf(const std::vector<GroupTargets>& groups, const std::string& base) {
  for (const auto& g : groups)
    if (g.names.count(base)) return g.group;
  for (const auto& g : groups) {
    for (const auto& re : g.patterns) {
      std::smatch m;
      if (std::regex_search(base, m, re, std::regex_constants::match_continuous)) return g.group;
    }
  }
  for (const auto& g : groups)
    if (g.linear) return g.group;
  return nullptr;
}

}  // namespace

absl::Status CollapseCompressedTensors(Model& m, const nlohmann::json& qc, const std::string& path,
                                       const LoadOptions& opts) {
  // Sparsity first: a sparse int-quantized weight's codes come back as `<layer>.weight`.
  if (qc.contains("sparsity_config")) RETURN_IF_ERROR(CollapseSparse24Bitmask(m, qc["sparsity_config"], path));
  if (!qc.contains("format") && !qc.contains("config_groups")) return absl::OkStatus();  // sparsity only
  const std::string format = qc.value("format", "");
  const bool packed = format == "pack-quantized", fp8 = format == "float-quantized";
  if (format != "int-quantized" && !packed && !fp8 && format != "dense") {
    return Unimplemented(
        "{}: compressed-tensors format '{}' is not supported (int-quantized, pack-quantized, float-quantized, "
        "dense)",
        path, format);
  }
  if (!qc.contains("config_groups") || !qc["config_groups"].is_object()) {
    return DataLoss("{}: quantization_config has no config_groups", path);
  }
  const DType original = ConfigTorchDType(m.config);
  ASSIGN_OR_RETURN(const std::vector<GroupTargets> groups, ParseGroupTargets(qc["config_groups"], path));
  std::vector<std::string> names = m.tensors.names();
  for (const auto& scale_name : names) {
    if (!scale_name.ends_with(".weight_scale")) continue;
    const std::string base = scale_name.substr(0, scale_name.size() - 13);
    const std::string wname = base + ".weight", zname = base + ".weight_zero_point";
    const nlohmann::json* group = GroupOf(groups, base);
    if (!group) return DataLoss("{}: no config group targets '{}'", path, base);
    const nlohmann::json* weights = &(*group)["weights"];
    ASSIGN_OR_RETURN(auto num_bits, JsonFields(*weights, path, "quantization_config weights.").Int("num_bits", 1, 32));
    const int bits = static_cast<int>(num_bits.value_or(8));
    const std::string type = weights->value("type", "int");
    if (fp8 != (type == "float") || (fp8 ? bits != 8 : (bits < 2 || bits > 8 || type != "int"))) {
      return Unimplemented("{}: '{}' uses {}-bit {} weights in format {}; int 2..8 and float 8 (e4m3) are supported",
                           path, base, bits, type, format);
    }
    if (group->contains("input_activations"))
      RETURN_IF_ERROR(CollapseInputActivations(m, base, (*group)["input_activations"], path));
    const Tensor& s = m.tensors.at(scale_name);
    if (fp8) {
      RETURN_IF_ERROR(CollapseFp8Weight(m, base, original, path));
      continue;
    }
    bool check_now = opts.check_codes;
    if (packed) {
      ASSIGN_OR_RETURN(check_now, UnpackCtWeight(m, base, bits, !m.tensors.contains(zname), path, opts.check_codes));
    }
    const Tensor* w = m.tensors.find(wname);
    if (!w || w->dtype() != DType::kI8 || w->shape().size() != 2) {
      return DataLoss("{}: '{}' must be a 2-D I8 tensor next to '{}'", path, wname, scale_name);
    }
    const int64_t out = w->shape()[0], in = w->shape()[1];
    if (s.shape().size() != 2 || s.shape()[0] != out || s.shape()[1] <= 0 || in % s.shape()[1] != 0) {
      return DataLoss("{}: '{}' has shape {} but '{}' is [{}, {}]", path, scale_name, ShapeString(s.shape()),
                      wname, out, in);
    }
    QuantInfo q;
    q.bits = bits;
    q.symmetric = !m.tensors.contains(zname);
    q.channel_axis = 0;
    q.channels = out;
    q.groups = s.shape()[1];
    q.group_size = in / q.groups;
    q.original_dtype = original;
    Tensor zero_points;
    if (!q.symmetric) {
      zero_points = m.tensors.at(zname);
      if (zero_points.shape() != s.shape())
        return DataLoss("{}: '{}' must have the shape of '{}'", path, zname, scale_name);
    }
    auto read_values = [s, zero_points](QuantInfo& into) -> absl::Status {
      ASSIGN_OR_RETURN(into.mutable_scales(), s.ToF32());
      if (!into.symmetric) {
        ASSIGN_OR_RETURN(auto zf, zero_points.ToF32());
        std::vector<int8_t>& zp = into.mutable_zero_points();
        zp.resize(zf.size());
        for (size_t i = 0; i < zf.size(); ++i) zp[i] = static_cast<int8_t>(zf[i]);
      }
      return absl::OkStatus();
    };
    const auto [lo, hi] = CodeRangeOf(bits, q.symmetric);
    Tensor::Producer codes = CheckedCodes(*w, wname, path, bits, lo, hi, false);
    if (!opts.check_codes) {
      m.tensors.Set(wname, DeferredFileValues(std::move(q), w->shape(), std::move(read_values), std::move(codes)));
    } else {
      RETURN_IF_ERROR(read_values(q));
      // Packed codes are checked on their packed words (every field is in range but a symmetric
      // grid's 0 field); only a file that has one unpacks here, for the error's position.
      if (check_now) RETURN_IF_ERROR(codes().status());
      m.tensors.Set(wname, Tensor::LazyQuantized(w->shape(), std::move(q), std::move(codes)));
    }
    m.tensors.Erase(scale_name);
    m.tensors.Erase(zname);
  }
  return absl::OkStatus();
}

}  // namespace compress
