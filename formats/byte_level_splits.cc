// Byte-level pre-tokenizer split steps (see the header).
#include "formats/byte_level_splits.h"

#include <algorithm>

#include "core/status.h"

namespace compress {
namespace {

std::string TypeOf(const nlohmann::json& p) { return p.is_object() ? p.value("type", "") : ""; }

// The pre-tokenizers of `pre` in order, nested Sequences flattened.
void Flatten(const nlohmann::json& pre, std::vector<const nlohmann::json*>& out) {
  if (TypeOf(pre) == "Sequence" && pre.contains("pretokenizers") && pre["pretokenizers"].is_array()) {
    for (const auto& p : pre["pretokenizers"]) Flatten(p, out);
  } else {
    out.push_back(&pre);
  }
}

}  // namespace

absl::StatusOr<std::optional<std::vector<SplitStep>>> ByteLevelSplits(const nlohmann::json& pre,
                                                                      const std::string& path) {
  std::vector<const nlohmann::json*> parts;
  Flatten(pre, parts);
  if (std::none_of(parts.begin(), parts.end(), [](const nlohmann::json* p) { return TypeOf(*p) == "ByteLevel"; }))
    return std::optional<std::vector<SplitStep>>();  // not byte-level
  std::vector<SplitStep> steps;
  for (size_t i = 0; i < parts.size(); ++i) {
    const nlohmann::json& p = *parts[i];
    const std::string type = TypeOf(p);
    if (type == "ByteLevel") {
      if (i + 1 != parts.size()) {
        return Unimplemented("{}: a ByteLevel pre-tokenizer before other steps is not supported ({})", path,
                             pre.dump().substr(0, 300));
      }
      if (p.value("add_prefix_space", false)) {
        return Unimplemented("{}: ByteLevel with add_prefix_space is not supported", path);
      }
      if (p.value("use_regex", true)) steps.push_back({kGpt2SplitPattern, true});
    } else if (type == "Digits") {
      steps.push_back({p.value("individual_digits", false) ? kDigitPattern : kDigitRunPattern, true});
    } else if (type == "Split" && p.contains("pattern") && p["pattern"].is_object() &&
               p["pattern"].contains("Regex") && p["pattern"]["Regex"].is_string()) {
      // Isolated (the matches and the text between them are pieces), or Removed with invert
      // (the matches are the pieces, the rest is dropped: tiktoken-style cl100k / o200k files).
      const std::string behavior = p.value("behavior", "");
      const bool invert = p.value("invert", false);
      if (!((behavior == "Isolated" && !invert) || (behavior == "Removed" && invert))) {
        return Unimplemented("{}: Split pre-tokenizer {} is not supported (Regex; Isolated, or Removed with invert)",
                             path, p.dump().substr(0, 300));
      }
      steps.push_back({p["pattern"]["Regex"].get<std::string>(), behavior == "Isolated"});
    } else {
      return Unimplemented(
          "{}: pre-tokenizer step {} is not supported before a ByteLevel (Split with a regex, Digits)", path,
          p.dump().substr(0, 300));
    }
  }
  return std::optional<std::vector<SplitStep>>(std::move(steps));
}

nlohmann::json ByteLevelPreTokenizerJson(const std::vector<SplitStep>& steps) {
  auto byte_level = [](bool regex) {
    return nlohmann::json{{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", regex}};
  };
  const bool gpt2_last = !steps.empty() && steps.back() == SplitStep{kGpt2SplitPattern, true};
  if (gpt2_last && steps.size() == 1) return byte_level(true);
  nlohmann::json seq = nlohmann::json::array();
  for (size_t i = 0; i + (gpt2_last ? 1 : 0) < steps.size(); ++i) {
    const SplitStep& s = steps[i];
    if (s.keep_gaps && (s.pattern == kDigitPattern || s.pattern == kDigitRunPattern)) {
      seq.push_back({{"type", "Digits"}, {"individual_digits", s.pattern == kDigitPattern}});
    } else {
      seq.push_back({{"type", "Split"},
                     {"pattern", {{"Regex", s.pattern}}},
                     {"behavior", s.keep_gaps ? "Isolated" : "Removed"},
                     {"invert", !s.keep_gaps}});
    }
  }
  seq.push_back(byte_level(gpt2_last));
  return {{"type", "Sequence"}, {"pretokenizers", std::move(seq)}};
}

}  // namespace compress
