// GGUF tokenizer metadata <-> tokenizer.json (see the header).
#include "formats/gguf_tokenizer.h"

#include <filesystem>
#include <optional>

#include "core/file_util.h"
#include "core/status.h"

namespace compress {
namespace {

namespace fs = std::filesystem;
using gguf::Metadata;

// llama.cpp's pre-tokenizer names for the split patterns of byte-level BPE tokenizers.
constexpr const char* kLlama3Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr const char* kQwen2Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

absl::StatusOr<std::string> PreTokenizerName(const nlohmann::json& pre, const std::string& path) {
  auto is_byte_level = [](const nlohmann::json& n) {
    return n.is_object() && n.value("type", "") == "ByteLevel";
  };
  if (is_byte_level(pre) && pre.value("use_regex", true)) return std::string("gpt-2");
  if (pre.is_object() && pre.value("type", "") == "Sequence" && pre.contains("pretokenizers") &&
      pre["pretokenizers"].size() == 2 && is_byte_level(pre["pretokenizers"][1])) {
    const auto& split = pre["pretokenizers"][0];
    if (split.value("type", "") == "Split" && split.contains("pattern") &&
        split["pattern"].contains("Regex")) {
      const std::string pattern = split["pattern"]["Regex"].get<std::string>();
      if (pattern == kLlama3Pattern) return std::string("llama-bpe");
      if (pattern == kQwen2Pattern) return std::string("qwen2");
    }
  }
  return Unimplemented(
      "{}: GGUF output needs a byte-level BPE tokenizer whose split pattern llama.cpp knows (GPT-2, "
      "Llama-3 or Qwen2); this pre_tokenizer is {}",
      path, pre.dump().substr(0, 200));
}

absl::StatusOr<std::string> FindSideFile(const Model& model, const std::string& file) {
  for (const auto& s : model.side_files) {
    if (fs::path(s).filename() == file) return s;
  }
  return FailedPrecondition("{}: GGUF output embeds the tokenizer, but the model has no {} beside it",
                            model.source, file);
}

// Token id of config.json's bos/eos entry (an id or a list whose first id counts), or -1.
int64_t ConfigTokenId(const nlohmann::json& config, const char* key) {
  if (!config.is_object() || !config.contains(key)) return -1;
  const auto& v = config[key];
  if (v.is_number_integer()) return v.get<int64_t>();
  if (v.is_array() && !v.empty() && v[0].is_number_integer()) return v[0].get<int64_t>();
  return -1;
}

}  // namespace

absl::Status AddGgufTokenizer(const Model& model, int64_t vocab_size, gguf::Metadata& md) {
  // tokenizer.json beside the model, else (a GGUF input) the tokenizer its metadata holds.
  std::string path;
  nlohmann::json tok;
  std::optional<bool> source_add_bos;
  if (auto side = FindSideFile(model, "tokenizer.json"); side.ok() || fs::path(model.source).extension() != ".gguf") {
    ASSIGN_OR_RETURN(path, side);
    ASSIGN_OR_RETURN(std::string text, ReadSmallFile(path, 512u << 20));
    tok = nlohmann::json::parse(text, nullptr, false);
  } else {
    path = model.source;
    ASSIGN_OR_RETURN(gguf::Container g, gguf::ReadContainer(path));
    ASSIGN_OR_RETURN(tok, TokenizerJsonFromGguf(g));
    if (auto it = g.kv.find("tokenizer.ggml.add_bos_token"); it != g.kv.end() && it->second.is_boolean())
      source_add_bos = it->second.get<bool>();
  }
  if (tok.is_discarded() || !tok.is_object() || !tok.contains("model") || !tok["model"].is_object()) {
    return InvalidArgument("{}: not a tokenizer.json (no model object)", path);
  }
  const auto& m = tok["model"];
  if (m.value("type", "") != "BPE" || m.value("byte_fallback", false) || !m.contains("vocab") ||
      !m["vocab"].is_object()) {
    return Unimplemented("{}: GGUF output supports byte-level BPE tokenizers only (this one is {}{})", path,
                         m.value("type", "?"),
                         m.value("byte_fallback", false) ? " with byte fallback, SentencePiece-style" : "");
  }
  ASSIGN_OR_RETURN(std::string pre, PreTokenizerName(tok.value("pre_tokenizer", nlohmann::json()), path));

  std::vector<std::string> tokens(vocab_size);
  std::vector<int32_t> types(vocab_size, 0);
  auto put = [&](const std::string& piece, int64_t id, int32_t type) -> absl::Status {
    if (id < 0 || id >= vocab_size) {
      return InvalidArgument("{}: token '{}' has id {} outside the model's vocabulary of {}", path, piece, id,
                             vocab_size);
    }
    tokens[id] = piece;
    types[id] = type;
    return absl::OkStatus();
  };
  for (const auto& [piece, id] : m["vocab"].items()) {
    if (!id.is_number_integer())
      return InvalidArgument("{}: vocab entry '{}' is not an integer id", path, piece);
    RETURN_IF_ERROR(put(piece, id.get<int64_t>(), 1));  // NORMAL
  }
  if (tok.contains("added_tokens") && tok["added_tokens"].is_array()) {
    for (const auto& a : tok["added_tokens"]) {
      if (!a.contains("id") || !a["id"].is_number_integer() || !a.contains("content") ||
          !a["content"].is_string()) {
        return InvalidArgument("{}: added token {} has no integer id or content", path, a.dump());
      }
      RETURN_IF_ERROR(put(a["content"].get<std::string>(), a["id"].get<int64_t>(),
                          a.value("special", false) ? 3 : 4));  // CONTROL or USER_DEFINED
    }
  }
  for (int64_t i = 0; i < vocab_size; ++i) {
    if (types[i] == 0) {  // embedding rows without a token: unused padding
      tokens[i] = fmt::format("[PAD{}]", i);
      types[i] = 5;
    }
  }
  std::vector<std::string> merges;
  if (m.contains("merges") && m["merges"].is_array()) {
    merges.reserve(m["merges"].size());
    for (const auto& e : m["merges"]) {
      if (e.is_string()) {
        merges.push_back(e.get<std::string>());
      } else if (e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_string()) {
        merges.push_back(e[0].get<std::string>() + " " + e[1].get<std::string>());
      } else {
        return InvalidArgument("{}: merge {} is neither \"a b\" nor [\"a\", \"b\"]", path, e.dump());
      }
    }
  }
  md.Str("tokenizer.ggml.model", "gpt2");
  md.Str("tokenizer.ggml.pre", pre);
  md.StrArray("tokenizer.ggml.tokens", tokens);
  md.I32Array("tokenizer.ggml.token_type", types);
  md.StrArray("tokenizer.ggml.merges", merges);
  const int64_t bos = ConfigTokenId(model.config, "bos_token_id");
  const int64_t eos = ConfigTokenId(model.config, "eos_token_id");
  if (bos >= 0 && bos < vocab_size) md.U32("tokenizer.ggml.bos_token_id", static_cast<uint32_t>(bos));
  if (eos >= 0 && eos < vocab_size) md.U32("tokenizer.ggml.eos_token_id", static_cast<uint32_t>(eos));
  // Hugging Face adds BOS only where the tokenizer's post-processor says so; compress
  // evaluates the ids the tokenizer gives, so the GGUF asks for what tokenizer_config says.
  bool add_bos = source_add_bos.value_or(false);
  if (auto cfg_path = FindSideFile(model, "tokenizer_config.json"); cfg_path.ok()) {
    ASSIGN_OR_RETURN(std::string cfg_text, ReadSmallFile(*cfg_path, 64u << 20));
    nlohmann::json cfg = nlohmann::json::parse(cfg_text, nullptr, false);
    if (cfg.is_object() && cfg.contains("add_bos_token") && cfg["add_bos_token"].is_boolean()) {
      add_bos = cfg["add_bos_token"].get<bool>();
    }
  }
  md.Bool("tokenizer.ggml.add_bos_token", add_bos);
  return absl::OkStatus();
}


namespace {

// The pre_tokenizer of a byte-level BPE tokenizer.json for llama.cpp's pre-tokenizer name.
nlohmann::json PreTokenizerOf(const std::string& pattern) {
  if (pattern.empty()) return {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}};
  return {{"type", "Sequence"},
          {"pretokenizers",
           {{{"type", "Split"}, {"pattern", {{"Regex", pattern}}}, {"behavior", "Isolated"}, {"invert", false}},
            {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", false}, {"use_regex", false}}}}};
}

}  // namespace

absl::StatusOr<nlohmann::json> TokenizerJsonFromGguf(const gguf::Container& g) {
  const std::string kind = g.GetStr("tokenizer.ggml.model");
  if (kind.empty()) return NotFound("{}: the GGUF file holds no tokenizer (tokenizer.ggml.model)", g.path);
  if (kind != "gpt2") {
    return Unimplemented(
        "{}: its tokenizer is '{}'; reading GGUF tokenizers supports byte-level BPE ('gpt2') only: put the "
        "model's tokenizer.json beside it",
        g.path, kind);
  }
  const std::string pre = g.GetStr("tokenizer.ggml.pre", "default");
  std::string pattern;
  bool ignore_merges = false;
  if (pre == "llama-bpe" || pre == "llama3") {
    pattern = kLlama3Pattern, ignore_merges = true;
  } else if (pre == "qwen2") {
    pattern = kQwen2Pattern;
  } else if (pre != "gpt-2" && pre != "gpt2") {
    return Unimplemented("{}: GGUF pre-tokenizer '{}' is not read yet (gpt-2, llama-bpe, qwen2): put the model's "
                         "tokenizer.json beside it",
                         g.path, pre);
  }
  auto array = [&](const char* key) -> const nlohmann::json* {
    auto it = g.kv.find(key);
    return it != g.kv.end() && it->second.is_array() ? &it->second : nullptr;
  };
  const nlohmann::json* tokens = array("tokenizer.ggml.tokens");
  const nlohmann::json* types = array("tokenizer.ggml.token_type");
  const nlohmann::json* merges = array("tokenizer.ggml.merges");
  if (!tokens || tokens->empty()) return DataLoss("{}: tokenizer.ggml.tokens is missing or empty", g.path);
  if (types && types->size() != tokens->size()) {
    return DataLoss("{}: tokenizer.ggml.token_type has {} entries for {} tokens", g.path, types->size(), tokens->size());
  }
  nlohmann::json vocab = nlohmann::json::object(), added = nlohmann::json::array();
  for (size_t id = 0; id < tokens->size(); ++id) {
    const auto& t = (*tokens)[id];
    if (!t.is_string()) return DataLoss("{}: tokenizer.ggml.tokens[{}] is not a string", g.path, id);
    const int type = types && (*types)[id].is_number_integer() ? (*types)[id].get<int>() : 1;
    if (type == 5) continue;  // unused (padding rows)
    const std::string piece = t.get<std::string>();
    if (!vocab.contains(piece)) vocab[piece] = id;
    if (type == 3 || type == 4) {  // control / user-defined: matched whole in the text
      added.push_back({{"id", id}, {"content", piece}, {"single_word", false}, {"lstrip", false}, {"rstrip", false},
                       {"normalized", false}, {"special", type == 3}});
    }
  }
  nlohmann::json merge_list = nlohmann::json::array();
  if (merges) {
    for (const auto& m : *merges) {
      if (!m.is_string()) return DataLoss("{}: tokenizer.ggml.merges holds a non-string", g.path);
      merge_list.push_back(m);
    }
  }
  return nlohmann::json{{"version", "1.0"},
                        {"added_tokens", std::move(added)},
                        {"normalizer", nullptr},
                        {"pre_tokenizer", PreTokenizerOf(pattern)},
                        {"post_processor", nullptr},
                        {"decoder", {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}}},
                        {"model",
                         {{"type", "BPE"},
                          {"dropout", nullptr},
                          {"unk_token", nullptr},
                          {"continuing_subword_prefix", nullptr},
                          {"end_of_word_suffix", nullptr},
                          {"fuse_unk", false},
                          {"byte_fallback", false},
                          {"ignore_merges", ignore_merges},
                          {"vocab", std::move(vocab)},
                          {"merges", std::move(merge_list)}}}};
}

}  // namespace compress
