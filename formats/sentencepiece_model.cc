// SentencePiece tokenizer.model -> tokenizer.json (see the header).
#include "formats/sentencepiece_model.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <optional>
#include <unordered_map>
#include <unordered_set>

#include "core/file_util.h"
#include "core/json_util.h"
#include "core/status.h"
#include "core/utf8.h"
#include "formats/tokenizer_template.h"
#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/wire_format_lite.h"

namespace compress {
namespace {

namespace fs = std::filesystem;
using google::protobuf::io::CodedInputStream;
using google::protobuf::internal::WireFormatLite;

constexpr const char* kSpaceMark = "\xe2\x96\x81";  // U+2581

// Reads the fields of one message up to the stream's current limit: `field` handles the tag it
// knows (returns false on bad data), everything else is skipped by its wire type.
template <class Field>
bool ReadMessage(CodedInputStream& in, Field field) {
  while (true) {
    const uint32_t tag = in.ReadTag();
    if (tag == 0) return in.ConsumedEntireMessage();
    const int number = static_cast<int>(WireFormatLite::GetTagFieldNumber(tag));
    const auto wire = WireFormatLite::GetTagWireType(tag);
    std::optional<bool> handled = field(number, wire);
    if (handled.has_value()) {
      if (!*handled) return false;
    } else if (!WireFormatLite::SkipField(&in, tag)) {
      return false;
    }
  }
}

// A length-delimited sub-message read by `body`.
template <class Body>
bool ReadSubMessage(CodedInputStream& in, Body body) {
  uint32_t len = 0;
  if (!in.ReadVarint32(&len) || len > static_cast<uint32_t>(in.BytesUntilTotalBytesLimit())) return false;
  const auto limit = in.PushLimit(static_cast<int>(len));
  const bool ok = body() && in.BytesUntilLimit() == 0;
  in.PopLimit(limit);
  return ok;
}

bool ReadInt(CodedInputStream& in, int64_t* v) {
  uint64_t u = 0;
  if (!in.ReadVarint64(&u)) return false;
  *v = static_cast<int64_t>(static_cast<int32_t>(static_cast<uint32_t>(u)));  // int32 fields
  return true;
}
bool ReadBool(CodedInputStream& in, bool* v) {
  uint64_t u = 0;
  if (!in.ReadVarint64(&u)) return false;
  *v = u != 0;
  return true;
}
bool ReadBytes(CodedInputStream& in, std::string* s) {
  uint32_t len = 0;
  return in.ReadVarint32(&len) && len <= static_cast<uint32_t>(in.BytesUntilTotalBytesLimit()) &&
         in.ReadString(s, static_cast<int>(len));
}

using Wire = WireFormatLite::WireType;
constexpr Wire kVarint = WireFormatLite::WIRETYPE_VARINT, kBytes = WireFormatLite::WIRETYPE_LENGTH_DELIMITED,
               kFixed32 = WireFormatLite::WIRETYPE_FIXED32;

// One entry of tokenizer_config.json's added_tokens_decoder (or added_tokens.json).
struct ConfigAddedToken {
  int64_t id;
  std::string content;
  bool special = false;
  AddedTokenRules rules;
};

// The string of a tokenizer_config.json token entry: "<s>" or {"content": "<s>", ...}.
std::optional<std::string> TokenText(const nlohmann::json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string()) return v["content"].get<std::string>();
  return std::nullopt;
}

}  // namespace

nlohmann::json BpeModelJson(nlohmann::json vocab, nlohmann::json merges, nlohmann::json unk, bool byte_fallback,
                            bool fuse_unk, bool ignore_merges) {
  return {{"type", "BPE"},
          {"dropout", nullptr},
          {"unk_token", std::move(unk)},
          {"continuing_subword_prefix", nullptr},
          {"end_of_word_suffix", nullptr},
          {"fuse_unk", fuse_unk},
          {"byte_fallback", byte_fallback},
          {"ignore_merges", ignore_merges},
          {"vocab", std::move(vocab)},
          {"merges", std::move(merges)}};
}

nlohmann::json AddedTokenJson(int64_t id, const std::string& content, bool special, AddedTokenRules rules) {
  return {{"id", id},           {"content", content},         {"single_word", rules.single_word},
          {"lstrip", rules.lstrip}, {"rstrip", rules.rstrip}, {"normalized", false},
          {"special", special}};
}

MetaspaceSettings ReadMetaspace(const nlohmann::json& pre) {
  MetaspaceSettings m;
  if (!pre.is_object()) {
    m.well_typed = false;
    return m;
  }
  auto get = [&](const char* key, auto fallback, bool (nlohmann::json::*is)() const noexcept) {
    if (!pre.contains(key)) return fallback;
    if (!(pre[key].*is)()) {
      m.well_typed = false;
      return fallback;
    }
    return pre[key].get<decltype(fallback)>();
  };
  m.replacement = get("replacement", std::string(kSpaceMark), &nlohmann::json::is_string);
  m.scheme = pre.contains("prepend_scheme")
                 ? get("prepend_scheme", std::string(), &nlohmann::json::is_string)
                 : (get("add_prefix_space", true, &nlohmann::json::is_boolean) ? "always" : "never");
  m.split = get("split", true, &nlohmann::json::is_boolean);
  return m;
}

absl::StatusOr<SentencePieceModel> ParseSentencePieceModel(std::string_view bytes, const std::string& path) {
  if (bytes.size() > static_cast<size_t>(INT32_MAX))
    return DataLoss("{}: {} bytes is too large for a SentencePiece model", path, bytes.size());
  CodedInputStream in(reinterpret_cast<const uint8_t*>(bytes.data()), static_cast<int>(bytes.size()));
  SentencePieceModel m;
  auto piece = [&]() {
    std::string text;
    float score = 0;
    int64_t type = kSpNormal;
    bool has_text = false;
    const bool ok = ReadMessage(in, [&](int number, Wire wire) -> std::optional<bool> {
      if (number == 1 && wire == kBytes) return has_text = ReadBytes(in, &text);
      if (number == 2 && wire == kFixed32) {
        uint32_t u = 0;
        if (!in.ReadLittleEndian32(&u)) return false;
        std::memcpy(&score, &u, 4);
        return true;
      }
      if (number == 3 && wire == kVarint) return ReadInt(in, &type);
      return std::nullopt;
    });
    if (!ok) return false;
    m.pieces.push_back(has_text ? std::move(text) : std::string());
    m.scores.push_back(score);
    m.types.push_back(static_cast<int>(std::clamp<int64_t>(type, -1, 100)));
    return true;
  };
  auto trainer = [&]() {
    return ReadMessage(in, [&](int number, Wire wire) -> std::optional<bool> {
      if (wire != kVarint) return std::nullopt;
      int64_t v = 0;
      switch (number) {
        case 3: return ReadInt(in, &v) && (m.model_type = static_cast<int>(v), true);
        case 24: return ReadBool(in, &m.treat_whitespace_as_suffix);
        case 35: return ReadBool(in, &m.byte_fallback);
        case 40: return ReadInt(in, &m.unk_id);
        case 41: return ReadInt(in, &m.bos_id);
        case 42: return ReadInt(in, &m.eos_id);
        case 43: return ReadInt(in, &m.pad_id);
        default: return std::nullopt;
      }
    });
  };
  auto normalizer = [&]() {
    return ReadMessage(in, [&](int number, Wire wire) -> std::optional<bool> {
      if (number == 1 && wire == kBytes) return ReadBytes(in, &m.normalizer_name);
      if (number == 2 && wire == kBytes) {
        std::string map;
        if (!ReadBytes(in, &map)) return false;
        m.charsmap_bytes = map.size();
        return true;
      }
      if (wire != kVarint) return std::nullopt;
      switch (number) {
        case 3: return ReadBool(in, &m.add_dummy_prefix);
        case 4: return ReadBool(in, &m.remove_extra_whitespaces);
        case 5: return ReadBool(in, &m.escape_whitespaces);
        default: return std::nullopt;
      }
    });
  };
  const bool ok = ReadMessage(in, [&](int number, Wire wire) -> std::optional<bool> {
    if (wire != kBytes) return std::nullopt;
    switch (number) {
      case 1: return ReadSubMessage(in, piece);
      case 2: return ReadSubMessage(in, trainer);
      case 3: return ReadSubMessage(in, normalizer);
      default: return std::nullopt;
    }
  });
  if (!ok || !in.ConsumedEntireMessage()) {
    return DataLoss("{}: not a SentencePiece model (malformed protobuf data near byte {})", path, in.CurrentPosition());
  }
  if (m.pieces.empty()) return DataLoss("{}: the SentencePiece model has no pieces", path);
  std::unordered_set<std::string_view> seen;
  for (size_t id = 0; id < m.pieces.size(); ++id) {
    const std::string& p = m.pieces[id];
    if (p.empty()) return DataLoss("{}: piece {} has no text", path, id);
    if (InvalidUtf8At(p) != std::string::npos) return DataLoss("{}: piece {} is not UTF-8", path, id);
    if (!seen.insert(p).second) return DataLoss("{}: piece {} ('{}') is defined twice", path, id, p);
    if (!std::isfinite(m.scores[id])) return DataLoss("{}: piece {} ('{}') has a non-finite score", path, id, p);
    if (m.types[id] < kSpNormal || m.types[id] > kSpByte)
      return DataLoss("{}: piece {} ('{}') has type {}, not one of SentencePiece's 1..6", path, id, p, m.types[id]);
  }
  return m;
}

absl::StatusOr<nlohmann::json> SentencePieceBpeJson(const std::vector<std::string>& piece,
                                                    const std::vector<float>& score, const std::vector<int>& type,
                                                    int64_t unk_id, bool add_prefix, bool byte_fallback,
                                                    const std::string& path) {
  const size_t n = piece.size();
  if (score.size() != n || type.size() != n)
    return DataLoss("{}: {} pieces but {} scores and {} types", path, n, score.size(), type.size());
  nlohmann::json vocab = nlohmann::json::object(), added = nlohmann::json::array();
  std::unordered_map<std::string, size_t> id_of;
  for (size_t id = 0; id < n; ++id) {
    if (type[id] == kSpUnused) continue;
    if (!std::isfinite(score[id])) return DataLoss("{}: token {} ('{}') has a non-finite score", path, id, piece[id]);
    if (id_of.emplace(piece[id], id).second) vocab[piece[id]] = id;
    if (MatchedWholeInText(type[id])) {
      added.push_back(AddedTokenJson(static_cast<int64_t>(id), piece[id], type[id] != kSpUserDefined));
    }
  }
  struct Merge {
    float score;
    size_t id, split;
    std::string a, b;
  };
  std::vector<Merge> merges;
  // Pieces longer than this are never the result of a merge: every split is looked up, so one
  // long piece costs its length squared (a hostile file's megabyte piece would hang the reader);
  // real vocabularies stay far below it (SentencePiece's default limit is 16 characters).
  constexpr size_t kMaxMergedPiece = 1024;
  for (size_t id = 0; id < n; ++id) {
    if (type[id] != kSpNormal && type[id] != kSpUserDefined) continue;  // llama.cpp also merges into user-defined pieces
    const std::string& p = piece[id];
    if (p.size() > kMaxMergedPiece) continue;
    for (size_t k = 1; k < p.size(); ++k) {
      if ((static_cast<unsigned char>(p[k]) & 0xC0) == 0x80) continue;  // inside a code point
      std::string a = p.substr(0, k), b = p.substr(k);
      auto ia = id_of.find(a), ib = id_of.find(b);
      if (ia == id_of.end() || ib == id_of.end() || type[ia->second] == kSpControl || type[ib->second] == kSpControl)
        continue;
      merges.push_back({score[id], id, k, std::move(a), std::move(b)});
    }
  }
  std::stable_sort(merges.begin(), merges.end(), [](const Merge& x, const Merge& y) {
    return x.score != y.score ? x.score > y.score : x.id != y.id ? x.id < y.id : x.split < y.split;
  });
  nlohmann::json merge_list = nlohmann::json::array();
  for (const Merge& m : merges) merge_list.push_back(nlohmann::json::array({m.a, m.b}));
  const nlohmann::json replace = {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", kSpaceMark}};
  nlohmann::json normalizer = replace;
  if (add_prefix)
    normalizer = {{"type", "Sequence"}, {"normalizers", {{{"type", "Prepend"}, {"prepend", kSpaceMark}}, replace}}};
  nlohmann::json decoders = {{{"type", "Replace"}, {"pattern", {{"String", kSpaceMark}}}, {"content", " "}},
                             {{"type", "ByteFallback"}},
                             {{"type", "Fuse"}}};
  if (add_prefix) decoders.push_back({{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}});
  nlohmann::json unk = nullptr;
  if (unk_id >= 0 && static_cast<size_t>(unk_id) < n) unk = piece[unk_id];
  return nlohmann::json{{"version", "1.0"},
                        {"added_tokens", std::move(added)},
                        {"normalizer", std::move(normalizer)},
                        {"pre_tokenizer", nullptr},
                        {"post_processor", nullptr},
                        {"decoder", {{"type", "Sequence"}, {"decoders", std::move(decoders)}}},
                        {"model", BpeModelJson(std::move(vocab), std::move(merge_list), std::move(unk), byte_fallback, true, false)}};
}

absl::StatusOr<nlohmann::json> TokenizerJsonFromSentencePiece(const std::string& model_path) {
  ASSIGN_OR_RETURN(std::string bytes, ReadSmallFile(model_path, 256u << 20));
  ASSIGN_OR_RETURN(SentencePieceModel m, ParseSentencePieceModel(bytes, model_path));
  auto refuse = [&](const std::string& what) {
    return Unimplemented("{}: {}; tokenizer.model is read for SentencePiece BPE models with the identity normalizer "
                         "(Llama, Mistral, Gemma): put the model's tokenizer.json beside it",
                         model_path, what);
  };
  static const char* const kTypes[] = {"?", "unigram", "BPE", "word", "char"};
  if (m.model_type != 2) {
    return refuse(fmt::format("its model type is {}",
                              m.model_type >= 1 && m.model_type <= 4 ? kTypes[m.model_type] : std::to_string(m.model_type)));
  }
  if (m.charsmap_bytes > 0) {
    return refuse(fmt::format("its normalizer '{}' maps characters ({} bytes of precompiled rules)",
                              m.normalizer_name, m.charsmap_bytes));
  }
  if (m.remove_extra_whitespaces) return refuse("its normalizer removes extra whitespace (remove_extra_whitespaces)");
  if (!m.escape_whitespaces) return refuse("its normalizer keeps spaces as they are (escape_whitespaces false)");
  if (m.treat_whitespace_as_suffix) return refuse("it puts the space marker after words (treat_whitespace_as_suffix)");
  const size_t n = m.pieces.size();
  int64_t unk = -1;
  for (size_t id = 0; id < n && unk < 0; ++id)
    if (m.types[id] == kSpUnknown) unk = static_cast<int64_t>(id);
  ASSIGN_OR_RETURN(nlohmann::json tok, SentencePieceBpeJson(m.pieces, m.scores, m.types, unk, m.add_dummy_prefix,
                                                            m.byte_fallback, model_path));

  // tokenizer_config.json (transformers' tokenizer settings) beside it: added tokens past the
  // model's pieces, special flags, and whether BOS / EOS are added.
  const fs::path dir = fs::path(model_path).parent_path();
  nlohmann::json cfg = nlohmann::json::object();
  const std::string cfg_path = (dir / "tokenizer_config.json").string();
  std::error_code ec;
  if (fs::exists(cfg_path, ec)) {
    ASSIGN_OR_RETURN(std::string text, ReadSmallFile(cfg_path, 64u << 20));
    ASSIGN_OR_RETURN(cfg, ParseJsonStrict(text, cfg_path));
    if (!cfg.is_object()) return DataLoss("{}: not a JSON object", cfg_path);
  }
  std::vector<ConfigAddedToken> extra;
  auto read_id = [](std::string_view s, int64_t* id) {
    const auto r = std::from_chars(s.data(), s.data() + s.size(), *id);
    return r.ec == std::errc() && r.ptr == s.data() + s.size() && *id >= 0 && *id < (int64_t{1} << 31);
  };
  if (cfg.contains("added_tokens_decoder")) {
    const auto& d = cfg["added_tokens_decoder"];
    if (!d.is_object()) return DataLoss("{}: added_tokens_decoder is not an object", cfg_path);
    for (const auto& item : d.items()) {
      const std::string& key = item.key();
      const nlohmann::json& v = item.value();
      ConfigAddedToken t;
      const std::optional<std::string> content = TokenText(v);
      if (!read_id(key, &t.id) || !content)
        return DataLoss("{}: added_tokens_decoder entry '{}' needs an id key and a content string", cfg_path, key);
      t.content = *content;
      auto flag = [&](const char* k) { return v.is_object() && v.contains(k) && v[k].is_boolean() && v[k].get<bool>(); };
      t.rules = {flag("lstrip"), flag("rstrip"), flag("single_word")};
      t.special = flag("special");
      extra.push_back(std::move(t));
    }
  } else if (const std::string added_path = (dir / "added_tokens.json").string(); fs::exists(added_path, ec)) {
    ASSIGN_OR_RETURN(std::string text, ReadSmallFile(added_path, 64u << 20));
    ASSIGN_OR_RETURN(nlohmann::json a, ParseJsonStrict(text, added_path));
    if (!a.is_object()) return DataLoss("{}: not a JSON object of token ids", added_path);
    for (const auto& [content, id] : a.items()) {
      if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() >= (int64_t{1} << 31))
        return DataLoss("{}: token '{}' has no valid id", added_path, content);
      extra.push_back({id.get<int64_t>(), content, /*special=*/true, {}});
    }
  }
  nlohmann::json& added = tok["added_tokens"];
  for (const ConfigAddedToken& t : extra) {
    if (t.id < static_cast<int64_t>(n) && t.content != m.pieces[t.id]) {
      return DataLoss("{}: added token {} is '{}' but {} has '{}' at that id", cfg_path, t.id, t.content,
                      model_path, m.pieces[t.id]);
    }
    if (t.content.empty() || InvalidUtf8At(t.content) != std::string::npos)
      return DataLoss("{}: added token {} is empty or not UTF-8", cfg_path, t.id);
    nlohmann::json entry = AddedTokenJson(t.id, t.content, t.special, t.rules);
    auto same = std::find_if(added.begin(), added.end(), [&](const nlohmann::json& a) { return a["id"] == t.id; });
    if (same != added.end()) {
      *same = std::move(entry);
    } else {
      added.push_back(std::move(entry));
    }
  }
  // BOS / EOS: tokenizer_config.json's add_bos_token / add_eos_token (transformers' Llama and
  // Gemma tokenizers add BOS unless told not to), with its bos_token / eos_token, else the ids
  // the model's trainer spec names.
  auto special = [&](const char* key, int64_t spec_id) -> std::optional<TemplateSpecial> {
    if (cfg.contains(key)) {
      const std::optional<std::string> text = TokenText(cfg[key]);
      if (!text) return std::nullopt;  // null: no such token
      for (const auto& a : added)
        if (a["content"] == *text) return TemplateSpecial{a["id"].get<int64_t>(), *text};
      for (size_t id = 0; id < n; ++id)
        if (m.pieces[id] == *text) return TemplateSpecial{static_cast<int64_t>(id), *text};
      return std::nullopt;
    }
    if (spec_id >= 0 && static_cast<size_t>(spec_id) < n) return TemplateSpecial{spec_id, m.pieces[spec_id]};
    return std::nullopt;
  };
  auto flag = [&](const char* key, bool fallback) -> absl::StatusOr<bool> {
    if (!cfg.contains(key) || cfg[key].is_null()) return fallback;
    if (!cfg[key].is_boolean()) return DataLoss("{}: {} is not true or false", cfg_path, key);
    return cfg[key].get<bool>();
  };
  ASSIGN_OR_RETURN(const bool add_bos, flag("add_bos_token", true));
  ASSIGN_OR_RETURN(const bool add_eos, flag("add_eos_token", false));
  // transformers' conversion settings: add_prefix_space false drops the marker prepended to the
  // text; legacy false puts it only at the text's start, and not before text that starts with a
  // space (a Metaspace pre-tokenizer with prepend_scheme "first", as transformers writes it).
  ASSIGN_OR_RETURN(const bool prefix, flag("add_prefix_space", m.add_dummy_prefix));
  ASSIGN_OR_RETURN(const bool legacy, flag("legacy", true));
  const nlohmann::json replace = {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", kSpaceMark}};
  if (!legacy) {
    tok["normalizer"] = nullptr;
    tok["pre_tokenizer"] = {{"type", "Metaspace"},
                            {"replacement", kSpaceMark},
                            {"prepend_scheme", prefix ? "first" : "never"},
                            {"split", false}};
  } else if (!prefix) {
    tok["normalizer"] = replace;
  }
  tok["post_processor"] = BosEosTemplate(add_bos ? special("bos_token", m.bos_id) : std::nullopt,
                                         add_eos ? special("eos_token", m.eos_id) : std::nullopt);
  return tok;
}

}  // namespace compress
