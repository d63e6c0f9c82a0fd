// Typed pass options: declared once (key, type, default, range, help); parsed, validated and printed from
// that.
#pragma once

#include <concepts>
#include <cstdint>
#include <functional>
#include <limits>
#include <map>
#include <string>
#include <variant>
#include <vector>

#include "absl/status/statusor.h"

namespace compress {

// kBytes: a byte size with an optional unit ("5MB", "2GiB", "1048576"), held as int64.
enum class OptionType { kBool, kInt, kFloat, kString, kEnum, kList, kBytes };

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

// "2GB", "500MiB", "1048576" (decimal and binary units, B optional) -> bytes; at least 1 byte.
absl::StatusOr<int64_t> ParseByteSize(const std::string& text);

// Parses one value for `spec` from its text form. Lists are "[a,b]" or a single "a".
// The error message names the key and the accepted values; callers add the pass and position.
absl::StatusOr<OptionValue> ParseOptionValue(const OptionSpec& spec, const std::string& text);
// Canonical text of a value: numbers in shortest round-trip form, lists in brackets.
std::string FormatOptionValue(const OptionValue& v);

// Binds the fields of an option struct `O` to declared options, once. Each field's key, help and
// range are given here, its default is the struct's own initializer, and its type follows the
// field's type, so the declaration (`specs()`, which `passes`, --dry-run and the canonical
// pipeline print) and the parsed struct (`Read`) cannot disagree on a key or a type:
//
//   struct Options { int64_t bits = 4; bool symmetric = true; Mode mode = Mode::kFast; };
//   OptionBinding<Options> b;
//   b.Int(&Options::bits, "bits", "bits per code", 2, 8)
//    .Flag(&Options::symmetric, "symmetric", "no zero point")
//    .Choice(&Options::mode, "mode", "speed", {{"fast", Mode::kFast}, {"exact", Mode::kExact}});
template <typename O>
class OptionBinding {
 public:
  OptionBinding& Flag(bool O::*field, std::string key, std::string help) {
    return Add({std::move(key), OptionType::kBool, "", std::move(help)},
               [field](O& o, const OptionValue& v) { o.*field = std::get<bool>(v); },
               OptionValue(O{}.*field));
  }
  template <std::integral T>
    requires(!std::same_as<T, bool>)
  OptionBinding& Int(T O::*field, std::string key, std::string help, int64_t min, int64_t max) {
    OptionSpec s{std::move(key), OptionType::kInt, "", std::move(help)};
    s.min = static_cast<double>(min);
    s.max = static_cast<double>(max);
    return Add(std::move(s), [field](O& o, const OptionValue& v) { o.*field = static_cast<T>(std::get<int64_t>(v)); },
               OptionValue(static_cast<int64_t>(O{}.*field)));
  }
  template <std::floating_point T>
  OptionBinding& Float(T O::*field, std::string key, std::string help, double min, double max) {
    OptionSpec s{std::move(key), OptionType::kFloat, "", std::move(help)};
    s.min = min;
    s.max = max;
    return Add(std::move(s), [field](O& o, const OptionValue& v) { o.*field = static_cast<T>(std::get<double>(v)); },
               OptionValue(static_cast<double>(O{}.*field)));
  }
  OptionBinding& Text(std::string O::*field, std::string key, std::string help) {
    return Add({std::move(key), OptionType::kString, "", std::move(help)},
               [field](O& o, const OptionValue& v) { o.*field = std::get<std::string>(v); }, OptionValue(O{}.*field));
  }
  // A file the pass reads: `run` checks it exists before any work, and no output may replace it.
  OptionBinding& InputFile(std::string O::*field, std::string key, std::string help) {
    Text(field, std::move(key), std::move(help));
    specs_.back().input_file = true;
    return *this;
  }
  OptionBinding& Choice(std::string O::*field, std::string key, std::string help, std::vector<std::string> choices) {
    OptionSpec s{std::move(key), OptionType::kEnum, "", std::move(help), std::move(choices)};
    return Add(std::move(s), [field](O& o, const OptionValue& v) { o.*field = std::get<std::string>(v); },
               OptionValue(O{}.*field));
  }
  // An enumerated option stored as a typed value (an enum, a bool ...): each accepted word maps to one value.
  template <typename E>
  OptionBinding& Choice(E O::*field, std::string key, std::string help,
                        std::vector<std::pair<std::string, E>> choices) {
    OptionSpec s{std::move(key), OptionType::kEnum, "", std::move(help)};
    std::string def;
    for (const auto& [word, value] : choices) {
      s.choices.push_back(word);
      if (def.empty() && value == O{}.*field) def = word;
    }
    return Add(std::move(s),
               [field, choices](O& o, const OptionValue& v) {
                 for (const auto& [word, value] : choices) {
                   if (word == std::get<std::string>(v)) o.*field = value;
                 }
               },
               OptionValue(def));
  }
  // A byte size ("5MB"); 0 = not given.
  OptionBinding& Bytes(int64_t O::*field, std::string key, std::string help) {
    return Add({std::move(key), OptionType::kBytes, "", std::move(help)},
               [field](O& o, const OptionValue& v) { o.*field = std::get<int64_t>(v); }, OptionValue(O{}.*field));
  }
  OptionBinding& List(std::vector<std::string> O::*field, std::string key, std::string help) {
    return Add({std::move(key), OptionType::kList, "", std::move(help)},
               [field](O& o, const OptionValue& v) { o.*field = std::get<std::vector<std::string>>(v); },
               OptionValue(O{}.*field));
  }

  const std::vector<OptionSpec>& specs() const { return specs_; }
  // The struct with every bound option that `v` holds; the others keep their defaults.
  O Read(const OptionValues& v) const {
    O o{};
    for (size_t i = 0; i < specs_.size(); ++i) {
      if (v.has(specs_[i].key)) setters_[i](o, v.at(specs_[i].key));
    }
    return o;
  }

 private:
  OptionBinding& Add(OptionSpec spec, std::function<void(O&, const OptionValue&)> set, const OptionValue& def) {
    spec.default_value = FormatOptionValue(def);
    specs_.push_back(std::move(spec));
    setters_.push_back(std::move(set));
    return *this;
  }

  std::vector<OptionSpec> specs_;
  std::vector<std::function<void(O&, const OptionValue&)>> setters_;
};

}  // namespace compress
