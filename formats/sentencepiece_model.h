// SentencePiece tokenizers as the tokenizer.json (Hugging Face form) that runtime/tokenizer.h and
// the GGUF writer read: from a `tokenizer.model` file (SentencePiece's ModelProto, protobuf) with
// the tokenizer_config.json beside it, and the shared builder that GGUF's "llama" tokenizer
// metadata also goes through (formats/gguf_tokenizer.h).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace compress {

// SentencePiece piece types (ModelProto.SentencePiece.Type; GGUF's token_type uses the same).
enum SentencePieceType : int {
  kSpNormal = 1,
  kSpUnknown = 2,
  kSpControl = 3,
  kSpUserDefined = 4,
  kSpUnused = 5,
  kSpByte = 6,
};

// Whether a token of this type is an added token of tokenizer.json, matched whole in the raw
// text: control and unknown tokens (special) and user-defined ones (not special), as
// transformers' conversion and llama.cpp (whose special-token cache holds those three types)
// take them; SentencePiece itself reads "<unk>" and "<s>" in a text as characters.
inline bool MatchedWholeInText(int type) {
  return type == kSpControl || type == kSpUnknown || type == kSpUserDefined;
}

// The fields of a tokenizer.model that decide how text is tokenized (sentencepiece_model.proto:
// ModelProto pieces = 1 {piece = 1, score = 2, type = 3}, trainer_spec = 2 {model_type = 3,
// treat_whitespace_as_suffix = 24, byte_fallback = 35, unk_id = 40, bos_id = 41, eos_id = 42,
// pad_id = 43}, normalizer_spec = 3 {name = 1, precompiled_charsmap = 2, add_dummy_prefix = 3,
// remove_extra_whitespaces = 4, escape_whitespaces = 5}), with the proto's defaults.
struct SentencePieceModel {
  std::vector<std::string> pieces;
  std::vector<float> scores;
  std::vector<int> types;
  int model_type = 1;  // 1 unigram, 2 BPE, 3 word, 4 char
  bool byte_fallback = false;
  bool treat_whitespace_as_suffix = false;
  int64_t unk_id = 0, bos_id = 1, eos_id = 2, pad_id = -1;
  std::string normalizer_name;
  size_t charsmap_bytes = 0;  // precompiled_charsmap's size: 0 for the identity rule
  bool add_dummy_prefix = true, remove_extra_whitespaces = true, escape_whitespaces = true;
};

// Parses a tokenizer.model's bytes (`path` names it in errors): DataLoss for anything that is
// not a well-formed ModelProto (bad wire data, truncation, a piece without text, a duplicate
// piece, a non-finite score, a type outside 1..6).
absl::StatusOr<SentencePieceModel> ParseSentencePieceModel(std::string_view bytes, const std::string& path);

// tokenizer.json's BPE model object: `unk` the unk token's text or null; characters outside the
// vocabulary as <0xXX> byte pieces (`byte_fallback`) or as unk, a run of them as one unk when
// `fuse_unk` (SentencePiece does both).
nlohmann::json BpeModelJson(nlohmann::json vocab, nlohmann::json merges, nlohmann::json unk, bool byte_fallback,
                            bool fuse_unk, bool ignore_merges);

// An added token of tokenizer.json (matched whole in the raw text, not normalized) with its
// whitespace rules.
struct AddedTokenRules {
  bool lstrip = false, rstrip = false, single_word = false;
};
nlohmann::json AddedTokenJson(int64_t id, const std::string& content, bool special, AddedTokenRules rules = {});

// A Metaspace pre-tokenizer's settings as tokenizers reads them: `prepend_scheme` ("always",
// "first", "never"; from the older add_prefix_space when absent, default true -> "always"),
// `split` (default true) and the replacement character (default "\u2581"); `well_typed` false
// when one of those fields is there with the wrong JSON type.
struct MetaspaceSettings {
  std::string replacement, scheme;
  bool split = true;
  bool well_typed = true;
};
MetaspaceSettings ReadMetaspace(const nlohmann::json& pre_tokenizer);

// SentencePiece BPE as tokenizer.json: byte-fallback (or fused-unk) BPE whose merges are every split of
// a piece into two pieces of the vocabulary, ranked by the joined piece's score (highest first:
// SentencePiece and llama.cpp merge the best-scoring adjacent pair), "\u2581" for spaces and
// prepended when `add_prefix`. Control and user-defined pieces become added tokens (matched
// whole in the text; special for control), unused pieces are left out. No post-processor.
absl::StatusOr<nlohmann::json> SentencePieceBpeJson(const std::vector<std::string>& pieces,
                                                    const std::vector<float>& scores, const std::vector<int>& types,
                                                    int64_t unk_id, bool add_prefix, bool byte_fallback,
                                                    const std::string& path);

// The tokenizer.json a `tokenizer.model` stands for, as transformers' converted (legacy) Llama
// tokenizer has it: SentencePieceBpeJson, the added tokens of tokenizer_config.json's
// added_tokens_decoder (else added_tokens.json) beside it, and a post-processor adding BOS / EOS
// as its add_bos_token / add_eos_token say (default: BOS, as LlamaTokenizer and GemmaTokenizer
// do); its add_prefix_space (false: no marker prepended) and legacy (false: transformers'
// Metaspace form, the marker only at the text's start) are followed too. Only what tokenizes exactly as SentencePiece does is accepted: BPE models with the
// identity normalizer, spaces escaped to "\u2581", remove_extra_whitespaces off and the space
// marker as a prefix; anything else is refused naming the setting (Unimplemented).
absl::StatusOr<nlohmann::json> TokenizerJsonFromSentencePiece(const std::string& model_path);

}  // namespace compress
