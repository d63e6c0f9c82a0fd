// Parsing and printing of typed pass option values.
#include "core/options.h"

#include <charconv>
#include <cmath>

#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "core/status.h"

namespace compress {

std::string OptionSpec::Describe() const {
  auto range = [&]() -> std::string {
    if (std::isinf(min) && std::isinf(max)) return "";
    return fmt::format(" in [{}, {}]", std::isinf(min) ? "-inf" : fmt::format("{}", min),
                       std::isinf(max) ? "inf" : fmt::format("{}", max));
  };
  switch (type) {
    case OptionType::kBool:
      return "bool (true|false)";
    case OptionType::kInt:
      return "int" + range();
    case OptionType::kFloat:
      return "float" + range();
    case OptionType::kString:
      return "string";
    case OptionType::kEnum:
      return "one of " + absl::StrJoin(choices, "|");
    case OptionType::kList:
      return "list [a,b,...]";
  }
  return "";
}

const OptionValue& OptionValues::at(const std::string& key) const {
  auto it = values_.find(key);
  if (it == values_.end()) {
    static const OptionValue kEmpty = std::string();
    return kEmpty;
  }
  return it->second;
}

absl::StatusOr<OptionValue> ParseOptionValue(const OptionSpec& spec, const std::string& text) {
  auto bad = [&](std::string_view why) {
    return InvalidArgument("invalid value '{}' for option '{}': {}; expected {}", text, spec.key, why,
                           spec.Describe());
  };
  switch (spec.type) {
    case OptionType::kBool:
      if (text == "true" || text == "on" || text == "1") return OptionValue(true);
      if (text == "false" || text == "off" || text == "0") return OptionValue(false);
      return bad("not a boolean");
    case OptionType::kInt: {
      int64_t v = 0;
      auto [p, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
      if (ec != std::errc() || p != text.data() + text.size() || text.empty()) {
        return bad("not an integer");
      }
      if (v < spec.min || v > spec.max) return bad("out of range");
      return OptionValue(v);
    }
    case OptionType::kFloat: {
      double v = 0;
      auto [p, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
      if (ec != std::errc() || p != text.data() + text.size() || text.empty() || !std::isfinite(v)) {
        return bad("not a number");
      }
      if (v < spec.min || v > spec.max) return bad("out of range");
      return OptionValue(v);
    }
    case OptionType::kString:
      return OptionValue(text);
    case OptionType::kEnum:
      for (const auto& c : spec.choices) {
        if (c == text) return OptionValue(text);
      }
      return bad("not an accepted value");
    case OptionType::kList: {
      absl::string_view body = text;
      if (absl::ConsumePrefix(&body, "[")) {
        if (!absl::ConsumeSuffix(&body, "]")) return bad("missing ']'");
      }
      std::vector<std::string> items;
      if (!body.empty()) {
        for (absl::string_view item : absl::StrSplit(body, ',')) {
          item = absl::StripAsciiWhitespace(item);
          if (item.empty()) return bad("empty list element");
          items.emplace_back(item);
        }
      }
      return OptionValue(std::move(items));
    }
  }
  return Internal("unhandled option type");
}

std::string FormatOptionValue(const OptionValue& v) {
  struct Visitor {
    std::string operator()(bool b) const { return b ? "true" : "false"; }
    std::string operator()(int64_t i) const { return std::to_string(i); }
    std::string operator()(double d) const { return fmt::format("{}", d); }
    std::string operator()(const std::string& s) const { return s; }
    std::string operator()(const std::vector<std::string>& l) const {
      return "[" + absl::StrJoin(l, ",") + "]";
    }
  };
  return std::visit(Visitor{}, v);
}

}  // namespace compress
