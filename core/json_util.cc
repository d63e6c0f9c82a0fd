// Strict JSON parsing (no duplicate keys) and typed field access with file-and-key errors.
#include "core/json_util.h"

#include <cmath>
#include <unordered_set>
#include <vector>

#include "core/status.h"

namespace compress {

namespace {

// SAX pass that only records the first key an object repeats. (nlohmann's DOM parser with a
// callback rescans the parent object after each child object: quadratic on big headers.)
class DuplicateKeyFinder {
 public:
  using json = nlohmann::json;
  bool null() { return true; }
  bool boolean(bool) { return true; }
  bool number_integer(json::number_integer_t) { return true; }
  bool number_unsigned(json::number_unsigned_t) { return true; }
  bool number_float(json::number_float_t, const json::string_t&) { return true; }
  bool string(json::string_t&) { return true; }
  bool binary(json::binary_t&) { return true; }
  bool start_object(std::size_t) {
    keys_.emplace_back();
    return true;
  }
  bool key(json::string_t& k) {
    if (keys_.empty()) return false;  // a key outside any object: not JSON the DOM parser took
    if (!keys_.back().insert(k).second) {
      duplicate = k;
      return false;  // stop: one is enough
    }
    return true;
  }
  bool end_object() {
    if (keys_.empty()) return false;
    keys_.pop_back();
    return true;
  }
  bool start_array(std::size_t) { return true; }
  bool end_array() { return true; }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception&) { return false; }
  std::string duplicate;

 private:
  std::vector<std::unordered_set<std::string>> keys_;  // one set per open object
};

}  // namespace

absl::StatusOr<nlohmann::json> ParseJsonStrict(std::string_view text, const std::string& what) {
  nlohmann::json j = nlohmann::json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return DataLoss("{}: not valid JSON", what);
  DuplicateKeyFinder finder;
  nlohmann::json::sax_parse(text.begin(), text.end(), &finder);
  if (!finder.duplicate.empty()) {
    return DataLoss("{}: key '{}' appears twice in one object", what, finder.duplicate);
  }
  return j;
}

const nlohmann::json& MemberOrNull(const nlohmann::json& j, std::string_view key) {
  static const nlohmann::json* const kNull = new nlohmann::json();
  if (!j.is_object()) return *kNull;
  auto it = j.find(key);
  return it == j.end() ? *kNull : *it;
}

const nlohmann::json* JsonFields::Find(const char* key) const {
  if (!j_.is_object()) return nullptr;
  auto it = j_.find(key);
  return it == j_.end() || it->is_null() ? nullptr : &*it;
}

absl::StatusOr<std::optional<int64_t>> JsonFields::Int(const char* key, int64_t min, int64_t max) const {
  const nlohmann::json* v = Find(key);
  if (!v) return std::nullopt;
  if (!v->is_number_integer() || (v->is_number_unsigned() && v->get<uint64_t>() > uint64_t(INT64_MAX))) {
    return InvalidArgument("{}: '{}' must be an integer, not {}", what_, Name(key), v->dump());
  }
  const int64_t x = v->get<int64_t>();
  if (x < min || x > max) {
    return InvalidArgument("{}: '{}' is {}; it must lie in [{}, {}]", what_, Name(key), x, min, max);
  }
  return x;
}

absl::StatusOr<std::optional<double>> JsonFields::Number(const char* key, double min, double max) const {
  const nlohmann::json* v = Find(key);
  if (!v) return std::nullopt;
  if (!v->is_number()) return InvalidArgument("{}: '{}' must be a number, not {}", what_, Name(key), v->dump());
  const double x = v->get<double>();
  if (!std::isfinite(x) || x < min || x > max) {
    return InvalidArgument("{}: '{}' is {}; it must lie in [{}, {}]", what_, Name(key), x, min, max);
  }
  return x;
}

absl::StatusOr<std::optional<bool>> JsonFields::Bool(const char* key) const {
  const nlohmann::json* v = Find(key);
  if (!v) return std::nullopt;
  if (!v->is_boolean()) return InvalidArgument("{}: '{}' must be true or false, not {}", what_, Name(key), v->dump());
  return v->get<bool>();
}

absl::StatusOr<std::optional<std::string>> JsonFields::String(const char* key) const {
  const nlohmann::json* v = Find(key);
  if (!v) return std::nullopt;
  if (!v->is_string()) return InvalidArgument("{}: '{}' must be a string, not {}", what_, Name(key), v->dump());
  return v->get<std::string>();
}

absl::StatusOr<std::optional<JsonFields>> JsonFields::Object(const char* key) const {
  const nlohmann::json* v = Find(key);
  if (!v) return std::nullopt;
  if (!v->is_object()) return InvalidArgument("{}: '{}' must be an object, not {}", what_, Name(key), v->dump());
  return JsonFields(*v, what_, Name(key) + ".");
}

}  // namespace compress
