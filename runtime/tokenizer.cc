// BPE tokenizers from tokenizer.json: added-token split, then byte-level (regex pre-tokens,
// PCRE2 with Unicode properties, byte-to-unicode mapping) or SentencePiece-style
// (U+2581 spaces, byte fallback) words, merged by rank with a heap over a linked list.
#include "runtime/tokenizer.h"

#include <filesystem>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <utf8proc.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <climits>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <queue>
#include <tuple>

#include "core/status.h"
#include "core/file_util.h"
#include "core/json_util.h"
#include "core/utf8.h"
#include "formats/gguf_container.h"
#include "formats/byte_level_splits.h"
#include "formats/gguf_tokenizer.h"
#include "formats/sentencepiece_model.h"
#include "formats/tokenizer_template.h"
#include "nlohmann/json.hpp"

namespace compress {
namespace {

std::string CodepointToUtf8(uint32_t cp) {
  std::string s;
  if (cp < 0x80) {
    s += static_cast<char>(cp);
  } else if (cp < 0x800) {
    s += static_cast<char>(0xC0 | (cp >> 6));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    s += static_cast<char>(0xE0 | (cp >> 12));
    s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  }
  return s;
}

// Splits a UTF-8 string into its code points' byte strings.
std::vector<std::string> Utf8Chars(const std::string& s) {
  std::vector<std::string> out;
  for (size_t i = 0; i < s.size();) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    const size_t n = std::max<size_t>(1, Utf8Len(c));
    out.push_back(s.substr(i, n));
    i += n;
  }
  return out;
}

}  // namespace

absl::StatusOr<std::optional<std::vector<int32_t>>> TokenIdsFromJson(const std::string& text,
                                                                     const std::string& path) {
  auto j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_array()) return std::optional<std::vector<int32_t>>();
  std::vector<int32_t> ids;
  for (const auto& v : j) {
    if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() > INT32_MAX) {
      return InvalidArgument("{}: token list holds '{}', not a token id", path, v.dump());
    }
    ids.push_back(v.get<int32_t>());
  }
  return std::optional<std::vector<int32_t>>(std::move(ids));
}

absl::StatusOr<std::optional<std::vector<int32_t>>> TokenIdsFromText(const std::string& text,
                                                                     const std::string& path) {
  ASSIGN_OR_RETURN(auto json_ids, TokenIdsFromJson(text, path));
  if (json_ids) return json_ids;
  const bool must = path.size() >= 4 && path.compare(path.size() - 4, 4, ".tok") == 0;
  std::vector<int32_t> ids;
  size_t i = 0;
  while (i < text.size()) {
    while (i < text.size() && std::isspace(static_cast<unsigned char>(text[i]))) ++i;
    if (i == text.size()) break;
    size_t j = i;
    while (j < text.size() && !std::isspace(static_cast<unsigned char>(text[j]))) ++j;
    int32_t v = 0;
    auto [p, ec] = std::from_chars(text.data() + i, text.data() + j, v);
    if (ec != std::errc() || p != text.data() + j || v < 0) {
      if (must) return InvalidArgument("{}: '{}' is not a token id", path, text.substr(i, std::min<size_t>(j - i, 32)));
      return std::optional<std::vector<int32_t>>();
    }
    ids.push_back(v);
    i = j;
  }
  if (ids.empty() && !must) return std::optional<std::vector<int32_t>>();
  return std::optional<std::vector<int32_t>>(std::move(ids));
}

struct Tokenizer::Regex {
  pcre2_code* code = nullptr;
  bool keep_gaps = true;  // Isolated: the text between matches is a piece too (Removed + invert: dropped)
  Regex() = default;
  Regex(const Regex&) = delete;
  Regex(Regex&& o) noexcept : code(std::exchange(o.code, nullptr)), keep_gaps(o.keep_gaps) {}
  ~Regex() {
    if (code) pcre2_code_free(code);
  }
};

Tokenizer::~Tokenizer() = default;

namespace {

constexpr const char* kSpaceMark = "\xE2\x96\x81";  // U+2581, SentencePiece's space

uint64_t PairKey(int32_t a, int32_t b) { return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b); }

std::string ReplaceAll(const std::string& s, const std::string& from, const std::string& to) {
  std::string out;
  size_t i = 0;
  while (true) {
    size_t j = s.find(from, i);
    if (j == std::string::npos) break;
    out.append(s, i, j - i);
    out += to;
    i = j + from.size();
  }
  out.append(s, i, std::string::npos);
  return out;
}

// Reads the normalizer: a Unicode normalization form (NFC, NFD, NFKC, NFKD) and the
// SentencePiece-style Prepend("\u2581") and Replace(" ", "\u2581"), alone or in a Sequence.
// Returns false for anything else.
bool ReadNormalizer(const nlohmann::json& n, std::string& prepend, std::string& replacement, int& form) {
  if (n.is_null()) return true;
  const std::string type = n.value("type", "");
  if (type == "Sequence") {
    for (const auto& c : n.value("normalizers", nlohmann::json::array()))
      if (!ReadNormalizer(c, prepend, replacement, form)) return false;
    return true;
  }
  static const std::map<std::string, int> kForms = {
      {"NFC", UTF8PROC_COMPOSE},
      {"NFD", UTF8PROC_DECOMPOSE},
      {"NFKC", UTF8PROC_COMPOSE | UTF8PROC_COMPAT},
      {"NFKD", UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT}};
  if (auto it = kForms.find(type); it != kForms.end()) {
    if (form != 0) return false;  // two normalization forms in a row: not supported
    form = UTF8PROC_STABLE | it->second;
    return true;
  }
  if (type == "Prepend") {
    prepend = n.value("prepend", "");
    return true;
  }
  if (type == "Replace" && n.contains("pattern") && n["pattern"].contains("String") &&
      n["pattern"]["String"] == " ") {
    replacement = n.value("content", "");
    return true;
  }
  return false;
}

// `s` in the Unicode normalization form `form` (utf8proc options); ASCII is returned as is.
absl::StatusOr<std::string> NormalizeUnicode(std::string_view s, int form) {
  if (std::all_of(s.begin(), s.end(), [](char c) { return static_cast<unsigned char>(c) < 0x80; }))
    return std::string(s);
  utf8proc_uint8_t* dst = nullptr;
  const utf8proc_ssize_t n = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(s.data()),
                                          static_cast<utf8proc_ssize_t>(s.size()), &dst,
                                          static_cast<utf8proc_option_t>(form));
  if (n < 0) return InvalidArgument("text is not valid UTF-8 ({})", utf8proc_errmsg(n));
  std::string out(reinterpret_cast<const char*>(dst), static_cast<size_t>(n));
  std::free(dst);
  return out;
}

// The code point at byte i of valid-or-not UTF-8 and its length (an invalid byte: kNotACodePoint,
// 1: neither whitespace nor a word character, so a stripping token leaves it to the encoder,
// which refuses it).
constexpr uint32_t kNotACodePoint = 0xFFFFFFFFu;
std::pair<uint32_t, size_t> CodePointAt(const std::string& s, size_t i) {
  utf8proc_int32_t cp = 0;
  const utf8proc_ssize_t n = utf8proc_iterate(reinterpret_cast<const utf8proc_uint8_t*>(s.data() + i),
                                              static_cast<utf8proc_ssize_t>(s.size() - i), &cp);
  if (n <= 0) return {kNotACodePoint, 1};
  return {static_cast<uint32_t>(cp), static_cast<size_t>(n)};
}

// Where the code point that ends at byte i (> 0) starts.
size_t PreviousCodePoint(const std::string& s, size_t i) {
  size_t j = i - 1;
  while (j > 0 && i - j < 4 && (static_cast<unsigned char>(s[j]) >> 6) == 2) --j;
  return CodePointAt(s, j).second == i - j ? j : i - 1;
}
uint32_t CodePointBefore(const std::string& s, size_t i) { return CodePointAt(s, PreviousCodePoint(s, i)).first; }

// Unicode White_Space (regex \s, Rust's char::is_whitespace).
bool IsWhiteSpace(uint32_t c) {
  return (c >= 9 && c <= 13) || c == 32 || c == 0x85 || c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) ||
         c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

// A word character of regex \w: letters, marks, decimal digits, connector punctuation, and the
// joiners (letter numbers count as alphabetic).
bool IsWordChar(uint32_t c) {
  if (c == 0x200C || c == 0x200D) return true;
  if (c > 0x10FFFF) return false;
  switch (utf8proc_category(static_cast<utf8proc_int32_t>(c))) {
    case UTF8PROC_CATEGORY_LU: case UTF8PROC_CATEGORY_LL: case UTF8PROC_CATEGORY_LT: case UTF8PROC_CATEGORY_LM:
    case UTF8PROC_CATEGORY_LO: case UTF8PROC_CATEGORY_MN: case UTF8PROC_CATEGORY_MC: case UTF8PROC_CATEGORY_ME:
    case UTF8PROC_CATEGORY_ND: case UTF8PROC_CATEGORY_NL: case UTF8PROC_CATEGORY_PC:
      return true;
    default:
      return false;
  }
}

}  // namespace

std::string TokenizerFileFor(const std::string& model_path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const bool dir = fs::is_directory(model_path, ec);
  const fs::path folder = dir ? fs::path(model_path) : fs::path(model_path).parent_path();
  const fs::path json = folder / "tokenizer.json";
  if (fs::exists(json, ec)) return json.string();
  if (!dir && fs::path(model_path).extension() == ".gguf") return model_path;
  if (fs::exists(folder / "tokenizer.model", ec)) return (folder / "tokenizer.model").string();
  return json.string();
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromFile(const std::string& path) {
  if (path.ends_with(".gguf")) {  // the tokenizer the GGUF metadata holds
    ASSIGN_OR_RETURN(gguf::Container g, gguf::ReadContainer(path));
    ASSIGN_OR_RETURN(nlohmann::json j, TokenizerJsonFromGguf(g));
    try {
      return FromJson(j, path);
    } catch (const nlohmann::json::exception& e) {
      return DataLoss("{}: tokenizer metadata has a value of the wrong type ({})", path, e.what());
    }
  }
  if (path.ends_with(".model")) {  // SentencePiece's own file (formats/sentencepiece_model.h)
    ASSIGN_OR_RETURN(nlohmann::json j, TokenizerJsonFromSentencePiece(path));
    try {
      return FromJson(j, path);
    } catch (const nlohmann::json::exception& e) {
      return DataLoss("{}: {}", path, e.what());
    }
  }
  ASSIGN_OR_RETURN(std::string text, ReadSmallFile(path, 256 << 20));
  ASSIGN_OR_RETURN(nlohmann::json j, ParseJsonStrict(text, path));
  // A field of the wrong JSON type (read with .value()/.get()) throws; it is bad input.
  try {
    return FromJson(j, path);
  } catch (const nlohmann::json::exception& e) {
    return DataLoss("{}: a field has the wrong type ({})", path, e.what());
  }
}

// The pre-tokenizer and normalizer: byte-level with its split steps (`steps`), or
// SentencePiece-style spaces.
absl::Status Tokenizer::ReadPreTokenizer(const nlohmann::json& j, const std::string& path,
                                       std::vector<SplitStep>& steps) {
  const auto& pre = MemberOrNull(j, "pre_tokenizer");
  const std::string pre_type = pre.is_object() ? pre.value("type", "") : "";
  ASSIGN_OR_RETURN(std::optional<std::vector<SplitStep>> byte_level, ByteLevelSplits(pre, path));
  if (byte_level) {
    steps = std::move(*byte_level);
  } else if (pre.is_null() || pre_type == "Metaspace" ||
             (pre_type == "Split" && pre.contains("pattern") && pre["pattern"].contains("String") &&
              pre.value("behavior", "") == "MergedWithPrevious" && !pre.value("invert", false))) {
    byte_level_ = false;
    // Gemma: Split on a literal string, the delimiter ending the piece before it.
    if (pre_type == "Split") split_after_ = pre["pattern"]["String"].get<std::string>();
    if (pre_type == "Metaspace") {
      const MetaspaceSettings ms = ReadMetaspace(pre);
      if (!ms.well_typed) return DataLoss("{}: a Metaspace field has the wrong type: {}", path, pre.dump().substr(0, 200));
      space_replacement_ = ms.replacement;
      if (ms.scheme != "always" && ms.scheme != "first" && ms.scheme != "never") {
        return Unimplemented("{}: Metaspace prepend_scheme {} is not one of always, first, never", path,
                             pre.value("prepend_scheme", nlohmann::json()).dump());
      }
      if (ms.scheme != "never") prepend_ = space_replacement_;
      prepend_first_only_ = ms.scheme == "first";
      prepend_unless_marked_ = true;  // Metaspace prepends only to a piece not starting with the marker
      split_on_replacement_ = ms.split;
    }
  } else {
    return Unimplemented(
        "{}: pre_tokenizer {} is not supported (ByteLevel after Split / Digits steps, Metaspace or none)", path,
        pre.dump().substr(0, 300));
  }
  {
    std::string prepend, replacement;
    const nlohmann::json& normalizer = MemberOrNull(j, "normalizer");
    if (!ReadNormalizer(normalizer, prepend, replacement, unicode_form_)) {
      return Unimplemented("{}: normalizer {} is not supported", path, normalizer.dump());
    }
    if (byte_level_ && (!prepend.empty() || !replacement.empty())) {
      return Unimplemented("{}: normalizer {} is not supported with a byte-level pre-tokenizer", path,
                           normalizer.dump());
    }
    if (!prepend.empty()) prepend_ = prepend;
    if (!replacement.empty()) space_replacement_ = replacement;
  }
  return absl::OkStatus();
}

// The BPE vocabulary (ids below max_id) and merges.
absl::Status Tokenizer::ReadVocabAndMerges(const nlohmann::json& model, const std::string& path, int64_t max_id) {
  ignore_merges_ = model.value("ignore_merges", false);
  byte_fallback_ = model.value("byte_fallback", false);
  fuse_unk_ = model.value("fuse_unk", false);
  for (const auto& [tok, id] : model["vocab"].items()) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > max_id) {
      return DataLoss("{}: vocab id of '{}' is not a valid id (0 to {})", path, tok, max_id);
    }
    int32_t i = id.get<int32_t>();
    vocab_[tok] = i;
    if (static_cast<size_t>(i) >= id_to_token_.size()) id_to_token_.resize(i + 1);
    id_to_token_[i] = tok;
  }
  if (model.contains("unk_token") && model["unk_token"].is_string()) {
    auto it = vocab_.find(model["unk_token"].get<std::string>());
    if (it != vocab_.end()) unk_id_ = it->second;
  }
  for (int b = 0; b < 256; ++b) {
    auto it = vocab_.find(fmt::format("<0x{:02X}>", b));
    byte_ids_[b] = it == vocab_.end() ? -1 : it->second;
  }
  int rank = 0;
  for (const auto& m : model.value("merges", nlohmann::json::array())) {
    std::string a, b;
    if (m.is_string()) {
      const std::string key = m.get<std::string>();
      const size_t sp = key.find(' ', 1);  // a merge of "a b"; the left part is never empty
      if (sp == std::string::npos) return DataLoss("{}: merge #{} '{}' has no space", path, rank, key);
      a = key.substr(0, sp);
      b = key.substr(sp + 1);
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      a = m[0].get<std::string>();
      b = m[1].get<std::string>();
    } else {
      return DataLoss("{}: merge #{} is neither \"a b\" nor [a, b]", path, rank);
    }
    auto ia = vocab_.find(a), ib = vocab_.find(b), im = vocab_.find(a + b);
    if (ia == vocab_.end() || ib == vocab_.end() || im == vocab_.end()) {
      return DataLoss("{}: merge #{} '{} {}' uses or makes a token outside the vocab", path, rank, a, b);
    }
    merges_.emplace(PairKey(ia->second, ib->second), std::make_pair(rank, im->second));
    ++rank;
  }
  return absl::OkStatus();
}

// Added tokens, matched before the model, longest first.
absl::Status Tokenizer::ReadAddedTokens(const nlohmann::json& j, const std::string& path, int64_t max_id) {
  for (const auto& a : j.value("added_tokens", nlohmann::json::array())) {
    std::string content = a.value("content", "");
    if (content.empty()) continue;
    if (a.value("normalized", false) && !byte_level_) {
      return Unimplemented("{}: added token '{}' is matched after normalization, which is not supported", path,
                           content);
    }
    const int64_t id = a.value("id", int64_t{-1});
    if (id < 0) return DataLoss("{}: added token '{}' has no id", path, content);
    if (id > max_id) return DataLoss("{}: added token '{}' has id {}, beyond {}", path, content, id, max_id);
    added_.push_back({content, static_cast<int32_t>(id), a.value("lstrip", false), a.value("rstrip", false),
                      a.value("single_word", false)});
    if (static_cast<size_t>(id) >= id_to_token_.size()) id_to_token_.resize(id + 1);
    id_to_token_[id] = content;
  }
  std::stable_sort(added_.begin(), added_.end(),
                   [](const auto& a, const auto& b) { return a.content.size() > b.content.size(); });
  for (size_t i = 0; i < added_.size(); ++i) {
    added_by_first_[static_cast<unsigned char>(added_[i].content[0])].push_back(static_cast<int32_t>(i));
    added_ids_.insert(added_[i].id);
  }
  return absl::OkStatus();
}

absl::Status Tokenizer::ReadPostProcessor(const nlohmann::json& j, const std::string& path) {
  const SingleTemplate tmpl = SingleSequenceTemplate(j);
  for (auto [tokens, dst] : {std::pair{&tmpl.before, &special_prefix_}, std::pair{&tmpl.after, &special_suffix_}}) {
    for (const TemplateToken& t : *tokens) {
      if (t.ids) {
        for (int64_t id : *t.ids) {
          if (id < 0 || id > INT32_MAX) return DataLoss("{}: post-processor special token '{}' has id {}", path, t.name, id);
          dst->push_back(static_cast<int32_t>(id));
        }
      } else if (auto it = vocab_.find(t.name); it != vocab_.end()) {
        dst->push_back(it->second);
      } else {
        return DataLoss("{}: post-processor special token '{}' has no id", path, t.name);
      }
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromJson(const nlohmann::json& j, const std::string& path) {
  if (!j.is_object() || !j.contains("model")) {
    return DataLoss("{}: not a tokenizer.json (no 'model')", path);
  }
  const auto& model = j["model"];
  if (model.value("type", "") != "BPE") {
    return Unimplemented("{}: tokenizer model '{}' is not supported (BPE only)", path, model.value("type", "?"));
  }
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    if (model.contains(key) && model[key].is_string() && !model[key].get<std::string>().empty())
      return Unimplemented("{}: BPE {} is not supported", path, key);
  }
  auto t = std::unique_ptr<Tokenizer>(new Tokenizer());
  std::vector<SplitStep> steps;  // byte-level split steps
  RETURN_IF_ERROR(t->ReadPreTokenizer(j, path, steps));
  if (!model.contains("vocab") || !model["vocab"].is_object()) return DataLoss("{}: BPE without vocab", path);
  // Ids index a dense table: one far beyond the number of tokens would allocate gigabytes.
  const int64_t max_id = 4 * static_cast<int64_t>(model["vocab"].size() + j.value("added_tokens", nlohmann::json::array()).size()) + 1024;
  RETURN_IF_ERROR(t->ReadVocabAndMerges(model, path, max_id));
  RETURN_IF_ERROR(t->ReadAddedTokens(j, path, max_id));
  RETURN_IF_ERROR(t->ReadPostProcessor(j, path));
  // GPT-2 byte <-> unicode table: printable bytes map to themselves, the rest to 256+n.
  int n = 0;
  for (int b = 0; b < 256; ++b) {
    bool keep = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
    uint32_t cp = keep ? static_cast<uint32_t>(b) : 256u + n++;
    t->byte_to_unicode_[b] = CodepointToUtf8(cp);
    t->unicode_to_byte_[t->byte_to_unicode_[b]] = static_cast<uint8_t>(b);
  }
  if (t->byte_level_) {
    for (const SplitStep& step : steps) {
      int err = 0;
      PCRE2_SIZE off = 0;
      auto& r = t->splits_.emplace_back();
      r.keep_gaps = step.keep_gaps;
      r.code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(step.pattern.c_str()), PCRE2_ZERO_TERMINATED,
                             PCRE2_UTF | PCRE2_UCP, &err, &off, nullptr);
      if (!r.code) {
        return Unimplemented("{}: cannot compile the pre-tokenizer pattern '{}' (PCRE2 error {} at offset {})", path,
                             step.pattern.substr(0, 100), err, off);
      }
      pcre2_jit_compile(r.code, PCRE2_JIT_COMPLETE);  // falls back to the interpreter if unavailable
    }
  }
  return t;
}

void Tokenizer::EncodeWord(const std::string& word, std::vector<int32_t>& out) const {
  const bool cacheable = word.size() <= 64;
  if (cacheable) {
    auto hit = cache_.find(word);
    if (hit != cache_.end()) {
      out.insert(out.end(), hit->second.begin(), hit->second.end());
      return;
    }
  }
  std::vector<int32_t> ids;
  if (ignore_merges_) {
    if (auto it = vocab_.find(word); it != vocab_.end()) ids.push_back(it->second);
  }
  if (ids.empty()) {
    // Symbols: one per code point (or per byte of a code point outside the vocab).
    std::vector<int32_t> sym;
    for (size_t i = 0; i < word.size();) {
      const unsigned char c = static_cast<unsigned char>(word[i]);
      const size_t n = std::min(word.size() - i, std::max<size_t>(1, Utf8Len(c)));
      auto it = vocab_.find(word.substr(i, n));
      if (it != vocab_.end()) {
        sym.push_back(it->second);
      } else if (byte_fallback_ && std::all_of(word.begin() + i, word.begin() + i + n, [&](char b) {
                   return byte_ids_[static_cast<unsigned char>(b)] >= 0;
                 })) {
        for (size_t k = i; k < i + n; ++k) sym.push_back(byte_ids_[static_cast<unsigned char>(word[k])]);
      } else if (unk_id_ >= 0) {
        if (!(fuse_unk_ && !sym.empty() && sym.back() == unk_id_)) sym.push_back(unk_id_);
      }
      i += n;
    }
    // Merges by rank (leftmost first among equal ranks) over a linked list, with a heap.
    const int64_t m = static_cast<int64_t>(sym.size());
    std::vector<int64_t> prev(m), next(m);
    for (int64_t i = 0; i < m; ++i) {
      prev[i] = i - 1;
      next[i] = i + 1 < m ? i + 1 : -1;
    }
    using Cand = std::tuple<int32_t, int64_t, int32_t>;  // rank, position, merged id
    std::priority_queue<Cand, std::vector<Cand>, std::greater<Cand>> heap;
    auto push = [&](int64_t i) {
      if (i < 0 || next[i] < 0) return;
      auto it = merges_.find(PairKey(sym[i], sym[next[i]]));
      if (it != merges_.end()) heap.push({it->second.first, i, it->second.second});
    };
    for (int64_t i = 0; i + 1 < m; ++i) push(i);
    std::vector<bool> dead(m, false);
    while (!heap.empty()) {
      auto [rank, i, merged] = heap.top();
      heap.pop();
      if (dead[i] || next[i] < 0) continue;
      auto it = merges_.find(PairKey(sym[i], sym[next[i]]));
      if (it == merges_.end() || it->second.second != merged || it->second.first != rank) continue;  // stale
      const int64_t r = next[i];
      sym[i] = merged;
      dead[r] = true;
      next[i] = next[r];
      if (next[r] >= 0) prev[next[r]] = i;
      push(prev[i]);
      push(i);
    }
    for (int64_t i = 0; i < m; ++i)
      if (!dead[i]) ids.push_back(sym[i]);
  }
  if (cacheable) cache_.emplace(word, ids);
  out.insert(out.end(), ids.begin(), ids.end());
}

absl::Status Tokenizer::EncodeSegment(const std::string& text, size_t begin, size_t end, bool first,
                                      std::vector<int32_t>& out) const {
  if (begin >= end) return absl::OkStatus();
  std::string normalized;
  if (unicode_form_ != 0) {
    ASSIGN_OR_RETURN(normalized, NormalizeUnicode(std::string_view(text).substr(begin, end - begin), unicode_form_));
  }
  if (!byte_level_) {
    std::string norm = unicode_form_ != 0 ? std::move(normalized) : text.substr(begin, end - begin);
    if (!space_replacement_.empty()) norm = ReplaceAll(norm, " ", space_replacement_);
    if (!prepend_.empty() && (!prepend_first_only_ || first) && !(prepend_unless_marked_ && norm.starts_with(prepend_)))
      norm = prepend_ + norm;
    if (!split_after_.empty()) {  // Split (MergedWithPrevious): each delimiter closes a piece
      size_t w = 0;
      while (w < norm.size()) {
        const size_t at = norm.find(split_after_, w);
        const size_t nx = at == std::string::npos ? norm.size() : at + split_after_.size();
        EncodeWord(norm.substr(w, nx - w), out);
        w = nx;
      }
      return absl::OkStatus();
    }
    if (!split_on_replacement_ || space_replacement_.empty()) {
      EncodeWord(norm, out);
      return absl::OkStatus();
    }
    // Metaspace split: every replacement character starts a new word.
    size_t w = 0;
    while (w < norm.size()) {
      size_t nx = norm.find(space_replacement_, w + 1);
      if (nx == std::string::npos) nx = norm.size();
      EncodeWord(norm.substr(w, nx - w), out);
      w = nx;
    }
    return absl::OkStatus();
  }
  // The segment is its own subject (lookaheads stop at added tokens, as in tokenizers), and
  // each piece a split step makes is the next step's whole subject. PCRE2 validates a
  // subject's UTF-8 on each call unless told not to: once per segment, by the first step.
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(unicode_form_ != 0 ? normalized.data() : text.data() + begin);
  const PCRE2_SIZE len = unicode_form_ != 0 ? normalized.size() : end - begin;
  auto encode_bytes = [&](PCRE2_SIZE from, PCRE2_SIZE to) {
    std::string mapped;
    for (PCRE2_SIZE i = from; i < to; ++i) mapped += byte_to_unicode_[subject[i]];
    EncodeWord(mapped, out);
  };
  if (splits_.empty()) {  // ByteLevel without its regex: the segment is one piece
    if (const size_t bad = InvalidUtf8At(std::string_view(reinterpret_cast<const char*>(subject), len));
        bad != std::string::npos)
      return InvalidArgument("text is not valid UTF-8 near byte {}", begin + bad);
    encode_bytes(0, len);
    return absl::OkStatus();
  }
  std::vector<pcre2_match_data*> md(splits_.size());
  for (size_t k = 0; k < splits_.size(); ++k) md[k] = pcre2_match_data_create_from_pattern(splits_[k].code, nullptr);
  uint32_t flags = 0;
  // Splits subject[from, to) by step k, handing each piece to step k + 1 (past the last step:
  // byte-mapped and encoded).
  auto split = [&](auto&& self, size_t k, PCRE2_SIZE from, PCRE2_SIZE to) -> absl::Status {
    if (k == splits_.size()) {
      encode_bytes(from, to);
      return absl::OkStatus();
    }
    const Regex& r = splits_[k];
    const PCRE2_SIZE n = to - from;
    PCRE2_SIZE pos = 0, gap = 0;  // gap: where the text after the last match starts
    while (pos < n) {
      const int rc = pcre2_match(r.code, subject + from, n, pos, flags, md[k], nullptr);
      flags = PCRE2_NO_UTF_CHECK;
      if (rc == PCRE2_ERROR_NOMATCH) break;
      if (rc < 0) return InvalidArgument("text is not valid UTF-8 near byte {} (PCRE2 error {})", begin + from + pos, rc);
      const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md[k]);
      const PCRE2_SIZE m0 = ov[0], m1 = ov[1];
      if (m1 == m0) {  // empty match: step one character
        pos += std::max<size_t>(1, Utf8Len(subject[from + pos]));
        continue;
      }
      if (r.keep_gaps && m0 > gap) RETURN_IF_ERROR(self(self, k + 1, from + gap, from + m0));
      RETURN_IF_ERROR(self(self, k + 1, from + m0, from + m1));
      pos = gap = m1;
    }
    if (r.keep_gaps && gap < n) RETURN_IF_ERROR(self(self, k + 1, from + gap, to));
    return absl::OkStatus();
  };
  absl::Status st = split(split, 0, 0, len);
  for (pcre2_match_data* m : md) pcre2_match_data_free(m);
  return st;
}

absl::StatusOr<std::vector<int32_t>> Tokenizer::Encode(const std::string& text) const {
  std::vector<int32_t> out;
  if (!byte_level_) {  // (byte-level segments are validated by PCRE2)
    if (const size_t bad = InvalidUtf8At(text); bad != std::string::npos)
      return InvalidArgument("text is not valid UTF-8 near byte {}", bad);
  }
  size_t start = 0;  // the first byte not yet encoded (past the last token and the spaces it took)
  size_t scan = 0;   // where the search for the next added token starts
  bool first = true;
  while (true) {
    // The earliest added token (longest at a tie), as tokenizers' leftmost-longest search:
    // one scan, trying at each position only the tokens that start with its byte (longest first).
    size_t at = std::string::npos;
    const AddedToken* tok = nullptr;
    for (size_t p = scan; p < text.size() && !tok; ++p) {
      for (int32_t i : added_by_first_[static_cast<unsigned char>(text[p])]) {
        const std::string& a = added_[i].content;
        if (text.compare(p, a.size(), a) == 0) {
          at = p;
          tok = &added_[i];
          break;
        }
      }
    }
    if (!tok) break;
    size_t from = at, to = at + tok->content.size();
    // single_word: not glued to a word character on either side (else the text stays text and
    // the search goes on past it); lstrip / rstrip: the token takes the spaces beside it.
    if (tok->single_word && ((from > 0 && IsWordChar(CodePointBefore(text, from))) ||
                             (to < text.size() && IsWordChar(CodePointAt(text, to).first)))) {
      scan = to;
      continue;
    }
    if (tok->lstrip) {
      while (from > start && IsWhiteSpace(CodePointBefore(text, from))) from = PreviousCodePoint(text, from);
    }
    if (tok->rstrip) {
      while (to < text.size()) {
        const auto [cp, n] = CodePointAt(text, to);
        if (!IsWhiteSpace(cp)) break;
        to += n;
      }
    }
    RETURN_IF_ERROR(EncodeSegment(text, start, from, first, out));
    first = false;
    out.push_back(tok->id);
    start = scan = to;
  }
  RETURN_IF_ERROR(EncodeSegment(text, start, text.size(), first, out));
  return out;
}

absl::StatusOr<std::vector<int32_t>> Tokenizer::EncodeWithSpecialTokens(const std::string& text) const {
  ASSIGN_OR_RETURN(std::vector<int32_t> ids, Encode(text));
  std::vector<int32_t> out = special_prefix_;
  out.insert(out.end(), ids.begin(), ids.end());
  out.insert(out.end(), special_suffix_.begin(), special_suffix_.end());
  return out;
}

std::string Tokenizer::Decode(const std::vector<int32_t>& ids) const {
  std::string out;
  for (int32_t id : ids) {
    if (id < 0 || static_cast<size_t>(id) >= id_to_token_.size()) continue;
    const std::string& tok = id_to_token_[id];
    const bool added = added_ids_.count(id) > 0;
    if (added) {
      out += tok;
      continue;
    }
    if (!byte_level_) {
      unsigned byte = 0;
      if (tok.size() == 6 && tok.rfind("<0x", 0) == 0 && tok.back() == '>' &&
          std::from_chars(tok.data() + 3, tok.data() + 5, byte, 16).ptr == tok.data() + 5) {
        out += static_cast<char>(byte);
      } else {
        out += space_replacement_.empty() ? tok : ReplaceAll(tok, space_replacement_, " ");
      }
      continue;
    }
    for (const auto& ch : Utf8Chars(tok)) {
      auto it = unicode_to_byte_.find(ch);
      if (it != unicode_to_byte_.end()) out += static_cast<char>(it->second);
    }
  }
  // SentencePiece decoders strip the space the prepended marker became.
  if (!byte_level_ && !prepend_.empty() && !out.empty() && out[0] == ' ') out.erase(0, 1);
  return out;
}

}  // namespace compress
