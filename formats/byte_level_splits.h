// The split steps of a byte-level BPE pre-tokenizer, between tokenizer.json's form and a list
// of regexes. tokenizer.json says it as a ByteLevel pre-tokenizer (its own GPT-2 regex when
// use_regex is true), or a Sequence of Split (Regex) and Digits steps ending in a ByteLevel;
// llama.cpp says it as a list of regexes per `tokenizer.ggml.pre` name. Each step splits every
// piece the step before it made, with the piece as the regex's whole subject.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace compress {

// The regex of a ByteLevel pre-tokenizer with use_regex (GPT-2's).
inline constexpr const char* kGpt2SplitPattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
// Digits{individual_digits: true} and {false}: each numeric character, or each run of them.
inline constexpr const char* kDigitPattern = R"(\p{N})";
inline constexpr const char* kDigitRunPattern = R"(\p{N}+)";

struct SplitStep {
  std::string pattern;     // PCRE2 syntax (UTF, Unicode properties)
  bool keep_gaps = true;   // Isolated: the text between matches is a piece too; Removed + invert: dropped
  bool operator==(const SplitStep&) const = default;
};

// The steps of `pre` (tokenizer.json's pre_tokenizer) when it is byte-level: nullopt when it is
// not (none, Metaspace, a string Split: SentencePiece-style); an Unimplemented error naming the
// step for byte-level ones with a step this does not read (add_prefix_space, Whitespace,
// Punctuation, other Split behaviours). ByteLevel without use_regex adds no step.
absl::StatusOr<std::optional<std::vector<SplitStep>>> ByteLevelSplits(const nlohmann::json& pre,
                                                                      const std::string& path);

// tokenizer.json's pre_tokenizer for `steps` (every step Isolated): ByteLevel alone for GPT-2's
// regex, otherwise a Sequence of Digits / Split steps and a ByteLevel that uses GPT-2's regex
// when it is the last step. ByteLevelSplits of the result gives `steps` back.
nlohmann::json ByteLevelPreTokenizerJson(const std::vector<SplitStep>& steps);

}  // namespace compress
