// Every quantization and pruning pass on every model family (the tiny transformers-made
// checkpoints of tests/golden/families): the run succeeds, the output loads and runs, its
// logits stay near the input's, and MoE routers are left alone. MoE calibration reports
// per-expert token counts and names each starved expert's fallback.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>

#include <filesystem>
#include <random>
#include <set>

#include "calibrate/calibration.h"
#include "core/block_quant.h"
#include "formats/model_io.h"
#include "nlohmann/json.hpp"
#include "runtime/llama.h"
#include "tests/pipeline_util.h"
#include "tests/test_util.h"

namespace compress {
namespace {
using testing::RunCompress;
using testing::ScratchDir;

const std::string kDir = std::string(COMPRESS_SOURCE_DIR) + "/tests/golden/families/";
const std::vector<int32_t> kIds = {5, 17, 3, 44, 90, 12, 8, 61, 33, 2, 77, 50, 9, 28, 71, 14, 40, 66, 1, 85};

// Whitespace-separated random token ids below the tiny models' vocabulary of 96.
std::string WriteCalibration(const ScratchDir& d) {
  std::mt19937 rng(7);
  std::string text;
  for (int i = 0; i < 400; ++i) text += std::to_string(rng() % 96) + " ";
  const std::string path = d / "calib.tok";
  testing::WriteFile(path, text);
  return path;
}

RowMatrix Logits(const std::string& path) {
  auto m = LoadModel(path);
  EXPECT_TRUE(m.ok()) << m.status();
  if (!m.ok()) return {};
  auto rt = LlamaRuntime::Create(*m);
  EXPECT_TRUE(rt.ok()) << path << ": " << rt.status();
  if (!rt.ok()) return {};
  auto l = (*rt)->Forward(kIds);
  EXPECT_TRUE(l.ok()) << l.status();
  return l.ok() ? *l : RowMatrix();
}

// The checkpoint at `path` loads and gives finite logits.
void ExpectRuns(const std::string& path) {
  const RowMatrix logits = Logits(path);
  EXPECT_TRUE(logits.size() > 0 && logits.allFinite()) << path;
}

struct Case {
  std::string pipeline;
  bool calibrated;
  // Of the output's logits against the input's, on random tiny models whose errors grow
  // through the blocks: loose enough for every family (the random Gemma 3 container is the
  // most sensitive: 8-bit weights move its logits by 6-9%), far below the ~1 that a misread
  // layout (transposed, mis-grouped, wrong expert) gives.
  double max_rel_error;
};

class FamilyPasses : public ::testing::TestWithParam<std::string> {};

TEST_P(FamilyPasses, EveryPassRunsAndTheOutputStaysClose) {
  const std::string fam = GetParam();
  const std::string src = kDir + fam;
  ScratchDir d;
  const std::string calib = WriteCalibration(d);
  const RowMatrix ref = Logits(src);
  ASSERT_GT(ref.size(), 0);
  auto src_model = LoadModel(src);
  ASSERT_TRUE(src_model.ok());
  const std::vector<Case> cases = {
      {"quantize-int8", false, 0.1},
      {"quantize-int{bits=4,group-size=8}", false, 0.5},
      {"quantize-nf4{block=8}", false, 0.5},
      {"quantize-fp4{group-size=8}", false, 0.5},
      {"llm-int8", false, 0.1},
      {"llm-int8", true, 0.1},
      {"quantize-w8a8", false, 0.1},
      {"quantize-w8a8{type=fp8,activations=static}", true, 0.3},
      {"quantize-kv", true, 0.15},
      {"prune-magnitude{sparsity=0.25}", false, 0.8},
      {"prune-magnitude{sparsity=0.25,score=wanda}", true, 0.8},
      {"quantize-gptq{bits=4,group-size=8}", true, 0.6},
      {"prune-sparsegpt{sparsity=0.25}", true, 0.8},
      {"smooth-quant,quantize-w8a8{activations=static}", true, 0.3},
      {"quantize-w4a4", true, 1.0},
  };
  int n = 0;
  for (const Case& c : cases) {
    SCOPED_TRACE(fam + ": " + c.pipeline);
    const std::string out = d / ("out" + std::to_string(n++));
    std::string args = "run '" + src + "' -p '" + c.pipeline + "' -o '" + out + "' --report '" + out + ".json'";
    if (c.calibrated) args += " --calibration '" + calib + "' --calib-samples 8 --calib-seqlen 16";
    auto r = RunCompress(args, d.path().string());
    ASSERT_EQ(r.exit_code, 0) << r.err;
    const RowMatrix got = Logits(out);
    ASSERT_EQ(got.rows(), ref.rows());
    ASSERT_TRUE(got.allFinite());
    const double rel = (got - ref).norm() / ref.norm();
    EXPECT_LT(rel, c.max_rel_error);
    EXPECT_GT(rel, 0.0) << "the pass changed nothing";
    std::printf("%s %s: relative logit change %.4f\n", fam.c_str(), c.pipeline.c_str(), rel);
    // Routers and shared-expert gates are never quantized or pruned by default. (smooth-quant
    // scales their input columns like every other reader of the norm it divides, so that
    // they compute the same scores: exact, not a change of the router.)
    auto m = LoadModel(out);
    ASSERT_TRUE(m.ok()) << m.status();
    // A multimodal container's vision tower and projector are written as they were.
    EXPECT_EQ(m->arch.container, src_model->arch.container);
    for (const auto& [name, role] : src_model->arch.roles) {
      if (src_model->arch.container.empty() || role != TensorRole::kOther) continue;
      ASSERT_TRUE(m->tensors.contains(name)) << name;
      EXPECT_FALSE(m->tensors.at(name).quant()) << name;
      EXPECT_EQ(*m->tensors.at(name).ToF32(), *src_model->tensors.at(name).ToF32()) << name;
    }
    const bool smoothed = c.pipeline.starts_with("smooth-quant");
    for (const Block& b : m->arch.blocks) {
      for (const std::string& t : {b.router, b.shared_expert_gate}) {
        if (t.empty()) continue;
        EXPECT_FALSE(m->tensors.at(t).quant()) << t;
        EXPECT_EQ(m->tensors.at(t).dtype(), src_model->tensors.at(t).dtype()) << t;
        if (!smoothed) {
          EXPECT_EQ(*m->tensors.at(t).ToF32(), *src_model->tensors.at(t).ToF32()) << t;
        }
      }
    }
  }
}

// Past the result memory budget the codebook quantizers keep only scales for the weights they
// code from the stored bytes; GPT-2's [in, out] Conv1D weights are coded from f32 and keep their
// codes, and the report says how many. Weights read from a file in the other layouts are
// quantized while writing whatever the budget: they do not count against it (the Llama file's
// run says nothing about the budget, the same weights held in memory do).
TEST(FamilyBudget, CodebookPassesSayWhichWeightsKeepTheirCodes) {
  for (const std::string fam : {"gpt2", "llama", "llama in memory"}) {
    SCOPED_TRACE(fam);
    auto m = LoadModel(kDir + fam.substr(0, fam.find(' ')));
    ASSERT_TRUE(m.ok()) << m.status();
    if (fam.ends_with("in memory")) {
      for (const auto& n : m->tensors.names()) {
        const Tensor& t = m->tensors.at(n);
        auto bytes = t.ReadCopy();
        ASSERT_TRUE(bytes.ok());
        m->tensors.Set(n, Tensor(t.dtype(), t.shape(), *bytes));
      }
    }
    setenv("COMPRESS_MEMORY_BUDGET", "0", 1);
    auto r = testing::RunPipeline(*m, "quantize-nf4{block=8}", nullptr);
    unsetenv("COMPRESS_MEMORY_BUDGET");
    ASSERT_TRUE(r.ok()) << r.status();
    std::string notes;
    for (const auto& n : r->passes.at(0).notes) notes += n + "\n";
    EXPECT_EQ(notes.find("exceed the result memory budget") != std::string::npos, fam != "llama") << notes;
    EXPECT_EQ(notes.find("keep their codes in memory") != std::string::npos, fam == "gpt2") << notes;
  }
}

// quantize-gguf (its output is a GGUF file, which embeds a tokenizer these checkpoints lack, so
// the model is checked in memory): ggml block types on every family, GPT-2's Conv1D weights
// included (stored [out, in] as GGUF holds them), run by our runtime near the input's logits;
// also calibrated (GPTQ onto the block grids, its solves through VisitSpread except GPT-2's).
TEST_P(FamilyPasses, QuantizeGgufBlockTypesRunInTheRuntime) {
  const std::string fam = GetParam();
  const RowMatrix ref = Logits(kDir + fam);
  ASSERT_GT(ref.size(), 0);
  CalibrationData calib;
  std::mt19937 rng(3);
  for (int w = 0; w < 8; ++w) {
    calib.windows.emplace_back();
    for (int t = 0; t < 16; ++t) calib.windows.back().push_back(static_cast<int32_t>(rng() % 96));
  }
  struct GgufCase {
    std::string pipeline;
    double bound;
    bool calibrated;
  };
  for (const auto& [pipeline, bound, calibrated] : {GgufCase{"quantize-gguf{type=Q8_0}", 0.1, false},
                                                    GgufCase{"quantize-gguf{type=Q4_0}", 0.8, false},
                                                    GgufCase{"quantize-gguf{type=Q4_K_M}", 0.8, true}}) {
    SCOPED_TRACE(fam + ": " + pipeline + (calibrated ? " calibrated" : ""));
    auto m = LoadModel(kDir + fam);
    ASSERT_TRUE(m.ok()) << m.status();
    auto r = testing::RunPipeline(*m, pipeline, calibrated ? &calib : nullptr);
    ASSERT_TRUE(r.ok()) << r.status();
    if (calibrated) {
      const auto& notes = r->passes.at(0).notes;
      EXPECT_NE(std::find_if(notes.begin(), notes.end(),
                             [](const std::string& n) { return n.find("GPTQ error feedback") != std::string::npos; }),
                notes.end());
    }
    int blocks = 0;
    for (const auto& n : m->tensors.names()) blocks += IsBlockType(m->tensors.at(n).dtype());
    EXPECT_GT(blocks, 0);
    auto rt = LlamaRuntime::Create(*m);
    ASSERT_TRUE(rt.ok()) << rt.status();
    auto got = (*rt)->Forward(kIds);
    ASSERT_TRUE(got.ok()) << got.status();
    ASSERT_TRUE(got->allFinite());
    const double rel = (*got - ref).norm() / ref.norm();
    EXPECT_LT(rel, bound);
    EXPECT_GT(rel, 0.0);
  }
}

INSTANTIATE_TEST_SUITE_P(Families, FamilyPasses,
                         ::testing::Values("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text",
                                           "phi3", "gpt2", "mixtral", "qwen2_moe", "qwen3_moe",
                                           // multimodal containers: their text decoders
                                           "gemma3", "mistral3_prefixed", "llava", "qwen2_5_vl", "smolvlm"),
                         [](const auto& info) { return info.param; });

TEST(MoeCalibration, ExpertTokenCountsSumToTokensTimesTopKAndStarvedExpertsFallBack) {
  ScratchDir d;
  const std::string calib = WriteCalibration(d);
  const std::string src = kDir + "qwen3_moe";
  auto run = [&](const std::string& extra, const std::string& out) {
    return RunCompress("run '" + src + "' -p 'quantize-gptq{bits=4,group-size=8}' -o '" + out + "' --report '" +
                           out + ".json' --report-md '" + out + ".md' --calibration '" + calib +
                           "' --calib-samples 8 --calib-seqlen 16" + extra,
                       d.path().string());
  };
  auto r = run("", d / "a");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto j = nlohmann::json::parse(testing::ReadFile(d / "a.json"));
  const auto& ex = j["passes"][0]["experts"];
  ASSERT_EQ(ex.size(), 8u);  // 2 MoE blocks x 4 experts
  std::map<int, int64_t> per_block;
  for (const auto& e : ex) per_block[e["block"].get<int>()] += e["tokens"].get<int64_t>();
  for (const auto& [b, n] : per_block) EXPECT_EQ(n, 8 * 16 * 2) << "block " << b;
  // Every expert's layers were quantized (none skipped).
  int expert_layers = 0;
  for (const auto& t : j["passes"][0]["tensors"])
    expert_layers += t["name"].get<std::string>().find(".experts.") != std::string::npos;
  EXPECT_EQ(expert_layers, 2 * 4 * 3);
  EXPECT_NE(testing::ReadFile(d / "a.md").find("8 expert calibrations"), std::string::npos);

  // Every expert starves below 1000 tokens: each is reported with its fallback, and with
  // data-free statistics GPTQ rounds to nearest.
  r = run(" --min-expert-tokens 1000", d / "b");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  j = nlohmann::json::parse(testing::ReadFile(d / "b.json"));
  int fallbacks = 0;
  for (const auto& e : j["passes"][0]["experts"]) fallbacks += e["data_free"].get<bool>();
  EXPECT_EQ(fallbacks, 8);
  int named = 0;
  for (const auto& n : j["passes"][0]["notes"]) named += n.get<std::string>().find("data-free statistics") != std::string::npos;
  EXPECT_EQ(named, 8);
  auto rtn = RunCompress("run '" + src + "' -p 'quantize-int{bits=4,group-size=8,include=[*experts*]}' -o '" +
                             (d / "rtn") + "'",
                         d.path().string());
  ASSERT_EQ(rtn.exit_code, 0) << rtn.err;
  auto gm = LoadModel(d / "b"), rm = LoadModel(d / "rtn");
  ASSERT_TRUE(gm.ok() && rm.ok());
  for (const auto& name : rm->tensors.names()) {
    if (name.find(".experts.") == std::string::npos) continue;
    EXPECT_EQ(*gm->tensors.at(name).ToF32(), *rm->tensors.at(name).ToF32()) << name;
  }
}


TEST(FamilyPasses, StructuredPruningRefusesWhatItCannotReshapeWithAClearError) {
  ScratchDir d;
  struct Refusal {
    std::string family, pipeline, message;
  };
  for (const Refusal& c : std::vector<Refusal>{
           {"gpt2", "prune-structured{target=heads,ratio=0.5}", "needs a Llama-family safetensors checkpoint"}}) {
    SCOPED_TRACE(c.family + " " + c.pipeline);
    auto r = RunCompress("run '" + kDir + c.family + "' -p '" + c.pipeline + "' -o '" + (d / "out") + "'",
                         d.path().string());
    EXPECT_EQ(r.exit_code, 2) << r.err;
    EXPECT_NE(r.err.find(c.message), std::string::npos) << r.err;
    EXPECT_FALSE(std::filesystem::exists(d / "out"));
  }
}


// Neuron pruning inside mixtures of experts and GPT-2's Conv1D MLPs: every routed expert (and
// the shared expert, and dense blocks) keeps the same share of its neurons; the result
// computes exactly what the original computes with the removed neurons' output weights
// (down_proj columns, GPT-2's c_proj rows) zeroed.
TEST(FamilyPasses, NeuronPruningShrinksEveryExpertExactly) {
  ScratchDir d;
  for (const std::string fam : {"qwen3_moe", "mixtral", "qwen2_moe", "gpt2"}) {
    SCOPED_TRACE(fam);
    const std::string out = d / (fam + "-neurons");
    auto r = RunCompress("run '" + kDir + fam + "' -p 'prune-structured{target=neurons,ratio=0.5}' -o '" + out +
                             "' --report '" + out + ".json'",
                         d.path().string());
    ASSERT_EQ(r.exit_code, 0) << r.err;
    auto src = LoadModel(kDir + fam), m = LoadModel(out);
    ASSERT_TRUE(src.ok() && m.ok()) << m.status();
    const Architecture &a0 = src->arch, &a1 = m->arch;
    EXPECT_EQ(a1.expert_intermediate_size, (a0.expert_intermediate_size + 1) / 2);
    if (fam == "gpt2") {
      EXPECT_EQ(a1.intermediate_size, (a0.intermediate_size + 1) / 2);
      EXPECT_EQ(m->config.at("n_inner").get<int64_t>(), a1.intermediate_size);
    }
    if (a0.shared_expert_intermediate_size > 0) {
      EXPECT_EQ(a1.shared_expert_intermediate_size, (a0.shared_expert_intermediate_size + 1) / 2);
    }
    // Which rows of each gate survived (rows of random weights are unique): zero the others'
    // down_proj columns in the source.
    Model zeroed = *src;
    int groups = 0;
    for (size_t bi = 0; bi < a0.blocks.size(); ++bi) {
      for (const LinearLayer& gate : a0.blocks[bi].mlp) {
        const bool gpt2 = gate.kind == "c_fc";  // Conv1D [D, I]: neurons are columns
        if (gate.kind != "gate_proj" && !gpt2) continue;
        const LinearLayer* down = nullptr;
        for (const LinearLayer& l : a0.blocks[bi].mlp) {
          if ((l.kind == "down_proj" || l.kind == "c_proj") && l.expert == gate.expert &&
              l.shared_expert == gate.shared_expert) {
            down = &l;
          }
        }
        ASSERT_NE(down, nullptr);
        const Tensor &g0 = src->tensors.at(gate.weight), &g1 = m->tensors.at(gate.weight);
        auto rows_of = [&](const Tensor& t) {  // neurons as rows [I, D]
          std::vector<float> v = *t.ToF32();
          if (!gpt2) return v;
          const int64_t r = t.shape()[0], c = t.shape()[1];
          std::vector<float> tr(v.size());
          for (int64_t i = 0; i < r; ++i)
            for (int64_t j = 0; j < c; ++j) tr[j * r + i] = v[i * c + j];
          return tr;
        };
        const int64_t inter = g0.shape()[gpt2 ? 1 : 0], D = g0.shape()[gpt2 ? 0 : 1], keep = g1.shape()[gpt2 ? 1 : 0];
        ASSERT_EQ(keep, (inter + 1) / 2) << gate.weight;
        const std::vector<float> v0 = rows_of(g0), v1 = rows_of(g1);
        std::set<int64_t> kept;
        for (int64_t i = 0; i < keep; ++i) {
          for (int64_t j = 0; j < inter; ++j) {
            if (std::equal(v1.begin() + i * D, v1.begin() + (i + 1) * D, v0.begin() + j * D)) kept.insert(j);
          }
        }
        ASSERT_EQ(static_cast<int64_t>(kept.size()), keep) << gate.weight;
        const Tensor& dn = src->tensors.at(down->weight);
        std::vector<float> dv = *dn.ToF32();
        for (int64_t j = 0; j < inter; ++j) {
          if (kept.count(j)) continue;
          for (int64_t k = 0; k < D; ++k) dv[gpt2 ? j * D + k : k * inter + j] = 0.f;  // GPT-2 c_proj is [I, D]
        }
        zeroed.tensors.Set(down->weight, *Tensor::FromF32(dv, dn.shape(), dn.dtype()));
        ++groups;
      }
    }
    EXPECT_GE(groups, fam == "gpt2" ? 2 : 5);  // every block; experts: every expert of every MoE block
    auto rt0 = LlamaRuntime::Create(zeroed), rt1 = LlamaRuntime::Create(*m);
    ASSERT_TRUE(rt0.ok() && rt1.ok());
    const RowMatrix l0 = *(*rt0)->Forward(kIds), l1 = *(*rt1)->Forward(kIds);
    EXPECT_LT((l1 - l0).norm(), 1e-4 * l0.norm());
    EXPECT_GT((l1 - Logits(kDir + fam)).norm(), 1e-3 * l0.norm()) << "the pass changed nothing";
  }
}

TEST(FamilyPasses, ExpertPruningDropsTheLeastRoutedExpertsAndTheModelRuns) {
  ScratchDir d;
  const std::string calib = WriteCalibration(d);
  for (const std::string fam : {"qwen3_moe", "mixtral", "qwen2_moe"}) {
    SCOPED_TRACE(fam);
    const std::string out = d / (fam + "-pruned");
    auto r = RunCompress("run '" + kDir + fam + "' -p 'prune-structured{target=experts,ratio=0.5}' -o '" + out +
                             "' --report '" + out + ".json' --calibration '" + calib +
                             "' --calib-samples 8 --calib-seqlen 16",
                         d.path().string());
    ASSERT_EQ(r.exit_code, 0) << r.err;
    auto m = LoadModel(out);
    ASSERT_TRUE(m.ok()) << m.status();
    EXPECT_EQ(m->arch.num_experts, 2);
    auto src = LoadModel(kDir + fam);
    ASSERT_TRUE(src.ok());
    auto j = nlohmann::json::parse(testing::ReadFile(out + ".json"));
    std::map<int, std::vector<int64_t>> counts;
    for (const auto& e : j["passes"][0]["experts"]) {
      counts[e["block"].get<int>()].resize(4);
      counts[e["block"].get<int>()][e["expert"].get<int>()] = e["tokens"].get<int64_t>();
    }
    for (const Block& b : m->arch.blocks) {
      if (!b.moe()) continue;
      EXPECT_EQ(m->tensors.at(b.router).shape(), (Shape{2, 32}));
      // The kept experts are the two most used, in their old order: their weights moved to 0 and 1.
      std::vector<int> order = {0, 1, 2, 3};
      const auto& n = counts[b.index];
      std::stable_sort(order.begin(), order.end(), [&](int x, int y) { return n[x] > n[y]; });
      std::vector<int> kept = {order[0], order[1]};
      std::sort(kept.begin(), kept.end());
      const Block& sb = src->arch.blocks[b.index];
      for (int k = 0; k < 2; ++k) {
        for (const LinearLayer& l : b.mlp) {
          if (l.expert != k) continue;
          for (const LinearLayer& s : sb.mlp) {
            if (s.expert == kept[k] && s.kind == l.kind) {
              EXPECT_EQ(*m->tensors.at(l.weight).ToF32(), *src->tensors.at(s.weight).ToF32()) << l.weight;
            }
          }
        }
        const auto router = *m->tensors.at(b.router).ToF32(), src_router = *src->tensors.at(sb.router).ToF32();
        EXPECT_TRUE(std::equal(router.begin() + k * 32, router.begin() + (k + 1) * 32,
                               src_router.begin() + kept[k] * 32));
      }
    }
    ExpectRuns(out);
  }
}


TEST(FamilyPasses, CalibrationStatisticsAreAnAnalysisRecomputedAfterAPassChangesTheModel) {
  ScratchDir d;
  const std::string calib = WriteCalibration(d);
  const std::string out = d / "out";
  auto r = RunCompress("run '" + kDir + "qwen3_moe" +
                           "' -p 'prune-structured{target=experts,ratio=0.5}, "
                           "prune-structured{target=heads,ratio=0.5,score=wanda}' -o '" + out + "' --report '" + out +
                           ".json' --calibration '" + calib + "' --calib-samples 8 --calib-seqlen 16",
                       d.path().string());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto j = nlohmann::json::parse(testing::ReadFile(out + ".json"));
  auto has = [&](int pass, const std::string& text) {
    for (const auto& n : j["passes"][pass]["notes"])
      if (n.get<std::string>().find(text) != std::string::npos) return true;
    return false;
  };
  EXPECT_TRUE(has(0, "computed analysis 'calibration-statistics'")) << j["passes"][0]["notes"];
  EXPECT_TRUE(has(1, "recomputed analysis 'calibration-statistics': pass 1 'prune-structured' changed the model"))
      << j["passes"][1]["notes"];
}


TEST(FamilyPasses, Phi3FusedProjectionsArePrunedAndStayFused) {
  ScratchDir d;
  for (const std::string target : {"heads", "neurons"}) {
    SCOPED_TRACE(target);
    const std::string out = d / target;
    auto r = RunCompress("run '" + kDir + "phi3' -p 'prune-structured{target=" + target + ",ratio=0.5}' -o '" + out +
                             "'",
                         d.path().string());
    ASSERT_EQ(r.exit_code, 0) << r.err;
    auto m = LoadModel(out);
    ASSERT_TRUE(m.ok()) << m.status();
    const Block& b = m->arch.blocks[0];
    std::set<std::string> kinds;
    for (const auto* list : {&b.attention, &b.mlp})
      for (const LinearLayer& l : *list) kinds.insert(l.kind);
    EXPECT_EQ(kinds, (std::set<std::string>{"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}));
    if (target == "heads") {
      // 2 KV groups -> 1: q 2 heads, k 1, v 1 of head_dim 8.
      EXPECT_EQ(m->tensors.at("model.layers.0.self_attn.qkv_proj.weight").shape(), (Shape{32, 32}));
      EXPECT_EQ(m->config["num_attention_heads"], 2);
    } else {
      EXPECT_EQ(m->tensors.at("model.layers.0.mlp.gate_up_proj.weight").shape(), (Shape{48, 32}));
      EXPECT_EQ(m->config["intermediate_size"], 24);
    }
    ExpectRuns(out);
  }
}


// FinerCut on every family: removed sublayers are zeroed (and skipped by the runtime), whole
// blocks are dropped with the per-layer config (layer_types, mlp_only_layers) following them.
TEST(FamilyPasses, FinerCutRemovesSublayersAndBlocksOfEveryFamily) {
  ScratchDir d;
  const std::string calib = WriteCalibration(d);
  for (const std::string fam : {"llama", "qwen3", "gemma2", "gemma3_text", "phi3", "gpt2", "mixtral", "qwen2_moe",
                                 "gemma3", "llava_prefixed", "idefics3"}) {
    for (const std::string candidates : {"sublayers", "blocks"}) {
      SCOPED_TRACE(fam + " " + candidates);
      const std::string out = d / (fam + "-" + candidates);
      auto r = RunCompress("run '" + kDir + fam + "' -p 'remove-layers-finercut{ratio=0.5,candidates=" + candidates +
                               ",samples=4}' -o '" + out + "' --report '" + out + ".json' --calibration '" + calib +
                               "' --calib-samples 4 --calib-seqlen 16",
                           d.path().string());
      ASSERT_EQ(r.exit_code, 0) << r.err;
      auto j = nlohmann::json::parse(testing::ReadFile(out + ".json"));
      EXPECT_GT(j["passes"][0]["stats"]["sublayers_removed"].get<double>(), 0);
      auto m = LoadModel(out);
      ASSERT_TRUE(m.ok()) << m.status();
      auto src = LoadModel(kDir + fam);
      ASSERT_TRUE(src.ok());
      if (candidates == "blocks") {
        EXPECT_LT(m->arch.blocks.size(), src->arch.blocks.size());
      }
      // A container's student keeps the container (its text_config says the decoder's new
      // layer count) and its vision tower.
      EXPECT_EQ(m->arch.container, src->arch.container);
      if (!src->arch.container.empty()) {
        const auto cfg = nlohmann::json::parse(testing::ReadFile(out + "/config.json"));
        EXPECT_EQ(cfg["text_config"]["num_hidden_layers"].get<size_t>(), m->arch.blocks.size());
        EXPECT_FALSE(cfg.contains("num_hidden_layers"));
        for (const auto& [name, role] : src->arch.roles) {
          if (role == TensorRole::kOther) {
            EXPECT_TRUE(m->tensors.contains(name)) << name;
          }
        }
      }
      ExpectRuns(out);
    }
  }
}

}  // namespace
}  // namespace compress
