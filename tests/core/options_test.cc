// Typed pass options: OptionBinding's declarations and parsed structs, and every registered pass
// created with its defaults and with each option at its limits.
#include <gtest/gtest.h>

#include <cmath>

#include "core/pass.h"
#include "passes/registry.h"

namespace compress {
namespace {

enum class Mode { kFast, kExact };

struct Opts {
  bool flag = true;
  int bits = 4;
  int64_t group = 128;
  int64_t size = 0;
  double damp = 0.01;
  float clip = 0.5f;
  std::string file;
  std::string method = "auto";
  Mode mode = Mode::kExact;
  bool on = false;
  std::vector<std::string> list = {"a", "b"};
};

OptionBinding<Opts> Binding() {
  OptionBinding<Opts> b;
  b.Flag(&Opts::flag, "flag", "a flag")
      .Int(&Opts::bits, "bits", "bits", 2, 8)
      .Int(&Opts::group, "group-size", "group", 0, 1 << 20)
      .Float(&Opts::damp, "damp", "damp", 0, 10)
      .Float(&Opts::clip, "clip", "clip", 0.05, 1)
      .InputFile(&Opts::file, "file", "a file")
      .Choice(&Opts::method, "method", "how", {"auto", "rtn", "gptq"})
      .Choice(&Opts::mode, "mode", "speed", {{"fast", Mode::kFast}, {"exact", Mode::kExact}})
      .Choice(&Opts::on, "state", "on or off", {{"off", false}, {"on", true}})
      .List(&Opts::list, "list", "names")
      .Bytes(&Opts::size, "size", "bytes");
  return b;
}

TEST(OptionBinding, SpecsCarryTypesRangesAndTheStructDefaults) {
  const auto b = Binding();
  const auto& s = b.specs();
  ASSERT_EQ(s.size(), 11u);
  EXPECT_EQ(s[10].type, OptionType::kBytes);
  EXPECT_EQ(s[10].default_value, "0");
  EXPECT_EQ(s[0].type, OptionType::kBool);
  EXPECT_EQ(s[0].default_value, "true");
  EXPECT_EQ(s[1].type, OptionType::kInt);
  EXPECT_EQ(s[1].default_value, "4");
  EXPECT_EQ(s[1].min, 2);
  EXPECT_EQ(s[1].max, 8);
  EXPECT_EQ(s[3].type, OptionType::kFloat);
  EXPECT_EQ(s[3].default_value, "0.01");
  EXPECT_EQ(s[4].default_value, "0.5");
  EXPECT_EQ(s[5].type, OptionType::kString);
  EXPECT_TRUE(s[5].input_file);
  EXPECT_FALSE(s[4].input_file);
  EXPECT_EQ(s[6].type, OptionType::kEnum);
  EXPECT_EQ(s[6].default_value, "auto");
  EXPECT_EQ(s[7].choices, (std::vector<std::string>{"fast", "exact"}));
  EXPECT_EQ(s[7].default_value, "exact");
  EXPECT_EQ(s[8].default_value, "off");
  EXPECT_EQ(s[9].type, OptionType::kList);
  EXPECT_EQ(s[9].default_value, "[a,b]");
  for (const auto& spec : s) EXPECT_TRUE(ParseOptionValue(spec, spec.default_value).ok()) << spec.key;
}

TEST(OptionBinding, ReadFillsEveryFieldFromParsedText) {
  const auto b = Binding();
  const std::map<std::string, std::string> text = {
      {"flag", "false"}, {"bits", "8"},       {"group-size", "32"}, {"damp", "0.25"},
      {"clip", "0.75"},  {"file", "x.dat"},   {"method", "gptq"},   {"mode", "fast"},
      {"state", "on"},   {"list", "[p,q,r]"}, {"size", "1.5KiB"}};
  OptionValues v;
  for (const auto& spec : b.specs()) v.Set(spec.key, *ParseOptionValue(spec, text.at(spec.key)));
  const Opts o = b.Read(v);
  EXPECT_FALSE(o.flag);
  EXPECT_EQ(o.bits, 8);
  EXPECT_EQ(o.group, 32);
  EXPECT_EQ(o.damp, 0.25);
  EXPECT_EQ(o.clip, 0.75f);
  EXPECT_EQ(o.file, "x.dat");
  EXPECT_EQ(o.method, "gptq");
  EXPECT_EQ(o.mode, Mode::kFast);
  EXPECT_TRUE(o.on);
  EXPECT_EQ(o.list, (std::vector<std::string>{"p", "q", "r"}));
  EXPECT_EQ(o.size, 1536);
  // Options the values do not hold keep the struct's defaults.
  const Opts d = b.Read(OptionValues());
  EXPECT_EQ(d.bits, 4);
  EXPECT_EQ(d.mode, Mode::kExact);
}

TEST(OptionBinding, ByteSizesParseWithUnitsAndRefuseNonsense) {
  OptionSpec s{"size", OptionType::kBytes, "0", ""};
  EXPECT_EQ(std::get<int64_t>(*ParseOptionValue(s, "0")), 0);
  EXPECT_EQ(std::get<int64_t>(*ParseOptionValue(s, "5MB")), 5000000);
  EXPECT_EQ(std::get<int64_t>(*ParseOptionValue(s, "2GiB")), int64_t{2} << 30);
  EXPECT_EQ(std::get<int64_t>(*ParseOptionValue(s, "1048576")), 1048576);
  for (const char* bad : {"", "-1", "5XB", "MB", "0.1", "1e30"}) {
    auto v = ParseOptionValue(s, bad);
    EXPECT_FALSE(v.ok()) << bad;
    if (!v.ok()) {
      EXPECT_NE(v.status().message().find("'size'"), std::string::npos) << v.status();
    }
  }
}

// Every value an option accepts at its edges: both ends of a range, every choice, both booleans.
std::vector<std::string> EdgeValues(const OptionSpec& o) {
  auto num = [&](double v) {
    return o.type == OptionType::kInt ? fmt::format("{}", static_cast<int64_t>(v)) : fmt::format("{}", v);
  };
  switch (o.type) {
    case OptionType::kBool:
      return {"true", "false"};
    case OptionType::kInt:
    case OptionType::kFloat: {
      std::vector<std::string> out;
      if (std::isfinite(o.min)) out.push_back(num(o.min));
      if (std::isfinite(o.max)) out.push_back(num(o.max));
      return out;
    }
    case OptionType::kEnum:
      return o.choices;
    case OptionType::kString:
      return {""};
    case OptionType::kList:
      return {"[]", "[*.weight]"};
    case OptionType::kBytes:
      return {"0", "1", "5MB", "2GiB"};
  }
  return {};
}

TEST(PassRegistry, EveryPassCreatesWithItsDefaultsAndWithEachOptionAtItsLimits) {
  PassRegistry reg;
  ASSERT_TRUE(RegisterBuiltinPasses(reg).ok());
  ASSERT_GE(reg.All().size(), 20u);
  int created = 0, refused = 0;
  for (const PassInfo* p : reg.All()) {
    OptionValues defaults;
    for (const auto& o : p->options) {
      auto v = ParseOptionValue(o, o.default_value);
      ASSERT_TRUE(v.ok()) << p->name << "." << o.key << ": " << v.status();
      defaults.Set(o.key, *v);
    }
    auto check = [&](const OptionValues& v, const std::string& what) {
      auto pass = p->create(v);
      if (pass.ok()) {
        EXPECT_NE(pass->get(), nullptr) << p->name << " " << what;
        ++created;
        return;
      }
      // A combination the factory refuses is a one-line InvalidArgument (the pass manager adds the pass
      // name).
      ++refused;
      EXPECT_EQ(pass.status().code(), absl::StatusCode::kInvalidArgument) << p->name << " " << what;
      EXPECT_FALSE(pass.status().message().empty()) << p->name << " " << what;
      EXPECT_EQ(pass.status().message().find('\n'), std::string::npos) << pass.status();
    };
    check(defaults, "defaults");
    for (const auto& o : p->options) {
      for (const std::string& text : EdgeValues(o)) {
        auto v = ParseOptionValue(o, text);
        ASSERT_TRUE(v.ok()) << p->name << "." << o.key << "=" << text << ": " << v.status();
        OptionValues values = defaults;
        values.Set(o.key, *v);
        check(values, o.key + "=" + text);
      }
    }
  }
  EXPECT_GT(created, 100);
  // Only option combinations that cannot work are refused (factorize-svd's "exactly one of" ...).
  EXPECT_LT(refused, created / 4);
}

}  // namespace
}  // namespace compress
