// Architecture discovery from config.json + tensor names for the families beyond Llama.
#include "formats/hf_config.h"

#include <gtest/gtest.h>

#include "formats/model_io.h"
#include "formats/safetensors.h"
#include "tests/test_util.h"

namespace compress {
namespace {

void AddZeros(TensorStore& s, const std::string& name, Shape shape) {
  std::vector<float> v(NumElements(shape), 0.f);
  s.Set(name, *Tensor::FromF32(v, shape, DType::kF32));
}

TEST(HfConfig, Gpt2Conv1DWeightsAreInByOut) {
  testing::ScratchDir d;
  TensorStore s;
  AddZeros(s, "transformer.wte.weight", {16, 8});
  AddZeros(s, "transformer.wpe.weight", {4, 8});
  AddZeros(s, "transformer.h.0.ln_1.weight", {8});
  AddZeros(s, "transformer.h.0.ln_1.bias", {8});
  AddZeros(s, "transformer.h.0.attn.c_attn.weight", {8, 24});
  AddZeros(s, "transformer.h.0.attn.c_attn.bias", {24});
  AddZeros(s, "transformer.h.0.attn.c_proj.weight", {8, 8});
  AddZeros(s, "transformer.h.0.ln_2.weight", {8});
  AddZeros(s, "transformer.h.0.mlp.c_fc.weight", {8, 32});
  AddZeros(s, "transformer.h.0.mlp.c_proj.weight", {32, 8});
  AddZeros(s, "transformer.ln_f.weight", {8});
  ASSERT_TRUE(WriteSafetensors(s, d.path().string(), {}).ok());
  testing::WriteFile(
      d / "config.json",
      R"({"model_type":"gpt2","n_embd":8,"n_layer":1,"n_head":2,"vocab_size":16,"n_positions":4})");
  auto m = LoadModel(d.path().string());
  ASSERT_TRUE(m.ok()) << m.status();
  const Architecture& a = m->arch;
  EXPECT_EQ(a.family, "gpt2");
  EXPECT_TRUE(a.tied_embeddings);
  ASSERT_EQ(a.blocks.size(), 1u);
  ASSERT_EQ(a.blocks[0].attention.size(), 2u);
  EXPECT_EQ(a.blocks[0].attention[0].kind, "c_attn");
  EXPECT_EQ(a.blocks[0].attention[0].in_features, 8);
  EXPECT_EQ(a.blocks[0].attention[0].out_features, 24);
  EXPECT_EQ(a.blocks[0].attention[0].bias, "transformer.h.0.attn.c_attn.bias");
  ASSERT_EQ(a.blocks[0].mlp.size(), 2u);
  EXPECT_EQ(a.blocks[0].mlp[0].kind, "c_fc");
  EXPECT_EQ(a.blocks[0].mlp[1].in_features, 32);
  EXPECT_EQ(a.blocks[0].norms.size(), 2u);
  EXPECT_EQ(m->RoleOf("transformer.wpe.weight"), TensorRole::kEmbedding);
  EXPECT_EQ(m->RoleOf("transformer.h.0.attn.c_attn.bias"), TensorRole::kBias);
  EXPECT_EQ(m->RoleOf("transformer.ln_f.weight"), TensorRole::kNorm);
  EXPECT_EQ(a.intermediate_size, 32);
}

TEST(HfConfig, RopeThetaFromEitherStyle) {
  auto old_style = ParseHfConfig(
      nlohmann::json::parse(
          R"({"model_type":"llama","hidden_size":8,"num_hidden_layers":1,"num_attention_heads":2,"rope_theta":500000.0})"),
      "c");
  ASSERT_TRUE(old_style.ok());
  EXPECT_EQ(old_style->rope_theta, 500000.0);
  EXPECT_EQ(old_style->num_kv_heads, 2);
  auto new_style = ParseHfConfig(
      nlohmann::json::parse(
          R"({"model_type":"llama","hidden_size":8,"num_hidden_layers":1,"num_attention_heads":2,"num_key_value_heads":1,
          "rope_parameters":{"rope_theta":1000.0,"rope_type":"llama3","factor":8.0}})"),
      "c");
  ASSERT_TRUE(new_style.ok());
  EXPECT_EQ(new_style->rope_theta, 1000.0);
  ASSERT_TRUE(new_style->rope_scaling.has_value());
  EXPECT_EQ((*new_style->rope_scaling)["factor"], 8.0);
  auto bad = ParseHfConfig(
      nlohmann::json::parse(
          R"({"hidden_size":8,"num_hidden_layers":1,"num_attention_heads":3,"num_key_value_heads":2})"),
      "c");
  EXPECT_EQ(bad.status().message(), "c: num_attention_heads 3 is not a multiple of num_key_value_heads 2");
}

// A multimodal container: the decoder's parameters come from text_config (its model_type, or the
// container's default decoder when it names none), the container's own tie_word_embeddings wins
// (transformers 5 ties by it), errors name text_config, and a text_config nesting another is refused.
TEST(HfConfig, ContainersParseTheirTextConfig) {
  auto parse = [](const std::string& text) { return ParseHfConfig(nlohmann::json::parse(text), "c"); };
  auto gemma = parse(R"({"model_type":"gemma3","tie_word_embeddings":true,"vision_config":{"hidden_size":4},
      "text_config":{"hidden_size":8,"num_hidden_layers":2,"num_attention_heads":2,"num_key_value_heads":1,
      "tie_word_embeddings":false}})");
  ASSERT_TRUE(gemma.ok()) << gemma.status();
  EXPECT_EQ(gemma->container_type, "gemma3");
  EXPECT_EQ(gemma->model_type, "gemma3_text");
  EXPECT_EQ(gemma->hidden_size, 8);
  EXPECT_EQ(gemma->num_layers, 2);
  EXPECT_TRUE(gemma->tie_word_embeddings);
  auto llava = parse(R"({"model_type":"llava","text_config":{"model_type":"qwen2","hidden_size":8,
      "num_hidden_layers":1,"num_attention_heads":2,"tie_word_embeddings":true}})");
  ASSERT_TRUE(llava.ok()) << llava.status();
  EXPECT_EQ(llava->model_type, "qwen2");
  EXPECT_TRUE(llava->tie_word_embeddings);
  auto bad = parse(R"({"model_type":"mistral3","text_config":{"hidden_size":8,"num_hidden_layers":1,
      "num_attention_heads":3,"num_key_value_heads":2}})");
  EXPECT_EQ(bad.status().message(),
            "c (text_config): num_attention_heads 3 is not a multiple of num_key_value_heads 2");
  auto nested = parse(R"({"model_type":"llava","text_config":{"text_config":{"hidden_size":8}}})");
  EXPECT_EQ(nested.status().message(), "c: text_config nests another text_config");
  // A nested config is written as its difference from the text config class's defaults: LLaVA-1.5's
  // and Gemma 3 4B's text_config as published.
  auto llava15 = parse(R"({"model_type":"llava","text_config":{"_name_or_path":"lmsys/vicuna-7b-v1.5",
      "architectures":["LlamaForCausalLM"],"max_position_embeddings":4096,"model_type":"llama","rms_norm_eps":1e-05,
      "torch_dtype":"float16","vocab_size":32064}})");
  ASSERT_TRUE(llava15.ok()) << llava15.status();
  EXPECT_EQ(llava15->hidden_size, 4096);
  EXPECT_EQ(llava15->num_layers, 32);
  EXPECT_EQ(llava15->num_heads, 32);
  EXPECT_EQ(llava15->num_kv_heads, 32);
  EXPECT_EQ(llava15->intermediate_size, 11008);
  EXPECT_EQ(llava15->vocab_size, 32064);
  EXPECT_EQ(llava15->max_positions, 4096);
  EXPECT_FALSE(llava15->tie_word_embeddings);
  auto gemma4b = parse(R"({"model_type":"gemma3","text_config":{"hidden_size":2560,"intermediate_size":10240,
      "model_type":"gemma3_text","num_hidden_layers":34,"rope_scaling":{"factor":8.0,"rope_type":"linear"},
      "sliding_window":1024}})");
  ASSERT_TRUE(gemma4b.ok()) << gemma4b.status();
  EXPECT_EQ(gemma4b->num_heads, 8);
  EXPECT_EQ(gemma4b->num_kv_heads, 4);
  EXPECT_EQ(gemma4b->head_dim, 256);
  EXPECT_EQ(gemma4b->vocab_size, 262208);
  EXPECT_EQ(gemma4b->query_pre_attn_scalar, 256);
  EXPECT_EQ(gemma4b->rope.theta, 1000000.0);
  EXPECT_EQ(gemma4b->rope.type, "linear");
  EXPECT_EQ(gemma4b->rope_local.theta, 10000.0);
  EXPECT_EQ(gemma4b->sliding_window, 1024);
  EXPECT_TRUE(gemma4b->tie_word_embeddings);
  // PaliGemma 2's Gemma 2 decoder: soft-capping and the attention scalar are Gemma2Config's defaults.
  auto pali2 = parse(R"({"model_type":"paligemma","text_config":{"hidden_size":2304,"intermediate_size":9216,
      "model_type":"gemma2","num_hidden_layers":26,"vocab_size":257216}})");
  ASSERT_TRUE(pali2.ok()) << pali2.status();
  EXPECT_EQ(pali2->model_type, "gemma2");
  EXPECT_EQ(pali2->attn_softcap, 50.0);
  EXPECT_EQ(pali2->final_softcap, 30.0);
  EXPECT_EQ(pali2->query_pre_attn_scalar, 256);
  EXPECT_EQ(pali2->num_kv_heads, 4);
  // config.json leaves out a value equal to the class default: Gemma's tie_word_embeddings is true.
  auto gemma_text = parse(R"({"model_type":"gemma3_text","hidden_size":8,"num_hidden_layers":1,"num_attention_heads":2})");
  ASSERT_TRUE(gemma_text.ok());
  EXPECT_TRUE(gemma_text->tie_word_embeddings);
  auto llama_text = parse(R"({"model_type":"llama","hidden_size":8,"num_hidden_layers":1,"num_attention_heads":2})");
  ASSERT_TRUE(llama_text.ok());
  EXPECT_FALSE(llama_text->tie_word_embeddings);
  // A text model keeps its own fields even beside a text_config key.
  auto plain = parse(R"({"model_type":"llama","hidden_size":8,"num_hidden_layers":1,"num_attention_heads":2,
      "text_config":{"hidden_size":4}})");
  ASSERT_TRUE(plain.ok());
  EXPECT_EQ(plain->hidden_size, 8);
  EXPECT_TRUE(plain->container_type.empty());
}

TEST(HfConfig, Qwen2BiasesAttachToTheirLayers) {
  testing::ScratchDir d;
  TensorStore s;
  AddZeros(s, "model.embed_tokens.weight", {16, 8});
  for (const char* p : {"q_proj", "k_proj", "v_proj"}) {
    AddZeros(s, std::string("model.layers.0.self_attn.") + p + ".weight",
             {std::string(p) == "q_proj" ? 8 : 4, 8});
    AddZeros(s, std::string("model.layers.0.self_attn.") + p + ".bias", {std::string(p) == "q_proj" ? 8 : 4});
  }
  AddZeros(s, "model.layers.0.self_attn.o_proj.weight", {8, 8});
  AddZeros(s, "lm_head.weight", {16, 8});
  ASSERT_TRUE(WriteSafetensors(s, d.path().string(), {}).ok());
  testing::WriteFile(
      d / "config.json",
      R"({"model_type":"qwen2","hidden_size":8,"num_hidden_layers":1,"num_attention_heads":2,"num_key_value_heads":1,"vocab_size":16})");
  auto m = LoadModel(d.path().string());
  ASSERT_TRUE(m.ok()) << m.status();
  ASSERT_EQ(m->arch.blocks[0].attention.size(), 4u);
  EXPECT_EQ(m->arch.blocks[0].attention[1].kind, "k_proj");
  EXPECT_EQ(m->arch.blocks[0].attention[1].bias, "model.layers.0.self_attn.k_proj.bias");
  EXPECT_EQ(m->arch.lm_head, "lm_head.weight");
  EXPECT_EQ(m->RoleOf("lm_head.weight"), TensorRole::kLmHead);
}

}  // namespace
}  // namespace compress
