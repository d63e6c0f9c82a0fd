// The special tokens a tokenizer.json post-processor puts around a single sequence: its
// TemplateProcessing ("single": SpecialToken items before and after the Sequence item), alone or
// inside a Sequence of processors; other processors add none.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "nlohmann/json.hpp"

namespace compress {

struct TemplateToken {
  std::string name;                          // the SpecialToken's id (its text)
  std::optional<std::vector<int64_t>> ids;  // from the template's special_tokens, when it lists the name
};

struct SingleTemplate {
  std::vector<TemplateToken> before, after;
};

// Entries of the wrong JSON type are skipped, never thrown on.
SingleTemplate SingleSequenceTemplate(const nlohmann::json& tokenizer_json);

// A special token the template puts around a sequence: its id and text.
struct TemplateSpecial {
  int64_t id;
  std::string piece;
};
// Hugging Face's TemplateProcessing with BOS before and EOS after each sequence (single and
// pair), either optional; null when neither is given.
nlohmann::json BosEosTemplate(const std::optional<TemplateSpecial>& bos, const std::optional<TemplateSpecial>& eos);

}  // namespace compress
