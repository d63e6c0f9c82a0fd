// Every model family of core/family.h against transformers: tiny random checkpoints
// and their logits made by tests/golden/families/make_goldens.py (transformers 5.17, f32,
// eager attention). Our f32 logits must match within 1e-4, and the architecture view must
// show each family's structure (experts, routers, fused projections).
#include <gtest/gtest.h>

#include <cmath>
#include <map>

#include "formats/hf_config.h"
#include "core/family.h"
#include "formats/model_io.h"
#include "formats/safetensors.h"
#include "runtime/llama.h"

namespace compress {
namespace {

const std::string kDir = std::string(COMPRESS_SOURCE_DIR) + "/tests/golden/families/";

struct Golden {
  std::vector<int32_t> ids;
  std::vector<float> logits;  // [T, vocab]
};

Golden ReadGolden(const std::string& family) {
  TensorStore store;
  auto st = ReadSafetensorsFile(kDir + family + "/golden.safetensors", store, nullptr);
  EXPECT_TRUE(st.ok()) << st;
  Golden g;
  const Tensor& ids = store.at("ids");
  auto buf = ids.Data();
  EXPECT_TRUE(buf.ok()) << buf.status();
  const auto* p = reinterpret_cast<const int32_t*>((*buf)->data());
  g.ids.assign(p, p + ids.numel());
  g.logits = *store.at("logits").ToF32();
  return g;
}

class FamilyParity : public ::testing::TestWithParam<std::string> {};

TEST_P(FamilyParity, LogitsMatchTransformers) {
  const std::string fam = GetParam();
  auto m = LoadModel(kDir + fam);
  ASSERT_TRUE(m.ok()) << m.status();
  const std::map<std::string, std::string> variant_of = {
      {"qwen2_yarn", "qwen2"},          {"phi3_longrope", "phi3"},       {"gemma3_linear", "gemma3_text"},
      {"gemma3", "gemma3_text"},        {"gemma3_prefixed", "gemma3_text"}, {"mistral3", "mistral"},
      {"mistral3_prefixed", "mistral"}, {"llava", "llama"},             {"llava_prefixed", "llama"},
      {"qwen2_5_vl", "qwen2"},          {"qwen2_5_vl_prefixed", "qwen2"}, {"idefics3", "llama"},
      {"smolvlm", "llama"}};
  EXPECT_EQ(m->arch.family, variant_of.count(fam) ? variant_of.at(fam) : fam);
  // Multimodal containers: the view is the text decoder's; nothing outside it has a role a pass
  // selects by default.
  const std::string container = fam.ends_with("_prefixed") ? fam.substr(0, fam.size() - 9) : fam;
  const bool multimodal =
      container == "gemma3" || container == "mistral3" || container == "llava" || container == "qwen2_5_vl" ||
      container == "idefics3" || container == "smolvlm";
  EXPECT_EQ(m->arch.container, multimodal ? container : "");
  if (multimodal) {
    int outside = 0;
    for (const auto& [name, role] : m->arch.roles) {
      const bool decoder = name.starts_with("language_model.") || name.starts_with("model.language_model.") ||
                           name.starts_with("model.text_model.") || name.starts_with("model.layers.") || name.starts_with("model.embed_tokens.") ||
                           name.starts_with("model.norm.") || name == "lm_head.weight";
      if (decoder) continue;
      ++outside;
      EXPECT_EQ(role, TensorRole::kOther) << name;
    }
    EXPECT_GT(outside, 10);
  }
  auto rt = LlamaRuntime::Create(*m);
  ASSERT_TRUE(rt.ok()) << rt.status();
  const Golden g = ReadGolden(fam);
  auto logits = (*rt)->Forward(g.ids);
  ASSERT_TRUE(logits.ok()) << logits.status();
  const int64_t V = logits->cols();
  ASSERT_EQ(static_cast<size_t>(logits->rows() * V), g.logits.size());
  double worst = 0, scale = 0;
  for (int64_t t = 0; t < logits->rows(); ++t) {
    for (int64_t j = 0; j < V; ++j) {
      worst = std::max(worst, std::abs(static_cast<double>((*logits)(t, j)) - g.logits[t * V + j]));
      scale = std::max(scale, std::abs(static_cast<double>(g.logits[t * V + j])));
    }
  }
  EXPECT_GT(scale, 0.1) << "degenerate golden";
  EXPECT_LT(worst, 1e-4) << fam << ": largest logit difference " << worst << " (logits up to " << scale << ")";
  // Streaming blocks computes the same thing.
  RuntimeOptions ro;
  ro.stream_blocks = true;
  auto streamed = LlamaRuntime::Create(*m, ro);
  ASSERT_TRUE(streamed.ok()) << streamed.status();
  auto again = (*streamed)->Forward(g.ids);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ((*again - *logits).cwiseAbs().maxCoeff(), 0.f);
}

INSTANTIATE_TEST_SUITE_P(Families, FamilyParity,
                         ::testing::Values("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text",
                                           "phi3", "gpt2", "mixtral", "qwen2_moe", "qwen3_moe",
                                           // rope scaling variants (yarn, longrope with its long
                                           // factors past 16 tokens, Gemma 3's per-layer-type rope)
                                           "qwen2_yarn", "phi3_longrope", "gemma3_linear",
                                           // multimodal containers (text-only forward), both namings
                                           "gemma3", "gemma3_prefixed", "mistral3", "mistral3_prefixed", "llava",
                                           "llava_prefixed", "qwen2_5_vl", "qwen2_5_vl_prefixed",
                                           // Idefics3 and SmolVLM (tied head): model.text_model.*
                                           "idefics3", "smolvlm"),
                         [](const auto& info) { return info.param; });

TEST(FamilyTable, EveryFamilyHasAGolden) {
  for (const FamilySpec& f : Families()) {
    auto m = LoadModel(kDir + std::string(f.name));
    EXPECT_TRUE(m.ok()) << f.name << ": " << m.status();
  }
}

TEST(FamilyView, MoeBlocksShowRoutersAndExperts) {
  auto m = LoadModel(kDir + "qwen2_moe");
  ASSERT_TRUE(m.ok()) << m.status();
  const Architecture& a = m->arch;
  EXPECT_EQ(a.num_experts, 4);
  EXPECT_EQ(a.experts_per_token, 2);
  EXPECT_EQ(a.expert_intermediate_size, 24);
  EXPECT_EQ(a.shared_expert_intermediate_size, 40);
  ASSERT_EQ(a.blocks.size(), 2u);
  const Block& b0 = a.blocks[0];
  EXPECT_EQ(b0.router, "model.layers.0.mlp.gate.weight");
  EXPECT_EQ(b0.shared_expert_gate, "model.layers.0.mlp.shared_expert_gate.weight");
  EXPECT_EQ(b0.num_experts, 4);
  EXPECT_EQ(m->RoleOf(b0.router), TensorRole::kRouter);
  EXPECT_EQ(m->RoleOf(b0.shared_expert_gate), TensorRole::kRouter);
  int routed = 0, shared = 0;
  for (const LinearLayer& l : b0.mlp) {
    routed += l.expert >= 0;
    shared += l.shared_expert;
  }
  EXPECT_EQ(routed, 12);
  EXPECT_EQ(shared, 3);
  // mlp_only_layers = [1]: block 1 is a dense FFN.
  EXPECT_FALSE(a.blocks[1].moe());
  EXPECT_EQ(a.blocks[1].mlp.size(), 3u);

  auto mix = LoadModel(kDir + "mixtral");
  ASSERT_TRUE(mix.ok()) << mix.status();
  const Block& mb = mix->arch.blocks[0];
  EXPECT_EQ(mb.router, "model.layers.0.block_sparse_moe.gate.weight");
  ASSERT_EQ(mb.mlp.size(), 12u);
  EXPECT_EQ(mb.mlp[0].kind, "gate_proj");  // w1
  EXPECT_EQ(mb.mlp[1].kind, "up_proj");    // w3
  EXPECT_EQ(mb.mlp[2].kind, "down_proj");  // w2
  EXPECT_EQ(mb.mlp[2].weight, "model.layers.0.block_sparse_moe.experts.0.w2.weight");
}

TEST(FamilyView, GemmaSlidingLayersFollowLayerTypesOrTheFamilyRule) {
  HfConfig c;
  c.model_type = "gemma2";
  c.sliding_window = 4096;
  EXPECT_TRUE(c.SlidingLayer(0));
  EXPECT_FALSE(c.SlidingLayer(1));
  c.model_type = "gemma3_text";
  c.sliding_window_pattern = 6;
  EXPECT_TRUE(c.SlidingLayer(4));
  EXPECT_FALSE(c.SlidingLayer(5));
  c.layer_types = {"full_attention", "sliding_attention"};
  EXPECT_FALSE(c.SlidingLayer(0));
  EXPECT_TRUE(c.SlidingLayer(1));
  c.sliding_window = 0;
  EXPECT_FALSE(c.SlidingLayer(1));
}

TEST(FamilyView, UnknownFamilyIsRefusedNamingTheSupportedOnes) {
  auto m = LoadModel(kDir + "llama");
  ASSERT_TRUE(m.ok()) << m.status();
  m->config["model_type"] = "mamba";
  auto rt = LlamaRuntime::Create(*m);
  ASSERT_FALSE(rt.ok());
  EXPECT_NE(std::string(rt.status().message()).find("model_type 'mamba' is not supported"), std::string::npos);
  EXPECT_NE(std::string(rt.status().message()).find("qwen3_moe"), std::string::npos);
}

TEST(FamilyView, UnknownLayerTypesLoadButTheRuntimeRefusesThem) {
  auto m = LoadModel(kDir + "llama");
  ASSERT_TRUE(m.ok()) << m.status();
  m->config["layer_types"] = {"linear_attention", "full_attention"};
  ASSERT_TRUE(RebuildHfArchitecture(*m).ok());  // inspect and data-free passes still work
  auto rt = LlamaRuntime::Create(*m);
  ASSERT_FALSE(rt.ok());
  EXPECT_NE(std::string(rt.status().message()).find("layer type 'linear_attention' is not supported"),
            std::string::npos)
      << rt.status();
}

}  // namespace
}  // namespace compress
