// PassRegistry, AnalysisManager caching/invalidation, PassManager reporting and tensor selection.
#include <gtest/gtest.h>

#include "core/pass_manager.h"
#include "passes/registry.h"

namespace compress {
namespace {

Model TinyModel() {
  Model m;
  auto add = [&](const std::string& n, Shape s, TensorRole r) {
    std::vector<float> v(NumElements(s));
    for (size_t i = 0; i < v.size(); ++i) v[i] = 0.001f * static_cast<float>(i) - 0.3f;
    m.tensors.Set(n, *Tensor::FromF32(v, s, DType::kF32));
    m.arch.roles[n] = r;
  };
  add("embed.weight", {16, 8}, TensorRole::kEmbedding);
  add("layers.0.q_proj.weight", {8, 8}, TensorRole::kLinearWeight);
  add("layers.0.norm.weight", {8}, TensorRole::kNorm);
  add("layers.0.q_proj.bias", {8}, TensorRole::kBias);
  add("lm_head.weight", {16, 8}, TensorRole::kLmHead);
  return m;
}

struct CountingAnalysis {
  static constexpr const char* kName = "counting";
  using Result = int64_t;
  static absl::StatusOr<int64_t> Compute(const Model& m, AnalysisManager&) { return m.ParameterCount(); }
};

TEST(AnalysisManager, CachesUntilInvalidated) {
  Model m = TinyModel();
  AnalysisManager am;
  auto a = am.Get<CountingAnalysis>(m);
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(**a, m.ParameterCount());
  am.Get<CountingAnalysis>(m).IgnoreError();
  EXPECT_EQ(am.computations("counting"), 1);
  am.Invalidate(PreservedAnalyses::None().Preserve("counting"));
  EXPECT_TRUE(am.IsCached("counting"));
  am.Invalidate(PreservedAnalyses::None());
  EXPECT_FALSE(am.IsCached("counting"));
  am.Get<CountingAnalysis>(m).IgnoreError();
  EXPECT_EQ(am.computations("counting"), 2);
}

// A pass that requests the counting analysis and, when `scale` != 1, multiplies q_proj.
class CountingPass final : public Pass {
 public:
  explicit CountingPass(float scale) : scale_(scale) {}
  absl::StatusOr<PreservedAnalyses> Run(Model& m, PassContext& ctx) override {
    RETURN_IF_ERROR(ctx.analyses.Get<CountingAnalysis>(m).status());
    if (scale_ != 1.f) {
      auto v = *m.tensors.at("layers.0.q_proj.weight").ToF32();
      for (float& x : v) x *= scale_;
      m.tensors.Set("layers.0.q_proj.weight", *Tensor::FromF32(v, {8, 8}, DType::kF32));
    }
    return PreservedAnalyses::None();
  }

 private:
  float scale_;
};

PassInfo CountingPassInfo(std::string name, bool declares, float scale) {
  PassInfo info;
  info.name = std::move(name);
  info.selects_tensors = false;
  info.options = {{"unused", OptionType::kInt, "0", "", {}, 0, 1}};
  if (declares) info.required_analyses = [](const OptionValues&) { return std::vector<std::string>{"counting"}; };
  info.create = [scale](const OptionValues&) -> absl::StatusOr<std::unique_ptr<Pass>> {
    return std::make_unique<CountingPass>(scale);
  };
  return info;
}

TEST(PassManager, AnalysesAreDeclaredKeptWhenNothingChangedAndRecomputedAfterAChange) {
  PassRegistry reg;
  ASSERT_TRUE(reg.Register(CountingPassInfo("reads", true, 1.f)).ok());
  ASSERT_TRUE(reg.Register(CountingPassInfo("scales", true, 2.f)).ok());
  ASSERT_TRUE(reg.Register(CountingPassInfo("undeclared", false, 1.f)).ok());
  auto steps = ResolvePipeline(reg, *ParsePipelineText("reads, reads, scales, reads"));
  ASSERT_TRUE(steps.ok()) << steps.status();
  Model m = TinyModel();
  PassManager pm;
  RunReport report;
  ASSERT_TRUE(pm.Run(m, *steps, report).ok());
  ASSERT_EQ(report.passes.size(), 4u);
  auto notes = [&](size_t i) { return report.passes[i].notes; };
  EXPECT_EQ(notes(0), std::vector<std::string>{"computed analysis 'counting'"});
  // "reads" returned None but changed nothing: the analysis stays.
  EXPECT_EQ(notes(1), std::vector<std::string>{"reused analysis 'counting' (still valid)"});
  EXPECT_EQ(notes(2), std::vector<std::string>{"reused analysis 'counting' (still valid)"});
  EXPECT_EQ(notes(3), std::vector<std::string>{
                          "recomputed analysis 'counting': pass 3 'scales' changed the model since it was last computed"});
  EXPECT_EQ(pm.analyses().computations("counting"), 2);

  // The plan says the same before any work (it assumes every pass changes the model).
  auto plan = PlanAnalyses(*steps);
  ASSERT_EQ(plan.size(), 4u);
  EXPECT_EQ(plan[0], std::vector<std::string>{"computes counting"});
  EXPECT_EQ(plan[1], std::vector<std::string>{"recomputes counting (pass 1 'reads' changes the model)"});
  EXPECT_EQ(plan[3], std::vector<std::string>{"recomputes counting (pass 3 'scales' changes the model)"});

  // A request the pass did not declare is refused, naming the pass and the analysis.
  auto bad = ResolvePipeline(reg, *ParsePipelineText("undeclared"));
  ASSERT_TRUE(bad.ok());
  PassManager pm2;
  auto s = pm2.Run(m, *bad, report);
  EXPECT_EQ(s.code(), absl::StatusCode::kInternal);
  EXPECT_NE(s.message().find("pass 'undeclared' requested analysis 'counting' without declaring it"),
            std::string::npos)
      << s.message();
}

TEST(PassManager, PlanFollowsTheBuiltinPassesDeclarations) {
  PassRegistry reg;
  ASSERT_TRUE(RegisterBuiltinPasses(reg).ok());
  auto steps = ResolvePipeline(
      reg, *ParsePipelineText("prune-structured{target=experts}, smooth-quant, prune-structured{score=wanda}, "
                              "prune-structured{score=l2}, quantize-int8, prune-structured{target=heads,score=wanda}"));
  ASSERT_TRUE(steps.ok()) << steps.status();
  auto plan = PlanAnalyses(*steps);
  const std::string a = "calibration-statistics";
  EXPECT_EQ(plan[0], std::vector<std::string>{"computes " + a});
  EXPECT_EQ(plan[1], std::vector<std::string>{"recomputes " + a + " (pass 1 'prune-structured' changes the model)"});
  EXPECT_EQ(plan[2], std::vector<std::string>{"reuses " + a + " (computed by pass 2)"}) << "smooth-quant keeps it";
  EXPECT_TRUE(plan[3].empty()) << "l2 scores need no calibration";
  EXPECT_TRUE(plan[4].empty());
  EXPECT_EQ(plan[5], std::vector<std::string>{"recomputes " + a + " (pass 3 'prune-structured' changes the model)"});
}

TEST(Registry, DuplicateNameIsAlreadyExists) {
  PassRegistry r;
  ASSERT_TRUE(RegisterBuiltinPasses(r).ok());
  auto s = RegisterBuiltinPasses(r);
  EXPECT_EQ(s.code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(s.message(), "pass 'cast' is already registered (by builtin)");
}

TEST(Registry, RejectsBadDefaults) {
  PassRegistry r;
  PassInfo p;
  p.name = "x";
  p.options = {{"bits", OptionType::kInt, "99", "", {}, 2, 8}};
  p.create = [](const OptionValues&) -> absl::StatusOr<std::unique_ptr<Pass>> { return nullptr; };
  EXPECT_EQ(r.Register(p).code(), absl::StatusCode::kInvalidArgument);
}

TEST(Selection, DefaultsLeaveEmbeddingsHeadNormsAndBiasesAlone) {
  Model m = TinyModel();
  TensorSelector s;
  EXPECT_EQ(s.Select(m), std::vector<std::string>{"layers.0.q_proj.weight"});
  s.include = {"*.weight"};
  s.exclude = {"*norm*"};
  EXPECT_EQ(s.Select(m),
            (std::vector<std::string>{"embed.weight", "layers.0.q_proj.weight", "lm_head.weight"}));
  TensorSelector all;
  all.scope = DefaultScope::kAllFloating;
  EXPECT_EQ(all.Select(m).size(), 5u);
}

TEST(PassManager, CastReportsExactErrorsAndInvalidates) {
  PassRegistry reg;
  ASSERT_TRUE(RegisterBuiltinPasses(reg).ok());
  Model m = TinyModel();
  auto steps = ResolvePipeline(reg, *ParsePipelineText("cast{dtype=bf16,exclude=[lm_head.*]}"));
  ASSERT_TRUE(steps.ok());
  PassManager pm;
  pm.analyses().Get<CountingAnalysis>(m).IgnoreError();
  RunReport report;
  ASSERT_TRUE(pm.Run(m, *steps, report).ok());
  EXPECT_FALSE(pm.analyses().IsCached("counting"));
  ASSERT_EQ(report.passes.size(), 1u);
  ASSERT_EQ(report.passes[0].tensors.size(), 4u);
  // The metrics come from the first conversion (the writer's): one tensor is produced now,
  // the others are measured by ResolvePendingMetrics (nothing read them).
  for (const auto& t : report.passes[0].tensors) {
    ASSERT_TRUE(t.pending);
    EXPECT_TRUE(t.metrics.empty());
  }
  ASSERT_TRUE(m.tensors.at(report.passes[0].tensors[0].name).Data().ok());
  EXPECT_TRUE(report.passes[0].tensors[0].pending->ready());
  EXPECT_FALSE(report.passes[0].tensors[1].pending->ready());
  ASSERT_TRUE(ResolvePendingMetrics(report).ok());
  const PassReport& pr = report.passes[0];
  EXPECT_EQ(m.tensors.at("lm_head.weight").dtype(), DType::kF32);
  for (const auto& t : pr.tensors) {
    EXPECT_EQ(t.dtype_after, "bf16");
    EXPECT_EQ(t.bytes_after * 2, t.bytes_before);
    // bf16 keeps 8 significant bits: unit roundoff u = 2^-8 bounds each element's
    // relative error, hence the relative Frobenius error.
    EXPECT_LE(t.metrics.at("rel_fro_error"), std::ldexp(1.0, -8));
    EXPECT_GT(t.metrics.at("rel_fro_error"), 0.0);
    // The lazy tensor produces exactly the bf16 of the original values.
    auto orig = TinyModel().tensors.at(t.name).ToF32();
    auto now = m.tensors.at(t.name).ToF32();
    double max_abs = 0;
    for (size_t i = 0; i < orig->size(); ++i) {
      EXPECT_EQ((*now)[i], BF16ToF32(F32ToBF16((*orig)[i])));
      max_abs = std::max(max_abs, std::fabs(static_cast<double>((*now)[i]) - (*orig)[i]));
    }
    EXPECT_DOUBLE_EQ(t.metrics.at("max_abs_error"), max_abs);
    EXPECT_FALSE(t.pending);
  }
}

}  // namespace
}  // namespace compress
