// Hugging Face tokenizer.json: byte-level BPE (GPT-2 style pre-tokenizer) with added tokens,
// producing the same ids as the tokenizers library.
#pragma once

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "absl/status/statusor.h"

namespace compress {

// Token ids stored as a JSON array of integers; nullopt when `text` is not such an array,
// an error when the array holds something other than integer ids.
absl::StatusOr<std::optional<std::vector<int32_t>>> TokenIdsFromJson(const std::string& text,
                                                                     const std::string& path);

// Token ids as a JSON array or whitespace-separated integers; nullopt when `text` is neither
// (ordinary text). A `.tok` file must hold ids: anything else there is an error.
absl::StatusOr<std::optional<std::vector<int32_t>>> TokenIdsFromText(const std::string& text,
                                                                     const std::string& path);

class Tokenizer {
 public:
  // Reads tokenizer.json; fails with Unimplemented for models/pre-tokenizers not supported yet.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromFile(const std::string& path);
  ~Tokenizer();

  // Text must be valid UTF-8. Added/special tokens are matched in the raw text first.
  absl::StatusOr<std::vector<int32_t>> Encode(const std::string& text) const;
  std::string Decode(const std::vector<int32_t>& ids) const;
  int32_t vocab_size() const { return static_cast<int32_t>(id_to_token_.size()); }

 private:
  Tokenizer() = default;
  void EncodeWord(const std::string& mapped, std::vector<int32_t>& out) const;

  std::unordered_map<std::string, int32_t> vocab_;
  std::vector<std::string> id_to_token_;
  std::unordered_map<std::string, int> merge_rank_;     // "left right" -> rank
  std::vector<std::pair<std::string, int32_t>> added_;  // content -> id, longest first
  std::string byte_to_unicode_[256];
  std::unordered_map<std::string, uint8_t> unicode_to_byte_;
  struct Regex;
  std::unique_ptr<Regex> regex_;
  mutable std::unordered_map<std::string, std::vector<int32_t>> cache_;
};

}  // namespace compress
