// Typed pass options: declared once (key, type, default, range, help); parsed, validated and printed from
// that.
#pragma once

#include <cstdint>
#include <limits>
#include <map>
#include <string>
#include <variant>
#include <vector>

#include "absl/status/statusor.h"

namespace compress {

enum class OptionType { kBool, kInt, kFloat, kString, kEnum, kList };

struct OptionSpec {
  std::string key;
  OptionType type = OptionType::kString;
  std::string default_value;  // text form, parsed like user input
  std::string help;
  std::vector<std::string> choices;  // kEnum only
  double min = -std::numeric_limits<double>::infinity();
  double max = std::numeric_limits<double>::infinity();
  // kString naming a file the pass reads (an importance matrix, say): `run` checks it before
  // any work and no output may replace it.
  bool input_file = false;

  // "int in [1, 8]", "one of f16|bf16|f32", "list of globs"...
  std::string Describe() const;
};

using OptionValue = std::variant<bool, int64_t, double, std::string, std::vector<std::string>>;

class OptionValues {
 public:
  bool GetBool(const std::string& key) const { return std::get<bool>(at(key)); }
  int64_t GetInt(const std::string& key) const { return std::get<int64_t>(at(key)); }
  double GetFloat(const std::string& key) const { return std::get<double>(at(key)); }
  const std::string& GetString(const std::string& key) const { return std::get<std::string>(at(key)); }
  const std::vector<std::string>& GetList(const std::string& key) const {
    return std::get<std::vector<std::string>>(at(key));
  }
  bool has(const std::string& key) const { return values_.count(key) > 0; }
  void Set(const std::string& key, OptionValue v) { values_[key] = std::move(v); }
  const OptionValue& at(const std::string& key) const;

 private:
  std::map<std::string, OptionValue> values_;
};

// Parses one value for `spec` from its text form. Lists are "[a,b]" or a single "a".
// The error message names the key and the accepted values; callers add the pass and position.
absl::StatusOr<OptionValue> ParseOptionValue(const OptionSpec& spec, const std::string& text);
// Canonical text of a value: numbers in shortest round-trip form, lists in brackets.
std::string FormatOptionValue(const OptionValue& v);

}  // namespace compress
