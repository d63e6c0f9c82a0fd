// Pipeline text parser, YAML recipe reader and resolution against the pass registry.
#include "core/pipeline.h"

#include <cctype>
#include <algorithm>
#include <filesystem>
#include <set>

#include "absl/strings/str_join.h"
#include "yaml-cpp/yaml.h"

namespace compress {
namespace {

bool IsNameChar(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.';
}

class TextParser {
 public:
  TextParser(std::string_view text, std::string source) : text_(text), source_(std::move(source)) {}

  absl::StatusOr<std::vector<RawPass>> Parse() {
    std::vector<RawPass> out;
    SkipSpace();
    if (AtEnd()) return Error(Pos(), "empty pipeline");
    while (true) {
      ASSIGN_OR_RETURN(RawPass p, ParsePass());
      out.push_back(std::move(p));
      SkipSpace();
      if (AtEnd()) break;
      if (Peek() != ',') return Error(Pos(), fmt::format("expected ',' or end, found '{}'", Peek()));
      Advance();
      SkipSpace();
      if (AtEnd()) return Error(Pos(), "expected a pass name after ','");
    }
    return out;
  }

 private:
  absl::StatusOr<RawPass> ParsePass() {
    RawPass p;
    p.pos = Pos();
    p.name = ReadName();
    if (p.name.empty()) {
      return Error(p.pos, fmt::format("expected a pass name, found '{}'", Peek()));
    }
    SkipSpace();
    if (AtEnd() || Peek() != '{') return p;
    Advance();
    SkipSpace();
    if (!AtEnd() && Peek() == '}') {
      Advance();
      return p;
    }
    while (true) {
      SkipSpace();
      RawOption o;
      o.key_pos = Pos();
      o.key = ReadName();
      if (o.key.empty()) return Error(o.key_pos, "expected an option name");
      SkipSpace();
      if (AtEnd() || Peek() != '=') {
        return Error(Pos(), fmt::format("expected '=' after option '{}'", o.key));
      }
      Advance();
      SkipSpace();
      o.value_pos = Pos();
      ASSIGN_OR_RETURN(o.value, ReadValue());
      p.options.push_back(std::move(o));
      SkipSpace();
      if (AtEnd()) return Error(Pos(), fmt::format("missing '}}' to close options of '{}'", p.name));
      if (Peek() == ',') {
        Advance();
        continue;
      }
      if (Peek() == '}') {
        Advance();
        return p;
      }
      return Error(Pos(), fmt::format("expected ',' or '}}', found '{}'", Peek()));
    }
  }

  absl::StatusOr<std::string> ReadValue() {
    SourcePos start = Pos();
    std::string v;
    if (!AtEnd() && Peek() == '[') {
      while (!AtEnd() && Peek() != ']') {
        if (Peek() == '{' || Peek() == '}') break;
        v += Advance();
      }
      if (AtEnd() || Peek() != ']') return Error(start, "unterminated list: missing ']'");
      v += Advance();
      return v;
    }
    while (!AtEnd() && Peek() != ',' && Peek() != '}' && Peek() != '{') v += Advance();
    while (!v.empty() && std::isspace(static_cast<unsigned char>(v.back()))) v.pop_back();
    if (v.empty()) return Error(start, "empty option value");
    return v;
  }

  std::string ReadName() {
    std::string s;
    while (!AtEnd() && IsNameChar(Peek())) s += Advance();
    return s;
  }
  void SkipSpace() {
    while (!AtEnd() && std::isspace(static_cast<unsigned char>(Peek()))) Advance();
  }
  bool AtEnd() const { return i_ >= text_.size(); }
  char Peek() const { return text_[i_]; }
  char Advance() {
    char c = text_[i_++];
    if (c == '\n') {
      ++line_;
      col_ = 1;
    } else {
      ++col_;
    }
    return c;
  }
  SourcePos Pos() const { return {source_, line_, col_}; }
  absl::Status Error(const SourcePos& p, std::string_view msg) const {
    return InvalidArgument("{}: {}", p.str(), msg);
  }

  std::string_view text_;
  std::string source_;
  size_t i_ = 0;
  int line_ = 1, col_ = 1;
};

SourcePos YamlPos(const YAML::Node& n, const std::string& source) {
  YAML::Mark m = n.Mark();
  return {source, m.line + 1, m.column + 1};
}

absl::StatusOr<std::string> YamlScalarText(const YAML::Node& v, const std::string& source) {
  if (v.IsScalar()) return v.Scalar();
  if (v.IsSequence()) {
    std::vector<std::string> items;
    for (const auto& item : v) {
      if (!item.IsScalar()) {
        return InvalidArgument("{}: list elements must be scalars", YamlPos(item, source).str());
      }
      items.push_back(item.Scalar());
    }
    return "[" + absl::StrJoin(items, ",") + "]";
  }
  return InvalidArgument("{}: option values must be scalars or lists", YamlPos(v, source).str());
}

}  // namespace

absl::StatusOr<std::vector<RawPass>> ParsePipelineText(std::string_view text, const std::string& source) {
  return TextParser(text, source).Parse();
}

absl::StatusOr<std::vector<RawPass>> ParseRecipeYaml(const std::string& text, const std::string& source) {
  ASSIGN_OR_RETURN(Recipe r, ParseRecipe(text, source));
  return std::move(r.pipeline);
}

absl::StatusOr<Recipe> ParseRecipe(const std::string& text, const std::string& source) {
  Recipe recipe;
  YAML::Node root;
  try {
    root = YAML::Load(text);
  } catch (const YAML::Exception& e) {
    return InvalidArgument("{}:{}:{}: invalid YAML: {}", source, e.mark.line + 1, e.mark.column + 1, e.msg);
  }
  if (!root.IsMap()) return InvalidArgument("{}: a recipe must be a mapping with 'pipeline'", source);
  for (const auto& kv : root) {
    std::string key = kv.first.as<std::string>("");
    if (key != "pipeline" && key != "calibration") {
      return InvalidArgument("{}: unknown recipe key '{}'; known keys: pipeline, calibration",
                             YamlPos(kv.first, source).str(), key);
    }
  }
  if (YAML::Node cal = root["calibration"]) {
    if (!cal.IsMap())
      return InvalidArgument("{}: 'calibration' must be a mapping", YamlPos(cal, source).str());
    for (const auto& kv : cal) {
      const std::string key = kv.first.as<std::string>("");
      if (key != "file" && key != "samples" && key != "seqlen" && key != "seed" && key != "min_expert_tokens" &&
          key != "precision") {
        return InvalidArgument(
            "{}: unknown calibration key '{}'; known keys: file, samples, seqlen, seed, min_expert_tokens, precision",
                               YamlPos(kv.first, source).str(), key);
      }
      if (!kv.second.IsScalar()) {
        return InvalidArgument("{}: calibration '{}' must be a scalar", YamlPos(kv.second, source).str(),
                               key);
      }
      recipe.calibration[key] = kv.second.Scalar();
    }
  }
  YAML::Node pipe = root["pipeline"];
  if (!pipe) return InvalidArgument("{}: recipe has no 'pipeline'", source);
  if (pipe.IsScalar()) {
    ASSIGN_OR_RETURN(recipe.pipeline, ParsePipelineText(pipe.Scalar(), source));
    return recipe;
  }
  if (!pipe.IsSequence() || pipe.size() == 0) {
    return InvalidArgument("{}: 'pipeline' must be a non-empty list of passes", YamlPos(pipe, source).str());
  }
  for (const auto& item : pipe) {
    RawPass p;
    p.pos = YamlPos(item, source);
    if (item.IsScalar()) {
      p.name = item.Scalar();
    } else if (item.IsMap() && item.size() == 1) {
      auto kv = *item.begin();
      p.name = kv.first.as<std::string>("");
      p.pos = YamlPos(kv.first, source);
      const YAML::Node& opts = kv.second;
      if (opts.IsMap()) {
        for (const auto& o : opts) {
          RawOption ro;
          ro.key = o.first.as<std::string>("");
          ro.key_pos = YamlPos(o.first, source);
          ro.value_pos = YamlPos(o.second, source);
          ASSIGN_OR_RETURN(ro.value, YamlScalarText(o.second, source));
          p.options.push_back(std::move(ro));
        }
      } else if (!opts.IsNull()) {
        return InvalidArgument("{}: options of '{}' must be a mapping", YamlPos(opts, source).str(), p.name);
      }
    } else {
      return InvalidArgument("{}: each pipeline entry is a pass name or {{name: {{options}}}}", p.pos.str());
    }
    recipe.pipeline.push_back(std::move(p));
  }
  return recipe;
}

namespace {

// Edit distance with adjacent transpositions ('gtpq' -> 'gptq' is one edit); '_' and '-'
// count as the same character (group_size vs group-size).
size_t EditDistance(std::string_view a, std::string_view b) {
  auto same = [](char x, char y) { return x == y || ((x == '_' || x == '-') && (y == '_' || y == '-')); };
  std::vector<std::vector<size_t>> d(a.size() + 1, std::vector<size_t>(b.size() + 1));
  for (size_t i = 0; i <= a.size(); ++i) d[i][0] = i;
  for (size_t j = 0; j <= b.size(); ++j) d[0][j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    for (size_t j = 1; j <= b.size(); ++j) {
      d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (same(a[i - 1], b[j - 1]) ? 0 : 1)});
      if (i > 1 && j > 1 && same(a[i - 1], b[j - 2]) && same(a[i - 2], b[j - 1])) {
        d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
      }
    }
  }
  return d[a.size()][b.size()];
}

// " (did you mean 'x'?)" for the closest of `names` within a few edits, or "".
std::string DidYouMean(std::string_view given, const std::vector<std::string>& names) {
  std::string best;
  size_t best_d = std::max<size_t>(2, given.size() / 3) + 1;
  for (const auto& n : names) {
    const size_t dist = EditDistance(given, n);
    if (dist < best_d) best_d = dist, best = n;
  }
  return best.empty() ? std::string() : " (did you mean '" + best + "'?)";
}

}  // namespace

absl::StatusOr<std::vector<PipelineStep>> ResolvePipeline(const PassRegistry& registry,
                                                          const std::vector<RawPass>& raw, const std::string& base_dir) {
  std::vector<PipelineStep> steps;
  for (const RawPass& rp : raw) {
    const PassInfo* info = registry.Find(rp.name);
    if (!info) {
      std::vector<std::string> names;
      for (const PassInfo* p : registry.All()) names.push_back(p->name);
      return NotFound("{}: unknown pass '{}'{}; passes: {}", rp.pos.str(), rp.name, DidYouMean(rp.name, names),
                      absl::StrJoin(names, ", "));
    }
    PipelineStep step;
    step.info = info;
    std::set<std::string> seen;
    for (const RawOption& ro : rp.options) {
      const OptionSpec* spec = nullptr;
      for (const auto& o : info->options) {
        if (o.key == ro.key) spec = &o;
      }
      if (!spec) {
        std::vector<std::string> keys;
        for (const auto& o : info->options) keys.push_back(o.key);
        return InvalidArgument("{}: unknown option '{}' for pass '{}'{}; options: {}", ro.key_pos.str(), ro.key,
                               rp.name, DidYouMean(ro.key, keys), absl::StrJoin(keys, ", "));
      }
      if (!seen.insert(ro.key).second) {
        return InvalidArgument("{}: option '{}' given twice for pass '{}'", ro.key_pos.str(), ro.key,
                               rp.name);
      }
      auto v = ParseOptionValue(*spec, ro.value);
      if (!v.ok()) {
        return InvalidArgument("{}: pass '{}': {}", ro.value_pos.str(), rp.name, v.status().message());
      }
      if (spec->input_file && !std::get<std::string>(*v).empty()) {
        std::error_code ec;
        const std::filesystem::path given(std::get<std::string>(*v));
        if (!base_dir.empty() && given.is_relative()) *v = (std::filesystem::path(base_dir) / given).string();
        const std::string& path = std::get<std::string>(*v);
        if (!std::filesystem::is_regular_file(path, ec)) {
          return InvalidArgument("{}: pass '{}': {}={}: {}", ro.value_pos.str(), rp.name, ro.key, path,
                                 std::filesystem::exists(path, ec) ? "not a regular file" : "no such file");
        }
      }
      step.values.Set(ro.key, *std::move(v));
    }
    std::vector<std::string> parts;
    for (const auto& o : info->options) {
      if (!step.values.has(o.key)) step.values.Set(o.key, *ParseOptionValue(o, o.default_value));
      parts.push_back(o.key + "=" + FormatOptionValue(step.values.at(o.key)));
    }
    step.canonical = info->name + "{" + absl::StrJoin(parts, ",") + "}";
    steps.push_back(std::move(step));
  }
  return steps;
}

std::string CanonicalPipeline(const std::vector<PipelineStep>& steps) {
  std::vector<std::string> parts;
  for (const auto& s : steps) parts.push_back(s.canonical);
  return absl::StrJoin(parts, ",");
}

}  // namespace compress
