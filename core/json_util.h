// JSON read from files: parsing that refuses duplicate keys (one would silently win), and
// typed field access whose errors name the file and the key instead of throwing.
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace compress {

// Parses `text`; DataLoss naming `what` when it is not JSON or an object repeats a key.
absl::StatusOr<nlohmann::json> ParseJsonStrict(std::string_view text, const std::string& what);

// Typed, range-checked fields of one JSON object. Each getter returns nullopt when the key
// is absent (or null), and an InvalidArgument "FILE: 'key' must be ..." when it has the
// wrong type or lies outside the range.
// j[key] on a const value without the undefined behaviour of nlohmann's const operator[] for a
// missing key: a null value when `j` is not an object or has no `key`.
const nlohmann::json& MemberOrNull(const nlohmann::json& j, std::string_view key);

class JsonFields {
 public:
  JsonFields(const nlohmann::json& j, std::string what, std::string prefix = "")
      : j_(j), what_(std::move(what)), prefix_(std::move(prefix)) {}
  absl::StatusOr<std::optional<int64_t>> Int(const char* key, int64_t min, int64_t max) const;
  // A finite number in [min, max] (integers accepted).
  absl::StatusOr<std::optional<double>> Number(const char* key, double min, double max) const;
  absl::StatusOr<std::optional<bool>> Bool(const char* key) const;
  absl::StatusOr<std::optional<std::string>> String(const char* key) const;
  // The nested object at `key` (nullopt when absent or null).
  absl::StatusOr<std::optional<JsonFields>> Object(const char* key) const;
  const nlohmann::json& json() const { return j_; }

 private:
  const nlohmann::json* Find(const char* key) const;
  std::string Name(const char* key) const { return prefix_ + key; }
  const nlohmann::json& j_;
  std::string what_, prefix_;
};

}  // namespace compress
