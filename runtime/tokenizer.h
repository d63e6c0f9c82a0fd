// Hugging Face tokenizer.json: byte-level BPE (GPT-2 style pre-tokenizer) with added tokens,
// producing the same ids as the tokenizers library.
#pragma once

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "absl/status/statusor.h"
#include "formats/byte_level_splits.h"
#include "nlohmann/json.hpp"

namespace compress {

// Token ids stored as a JSON array of integers; nullopt when `text` is not such an array,
// an error when the array holds something other than integer ids.
absl::StatusOr<std::optional<std::vector<int32_t>>> TokenIdsFromJson(const std::string& text,
                                                                     const std::string& path);

// Token ids as a JSON array or whitespace-separated integers; nullopt when `text` is neither
// (ordinary text). A `.tok` file must hold ids: anything else there is an error.
absl::StatusOr<std::optional<std::vector<int32_t>>> TokenIdsFromText(const std::string& text,
                                                                     const std::string& path);

// The tokenizer of a model: `tokenizer.json` beside it (in the folder, or beside the file),
// else, for a GGUF file, the file itself (Tokenizer::FromFile reads its tokenizer metadata),
// else SentencePiece's `tokenizer.model` beside it; the tokenizer.json path when there is none.
std::string TokenizerFileFor(const std::string& model_path);

// Hugging Face tokenizer.json BPE tokenizers of two families:
//  - byte-level (GPT-2, Llama-3, Qwen2): regex pre-tokenization (ByteLevel's GPT-2 pattern or
//    a Split regex followed by ByteLevel without regex), bytes mapped to printable code
//    points, rank-ordered merges (ignore_merges: a pre-token found whole in the vocab is
//    kept whole);
//  - SentencePiece-style (Llama-2, Mistral, Gemma): spaces become U+2581, "\u2581" is prepended
//    (Prepend + Replace normalizers, or a Metaspace pre-tokenizer; Gemma: Replace only, then a
//    literal Split with MergedWithPrevious), merges over code points,
//    characters outside the vocab as <0xXX> byte tokens (byte_fallback) or the unk token.
// Either family may normalize with a Unicode normalization form first (NFC for Qwen2;
// NFD/NFKC/NFKD too, through utf8proc). Added tokens are matched in the raw text first; the
// pieces between them are normalized and tokenized separately. Encode is tokenizers' encode(text, add_special_tokens=False).
class Tokenizer {
 public:
  // Reads tokenizer.json, a .gguf file's tokenizer metadata (formats/gguf_tokenizer.h), or a
  // SentencePiece tokenizer.model (formats/sentencepiece_model.h: BPE, identity normalizer);
  // fails with Unimplemented for models/pre-tokenizers not supported yet.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromFile(const std::string& path);
  // The same from parsed JSON (`path` names it in errors); throws nlohmann::json::exception
  // on a field of the wrong type, which FromFile turns into an error.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromJson(const nlohmann::json& j, const std::string& path);
  ~Tokenizer();

  // Text must be valid UTF-8. Added/special tokens are matched in the raw text first.
  absl::StatusOr<std::vector<int32_t>> Encode(const std::string& text) const;
  // With the post-processor's special tokens around the ids, as encode(text,
  // add_special_tokens=True) for a single sequence (TemplateProcessing; e.g. Llama-2's BOS).
  absl::StatusOr<std::vector<int32_t>> EncodeWithSpecialTokens(const std::string& text) const;
  std::string Decode(const std::vector<int32_t>& ids) const;
  int32_t vocab_size() const { return static_cast<int32_t>(id_to_token_.size()); }

 private:
  Tokenizer() = default;
  // The parts of FromJson, in order.
  absl::Status ReadPreTokenizer(const nlohmann::json& j, const std::string& path, std::vector<SplitStep>& steps);
  absl::Status ReadVocabAndMerges(const nlohmann::json& model, const std::string& path, int64_t max_id);
  absl::Status ReadAddedTokens(const nlohmann::json& j, const std::string& path, int64_t max_id);
  absl::Status ReadPostProcessor(const nlohmann::json& j, const std::string& path);
  absl::Status EncodeSegment(const std::string& text, size_t begin, size_t end, bool first,
                             std::vector<int32_t>& out) const;
  // BPE over the code points of `word` (already byte-mapped or normalized).
  void EncodeWord(const std::string& word, std::vector<int32_t>& out) const;

  bool byte_level_ = true;
  bool ignore_merges_ = false;
  int unicode_form_ = 0;  // utf8proc options of the NFC/NFD/NFKC/NFKD normalizer, 0 = none
  // SentencePiece-style settings.
  std::string prepend_;            // prepended to every non-empty piece ("\u2581" or "")
  std::string space_replacement_;  // spaces become this ("\u2581"), empty = leave spaces
  bool prepend_first_only_ = false;    // Metaspace prepend_scheme "first": only the piece at the text's start
  bool prepend_unless_marked_ = false;  // Metaspace: not before a piece that starts with the marker already
  bool split_on_replacement_ = false;  // Metaspace split=true: each "\u2581" starts a word
  std::string split_after_;            // Split{String, MergedWithPrevious}: each occurrence ends a word
  bool byte_fallback_ = false;
  bool fuse_unk_ = false;
  int32_t unk_id_ = -1;
  int32_t byte_ids_[256] = {};  // <0xXX> token ids (byte fallback), -1 when absent
  std::vector<int32_t> special_prefix_, special_suffix_;  // TemplateProcessing "single"

  std::unordered_map<std::string, int32_t> vocab_;
  std::vector<std::string> id_to_token_;
  std::unordered_map<uint64_t, std::pair<int32_t, int32_t>> merges_;  // (left, right) ids -> (rank, merged id)
  struct AddedToken {
    std::string content;
    int32_t id;
    bool lstrip, rstrip;  // the token takes the spaces on its left / right
    bool single_word;     // matched only where no word character touches it
  };
  std::vector<AddedToken> added_;  // longest first
  std::vector<int32_t> added_by_first_[256];            // indexes into added_ by first byte, longest first
  std::unordered_set<int32_t> added_ids_;
  std::string byte_to_unicode_[256];
  std::unordered_map<std::string, uint8_t> unicode_to_byte_;
  struct Regex;
  std::vector<Regex> splits_;  // byte-level split steps, in order
  mutable std::unordered_map<std::string, std::vector<int32_t>> cache_;
};

}  // namespace compress
