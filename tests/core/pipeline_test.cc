// Pipeline text and YAML recipe parsing, option validation and canonical printing.
#include "core/pipeline.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "passes/registry.h"

namespace compress {
namespace {

class PipelineTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(RegisterBuiltinPasses(reg_).ok()); }
  absl::StatusOr<std::string> Canonical(const std::string& text) {
    ASSIGN_OR_RETURN(auto raw, ParsePipelineText(text));
    ASSIGN_OR_RETURN(auto steps, ResolvePipeline(reg_, raw));
    return CanonicalPipeline(steps);
  }
  std::string Error(const std::string& text) {
    auto c = Canonical(text);
    EXPECT_FALSE(c.ok()) << text;
    return std::string(c.status().message());
  }
  PassRegistry reg_;
};

TEST_F(PipelineTest, FillsDefaultsInDeclarationOrder) {
  EXPECT_EQ(*Canonical("cast"), "cast{dtype=bf16,include=[],exclude=[]}");
  EXPECT_EQ(*Canonical(" cast { dtype = f16 } , cast{dtype=f32}"),
            "cast{dtype=f16,include=[],exclude=[]},cast{dtype=f32,include=[],exclude=[]}");
  EXPECT_EQ(*Canonical("cast{exclude=[*norm*,lm_head.*],include=[model.layers.*]}"),
            "cast{dtype=bf16,include=[model.layers.*],exclude=[*norm*,lm_head.*]}");
}

TEST_F(PipelineTest, CanonicalTextParsesToItself) {
  std::string c = *Canonical("cast{dtype=f16,exclude=[a,b]}");
  EXPECT_EQ(*Canonical(c), c);
}

TEST_F(PipelineTest, ErrorsPointAtTheColumn) {
  EXPECT_EQ(Error("cast{dtpye=f16}"),
            "pipeline:1:6: unknown option 'dtpye' for pass 'cast' (did you mean 'dtype'?); options: dtype, include, exclude");
  EXPECT_TRUE(
      Error("cast,quantize-int9").starts_with("pipeline:1:6: unknown pass 'quantize-int9' (did you mean 'quantize-int'?); passes: cast, "));
  EXPECT_EQ(Error("cast{dtype=f8}"),
            "pipeline:1:12: pass 'cast': invalid value 'f8' for option 'dtype': not an accepted "
            "value; expected one of f16|bf16|f32");
  EXPECT_EQ(Error("cast{dtype=f16"), "pipeline:1:15: missing '}' to close options of 'cast'");
  EXPECT_EQ(Error("cast{dtype}"), "pipeline:1:11: expected '=' after option 'dtype'");
  EXPECT_EQ(Error("cast{dtype=}"), "pipeline:1:12: empty option value");
  EXPECT_EQ(Error("cast,"), "pipeline:1:6: expected a pass name after ','");
  EXPECT_EQ(Error(""), "pipeline:1:1: empty pipeline");
  EXPECT_EQ(Error("cast{dtype=f16,dtype=f32}"), "pipeline:1:16: option 'dtype' given twice for pass 'cast'");
  EXPECT_EQ(Error("cast{include=[a,b}"), "pipeline:1:14: unterminated list: missing ']'");
  EXPECT_EQ(Error("cast cast"), "pipeline:1:6: expected ',' or end, found 'c'");
}

TEST_F(PipelineTest, ErrorCodesAreSpecific) {
  auto raw = ParsePipelineText("nope");
  ASSERT_TRUE(raw.ok());
  EXPECT_EQ(ResolvePipeline(reg_, *raw).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(ParsePipelineText("cast{").status().code(), absl::StatusCode::kInvalidArgument);
}

// File options (quantize-gguf's imatrix) are relative to the recipe's folder when one is given.
TEST_F(PipelineTest, InputFilesResolveAgainstTheRecipeFolder) {
  const std::filesystem::path dir = std::filesystem::temp_directory_path() / "compress_pipeline_test_recipe";
  std::filesystem::create_directories(dir);
  { std::ofstream(dir / "m.imatrix") << "x"; }
  auto raw = ParseRecipeYaml("pipeline:\n  - quantize-gguf: {imatrix: m.imatrix}\n", (dir / "r.yaml").string());
  ASSERT_TRUE(raw.ok()) << raw.status();
  auto steps = ResolvePipeline(reg_, *raw, dir.string());
  ASSERT_TRUE(steps.ok()) << steps.status();
  EXPECT_EQ((*steps)[0].values.GetString("imatrix"), (dir / "m.imatrix").string());
  // Without the recipe's folder the same relative name is looked up here, where it is not.
  auto here = ResolvePipeline(reg_, *raw);
  ASSERT_FALSE(here.ok());
  EXPECT_NE(here.status().message().find("no such file"), std::string::npos) << here.status();
  // Absolute paths stay as given.
  auto abs = ResolvePipeline(reg_, *ParsePipelineText("quantize-gguf{imatrix=" + (dir / "m.imatrix").string() + "}"),
                             "/elsewhere");
  ASSERT_TRUE(abs.ok()) << abs.status();
  EXPECT_EQ((*abs)[0].values.GetString("imatrix"), (dir / "m.imatrix").string());
  std::filesystem::remove_all(dir);
}

TEST_F(PipelineTest, YamlRecipeEqualsText) {
  const char* yaml = R"(pipeline:
  - cast:
      dtype: f16
      exclude: ["*norm*", lm_head.weight]
  - cast
)";
  auto raw = ParseRecipeYaml(yaml, "r.yaml");
  ASSERT_TRUE(raw.ok()) << raw.status();
  auto steps = ResolvePipeline(reg_, *raw);
  ASSERT_TRUE(steps.ok()) << steps.status();
  EXPECT_EQ(CanonicalPipeline(*steps), *Canonical("cast{dtype=f16,exclude=[*norm*,lm_head.weight]},cast"));
  auto as_string = ParseRecipeYaml("pipeline: cast{dtype=f32}\n", "r.yaml");
  ASSERT_TRUE(as_string.ok());
  EXPECT_EQ((*as_string)[0].options[0].value, "f32");
}

TEST_F(PipelineTest, YamlErrorsNameFileLineAndColumn) {
  auto bad_key = ParseRecipeYaml("pipelin:\n  - cast\n", "r.yaml");
  EXPECT_EQ(bad_key.status().message(),
            "r.yaml:1:1: unknown recipe key 'pipelin'; known keys: pipeline, calibration");
  auto raw = ParseRecipeYaml("pipeline:\n  - cast:\n      bitz: 4\n", "r.yaml");
  ASSERT_TRUE(raw.ok());
  auto steps = ResolvePipeline(reg_, *raw);
  EXPECT_EQ(steps.status().message(),
            "r.yaml:3:7: unknown option 'bitz' for pass 'cast'; options: dtype, include, exclude");
  auto syntax = ParseRecipeYaml("pipeline: [cast\n", "r.yaml");
  EXPECT_EQ(syntax.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(syntax.status().message().find("r.yaml:"), std::string::npos);
}

TEST(Options, TypedParsingAndRanges) {
  OptionSpec i{"bits", OptionType::kInt, "4", "", {}, 2, 8};
  EXPECT_EQ(std::get<int64_t>(*ParseOptionValue(i, "8")), 8);
  EXPECT_EQ(ParseOptionValue(i, "9").status().message(),
            "invalid value '9' for option 'bits': out of range; expected int in [2, 8]");
  EXPECT_FALSE(ParseOptionValue(i, "4x").ok());
  OptionSpec f{"threshold", OptionType::kFloat, "6.0", "", {}, 0, 100};
  EXPECT_DOUBLE_EQ(std::get<double>(*ParseOptionValue(f, "6.5")), 6.5);
  EXPECT_FALSE(ParseOptionValue(f, "nan").ok());
  OptionSpec b{"search", OptionType::kBool, "true", ""};
  EXPECT_EQ(std::get<bool>(*ParseOptionValue(b, "off")), false);
  EXPECT_FALSE(ParseOptionValue(b, "maybe").ok());
  EXPECT_EQ(FormatOptionValue(*ParseOptionValue(f, "6.0")), "6");
}

}  // namespace
}  // namespace compress
