// Parsing and printing of typed pass option values.
#include "core/options.h"

#include <charconv>
#include <cctype>
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
    case OptionType::kBytes:
      return "size (e.g. 5MB, 2GiB; 0 = not given)";
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
    case OptionType::kBytes: {
      if (text == "0") return OptionValue(int64_t{0});
      auto bytes = ParseByteSize(text);
      if (!bytes.ok()) {
        return InvalidArgument("invalid value '{}' for option '{}': {}", text, spec.key, bytes.status().message());
      }
      return OptionValue(*bytes);
    }
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

absl::StatusOr<int64_t> ParseByteSize(const std::string& text) {
  double v = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (ec != std::errc() || end == text.data() || !(v >= 0)) {
    return InvalidArgument("invalid size '{}'; use e.g. 2GB, 500MiB or 1048576", text);
  }
  std::string unit(end, text.data() + text.size());
  for (auto& c : unit) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  static const std::pair<const char*, double> kUnits[] = {
      {"", 1},     {"b", 1},        {"kb", 1e3},        {"mb", 1e6},
      {"gb", 1e9}, {"kib", 1024.0}, {"mib", 1048576.0}, {"gib", 1073741824.0},
      {"k", 1e3},  {"m", 1e6},      {"g", 1e9},         {"tb", 1e12}, {"tib", 1099511627776.0}};
  for (const auto& [u, mult] : kUnits) {
    if (unit != u) continue;
    const double bytes = v * mult;
    if (!(bytes >= 1) || bytes > 9.0e18) return InvalidArgument("size '{}' must lie between 1 byte and 9 EB", text);
    return static_cast<int64_t>(bytes);
  }
  return InvalidArgument("invalid size unit in '{}'; use B, KB, MB, GB, TB, KiB, MiB, GiB or TiB", text);
}

}  // namespace compress
