// Byte-level BPE: added-token split, GPT-2 regex pre-tokenization (PCRE2, Unicode
// properties), byte-to-unicode mapping, rank-ordered merges.
#include "runtime/tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <climits>

#include "core/status.h"
#include "formats/file_util.h"
#include "nlohmann/json.hpp"

namespace compress {
namespace {

// The GPT-2 split pattern used by byte-level pre-tokenizers (use_regex = true).
constexpr const char* kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

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
    size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : 4;
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
  ~Regex() {
    if (code) pcre2_code_free(code);
  }
};

Tokenizer::~Tokenizer() = default;

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromFile(const std::string& path) {
  ASSIGN_OR_RETURN(std::string text, ReadSmallFile(path, 256 << 20));
  auto j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object() || !j.contains("model")) {
    return DataLoss("{}: not a tokenizer.json (no 'model')", path);
  }
  const auto& model = j["model"];
  if (model.value("type", "") != "BPE") {
    return Unimplemented("{}: tokenizer model '{}' is not supported (byte-level BPE only)", path,
                         model.value("type", "?"));
  }
  const auto& pre = j["pre_tokenizer"];
  if (!pre.is_object() || pre.value("type", "") != "ByteLevel" || !pre.value("use_regex", true) ||
      pre.value("add_prefix_space", false)) {
    return Unimplemented(
        "{}: pre_tokenizer {} is not supported (ByteLevel with the GPT-2 regex and "
        "no prefix space only)",
        path, pre.dump());
  }
  if (!j["normalizer"].is_null()) {
    return Unimplemented("{}: normalizer {} is not supported", path, j["normalizer"].dump());
  }
  auto t = std::unique_ptr<Tokenizer>(new Tokenizer());
  if (!model.contains("vocab") || !model["vocab"].is_object()) return DataLoss("{}: BPE without vocab", path);
  for (const auto& [tok, id] : model["vocab"].items()) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > INT32_MAX / 2) {
      return DataLoss("{}: vocab id of '{}' is not a valid id", path, tok);
    }
    int32_t i = id.get<int32_t>();
    t->vocab_[tok] = i;
    if (static_cast<size_t>(i) >= t->id_to_token_.size()) t->id_to_token_.resize(i + 1);
    t->id_to_token_[i] = tok;
  }
  int rank = 0;
  for (const auto& m : model.value("merges", nlohmann::json::array())) {
    std::string key;
    if (m.is_string()) {
      key = m.get<std::string>();
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      key = m[0].get<std::string>() + " " + m[1].get<std::string>();
    } else {
      return DataLoss("{}: merge #{} is neither \"a b\" nor [a, b]", path, rank);
    }
    t->merge_rank_.emplace(key, rank++);
  }
  for (const auto& a : j.value("added_tokens", nlohmann::json::array())) {
    std::string content = a.value("content", "");
    if (content.empty()) continue;
    int32_t id = a.value("id", -1);
    t->added_.push_back({content, id});
    if (static_cast<size_t>(id) >= t->id_to_token_.size()) t->id_to_token_.resize(id + 1);
    t->id_to_token_[id] = content;
  }
  std::sort(t->added_.begin(), t->added_.end(),
            [](const auto& a, const auto& b) { return a.first.size() > b.first.size(); });
  // GPT-2 byte <-> unicode table: printable bytes map to themselves, the rest to 256+n.
  int n = 0;
  for (int b = 0; b < 256; ++b) {
    bool keep = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
    uint32_t cp = keep ? static_cast<uint32_t>(b) : 256u + n++;
    t->byte_to_unicode_[b] = CodepointToUtf8(cp);
    t->unicode_to_byte_[t->byte_to_unicode_[b]] = static_cast<uint8_t>(b);
  }
  int err = 0;
  PCRE2_SIZE off = 0;
  t->regex_ = std::make_unique<Regex>();
  t->regex_->code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(kGpt2Pattern), PCRE2_ZERO_TERMINATED,
                                  PCRE2_UTF | PCRE2_UCP, &err, &off, nullptr);
  if (!t->regex_->code) return Internal("cannot compile the pre-tokenizer pattern (PCRE2 error {})", err);
  return t;
}

void Tokenizer::EncodeWord(const std::string& mapped, std::vector<int32_t>& out) const {
  auto hit = cache_.find(mapped);
  if (hit != cache_.end()) {
    out.insert(out.end(), hit->second.begin(), hit->second.end());
    return;
  }
  std::vector<std::string> parts = Utf8Chars(mapped);
  while (parts.size() > 1) {
    int best = INT_MAX;
    size_t at = 0;
    for (size_t i = 0; i + 1 < parts.size(); ++i) {
      auto it = merge_rank_.find(parts[i] + " " + parts[i + 1]);
      if (it != merge_rank_.end() && it->second < best) {
        best = it->second;
        at = i;
      }
    }
    if (best == INT_MAX) break;
    // Merge every non-overlapping occurrence of the best pair, left to right.
    const std::string left = parts[at], right = parts[at + 1];
    std::vector<std::string> merged;
    for (size_t i = 0; i < parts.size();) {
      if (i + 1 < parts.size() && parts[i] == left && parts[i + 1] == right) {
        merged.push_back(left + right);
        i += 2;
      } else {
        merged.push_back(parts[i++]);
      }
    }
    parts.swap(merged);
  }
  std::vector<int32_t> ids;
  for (const auto& p : parts) {
    auto it = vocab_.find(p);
    if (it != vocab_.end()) {
      ids.push_back(it->second);
    } else {
      // No unk token in byte-level BPE: every single byte symbol is in the vocab.
      for (const auto& ch : Utf8Chars(p)) {
        auto b = vocab_.find(ch);
        if (b != vocab_.end()) ids.push_back(b->second);
      }
    }
  }
  cache_.emplace(mapped, ids);
  out.insert(out.end(), ids.begin(), ids.end());
}

absl::StatusOr<std::vector<int32_t>> Tokenizer::Encode(const std::string& text) const {
  std::vector<int32_t> out;
  pcre2_match_data* md = pcre2_match_data_create_from_pattern(regex_->code, nullptr);
  auto encode_plain = [&](size_t begin, size_t end) -> absl::Status {
    PCRE2_SIZE pos = begin;
    while (pos < end) {
      int rc = pcre2_match(regex_->code, reinterpret_cast<PCRE2_SPTR>(text.data()), end, pos, 0, md, nullptr);
      if (rc == PCRE2_ERROR_NOMATCH) break;
      if (rc < 0) {
        return InvalidArgument("text is not valid UTF-8 near byte {} (PCRE2 error {})", pos, rc);
      }
      PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
      if (ov[1] == ov[0]) {  // empty match: step one byte
        ++pos;
        continue;
      }
      std::string mapped;
      for (PCRE2_SIZE i = ov[0]; i < ov[1]; ++i) mapped += byte_to_unicode_[static_cast<uint8_t>(text[i])];
      EncodeWord(mapped, out);
      pos = ov[1];
    }
    return absl::OkStatus();
  };
  absl::Status st;
  size_t start = 0;
  while (start <= text.size() && st.ok()) {
    // The earliest added token (longest at a tie) splits the text.
    size_t best = std::string::npos;
    const std::pair<std::string, int32_t>* tok = nullptr;
    for (const auto& a : added_) {
      size_t p = text.find(a.first, start);
      if (p != std::string::npos && (p < best)) {
        best = p;
        tok = &a;
      }
    }
    size_t end = best == std::string::npos ? text.size() : best;
    st = encode_plain(start, end);
    if (!tok) break;
    out.push_back(tok->second);
    start = best + tok->first.size();
  }
  pcre2_match_data_free(md);
  RETURN_IF_ERROR(st);
  return out;
}

std::string Tokenizer::Decode(const std::vector<int32_t>& ids) const {
  std::string out;
  for (int32_t id : ids) {
    if (id < 0 || static_cast<size_t>(id) >= id_to_token_.size()) continue;
    const std::string& tok = id_to_token_[id];
    bool added = std::any_of(added_.begin(), added_.end(), [&](const auto& a) { return a.second == id; });
    if (added) {
      out += tok;
      continue;
    }
    for (const auto& ch : Utf8Chars(tok)) {
      auto it = unicode_to_byte_.find(ch);
      if (it != unicode_to_byte_.end()) out += static_cast<char>(it->second);
    }
  }
  return out;
}

}  // namespace compress
