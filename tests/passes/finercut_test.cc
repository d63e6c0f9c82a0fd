// FinerCut: the greedy choice is the single removal with the smallest output change, the
// written checkpoint (zeroed projections, dropped blocks) computes exactly what the runtime
// computes with those sublayers skipped, and the distillation metadata describes it.
#include "analyze/plot.h"
#include "passes/layers/finercut.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>

#include "calibrate/calibration.h"
#include "formats/fused_layout.h"
#include "formats/gguf_container.h"
#include "formats/hf_config.h"
#include "formats/model_io.h"
#include "runtime/llama.h"
#include "tests/pipeline_util.h"
#include "tests/test_util.h"

namespace compress {
namespace {

CalibrationData Calib(const std::string& src) {
  CalibrationOptions co{std::string(COMPRESS_SOURCE_DIR) + "/samples/eval/pycode-sample.txt", 2, 64, 5};
  return *LoadCalibration(co, src + "/tokenizer.json");
}

std::vector<double> LogSoftmax(const RowMatrix& z, Eigen::Index row) {
  std::vector<double> out(z.cols());
  double mx = z.row(row).maxCoeff(), sum = 0;
  for (Eigen::Index j = 0; j < z.cols(); ++j) sum += std::exp(z(row, j) - mx);
  for (Eigen::Index j = 0; j < z.cols(); ++j) out[j] = z(row, j) - mx - std::log(sum);
  return out;
}

// Mean JS divergence between two logit sets, written independently of the pass.
double MeanJs(const std::vector<RowMatrix>& a, const std::vector<RowMatrix>& b) {
  double total = 0;
  int64_t n = 0;
  for (size_t s = 0; s < a.size(); ++s) {
    for (Eigen::Index t = 0; t < a[s].rows(); ++t, ++n) {
      auto p = LogSoftmax(a[s], t), q = LogSoftmax(b[s], t);
      for (size_t j = 0; j < p.size(); ++j) {
        const double m = 0.5 * (std::exp(p[j]) + std::exp(q[j]));
        total += 0.5 * std::exp(p[j]) * (p[j] - std::log(m)) + 0.5 * std::exp(q[j]) * (q[j] - std::log(m));
      }
    }
  }
  return total / n;
}

std::vector<RowMatrix> AllLogits(const LlamaRuntime& rt, const CalibrationData& c) {
  std::vector<RowMatrix> out;
  for (const auto& w : c.windows) out.push_back(*rt.Forward(w));
  return out;
}

// pycode-tiny with its FFN cut to 256 neurons, written once per test process: DeciLM loaders
// derive the FFN width from ffn_mult rounded up to a multiple of 256, so this teacher's
// students need no zero padding (FinerCut.StudentsOfOtherWidthsArePaddedOrZeroed covers that).
std::string Teacher256() {
  static const std::string path = [] {
    const std::string dir = ::testing::TempDir() + "/pycode-tiny-ffn256";
    std::filesystem::remove_all(dir);
    auto m = LoadModel(testing::SharedModel("pycode-tiny"));
    if (!m.ok() || !testing::RunPipeline(*m, "prune-structured{target=neurons,ratio=0.3333333}").ok() ||
        m->arch.intermediate_size != 256 || !SaveModel(*m, dir, {}).ok())
      return std::string("(could not make the FFN-256 teacher)");
    return dir;
  }();
  return path;
}

TEST(FinerCut, FirstRemovalIsTheSmallestChangeAndTheOutputMatchesSkipping) {
  REQUIRE_SHARED(testing::SharedModel("pycode-tiny"));
  const std::string src = Teacher256();
  auto m = LoadModel(src);
  ASSERT_TRUE(m.ok());
  const CalibrationData calib = Calib(src);
  auto rt = *LlamaRuntime::Create(*m);
  const auto teacher = AllLogits(*rt, calib);
  // Every single-sublayer removal, scored independently.
  double best = 1e30;
  std::string best_name;
  for (int b = 0; b < rt->num_blocks(); ++b) {
    for (int kind = 0; kind < 2; ++kind) {
      ASSERT_TRUE(rt->SetSkipped(b, kind == 0, kind == 1).ok());
      const double js = MeanJs(teacher, AllLogits(*rt, calib));
      ASSERT_TRUE(rt->SetSkipped(b, false, false).ok());
      if (js < best) best = js, best_name = fmt::format("block {} {}", b, kind == 0 ? "attention" : "ffn");
    }
  }
  auto report = testing::RunPipeline(*m, "remove-layers-finercut{ratio=0.125,samples=2}", &calib);
  ASSERT_TRUE(report.ok()) << report.status();
  const PassReport& p = report->passes[0];
  EXPECT_EQ(p.stats.at("sublayers_removed"), 1);
  ASSERT_FALSE(p.notes.empty());
  EXPECT_EQ(p.notes[0].substr(0, p.notes[0].find(" (")), "step 1: removed " + best_name);
  EXPECT_NEAR(p.stats.at("final_js"), best, 1e-6 * std::max(1.0, best));
  ASSERT_TRUE(p.plots.count("layers.svg"));
  const auto& map = std::get<LayerMapPlot>(p.plots.at("layers.svg"));
  EXPECT_EQ(map.blocks, rt->num_blocks());
  ASSERT_EQ(map.removed.size(), 1u);
  EXPECT_EQ(fmt::format("block {} {}", map.removed[0].block, map.removed[0].attention ? "attention" : "ffn"),
            best_name);
  const std::string svg = PlotSvg(p.plots.at("layers.svg"));
  EXPECT_NE(svg.find("<svg"), std::string::npos);
  // One numbered (red) cell per removal step.
  size_t red = 0;
  for (size_t at = svg.find("#f4cccc"); at != std::string::npos; at = svg.find("#f4cccc", at + 1)) ++red;
  size_t cells = 0;
  for (const auto& r : map.removed) cells += r.attention + r.mlp;
  EXPECT_EQ(red, cells);

  // Written and re-read: the removed sublayer is a no-op in the DeciLM student (its weights
  // gone), and the logits equal the original runtime's with that sublayer skipped.
  testing::ScratchDir d;
  ASSERT_TRUE(SaveModel(*m, d / "student", {}).ok());
  auto student = LoadModel(d / "student");
  ASSERT_TRUE(student.ok()) << student.status();
  auto srt = *LlamaRuntime::Create(*student);
  const auto meta = nlohmann::json::parse(student->metadata.at("compress.finercut"));
  const auto& step = meta["removal_order"][0];
  const int block = step["teacher_block"];
  const bool attn = step["sublayer"] == "attention";
  EXPECT_EQ(srt->Skipped(block), std::make_pair(attn, !attn));
  ASSERT_TRUE(rt->SetSkipped(block, attn, !attn).ok());
  for (size_t s = 0; s < calib.windows.size(); ++s) {
    const RowMatrix want = *rt->Forward(calib.windows[s]), got = *srt->Forward(calib.windows[s]);
    EXPECT_EQ((want - got).cwiseAbs().maxCoeff(), 0.f) << "sample " << s;
  }
  const std::string gone =
      fmt::format("model.layers.{}.{}.weight", block, attn ? "self_attn.o_proj" : "mlp.down_proj");
  EXPECT_FALSE(student->tensors.contains(gone));
  EXPECT_EQ(student->config["model_type"], "nemotron-nas");
  EXPECT_EQ(student->config["block_configs"][block][attn ? "attention" : "ffn"]["no_op"], true);
}

// Removing sublayers makes a DeciLM / Nemotron-NAS student: the file is smaller by exactly the
// removed weights and norms, its no-op sublayers are skipped, and its outputs are the
// teacher's with those sublayers skipped, bit for bit.
TEST(FinerCut, SublayerStudentsAreSmallerByTheRemovedWeights) {
  REQUIRE_SHARED(testing::SharedModel("pycode-tiny"));
  const std::string src = Teacher256();
  const CalibrationData calib = Calib(src);
  for (const char* kind : {"attn", "ffn"}) {
    SCOPED_TRACE(kind);
    auto m = LoadModel(src);
    ASSERT_TRUE(m.ok());
    const int64_t teacher_params = m->ParameterCount();
    auto rt = *LlamaRuntime::Create(*m);
    // search=last removes from the top: blocks 3 and 2.
    auto report = testing::RunPipeline(
        *m, fmt::format("remove-layers-finercut{{candidates={},search=last,ratio=0.5,samples=2}}", kind), &calib);
    ASSERT_TRUE(report.ok()) << report.status();
    const bool attn = std::string(kind) == "attn";
    // Per removed block: q/k/v/o (or gate/up/down) and the sublayer's input norm.
    const int64_t D = 128, kv = 64, ffn = 256;
    const int64_t per_block = attn ? (2 * D * D + 2 * D * kv + D) : (3 * D * ffn + D);
    EXPECT_EQ(teacher_params - m->ParameterCount(), 2 * per_block);
    testing::ScratchDir d;
    ASSERT_TRUE(SaveModel(*m, d / "student", {}).ok());
    // bf16 weights: 2 bytes a parameter gone, plus their header entries.
    const int64_t shrink = static_cast<int64_t>(std::filesystem::file_size(src + "/model.safetensors")) -
                           static_cast<int64_t>(std::filesystem::file_size(d / "student/model.safetensors"));
    EXPECT_GE(shrink, 2 * per_block * 2);
    EXPECT_LT(shrink, 2 * per_block * 2 + 4096);
    auto student = LoadModel(d / "student");
    ASSERT_TRUE(student.ok()) << student.status();
    EXPECT_EQ(student->ParameterCount(), teacher_params - 2 * per_block);
    auto srt = LlamaRuntime::Create(*student);
    ASSERT_TRUE(srt.ok()) << srt.status();
    for (int b : {2, 3}) {
      EXPECT_EQ((*srt)->Skipped(b), std::make_pair(attn, !attn));
      ASSERT_TRUE(rt->SetSkipped(b, attn, !attn).ok());
    }
    EXPECT_EQ((*srt)->Skipped(1), std::make_pair(false, false));
    for (size_t s = 0; s < calib.windows.size(); ++s) {
      const RowMatrix want = *rt->Forward(calib.windows[s]), got = *(*srt)->Forward(calib.windows[s]);
      EXPECT_EQ((want - got).cwiseAbs().maxCoeff(), 0.f) << "sample " << s;
    }
    // GGUF: llama.cpp's deci architecture, per-layer head counts and FFN widths (0 for a no-op;
    // a removed FFN under a kept attention is a zero FFN one neuron wide, since llama.cpp drops a
    // layer whose FFN width is 0). Read back: the same student, the same logits.
    ASSERT_TRUE(SaveModel(*student, d / "student.gguf", {}).ok());
    auto back = LoadModel(d / "student.gguf");
    ASSERT_TRUE(back.ok()) << back.status();
    EXPECT_EQ(back->config["model_type"], "nemotron-nas");
    EXPECT_EQ(back->ParameterCount(), student->ParameterCount());
    auto brt = LlamaRuntime::Create(*back);
    ASSERT_TRUE(brt.ok()) << brt.status();
    for (int b : {2, 3}) EXPECT_EQ((*brt)->Skipped(b), std::make_pair(attn, !attn));
    for (size_t s = 0; s < calib.windows.size(); ++s) {
      const RowMatrix want = *(*srt)->Forward(calib.windows[s]), got = *(*brt)->Forward(calib.windows[s]);
      EXPECT_EQ((want - got).cwiseAbs().maxCoeff(), 0.f) << "sample " << s;
    }
    if (!attn) {  // the placeholder's tensors: 4 more than the safetensors student's, 1 + 3 neurons
      auto g = gguf::ReadContainer(d / "student.gguf");
      ASSERT_TRUE(g.ok()) << g.status();
      int placeholders = 0;
      for (const auto& t : g->tensors) {
        if (t.name.starts_with("blk.3.ffn_") || t.name.starts_with("blk.2.ffn_")) {
          ++placeholders;
          EXPECT_EQ(t.ne.size() == 2 ? t.ne[0] * t.ne[1] : t.ne[0], static_cast<uint64_t>(D)) << t.name;
        }
      }
      EXPECT_EQ(placeholders, 8);
      EXPECT_EQ(g->kv.at("deci.feed_forward_length")[3], 1);
      EXPECT_EQ(g->kv.at("deci.feed_forward_length")[1], ffn);
      // A one-neuron FFN that is not zero is a real FFN of another width: refused, naming it.
      uint64_t at = 0;
      for (const auto& t : g->tensors) {
        if (t.name == "blk.3.ffn_down.weight") at = g->data_start + t.offset;
      }
      ASSERT_GT(at, 0u);
      std::string bytes = testing::ReadFile(d / "student.gguf");
      const float one = 1.f;
      std::memcpy(bytes.data() + at + 4 * 5, &one, 4);
      testing::WriteFile(d / "changed.gguf", bytes);
      auto changed = LoadModel(d / "changed.gguf");
      ASSERT_FALSE(changed.ok());
      EXPECT_NE(changed.status().message().find("blk.3.ffn_down.weight"), std::string::npos) << changed.status();
      EXPECT_NE(changed.status().message().find("changed.gguf"), std::string::npos) << changed.status();
    }
  }
}

TEST(FinerCut, DroppedBlocksAreRenumberedAndTheStudentRuns) {
  const std::string src = testing::SharedModel("pycode-tiny");
  REQUIRE_SHARED(src);
  auto m = LoadModel(src);
  ASSERT_TRUE(m.ok());
  const CalibrationData calib = Calib(src);
  auto report =
      testing::RunPipeline(*m, "remove-layers-finercut{candidates=blocks,ratio=0.25,samples=2}", &calib);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->passes[0].stats.at("blocks_dropped"), 1);
  const auto meta = nlohmann::json::parse(m->metadata.at("compress.finercut"));
  const int dropped = meta["removal_order"][0]["teacher_block"];
  EXPECT_EQ(meta["student"].size(), 3u);
  testing::ScratchDir d;
  ASSERT_TRUE(SaveModel(*m, d / "student", {}).ok());
  auto student = LoadModel(d / "student");
  ASSERT_TRUE(student.ok()) << student.status();
  EXPECT_EQ(student->config["num_hidden_layers"], 3);
  EXPECT_FALSE(student->tensors.contains("model.layers.3.mlp.down_proj.weight"));
  // Student block i holds teacher block meta.student[i].teacher_block's weights.
  auto teacher = LoadModel(src);
  for (const auto& e : meta["student"]) {
    const int si = e["student_block"], ti = e["teacher_block"];
    EXPECT_NE(ti, dropped);
    EXPECT_EQ(*student->tensors.at(fmt::format("model.layers.{}.self_attn.q_proj.weight", si)).ToF32(),
              *teacher->tensors.at(fmt::format("model.layers.{}.self_attn.q_proj.weight", ti)).ToF32());
  }
  auto trt = *LlamaRuntime::Create(*teacher);
  ASSERT_TRUE(trt->SetSkipped(dropped, true, true).ok());
  auto srt = *LlamaRuntime::Create(*student);
  EXPECT_EQ(srt->num_blocks(), 3);
  const RowMatrix want = *trt->Forward(calib.windows[0]), got = *srt->Forward(calib.windows[0]);
  EXPECT_EQ((want - got).cwiseAbs().maxCoeff(), 0.f);
}

// pycode-tiny's FFN is 384 wide, which DeciLM loaders would read as 512 (ffn_mult's width is
// rounded up to a multiple of 256). Removing FFNs: the kept FFNs get 128 zero neurons, the
// config says 512, the file is still smaller and the outputs are the teacher's with those
// sublayers skipped. Removing only attention: the zeros would outweigh what is removed, so the
// student keeps the Llama form with zeroed o_proj (loadable everywhere, no bigger).
TEST(FinerCut, StudentsOfOtherWidthsArePaddedOrZeroed) {
  const std::string src = testing::SharedModel("pycode-tiny");
  REQUIRE_SHARED(src);
  const CalibrationData calib = Calib(src);
  for (const char* kind : {"ffn", "attn"}) {
    SCOPED_TRACE(kind);
    auto m = LoadModel(src);
    ASSERT_TRUE(m.ok());
    auto rt = *LlamaRuntime::Create(*m);
    ASSERT_TRUE(testing::RunPipeline(
                    *m, fmt::format("remove-layers-finercut{{candidates={},search=last,ratio=0.5,samples=2}}", kind),
                    &calib)
                    .ok());
    const bool attn = std::string(kind) == "attn";
    testing::ScratchDir d;
    ASSERT_TRUE(SaveModel(*m, d / "student", {}).ok());
    auto student = LoadModel(d / "student");
    ASSERT_TRUE(student.ok()) << student.status();
    const int64_t teacher_bytes = static_cast<int64_t>(std::filesystem::file_size(src + "/model.safetensors"));
    const int64_t student_bytes = static_cast<int64_t>(std::filesystem::file_size(d / "student/model.safetensors"));
    if (attn) {
      EXPECT_EQ(student->config["model_type"], "llama");
      EXPECT_EQ(student->config["intermediate_size"], 384);
      EXPECT_LE(student_bytes, teacher_bytes + 4096) << "the same weights (and the distillation metadata)";
    } else {
      EXPECT_EQ(student->config["model_type"], "nemotron-nas");
      EXPECT_EQ(student->config["intermediate_size"], 512);
      EXPECT_EQ(student->tensors.at("model.layers.0.mlp.gate_proj.weight").shape(), (Shape{512, 128}));
      EXPECT_EQ(student->tensors.at("model.layers.0.mlp.down_proj.weight").shape(), (Shape{128, 512}));
      // DeciLM's width rule on the written ffn_mult: int(2/3 x ffn_mult x hidden) up to 256.
      const double mult = student->config["block_configs"][0]["ffn"]["ffn_mult"];
      int64_t w = static_cast<int64_t>(2 * mult * 128 / 3);
      if (w % 256) w += 256 - w % 256;
      EXPECT_EQ(w, 512);
      // Two FFNs of 3 x 128 x 384 removed, two widened by 3 x 128 x 128 zeros (bf16).
      EXPECT_GE(teacher_bytes - student_bytes, 2 * (2 * 3 * 128 * 384 - 2 * 3 * 128 * 128));
      // Neuron pruning of the student keeps block_configs' widths with it (multiples of 256 only).
      Model narrower = *student;
      ASSERT_TRUE(testing::RunPipeline(narrower, "prune-structured{target=neurons,ratio=0.5}").ok());
      const double m2 = narrower.config["block_configs"][0]["ffn"]["ffn_mult"];
      EXPECT_EQ(static_cast<int64_t>(2 * m2 * 128 / 3 + 1e-9), 256);
      EXPECT_EQ(narrower.config["intermediate_size"], 256);
      Model odd = *student;
      auto r = testing::RunPipeline(odd, "prune-structured{target=neurons,ratio=0.3}");
      ASSERT_FALSE(r.ok());
      EXPECT_NE(r.status().message().find("multiple of 256"), std::string::npos) << r.status();
    }
    auto srt = *LlamaRuntime::Create(*student);
    for (int b : {2, 3}) ASSERT_TRUE(rt->SetSkipped(b, attn, !attn).ok());
    for (size_t s = 0; s < calib.windows.size(); ++s) {
      const RowMatrix want = *rt->Forward(calib.windows[s]), got = *srt->Forward(calib.windows[s]);
      EXPECT_LT((want - got).cwiseAbs().maxCoeff(), 1e-4f * std::max(1.f, want.cwiseAbs().maxCoeff())) << s;
    }
  }
}

TEST(FinerCut, NeedsCalibrationData) {
  const std::string src = testing::SharedModel("pycode-tiny");
  REQUIRE_SHARED(src);
  auto m = LoadModel(src);
  auto r = testing::RunPipeline(*m, "remove-layers-finercut");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(std::string(r.status().message()).find("calibration"), std::string::npos) << r.status();
}

}  // namespace
}  // namespace compress

namespace compress {
namespace {

// A student cut again keeps its earlier removals; once every no-op sublayer sits in a dropped
// block, the checkpoint is a plain Llama again.
TEST(FinerCut, StudentsCutAgainKeepTheirRemovals) {
  REQUIRE_SHARED(testing::SharedModel("pycode-tiny"));
  const std::string src = Teacher256();
  const CalibrationData calib = Calib(src);
  auto m = LoadModel(src);
  ASSERT_TRUE(m.ok());
  ASSERT_TRUE(testing::RunPipeline(*m, "remove-layers-finercut{candidates=attn,search=last,ratio=0.5,samples=2}", &calib).ok());
  Model twice = *m;
  // The FFN of block 3 (attention already gone): block 3 is dropped, block 2 keeps its no-op attention.
  ASSERT_TRUE(testing::RunPipeline(twice, "remove-layers-finercut{candidates=ffn,search=last,ratio=0.25,samples=2}", &calib).ok());
  EXPECT_EQ(twice.arch.blocks.size(), 3u);
  EXPECT_EQ(twice.config["model_type"], "nemotron-nas");
  EXPECT_EQ(twice.config["block_configs"][2]["attention"]["no_op"], true);
  EXPECT_EQ(twice.config["block_configs"][1]["attention"]["no_op"], false);
  // Dropping blocks 2 and 3 leaves no no-op sublayer: a plain Llama.
  Model blocks = *m;
  ASSERT_TRUE(testing::RunPipeline(blocks, "remove-layers-finercut{candidates=blocks,search=last,ratio=0.5,samples=2}", &calib).ok());
  EXPECT_EQ(blocks.arch.blocks.size(), 2u);
  EXPECT_EQ(blocks.config["model_type"], "llama");
  EXPECT_FALSE(blocks.config.contains("block_configs"));
  EXPECT_TRUE(LlamaRuntime::Create(blocks).ok());
}

}  // namespace
}  // namespace compress

namespace compress {
namespace {

// The FFN-256 teacher as a checkpoint of another family with Llama blocks: Qwen2 (q/k/v
// biases, its config keys) or Mistral (with or without a sliding window shorter than the context).
std::string FamilyTeacher(const std::string& family, int64_t window) {
  const std::string dir = ::testing::TempDir() + fmt::format("/pycode-tiny-{}-{}", family, window);
  std::filesystem::remove_all(dir);
  auto m = LoadModel(Teacher256());
  if (!m.ok()) return "(no teacher)";
  m->config["model_type"] = family;
  m->config["architectures"] = {family == "qwen2"   ? "Qwen2ForCausalLM"
                                : family == "phi3" ? "Phi3ForCausalLM"
                                                   : "MistralForCausalLM"};
  m->config.erase("attention_bias");
  m->config.erase("mlp_bias");
  m->config["sliding_window"] = window > 0 ? nlohmann::json(window) : nlohmann::json();
  if (family == "qwen2") {
    m->config["use_sliding_window"] = false;
    m->config["max_window_layers"] = 4;
    uint32_t seed = 7;
    for (int b = 0; b < 4; ++b) {
      for (const auto& [proj, n] : {std::pair{"q_proj", 128}, std::pair{"k_proj", 64}, std::pair{"v_proj", 64}}) {
        auto t = Tensor::FromF32(testing::RandomNormal(1, n, seed++, 0.5f), Shape{n}, DType::kBF16);
        m->tensors.Set(fmt::format("model.layers.{}.self_attn.{}.bias", b, proj), *t);
      }
    }
  }
  if (family == "phi3") {  // Phi-3's fused q/k/v and gate/up rows, and its remote code
    m->config["auto_map"] = {{"AutoConfig", "configuration_phi3.Phi3Config"}};
    if (!RebuildHfArchitecture(*m).ok() || !FuseProjections(*m).ok()) return "(could not fuse the teacher)";
  }
  if (!SaveModel(*m, dir, {}).ok()) return "(could not write the teacher)";
  return dir;
}

// Qwen2, Mistral and Phi-3 teachers (dense, no sliding window) give DeciLM students as Llama ones do
// (Phi-3's fused projections split into Llama's):
// Qwen2's q/k/v biases make it an attention_bias student whose kept o_proj get zero biases; the
// outputs are the teacher's with the sublayers skipped, bit for bit, also read back from GGUF
// (q/k biases in llama.cpp's rope order). A Mistral whose window is shorter than its context
// keeps its form (DeciLM has no sliding window), with zeroed projections, as does a windowed Phi-3
// (fused).
TEST(FinerCut, QwenMistralAndPhi3StudentsTakeTheDeciForm) {
  REQUIRE_SHARED(testing::SharedModel("pycode-tiny"));
  struct Case {
    const char* family;
    int64_t window;
    const char* candidates;
    bool deci;
  };
  for (const Case& c : {Case{"qwen2", 0, "attn", true}, Case{"qwen2", 0, "ffn", true}, Case{"mistral", 0, "ffn", true},
                        Case{"mistral", 64, "attn", false}, Case{"phi3", 0, "attn", true}, Case{"phi3", 0, "ffn", true},
                        Case{"phi3", 64, "ffn", false}}) {
    SCOPED_TRACE(fmt::format("{} window {} {}", c.family, c.window, c.candidates));
    const std::string src = FamilyTeacher(c.family, c.window);
    auto m = LoadModel(src);
    ASSERT_TRUE(m.ok()) << m.status();
    ASSERT_EQ(m->arch.family, c.family);
    const CalibrationData calib = Calib(src);
    const int64_t teacher_params = m->ParameterCount();
    auto rt = *LlamaRuntime::Create(*m);
    auto run = testing::RunPipeline(
        *m, fmt::format("remove-layers-finercut{{candidates={},search=last,ratio=0.5,samples=2}}", c.candidates),
        &calib);
    ASSERT_TRUE(run.ok()) << run.status();
    // A student that keeps its family's form says its removed sublayers stay as zeros.
    const bool warned = std::any_of(run->warnings.begin(), run->warnings.end(), [](const std::string& w) {
      return w.find("pass 1 'remove-layers-finercut': 2 removed sublayer(s) of kept blocks stay in the file as zeroed "
                    "output projections") != std::string::npos;
    });
    EXPECT_EQ(warned, !c.deci) << ::testing::PrintToString(run->warnings);
    const bool attn = std::string(c.candidates) == "attn";
    testing::ScratchDir d;
    ASSERT_TRUE(SaveModel(*m, d / "student", {}).ok());
    auto student = LoadModel(d / "student");
    ASSERT_TRUE(student.ok()) << student.status();
    EXPECT_EQ(student->config["model_type"], c.deci ? "nemotron-nas" : c.family);
    const bool qwen = std::string(c.family) == "qwen2";
    const int64_t D = 128, kv = 64, ffn = 256;
    if (std::string(c.family) == "phi3") {
      // A DeciLM student reads separate projections: no fused tensor is left, and the teacher's
      // remote code is not named; a Phi-3 student keeps its fused form.
      int fused = 0;
      for (const auto& n : student->tensors.names()) {
        fused += n.find("qkv_proj") != std::string::npos || n.find("gate_up_proj") != std::string::npos;
      }
      EXPECT_EQ(fused, c.deci ? 0 : 2 * 4);
      EXPECT_EQ(student->config.contains("auto_map"), !c.deci);
    }
    if (c.deci) {
      // Per removed block: the sublayer's weights, its input norm (and Qwen2's q/k/v biases); every
      // kept attention of a Qwen2 student gains a zero o_proj bias.
      const int64_t per_block = attn ? (2 * D * D + 2 * D * kv + D + (qwen ? D + 2 * kv : 0)) : (3 * D * ffn + D);
      const int64_t kept_attentions = attn ? 2 : 4;
      EXPECT_EQ(teacher_params - student->ParameterCount(), 2 * per_block - (qwen ? kept_attentions * D : 0));
      EXPECT_EQ(student->config.value("attention_bias", false), qwen);
      if (qwen) {
        const std::string o = "model.layers.0.self_attn.o_proj.bias";
        ASSERT_TRUE(student->tensors.contains(o));
        const std::vector<float> zeros = *student->tensors.at(o).ToF32();
        EXPECT_EQ(zeros, std::vector<float>(D, 0.f));
      }
    } else {
      EXPECT_EQ(student->ParameterCount(), teacher_params);
    }
    auto srt = *LlamaRuntime::Create(*student);
    for (int b : {2, 3}) ASSERT_TRUE(rt->SetSkipped(b, attn, !attn).ok());
    for (size_t s = 0; s < calib.windows.size(); ++s) {
      const RowMatrix want = *rt->Forward(calib.windows[s]), got = *srt->Forward(calib.windows[s]);
      EXPECT_EQ((want - got).cwiseAbs().maxCoeff(), 0.f) << "sample " << s;
    }
    if (!c.deci) continue;
    auto saved = SaveModel(*student, d / "student.gguf", {});
    ASSERT_TRUE(saved.ok()) << saved.status();
    auto back = LoadModel(d / "student.gguf");
    ASSERT_TRUE(back.ok()) << back.status();
    EXPECT_EQ(back->ParameterCount(), student->ParameterCount());
    auto brt = *LlamaRuntime::Create(*back);
    for (size_t s = 0; s < calib.windows.size(); ++s) {
      const RowMatrix want = *srt->Forward(calib.windows[s]), got = *brt->Forward(calib.windows[s]);
      EXPECT_EQ((want - got).cwiseAbs().maxCoeff(), 0.f) << "sample " << s;
    }
  }
}

}  // namespace
}  // namespace compress
