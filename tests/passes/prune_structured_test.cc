// Structured neuron pruning: removing neurons that contribute nothing leaves the logits
// unchanged, shapes and config.json follow, and the written checkpoint reloads.
#include "passes/prune/prune_structured.h"

#include <gtest/gtest.h>

#include "core/pass_manager.h"
#include "formats/model_io.h"
#include "passes/registry.h"
#include "runtime/llama.h"
#include "tests/pipeline_util.h"
#include "tests/test_util.h"

namespace compress {
namespace {

TEST(PruneStructured, RemovingSilentNeuronsKeepsTheOutput) {
  const std::string src = testing::SharedModel("pycode-tiny");
  REQUIRE_SHARED(src);
  auto m = LoadModel(src);
  ASSERT_TRUE(m.ok());
  // Silence every 4th neuron of every block (gate and up rows, down column) in bf16.
  const int64_t inter = m->arch.intermediate_size, hidden = m->arch.hidden_size;
  for (const Block& b : m->arch.blocks) {
    for (const LinearLayer& l : b.mlp) {
      Tensor t = m->tensors.at(l.weight);
      auto v = *t.ToF32();
      for (int64_t j = 0; j < inter; j += 4) {
        for (int64_t k = 0; k < hidden; ++k) {
          if (l.kind == "down_proj")
            v[k * inter + j] = 0.f;
          else
            v[j * hidden + k] = 0.f;
        }
      }
      m->tensors.Set(l.weight, *Tensor::FromF32(v, t.shape(), t.dtype()));
    }
  }
  std::vector<int32_t> ids;
  for (int i = 0; i < 48; ++i) ids.push_back((i * 131 + 7) % 8192);
  auto before = (*LlamaRuntime::Create(*m))->Forward(ids);
  ASSERT_TRUE(before.ok());

  auto r = testing::RunPipeline(*m, "prune-structured{ratio=0.25}");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->passes[0].stats.at("intermediate_size_after"), 288);
  testing::ScratchDir d;
  ASSERT_TRUE(SaveModel(*m, d / "pruned", {}).ok());
  auto back = LoadModel(d / "pruned");
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->config["intermediate_size"], 288);
  EXPECT_EQ(back->tensors.at("model.layers.0.mlp.gate_proj.weight").shape(), (Shape{288, 128}));
  EXPECT_EQ(back->tensors.at("model.layers.0.mlp.down_proj.weight").shape(), (Shape{128, 288}));
  auto after = (*LlamaRuntime::Create(*back))->Forward(ids);
  ASSERT_TRUE(after.ok());
  EXPECT_LT((*before - *after).cwiseAbs().maxCoeff(), 1e-4);
  EXPECT_EQ(back->ParameterCount(), 1836160 - 4 * 3 * 96 * 128);
}

}  // namespace
}  // namespace compress

namespace compress {
namespace {

TEST(PruneStructured, RemovingSilentHeadsKeepsTheOutput) {
  const std::string src = testing::SharedModel("pycode-tiny");
  REQUIRE_SHARED(src);
  auto m = LoadModel(src);
  ASSERT_TRUE(m.ok());
  const int64_t H = m->arch.num_heads, KV = m->arch.num_kv_heads, d = m->arch.head_dim, D = m->arch.hidden_size;
  const int64_t per = H / KV;
  // Silence KV group g = block % KV in every block: its q/k/v rows and o_proj columns.
  for (const Block& b : m->arch.blocks) {
    const int64_t g = b.index % KV;
    for (const LinearLayer& l : b.attention) {
      Tensor t = m->tensors.at(l.weight);
      auto v = *t.ToF32();
      if (l.kind == "o_proj") {
        for (int64_t j = 0; j < t.shape()[0]; ++j)
          for (int64_t c = g * per * d; c < (g + 1) * per * d; ++c) v[j * H * d + c] = 0.f;
      } else {
        const int64_t r0 = l.kind == "q_proj" ? g * per * d : g * d, n = l.kind == "q_proj" ? per * d : d;
        std::fill(v.begin() + r0 * D, v.begin() + (r0 + n) * D, 0.f);
      }
      m->tensors.Set(l.weight, *Tensor::FromF32(v, t.shape(), t.dtype()));
    }
  }
  std::vector<int32_t> ids;
  for (int i = 0; i < 48; ++i) ids.push_back((i * 131 + 7) % 8192);
  auto before = (*LlamaRuntime::Create(*m))->Forward(ids);
  ASSERT_TRUE(before.ok());
  const double ratio = 1.0 / static_cast<double>(KV);
  auto r = testing::RunPipeline(*m, fmt::format("prune-structured{{target=heads,ratio={}}}", ratio));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->passes[0].stats.at("attention_heads_after"), H - per);
  testing::ScratchDir dir;
  ASSERT_TRUE(SaveModel(*m, dir / "pruned", {}).ok());
  auto back = LoadModel(dir / "pruned");
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->config["num_attention_heads"], H - per);
  EXPECT_EQ(back->config["num_key_value_heads"], KV - 1);
  EXPECT_EQ(back->config["head_dim"], d);
  EXPECT_EQ(back->tensors.at("model.layers.0.self_attn.q_proj.weight").shape(), (Shape{(H - per) * d, D}));
  EXPECT_EQ(back->tensors.at("model.layers.0.self_attn.k_proj.weight").shape(), (Shape{(KV - 1) * d, D}));
  EXPECT_EQ(back->tensors.at("model.layers.0.self_attn.o_proj.weight").shape(), (Shape{D, (H - per) * d}));
  auto after = (*LlamaRuntime::Create(*back))->Forward(ids);
  ASSERT_TRUE(after.ok());
  EXPECT_LT((*before - *after).cwiseAbs().maxCoeff(), 1e-4);
}

}  // namespace
}  // namespace compress
