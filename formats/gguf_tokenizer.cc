// GGUF tokenizer metadata <-> tokenizer.json (see the header).
#include "formats/gguf_tokenizer.h"

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "core/file_util.h"
#include "core/status.h"
#include "formats/byte_level_splits.h"
#include "formats/sentencepiece_model.h"
#include "formats/tokenizer_template.h"

namespace compress {
namespace {

namespace fs = std::filesystem;
using gguf::Metadata;

// llama.cpp's pre-tokenizer names for the split patterns of byte-level BPE tokenizers.
constexpr const char* kLlama3Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr const char* kQwen2Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
// Mistral's Tekken (Nemo, Small 3, Pixtral) and OpenAI's o200k (GPT-4o; Phi-4-mini).
constexpr const char* kTekkenPattern =
    R"([^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr const char* kGpt4oPattern =
    R"([^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

// DeepSeek's split regexes (the Split steps of their tokenizer.json files, in order; a
// Digits step is the digit pattern).
constexpr const char* kCjk = "[一-龥ࠀ-一가-퟿]+";
constexpr const char* kDeepseekLlmLetters =
    "\\s?[A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝὟ-ώᾀ-ᾴᾶ-ᾼιῂ-ῄῆ-ῌῐ-ΐῖ-Ίῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤΩℨK-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃]+";
constexpr const char* kDeepseekLlmPunct = "\\s?[!-/:-~！-／：-～‘-‟　-。]+";
constexpr const char* kGpt2NoTail = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S))";
constexpr const char* kDeepseekV3Cjk = "[一-龥぀-ゟ゠-ヿ]+";
constexpr const char* kDeepseekV3Words =
    "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+";

// The llama.cpp pre-tokenizer names of one list of byte-level split steps (each step
// Isolated; kGpt2SplitPattern is ByteLevel's own), and whether a pre-token found whole in the
// vocabulary is kept whole (-1: the name is written whatever the tokenizer says, read as 0).
// The first name is the one written; all are read.
struct PreTokenizerKind {
  std::vector<const char*> names;
  std::vector<const char*> steps;
  int ignore_merges;
};
const std::vector<PreTokenizerKind>& PreTokenizerKinds() {
  static const auto* kinds = new std::vector<PreTokenizerKind>{
      {{"gpt-2", "gpt2", "phi-2", "mpt", "olmo", "jais", "gigachat", "mellum", "exaone4", "trillion", "granite-docling",
        "a.x-4.0"},
       {kGpt2SplitPattern},
       -1},
      // Digits each on their own, then GPT-2's regex (SmolLM, StarCoder)
      {{"smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b", "mellum2"},
       {kDigitPattern, kGpt2SplitPattern},
       -1},
      {{"llama-bpe", "llama3", "llama-v3", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2"}, {kLlama3Pattern}, 1},
      {{"dbrx", "smaug-bpe"}, {kLlama3Pattern}, 0},
      {{"qwen2", "deepseek-r1-qwen", "megrez", "stablelm2", "kormo", "hunyuan", "solar-open"}, {kQwen2Pattern}, 0},
      {{"tekken"}, {kTekkenPattern}, 1},
      {{"gpt-4o", "llama4", "kanana2"}, {kGpt4oPattern}, 0},
      {{"deepseek-llm"}, {"[\r\n]", kDeepseekLlmLetters, kDeepseekLlmPunct, "\\s+$", kCjk, kDigitRunPattern}, 0},
      {{"deepseek-coder"}, {"[\r\n]", "\\s?\\p{L}+", "\\s?\\p{P}+", kCjk, kDigitPattern}, 0},
      // llama.cpp's lists for files without a pre name ("default": GGUF files older than the
      // key) and Falcon's: punctuation runs, GPT-2's regex (without its last \s+), digits.
      {{"default"}, {"[\\p{P}\\$\\+<=>\\^~\\|]+", kGpt2NoTail, "\\p{N}+", "[0-9][0-9][0-9]"}, 0},
      {{"falcon"}, {"[\\p{P}\\$\\+<=>\\^~\\|`]+", kGpt2NoTail, "[0-9][0-9][0-9]"}, 0},
      {{"deepseek-v3", "hunyuan-dense", "joyai-llm"}, {"\\p{N}{1,3}", kDeepseekV3Cjk, kDeepseekV3Words}, 0},
  };
  return *kinds;
}

const PreTokenizerKind* PreTokenizerKindNamed(const std::string& name) {
  for (const auto& k : PreTokenizerKinds())
    for (const char* n : k.names)
      if (name == n) return &k;
  return nullptr;
}

absl::StatusOr<std::string> PreTokenizerName(const nlohmann::json& pre, bool ignore_merges, const std::string& path) {
  auto fail = [&](const std::string& why) {
    return Unimplemented(
        "{}: GGUF output needs a byte-level BPE tokenizer whose split steps llama.cpp names (GPT-2, SmolLM / "
        "StarCoder, Llama-3 / cl100k, Qwen2, Tekken, GPT-4o, DeepSeek){}; this pre_tokenizer is {}",
        path, why, pre.dump().substr(0, 200));
  };
  auto steps = ByteLevelSplits(pre, path);
  if (!steps.ok()) return fail(" (" + std::string(steps.status().message()) + ")");
  if (!*steps) return fail("");
  // Removed with invert gives the pieces Isolated does where the pattern covers every
  // character, as these do.
  for (const auto& k : PreTokenizerKinds()) {
    if (k.ignore_merges >= 0 && (k.ignore_merges == 1) != ignore_merges) continue;
    if (k.steps.size() != (*steps)->size()) continue;
    bool same = true;
    for (size_t i = 0; i < k.steps.size() && same; ++i) same = (**steps)[i].pattern == k.steps[i];
    if (same) return std::string(k.names.front());
  }
  return fail("");
}

// The chat templates a GGUF file holds: tokenizer.chat_template ("default") and
// tokenizer.chat_template.NAME.
std::map<std::string, std::string> ChatTemplatesOfGguf(const gguf::Container& g) {
  std::map<std::string, std::string> out;
  const std::string key = "tokenizer.chat_template";
  for (const auto& [k, v] : g.kv) {
    if (!v.is_string() || !k.starts_with(key)) continue;
    if (k == key) out["default"] = v.get<std::string>();
    if (k.size() > key.size() + 1 && k[key.size()] == '.') out[k.substr(key.size() + 1)] = v.get<std::string>();
  }
  return out;
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

// "<0x0A>": a SentencePiece byte-fallback piece.
bool IsByteToken(const std::string& p) {
  return p.size() == 6 && p.starts_with("<0x") && p[5] == '>' && std::isxdigit(static_cast<unsigned char>(p[3])) &&
         std::isxdigit(static_cast<unsigned char>(p[4]));
}

// Whether a SentencePiece-style tokenizer.json prepends "\u2581" to the text (llama.cpp's
// add_space_prefix): normalizer Prepend("\u2581") + Replace(" ", "\u2581") (Llama-2, Mistral),
// or Replace alone (Gemma; its pre-tokenizer may split on spaces, which the replacement
// already removed). Other forms are refused: llama.cpp's SentencePiece tokenizer does not
// express them.
absl::StatusOr<bool> SpaceRules(const nlohmann::json& tok, const std::string& path) {
  const std::string kMeta = "\xe2\x96\x81";
  auto is_replace = [&](const nlohmann::json& n) {
    return n.is_object() && n.value("type", "") == "Replace" && n.contains("pattern") && n["pattern"].is_object() &&
           n["pattern"].value("String", "") == " " && n.value("content", "") == kMeta;
  };
  const nlohmann::json norm = tok.value("normalizer", nlohmann::json());
  const nlohmann::json pre = tok.value("pre_tokenizer", nlohmann::json());
  const bool pre_ok = pre.is_null() || (pre.is_object() && pre.value("type", "") == "Split" && pre.contains("pattern") &&
                                        pre["pattern"].is_object() && pre["pattern"].value("String", "") == " ");
  // transformers' non-legacy form: no normalizer, a Metaspace pre-tokenizer (GgufTokenizerCaveats
  // says where llama.cpp's tokenizer differs from it).
  const bool no_norm = norm.is_null() || (norm.is_object() && norm.value("type", "") == "Sequence" &&
                                          norm.contains("normalizers") && norm["normalizers"].is_array() &&
                                          norm["normalizers"].empty());
  if (no_norm && pre.is_object() && pre.value("type", "") == "Metaspace") {
    const MetaspaceSettings ms = ReadMetaspace(pre);
    if (ms.well_typed && ms.replacement == kMeta) return ms.scheme != "never";
  }
  // The normalizers in order, nested Sequences flattened (Yi and InternLM2 wrap Gemma's Replace
  // in a Sequence of one).
  std::vector<const nlohmann::json*> steps;
  std::function<bool(const nlohmann::json&)> flatten = [&](const nlohmann::json& n) {
    if (!n.is_object()) return false;
    if (n.value("type", "") != "Sequence") {
      steps.push_back(&n);
      return true;
    }
    if (!n.contains("normalizers") || !n["normalizers"].is_array()) return false;
    for (const auto& c : n["normalizers"])
      if (!flatten(c)) return false;
    return true;
  };
  auto is_prepend = [&](const nlohmann::json* n) {
    return n->value("type", "") == "Prepend" && n->value("prepend", "") == kMeta;
  };
  if (pre_ok && flatten(norm)) {
    // Replace alone (Gemma), or with Prepend("\u2581") before or after it (Llama-2, Mistral):
    // the same text either way, since the marker is not a space.
    if (steps.size() == 1 && is_replace(*steps[0])) return false;
    if (steps.size() == 2 && ((is_prepend(steps[0]) && is_replace(*steps[1])) ||
                              (is_replace(*steps[0]) && is_prepend(steps[1]))))
      return true;
  }
  return Unimplemented(
      "{}: GGUF output of a SentencePiece-style tokenizer needs the Llama-2 / Mistral normalizer (Prepend and "
      "Replace of spaces with U+2581), Gemma's (Replace) or a Metaspace pre-tokenizer; this one has normalizer {} "
      "and pre_tokenizer {}",
      path, norm.dump().substr(0, 160), pre.dump().substr(0, 120));
}

}  // namespace

absl::Status AddGgufTokenizer(const Model& model, int64_t vocab_size, gguf::Metadata& md,
                              std::vector<std::string>* pieces) {
  // tokenizer.json beside the model, else (a GGUF input) the tokenizer its metadata holds.
  std::string path;
  nlohmann::json tok;
  std::optional<bool> source_add_bos, source_add_eos;
  std::map<std::string, std::string> templates;  // chat templates by name ("default": the main one)
  auto side = FindSideFile(model, "tokenizer.json");
  auto spm_file = FindSideFile(model, "tokenizer.model");
  const bool gguf_input = fs::path(model.source).extension() == ".gguf";
  // SentencePiece's own file, as the tokenizer.json it stands for (a GGUF input's own metadata
  // comes before it, as for eval: runtime/tokenizer.h TokenizerFileFor)
  if (!side.ok() && spm_file.ok() && !gguf_input) {
    path = *spm_file;
    ASSIGN_OR_RETURN(tok, TokenizerJsonFromSentencePiece(path));
  } else if (side.ok() || !gguf_input) {
    ASSIGN_OR_RETURN(path, side);
    ASSIGN_OR_RETURN(std::string text, ReadSmallFile(path, 512u << 20));
    tok = nlohmann::json::parse(text, nullptr, false);
  } else {
    path = model.source;
    ASSIGN_OR_RETURN(gguf::Container g, gguf::ReadContainer(path));
    // Its tokenizer metadata is copied as it is (every tokenizer.* entry: types, values, chat
    // templates), as llama-quantize does, when the token list fits the model's vocabulary.
    if (auto t = g.kv.find("tokenizer.ggml.tokens"); t != g.kv.end() && t->second.is_array() &&
                                                     static_cast<int64_t>(t->second.size()) == vocab_size &&
                                                     !g.GetStr("tokenizer.ggml.model").empty()) {
      for (const auto& e : g.kv_raw)
        if (e.key.starts_with("tokenizer.")) md.Raw(g.RawBytes(e));
      if (pieces) {
        pieces->clear();
        for (const auto& p : t->second) pieces->push_back(p.is_string() ? p.get<std::string>() : std::string());
      }
      return absl::OkStatus();
    }
    ASSIGN_OR_RETURN(tok, TokenizerJsonFromGguf(g));
    if (auto it = g.kv.find("tokenizer.ggml.add_bos_token"); it != g.kv.end() && it->second.is_boolean())
      source_add_bos = it->second.get<bool>();
    if (auto it = g.kv.find("tokenizer.ggml.add_eos_token"); it != g.kv.end() && it->second.is_boolean())
      source_add_eos = it->second.get<bool>();
    templates = ChatTemplatesOfGguf(g);
  }
  // A GGUF input's templates stay; a checkpoint's come from chat_template.jinja, else
  // tokenizer_config.json's chat_template (a string, or a list of named templates).
  if (auto jinja = FindSideFile(model, "chat_template.jinja"); jinja.ok()) {
    ASSIGN_OR_RETURN(templates["default"], ReadSmallFile(*jinja, 64u << 20));
  }
  if (tok.is_discarded() || !tok.is_object() || !tok.contains("model") || !tok["model"].is_object()) {
    return InvalidArgument("{}: not a tokenizer.json (no model object)", path);
  }
  const auto& m = tok["model"];
  if (m.value("type", "") != "BPE" || !m.contains("vocab") || !m["vocab"].is_object()) {
    return Unimplemented("{}: GGUF output supports BPE tokenizers (byte-level or SentencePiece-style) only; this one is {}",
                         path, m.value("type", "?"));
  }
  // SentencePiece-style BPE (byte fallback: Llama-2, Mistral, Gemma) is llama.cpp's "llama"
  // tokenizer; byte-level BPE its "gpt2" one.
  const bool spm = m.value("byte_fallback", false);
  std::string pre;
  bool add_space_prefix = false;
  if (spm) {
    ASSIGN_OR_RETURN(add_space_prefix, SpaceRules(tok, path));
  } else if (SpaceRules(tok, path).ok()) {
    return Unimplemented(
        "{}: GGUF output of a SentencePiece tokenizer needs byte fallback (<0xXX> pieces): llama.cpp's tokenizer "
        "fails on a character outside the vocabulary instead of giving the unk token",
        path);
  } else {
    ASSIGN_OR_RETURN(pre, PreTokenizerName(tok.value("pre_tokenizer", nlohmann::json()),
                                           m.value("ignore_merges", false), path));
  }

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
  const std::string unk = m.contains("unk_token") && m["unk_token"].is_string() ? m["unk_token"].get<std::string>() : "";
  for (const auto& [piece, id] : m["vocab"].items()) {
    if (!id.is_number_integer())
      return InvalidArgument("{}: vocab entry '{}' is not an integer id", path, piece);
    int32_t type = 1;  // NORMAL
    if (spm && piece == unk) type = 2;  // UNKNOWN
    if (spm && IsByteToken(piece)) type = 6;  // BYTE
    RETURN_IF_ERROR(put(piece, id.get<int64_t>(), type));
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
  if (spm) {
    // llama.cpp merges the adjacent pair whose joined piece scores highest (ties: leftmost);
    // Hugging Face applies the merge of lowest rank. A piece scores minus the rank of the first
    // merge that makes it, so both pick the same pair; pieces no merge makes score lowest.
    std::unordered_map<std::string, int64_t> id_of;
    for (int64_t i = 0; i < vocab_size; ++i) id_of.emplace(tokens[i], i);
    std::vector<float> scores(vocab_size, -1e9f);
    for (size_t r = merges.size(); r-- > 0;) {
      const std::string& e = merges[r];
      const size_t sp = e.find(' ');
      if (sp == std::string::npos) return InvalidArgument("{}: merge '{}' has no space", path, e);
      auto it = id_of.find(e.substr(0, sp) + e.substr(sp + 1));
      if (it != id_of.end()) scores[it->second] = -static_cast<float>(r);
    }
    for (int64_t i = 0; i < vocab_size; ++i) {  // control, byte, unknown, unused pieces; user-defined ones no merge makes
      if (types[i] != 1 && (types[i] != 4 || scores[i] == -1e9f)) scores[i] = 0.f;
    }
    md.Str("tokenizer.ggml.model", "llama");
    md.StrArray("tokenizer.ggml.tokens", tokens);
    md.F32Array("tokenizer.ggml.scores", scores);
    md.I32Array("tokenizer.ggml.token_type", types);
    md.Bool("tokenizer.ggml.add_space_prefix", add_space_prefix);
    if (auto it = id_of.find(unk); !unk.empty() && it != id_of.end())
      md.U32("tokenizer.ggml.unknown_token_id", static_cast<uint32_t>(it->second));
  } else {
    md.Str("tokenizer.ggml.model", "gpt2");
    md.Str("tokenizer.ggml.pre", pre);
    md.StrArray("tokenizer.ggml.tokens", tokens);
    md.I32Array("tokenizer.ggml.token_type", types);
    md.StrArray("tokenizer.ggml.merges", merges);
  }
  // BOS: the token the tokenizer's post-processor puts first (what compress and transformers
  // add), else config.json's; EOS: config.json's.
  const SingleTemplate tmpl = SingleSequenceTemplate(tok);
  int64_t bos = ConfigTokenId(model.config, "bos_token_id");
  if (tmpl.before.size() == 1 && tmpl.before[0].ids && tmpl.before[0].ids->size() == 1)
    bos = tmpl.before[0].ids->front();
  const int64_t eos = ConfigTokenId(model.config, "eos_token_id");
  if (bos >= 0 && bos < vocab_size) md.U32("tokenizer.ggml.bos_token_id", static_cast<uint32_t>(bos));
  if (eos >= 0 && eos < vocab_size) md.U32("tokenizer.ggml.eos_token_id", static_cast<uint32_t>(eos));
  // Hugging Face adds BOS / EOS where the tokenizer's post-processor says so (Llama-3's
  // TemplateProcessing), or tokenizer_config.json's add_bos_token / add_eos_token where the
  // tokenizer class applies them (Llama-2, Gemma); the GGUF asks llama.cpp for the same, as
  // llama.cpp's converter does. A GGUF input keeps its own flags.
  if (!source_add_bos) {
    const bool bos_in_template = !tmpl.before.empty(), eos_in_template = !tmpl.after.empty();
    source_add_bos = bos_in_template;
    if (eos_in_template) source_add_eos = true;
  }
  bool add_bos = source_add_bos.value_or(false);
  std::optional<bool> add_eos = source_add_eos;
  if (auto cfg_path = FindSideFile(model, "tokenizer_config.json"); cfg_path.ok()) {
    ASSIGN_OR_RETURN(std::string cfg_text, ReadSmallFile(*cfg_path, 64u << 20));
    nlohmann::json cfg = nlohmann::json::parse(cfg_text, nullptr, false);
    if (cfg.is_object() && cfg.contains("add_bos_token") && cfg["add_bos_token"].is_boolean()) {
      add_bos = cfg["add_bos_token"].get<bool>();
    }
    if (cfg.is_object() && cfg.contains("add_eos_token") && cfg["add_eos_token"].is_boolean()) {
      add_eos = cfg["add_eos_token"].get<bool>();
    }
    const nlohmann::json ct = cfg.is_object() ? cfg.value("chat_template", nlohmann::json()) : nlohmann::json();
    if (ct.is_string() && !templates.count("default")) templates["default"] = ct.get<std::string>();
    if (ct.is_array()) {
      for (const auto& e : ct) {
        if (!e.is_object() || !e.contains("name") || !e["name"].is_string() || !e.contains("template") ||
            !e["template"].is_string())
          return InvalidArgument("{}: chat_template entry {} has no string name and template", *cfg_path,
                                 e.dump().substr(0, 120));
        templates.emplace(e["name"].get<std::string>(), e["template"].get<std::string>());
      }
    }
  }
  md.Bool("tokenizer.ggml.add_bos_token", add_bos);
  if (add_eos) md.Bool("tokenizer.ggml.add_eos_token", *add_eos);
  // llama.cpp's keys: the default template, each other one by name, and the list of names.
  std::vector<std::string> names;
  for (const auto& [name, text] : templates) {
    md.Str(name == "default" ? "tokenizer.chat_template" : "tokenizer.chat_template." + name, text);
    if (name != "default") names.push_back(name);
  }
  if (!names.empty()) md.StrArray("tokenizer.chat_templates", names);
  if (pieces) *pieces = std::move(tokens);
  return absl::OkStatus();
}

std::string GgufModelName(const Model& model, const std::vector<std::string>& pieces) {
  fs::path source = fs::path(model.source).lexically_normal();
  if (source.filename().empty()) source = source.parent_path();
  std::string name = source.filename().string();
  std::string lower = name;
  for (char& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (lower.find("phi3") == std::string::npos && lower.find("phi-3") == std::string::npos) return name;
  const std::set<std::string_view> have(pieces.begin(), pieces.end());
  bool all = true;
  for (std::string_view p : {"</s>", "<unk>", "<s>", "<|endoftext|>"}) all = all && have.count(p) > 0;
  if (all) return name;
  std::string out;
  for (size_t i = 0; i < name.size();) {
    const size_t n = lower.compare(i, 5, "phi-3") == 0 ? 5 : lower.compare(i, 4, "phi3") == 0 ? 4 : 0;
    if (n > 0) {
      out += name.substr(i, 3) + " 3";
      i += n;
    } else {
      out += name[i++];
    }
  }
  return out;
}


// llama.cpp's rule for a GGUF named Phi-3: control / user-defined tokens rstrip, but these.
bool LlamaCppPhi3Name(std::string name) {
  std::transform(name.begin(), name.end(), name.begin(), [](unsigned char c) { return std::tolower(c); });
  return name.find("phi3") != std::string::npos || name.find("phi-3") != std::string::npos;
}
bool LlamaCppPhi3Rstrip(const std::string& content) {
  return content != "<unk>" && content != "<s>" && content != "<|endoftext|>";
}

std::vector<std::string> GgufTokenizerCaveats(const Model& model, const std::string& gguf_name) {
  std::vector<std::string> out;
  auto path = FindSideFile(model, "tokenizer.json");
  nlohmann::json tok;
  if (path.ok()) {
    auto text = ReadSmallFile(*path, 256 << 20);
    if (!text.ok()) return out;
    tok = nlohmann::json::parse(*text, nullptr, false);
  } else if (path = FindSideFile(model, "tokenizer.model");
             path.ok() && fs::path(model.source).extension() != ".gguf") {
    auto converted = TokenizerJsonFromSentencePiece(*path);  // its added tokens from tokenizer_config.json
    if (!converted.ok()) return out;
    tok = std::move(*converted);
  } else {
    return out;
  }
  if (!tok.is_object()) return out;
  // A Metaspace pre-tokenizer (transformers' non-legacy SentencePiece form) puts the marker only
  // before a piece that does not start with a space, and with prepend_scheme "first" only at the
  // text's start; a split one also cuts at every space. llama.cpp's tokenizer prefixes a space to
  // the text and after each special token, and merges across spaces.
  const nlohmann::json& pre = tok.contains("pre_tokenizer") ? tok["pre_tokenizer"] : nlohmann::json();
  if (pre.is_object() && pre.value("type", "") == "Metaspace" && tok.contains("model") && tok["model"].is_object() &&
      tok["model"].value("byte_fallback", false)) {
    const MetaspaceSettings ms = ReadMetaspace(pre);
    const std::string& scheme = ms.scheme;
    const bool split = ms.split;
    std::string what;
    if (scheme != "never") what = "a text starting with a space gets a second space marker";
    if (scheme == "first") what += ", and text after a special token gets one it does not have";
    if (split) what += std::string(what.empty() ? "" : ", and ") + "runs of spaces may merge into one token";
    if (!what.empty()) {
      out.push_back(fmt::format("{}: Metaspace pre-tokenizer (prepend_scheme {}{}) written as llama.cpp's SentencePiece "
                                "tokenizer, which differs from it: {}",
                                *path, scheme, split ? ", split" : "", what));
    }
  }
  if (!tok.contains("added_tokens") || !tok["added_tokens"].is_array()) return out;
  const bool phi3 = LlamaCppPhi3Name(gguf_name);
  std::vector<std::string> lost;
  for (const auto& a : tok["added_tokens"]) {
    if (!a.is_object()) continue;
    const std::string content = a.value("content", "");
    const bool rstrip = a.value("rstrip", false), lstrip = a.value("lstrip", false);
    const bool single_word = a.value("single_word", false);
    if (lstrip || single_word || rstrip != (phi3 && LlamaCppPhi3Rstrip(content))) lost.push_back(content);
  }
  if (lost.empty()) return out;
  std::string list;
  for (size_t i = 0; i < lost.size() && i < 5; ++i) list += (i ? ", " : "") + lost[i];
  if (lost.size() > 5) list += fmt::format(" and {} more", lost.size() - 5);
  out.push_back(fmt::format(
      "{}: added tokens whose whitespace rules (lstrip / rstrip / single_word) GGUF cannot hold: {}; llama.cpp "
      "tokenizes text around them differently from the tokenizer.json (it applies rstrip only to models named Phi-3)",
      *path, list));
  return out;
}


namespace {

// llama.cpp's SentencePiece tokenizer as tokenizer.json (formats/sentencepiece_model.h), "\u2581"
// prepended when add_space_prefix says so.
absl::StatusOr<nlohmann::json> SentencePieceJson(const gguf::Container& g) {
  auto array = [&](const char* key) -> const nlohmann::json* {
    auto it = g.kv.find(key);
    return it != g.kv.end() && it->second.is_array() ? &it->second : nullptr;
  };
  const nlohmann::json* tokens = array("tokenizer.ggml.tokens");
  const nlohmann::json* scores = array("tokenizer.ggml.scores");
  const nlohmann::json* types = array("tokenizer.ggml.token_type");
  if (!tokens || tokens->empty()) return DataLoss("{}: tokenizer.ggml.tokens is missing or empty", g.path);
  const size_t n = tokens->size();
  if (!scores || scores->size() != n || (types && types->size() != n)) {
    return DataLoss("{}: a SentencePiece tokenizer needs tokenizer.ggml.scores (and token_type) for each of its {} tokens",
                    g.path, n);
  }
  std::vector<std::string> piece(n);
  std::vector<float> score(n);
  std::vector<int> type(n, kSpNormal);
  for (size_t id = 0; id < n; ++id) {
    if (!(*tokens)[id].is_string() || !(*scores)[id].is_number())
      return DataLoss("{}: tokenizer token {} has no string or no score", g.path, id);
    piece[id] = (*tokens)[id].get<std::string>();
    score[id] = (*scores)[id].get<float>();
    if (types && (*types)[id].is_number_integer()) type[id] = (*types)[id].get<int>();
  }
  bool prefix = true;  // llama.cpp's default for SentencePiece vocabularies
  if (auto it = g.kv.find("tokenizer.ggml.add_space_prefix"); it != g.kv.end() && it->second.is_boolean())
    prefix = it->second.get<bool>();
  const int64_t unk = GgufSpecialTokenId(g, "unknown");
  return SentencePieceBpeJson(piece, score, type, unk, prefix, /*byte_fallback=*/true, g.path);
}

// tokenizer.ggml.add_bos_token / add_eos_token, else llama.cpp's default for the tokenizer
// kind (SentencePiece and Llama-3's BPE add BOS; other BPE tokenizers add nothing).
std::pair<bool, bool> AddsBosEos(const gguf::Container& g) {
  const std::string kind = g.GetStr("tokenizer.ggml.model"), pre = g.GetStr("tokenizer.ggml.pre", "default");
  bool bos = kind == "llama" || pre == "llama-bpe" || pre == "llama3" || pre == "llama-v3" || pre == "falcon3" ||
             pre == "pixtral" || pre == "tekken",
       eos = false;
  if (auto it = g.kv.find("tokenizer.ggml.add_bos_token"); it != g.kv.end() && it->second.is_boolean())
    bos = it->second.get<bool>();
  if (auto it = g.kv.find("tokenizer.ggml.add_eos_token"); it != g.kv.end() && it->second.is_boolean())
    eos = it->second.get<bool>();
  return {bos, eos};
}

// The id and piece of tokenizer.ggml.<key>_token_id (llama.cpp's default for the tokenizer kind
// when the file names none), or nothing when there is neither or the id is out of range.
std::optional<TemplateSpecial> SpecialPiece(const gguf::Container& g, const std::string& key) {
  auto tokens = g.kv.find("tokenizer.ggml.tokens");
  if (tokens == g.kv.end() || !tokens->second.is_array()) return std::nullopt;
  const int64_t id = GgufSpecialTokenId(g, key);
  if (id < 0 || static_cast<uint64_t>(id) >= tokens->second.size() || !tokens->second[id].is_string()) return std::nullopt;
  return TemplateSpecial{id, tokens->second[id].get<std::string>()};
}

// Hugging Face's TemplateProcessing for a single sequence (and a pair) with BOS / EOS around
// it, or null when neither is added.
nlohmann::json TemplatePostProcessor(const gguf::Container& g) {
  const auto [add_bos, add_eos] = AddsBosEos(g);
  return BosEosTemplate(add_bos ? SpecialPiece(g, "bos") : std::nullopt, add_eos ? SpecialPiece(g, "eos") : std::nullopt);
}

absl::StatusOr<nlohmann::json> TokenizerJsonWithoutTemplate(const gguf::Container& g) {
  const std::string kind = g.GetStr("tokenizer.ggml.model");
  if (kind.empty()) return NotFound("{}: the GGUF file holds no tokenizer (tokenizer.ggml.model)", g.path);
  if (kind == "llama") return SentencePieceJson(g);
  if (kind != "gpt2") {
    return Unimplemented(
        "{}: its tokenizer is '{}'; reading GGUF tokenizers supports 'gpt2' (byte-level BPE) and 'llama' "
        "(SentencePiece): put the model's tokenizer.json beside it",
        g.path, kind);
  }
  const std::string pre = g.GetStr("tokenizer.ggml.pre", "default");
  const PreTokenizerKind* kind_of = PreTokenizerKindNamed(pre);
  if (!kind_of) {
    return Unimplemented("{}: GGUF pre-tokenizer '{}' is not read yet (the default, GPT-2, SmolLM / StarCoder, Falcon, "
                         "Llama-3, DBRX, Qwen2, Tekken, GPT-4o and DeepSeek kinds): put the model's tokenizer.json "
                         "beside it",
                         g.path, pre);
  }
  std::vector<SplitStep> steps;
  for (const char* p : kind_of->steps) steps.push_back({p, true});
  const bool ignore_merges = kind_of->ignore_merges == 1;
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
    if (type == kSpUnused) continue;  // padding rows
    const std::string piece = t.get<std::string>();
    if (!vocab.contains(piece)) vocab[piece] = id;
    if (MatchedWholeInText(type)) added.push_back(AddedTokenJson(static_cast<int64_t>(id), piece, type != kSpUserDefined));
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
                        {"pre_tokenizer", ByteLevelPreTokenizerJson(steps)},
                        {"post_processor", nullptr},
                        {"decoder", {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}}},
                        {"model", BpeModelJson(std::move(vocab), std::move(merge_list), nullptr, false, false, ignore_merges)}};
}

}  // namespace

int64_t GgufSpecialTokenId(const gguf::Container& g, const std::string& key) {
  if (auto it = g.kv.find("tokenizer.ggml." + key + "_token_id"); it != g.kv.end()) {
    return it->second.is_number_integer() ? it->second.get<int64_t>() : -1;
  }
  const std::string kind = g.GetStr("tokenizer.ggml.model");
  if (kind == "llama") return key == "bos" ? 1 : key == "eos" ? 2 : key == "unknown" ? 0 : -1;
  if (kind == "gpt2") return key == "bos" || key == "eos" ? 11 : -1;
  return -1;
}

absl::StatusOr<nlohmann::json> TokenizerJsonFromGguf(const gguf::Container& g) {
  ASSIGN_OR_RETURN(nlohmann::json tok, TokenizerJsonWithoutTemplate(g));
  tok["post_processor"] = TemplatePostProcessor(g);
  // GGUF has no field for an added token taking the whitespace after it; llama.cpp gives every
  // control and user-defined token of a model named Phi-3 (general.name, any case) rstrip but
  // <unk>, <s> and <|endoftext|>, as Phi-3's tokenizer.json has them.
  if (LlamaCppPhi3Name(g.GetStr("general.name"))) {
    for (auto& a : tok["added_tokens"]) a["rstrip"] = LlamaCppPhi3Rstrip(a.value("content", ""));
  }
  return tok;
}

absl::StatusOr<std::vector<std::pair<std::string, std::string>>> TokenizerFilesFromGguf(const std::string& path) {
  ASSIGN_OR_RETURN(gguf::Container g, gguf::ReadContainer(path));
  ASSIGN_OR_RETURN(nlohmann::json tok, TokenizerJsonFromGguf(g));
  // Qwen's tokenizers normalize to NFC, which GGUF has no field for (llama.cpp applies none,
  // so TokenizerJsonFromGguf follows it); the checkpoint gets Qwen's own tokenizer back.
  if (g.GetStr("tokenizer.ggml.model") == "gpt2" && g.GetStr("tokenizer.ggml.pre") == "qwen2")
    tok["normalizer"] = {{"type", "NFC"}};
  const auto [add_bos, add_eos] = AddsBosEos(g);
  nlohmann::json cfg = {{"tokenizer_class", "PreTrainedTokenizerFast"},
                        {"add_bos_token", add_bos},
                        {"add_eos_token", add_eos},
                        {"clean_up_tokenization_spaces", false}};
  for (const auto& [key, name] : {std::pair<const char*, const char*>{"bos", "bos_token"},
                                  {"eos", "eos_token"},
                                  {"unknown", "unk_token"},
                                  {"padding", "pad_token"}}) {
    if (auto t = SpecialPiece(g, key)) cfg[name] = t->piece;
  }
  const auto templates = ChatTemplatesOfGguf(g);
  if (templates.size() == 1 && templates.count("default")) {
    cfg["chat_template"] = templates.at("default");
  } else if (!templates.empty()) {  // transformers' list form of named templates
    nlohmann::json list = nlohmann::json::array();
    for (const auto& [name, text] : templates) list.push_back({{"name", name}, {"template", text}});
    cfg["chat_template"] = std::move(list);
  }
  auto ctx = g.kv.find(g.GetStr("general.architecture") + ".context_length");
  if (ctx != g.kv.end() && ctx->second.is_number_unsigned()) cfg["model_max_length"] = ctx->second;
  // JSON text must be UTF-8; GGUF strings are bytes (a piece or template may not be).
  try {
    return std::vector<std::pair<std::string, std::string>>{{"tokenizer.json", tok.dump(2) + "\n"},
                                                            {"tokenizer_config.json", cfg.dump(2) + "\n"}};
  } catch (const nlohmann::json::exception& e) {
    return DataLoss("{}: the tokenizer metadata holds a string that is not UTF-8, which tokenizer.json cannot ({})",
                    path, e.what());
  }
}

}  // namespace compress
